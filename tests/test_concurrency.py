"""Many threads on one store at once, with compactions running underneath."""

from __future__ import annotations

import threading
from pathlib import Path

from kvs import KvStore


def test_1000_writers_and_100_readers_during_compaction(tmp_path: Path) -> None:
    path = str(tmp_path)
    store = KvStore.open(path, max_file_size=16 << 10, sync="no")
    for i in range(100):
        store.set(f"read{i}", f"value{i}")
    for i in range(2000):  # garbage for the compactions to chew on
        store.set(f"churn{i % 50}", "x" * 100)
    errors: list[BaseException] = []
    start = threading.Barrier(1000 + 100 + 1)
    stop_compacting = threading.Event()

    def writer(i: int) -> None:
        try:
            start.wait()
            store.set(f"key{i}", f"value{i}")
        except BaseException as error:
            errors.append(error)

    def reader(t: int) -> None:
        try:
            start.wait()
            for i in range(100):
                j = (i + t) % 100
                assert store.get(f"read{j}") == f"value{j}"
        except BaseException as error:
            errors.append(error)

    def compactor() -> None:
        try:
            start.wait()
            while not stop_compacting.is_set():
                store.compact()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(1000)]
    threads += [threading.Thread(target=reader, args=(t,)) for t in range(100)]
    compaction = threading.Thread(target=compactor)
    for thread in [*threads, compaction]:
        thread.start()
    for thread in threads:
        thread.join()
    stop_compacting.set()
    compaction.join()
    assert errors == []
    assert all(store.get(f"key{i}") == f"value{i}" for i in range(1000))
    store.close()
    with KvStore.open(path) as reopened:
        assert all(reopened.get(f"key{i}") == f"value{i}" for i in range(1000))
        assert all(reopened.get(f"read{i}") == f"value{i}" for i in range(100))


def test_reads_never_see_a_missing_key_while_files_rotate_and_compact(tmp_path: Path) -> None:
    store = KvStore.open(str(tmp_path), max_file_size=16 << 10, sync="no")
    stable = {f"stable{i}": f"v{i}" for i in range(200)}
    store.update(stable)
    done = threading.Event()
    failures: list[str] = []

    def read_loop() -> None:
        while not done.is_set():
            for key, value in stable.items():
                got = store.get(key)
                if got != value:
                    failures.append(f"{key}: {got!r}")
                    return
            keys = list(store.scan("stable"))
            if len(keys) != len(stable):
                failures.append(f"scan saw {len(keys)} keys")
                return

    readers = [threading.Thread(target=read_loop) for _ in range(4)]
    for thread in readers:
        thread.start()
    for _ in range(8):
        for i in range(100):
            store.set(f"hot{i}", "y" * 200)  # rotates files every ~70 writes
        store.compact()
    done.set()
    for thread in readers:
        thread.join()
    store.close()
    assert failures == []


def test_concurrent_batches_and_removes_stay_consistent(tmp_path: Path) -> None:
    path = str(tmp_path)
    store = KvStore.open(path, max_file_size=16 << 10, sync="no")
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(200):
                with store.batch() as batch:
                    batch.set(f"t{t}-{i}", "a")
                    batch.set(f"t{t}-{i}-pair", "b")
                if i % 2:
                    with store.batch() as batch:
                        batch.remove(f"t{t}-{i}")
                        batch.remove(f"t{t}-{i}-pair")
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    store.compact()
    for thread in threads:
        thread.join()
    assert errors == []

    def check(s: KvStore) -> None:
        for t in range(8):
            for i in range(200):
                present = (s.get(f"t{t}-{i}"), s.get(f"t{t}-{i}-pair"))
                assert present == ((None, None) if i % 2 else ("a", "b"))

    check(store)
    store.close()
    with KvStore.open(path) as reopened:
        check(reopened)


def test_group_commit_under_sync_always(tmp_path: Path) -> None:
    """Durable writes from many threads all complete and survive; speed is in bench/."""
    path = str(tmp_path)
    store = KvStore.open(path, sync="always")

    def worker(t: int) -> None:
        for i in range(50):
            store.set(f"{t}:{i}", str(i))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()
    with KvStore.open(path) as reopened:
        assert len(reopened) == 400
