"""What ``KvStore`` promises of the log engine (``kvs``) beyond the contract every engine
keeps: its directory and files, limits, rotation, compaction, stale and live bytes.

The common API (round trips, types, the dict protocol, scans, batches, TTLs, closing, sync
policies) is checked, for this engine too, by ``tests/engines/test_contract.py``.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from kvs import KvStore, LimitError


@pytest.fixture
def store(tmp_path: Path) -> KvStore:
    s = KvStore.open(str(tmp_path / "db"), sync="no")
    yield s
    s.close()


def reopen(s: KvStore, **options: object) -> KvStore:
    path = s.path  # type: ignore[attr-defined]
    s.close()
    return KvStore.open(path, sync="no", **options)


def test_open_creates_directory_with_mode_0700(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b"
    with KvStore.open(str(path)):
        pass
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700


def test_overwrites_within_an_update_are_counted_as_stale_after_reopen(store: KvStore) -> None:
    store.update({b"a": b"1", b"b": b"2"})
    store.update([(b"a", b"3"), (b"a", b"4")])  # the last one wins
    store = reopen(store)
    assert store.get(b"a") == b"4" and store.get(b"b") == b"2"
    assert store.stats()["stale_bytes"] > 0
    store.close()


def test_compaction_drops_expired_records(store: KvStore) -> None:
    store.set("gone", "x" * 1000, ttl=0.05)
    store.set("kept", "y")
    time.sleep(0.1)
    store.compact()
    assert store.stats()["live_bytes"] < 1000
    store = reopen(store)
    assert store.get("gone") is None and store.get("kept") == "y"
    store.close()


def test_limits_are_enforced_at_and_past_the_boundary(tmp_path: Path) -> None:
    with KvStore.open(str(tmp_path), max_key_size=10, max_value_size=100) as s:
        s.set(b"k" * 10, b"v" * 100)
        with pytest.raises(LimitError, match="limit of 10"):
            s.set(b"k" * 11, b"v")
        with pytest.raises(LimitError, match="limit of 100"):
            s.set(b"k", b"v" * 101)
        with pytest.raises(LimitError):
            s.update([(b"a", b"v"), (b"b", b"v" * 101)])
        assert s.get(b"a") is None and s.get(b"k" * 10) == b"v" * 100
        assert len(s) == 1


def test_value_larger_than_a_data_file_gets_a_file_of_its_own(tmp_path: Path) -> None:
    with KvStore.open(str(tmp_path), max_file_size=4096) as s:
        s.set("small", "1")
        s.set("big", "x" * 100_000)
        s.set("after", "2")
        assert s.get("big") == "x" * 100_000
    with KvStore.open(str(tmp_path), max_file_size=4096) as s:
        assert (s.get("small"), s.get("after")) == ("1", "2")
        assert s.get("big") == "x" * 100_000


def test_rotation_and_compaction_keep_every_value(tmp_path: Path) -> None:
    path = str(tmp_path)
    expected: dict[bytes, bytes] = {}
    with KvStore.open(path, max_file_size=8192, sync="no") as s:
        for i in range(3000):
            key = b"k%d" % (i % 250)
            expected[key] = b"v%d" % i
            s.set(key, expected[key])
        for i in range(0, 250, 7):
            s.remove(b"k%d" % i)
            del expected[b"k%d" % i]
        files_before = s.stats()["data_files"]
        s.compact()
        assert s.stats()["data_files"] < files_before
        assert s.stats()["stale_bytes"] == 0
        assert {k: s.get(k) for k in expected} == expected
    with KvStore.open(path, max_file_size=8192) as s:
        assert dict(s.items()) == expected
        assert len(s) == len(expected)


@pytest.mark.parametrize("auto_compact", [True, False])
def test_automatic_compaction_reclaims_space(tmp_path: Path, auto_compact: bool) -> None:
    """The course's compaction test: overwriting the same keys must not grow the store.

    The bounds sit far below what the writes leave without compaction (about 3 MiB, about
    95% of it stale), which the ``auto_compact=False`` case shows; an earlier version of this
    test had bounds that held with no compaction at all."""
    path = str(tmp_path)
    with KvStore.open(
        path,
        max_file_size=64 << 10,
        compaction_min_stale_bytes=256 << 10,
        auto_compact=auto_compact,
        sync="no",
    ) as s:
        for round_ in range(1000):
            for key_id in range(100):
                s.set(f"key{key_id}", f"{round_}")
        bound = 256 << 10  # the threshold: compaction starts once stale bytes pass it
        deadline = time.monotonic() + 30
        while auto_compact and s.stats()["stale_bytes"] > bound and time.monotonic() < deadline:
            time.sleep(0.05)
        stale = s.stats()["stale_bytes"]
    total = sum(f.stat().st_size for f in tmp_path.iterdir())
    if auto_compact:
        assert stale <= bound
        assert total < 1 << 20
    else:
        assert stale > 2 << 20 and total > 2 << 20  # what there is to reclaim
    with KvStore.open(path) as s:
        assert all(s.get(f"key{key_id}") == "999" for key_id in range(100))


def test_only_kvs_files_are_created_and_foreign_files_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with KvStore.open(str(tmp_path)) as s:
        s.set("a", "1")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[-1] == "notes.txt"
    assert all(n.startswith("kvs") for n in names[:-1])
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_reopen_does_not_create_a_file_per_open(tmp_path: Path) -> None:
    for i in range(20):
        with KvStore.open(str(tmp_path)) as s:
            s.set(f"k{i}", "v")
    assert len(list(tmp_path.glob("kvs-*.data"))) == 1


def test_everysec_asks_for_a_sync_after_every_reserved_chunk(tmp_path: Path) -> None:
    """So that a rotation finds at most a chunk unsynced, not a second of writes."""
    from kvs.log.fs import RESERVE_CHUNK

    with KvStore.open(str(tmp_path / "s"), sync="everysec") as store:
        durability = store._durability  # type: ignore[attr-defined]
        original = durability.sync_soon
        asked: list[int] = []

        def counting_sync_soon() -> None:
            asked.append(1)
            original()

        durability.sync_soon = counting_sync_soon
        value = b"v" * 1000
        for i in range(3 * RESERVE_CHUNK // 1000):
            store.set(b"k%d" % i, value)
        assert len(asked) >= 2
