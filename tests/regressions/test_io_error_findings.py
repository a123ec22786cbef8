"""Regressions for bugs the I/O-error loop (tests/crash/test_io_errors.py) found, one test each.

Each injects one fault with ``FaultyFileSystem`` and checks what used to go wrong: a bare
``OSError`` escaping, a descriptor left open, a failed fsync not turning the store read-only,
or a failure not reported.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from kvs import CorruptionError, KvsError, KvStore, ReadOnlyError, StorageError
from kvs.log.faultfs import FaultyFileSystem


def fds_on(path: Path) -> list[str]:
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith(str(path)):
            out.append(target)
    return sorted(out)


def open_faulty(path: Path, fs: FaultyFileSystem, **options: object) -> KvStore:
    options.setdefault("sync", "no")
    options.setdefault("auto_compact", False)
    return KvStore.open(str(path), fs=fs, **options)  # type: ignore[arg-type]


def test_failed_copy_into_the_active_file_is_a_storage_error(tmp_path: Path) -> None:
    fs = FaultyFileSystem()
    store = open_faulty(tmp_path / "s", fs)
    try:
        store.set("a", "1")

        def batch() -> None:
            with store.batch() as b:
                b.set("c", "3")

        for call in (
            lambda: store.set("b", "2"),
            lambda: store.update({b"b": b"2"}),
            batch,
            lambda: store.remove("a"),
        ):
            fs.fail_next("append.write", errno.EIO)
            with pytest.raises(StorageError, match=r"kvs-0000000001\.data"):
                call()
        assert store.get("a") == "1" and store.get("b") is None and store.get("c") is None
        store.set("b", "2")  # the next write goes where the failed one would have
    finally:
        store.close()
    with KvStore.open(str(tmp_path / "s")) as reopened:
        assert sorted(reopened.scan()) == ["a", "b"]


def test_failed_pid_write_at_open_closes_the_lock(tmp_path: Path) -> None:
    fs = FaultyFileSystem()
    fs.fail_next("lock.write_owner", errno.ENOSPC)
    with pytest.raises(StorageError, match=r"kvs\.lock"):
        open_faulty(tmp_path / "s", fs)
    assert fds_on(tmp_path) == []


@pytest.mark.parametrize("op", ["create", "fsync_dir", "open_append"])
def test_failure_creating_the_first_data_file_is_a_storage_error(tmp_path: Path, op: str) -> None:
    fs = FaultyFileSystem()
    fs.fail_next(op, errno.EIO)
    with pytest.raises(StorageError, match=re.escape(str(tmp_path))):
        open_faulty(tmp_path / "s", fs)
    assert fds_on(tmp_path) == []


def test_failed_reserve_at_open_closes_the_active_file(tmp_path: Path) -> None:
    fs = FaultyFileSystem()
    fs.fail_next("append.reserve", errno.ENOSPC)
    with pytest.raises(StorageError, match=r"kvs-0000000001\.data"):
        open_faulty(tmp_path / "s", fs)
    assert fds_on(tmp_path) == []


def test_failed_fsync_while_sealing_a_file_makes_the_store_read_only(tmp_path: Path) -> None:
    fs = FaultyFileSystem()
    store = open_faulty(tmp_path / "s", fs, max_file_size=4096)
    try:
        store.set("a", "x" * 3000)
        fs.fail_next("append.sync", errno.EIO)  # the rotation's sync of the full file
        with pytest.raises(StorageError):
            store.set("b", "y" * 3000)
        with pytest.raises(ReadOnlyError):
            store.set("c", "z")
        assert store.get("a") == "x" * 3000
    finally:
        store.close()


def test_failed_directory_sync_after_compaction_is_a_storage_error(tmp_path: Path) -> None:
    fs = FaultyFileSystem()
    store = open_faulty(tmp_path / "s", fs)
    try:
        store.set("a", "1")
        store.set("a", "2")
        path = str(tmp_path / "s")
        original = fs.fsync_dir
        calls: list[int] = []

        def fsync_dir(p: str) -> None:  # fail the last directory sync: after the deletions
            calls.append(1)
            if len(calls) == 3:
                raise OSError(errno.EIO, "injected", p)
            original(p)

        fs.fsync_dir = fsync_dir  # type: ignore[method-assign]
        with pytest.raises(StorageError, match=re.escape(path)):
            store.compact()
        fs.fsync_dir = original  # type: ignore[method-assign]
        assert store.get("a") == "2"
    finally:
        store.close()


def test_failed_unmap_at_close_still_closes_everything(tmp_path: Path) -> None:
    fs = FaultyFileSystem()
    store = open_faulty(tmp_path / "s", fs, max_file_size=4096)
    for i in range(10):
        store.set(f"k{i}", "v" * 1000)  # several sealed files, each mapped
    fs.fail_next("read.close", errno.EIO)
    store.close()
    assert fds_on(tmp_path) == [] and fs.misuse == []


def test_failed_fsync_at_close_is_reported(tmp_path: Path) -> None:
    fs = FaultyFileSystem()
    store = open_faulty(tmp_path / "s", fs)
    store.set("a", "1")
    fs.fail_next("append.sync", errno.EIO)
    with pytest.raises(KvsError, match=r"kvs-0000000001\.data"):
        store.close()
    assert fds_on(tmp_path) == []


def test_corruption_in_a_later_file_releases_the_maps_of_earlier_ones(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with KvStore.open(str(path), sync="no", max_file_size=4096) as store:
        for i in range(12):
            store.set(f"k{i}", "v" * 1000)
    second = path / "kvs-0000000002.data"
    data = bytearray(second.read_bytes())
    data[40] ^= 0xFF  # the first record of a sealed file
    second.write_bytes(bytes(data))
    for name in os.listdir(path):
        if name.endswith(".hint"):
            os.remove(path / name)
    fs = FaultyFileSystem()
    with pytest.raises(CorruptionError, match=r"kvs-0000000002\.data"):
        open_faulty(path, fs, max_file_size=4096)
    assert fds_on(tmp_path) == []


def test_unreadable_hint_file_is_ignored_like_a_damaged_one(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with KvStore.open(str(path), sync="no") as store:
        store.set("big", b"x" * 300_000)  # a hint is written at close
    assert (path / "kvs-0000000001.hint").exists()
    fs = FaultyFileSystem()
    fs.fail_next("read_bytes", errno.EIO, ".hint")
    with open_faulty(path, fs) as store:
        assert store.get("big") == b"x" * 300_000
    assert fds_on(tmp_path) == []


def test_failed_unmap_after_a_failed_compaction_keeps_the_typed_error(tmp_path: Path) -> None:
    fs = FaultyFileSystem()
    store = open_faulty(tmp_path / "s", fs, max_file_size=4096)
    for i in range(6):
        store.set(f"k{i}", "v" * 1000)  # live data for two compaction outputs
    original = fs.open_read
    seen: list[str] = []

    def open_read(p: str) -> object:
        seen.append(p)
        if len(seen) == 3:  # the sealed active file, output 1, then output 2 fails...
            fs.fail_at(fs.count + 1, errno.EIO, persistent=True)  # ...and so does the rest
            raise OSError(errno.EIO, "injected", p)
        return original(p)

    fs.open_read = open_read  # type: ignore[assignment,method-assign]
    with pytest.raises(StorageError):
        store.compact()
    with pytest.raises(KvsError):
        store.close()
    assert fds_on(tmp_path) == [] and fs.misuse == []


def test_a_writer_told_its_fsync_failed_finds_the_store_already_read_only() -> None:
    """Found by the soak (io component, sync=always, persistent ENOSPC): the group-commit
    thread woke the waiting writers with the fsync error *before* it turned the store
    read-only, so a writer that got ReadOnlyError could send its next write past the read-only
    check, where it met the disk error again as a plain StorageError (or, with a one-off
    fault, was written to the file). The store is now read-only before any waiter wakes."""
    import threading
    import time

    from kvs.log.durability import Durability

    read_only = threading.Event()

    def failing_sync() -> int:
        raise StorageError(errno.EIO, "injected", "data")

    def slow_on_failure(error: BaseException) -> None:
        time.sleep(0.2)  # the flusher thread descheduled right here
        read_only.set()

    durability = Durability("always", failing_sync, slow_on_failure)
    try:
        with pytest.raises(ReadOnlyError):
            durability.wait(100)
        assert read_only.is_set(), "the writer woke before the store turned read-only"
    finally:
        durability.stop()


def test_a_failed_background_fsync_nobody_was_told_of_fails_close(tmp_path: Path) -> None:
    """Found when everysec synced more often: its background fsync failed, no write came after
    it (so no caller got ReadOnlyError), and close() returned normally, although the last
    writes were not durable. close() now raises the fsync's StorageError in that case."""
    fs = FaultyFileSystem()
    store = open_faulty(tmp_path / "s", fs, sync="everysec")
    store.set(b"k", b"v")
    fs.fail_next("append.sync", errno.EIO, ".data")
    store._durability.sync_now()  # type: ignore[attr-defined]  # the everysec thread's tick
    assert store._durability.error is not None  # type: ignore[attr-defined]
    with pytest.raises(StorageError, match="Input/output error"):
        store.close()
    assert fds_on(tmp_path) == [] and fs.misuse == []


def test_close_does_not_repeat_an_fsync_failure_a_writer_was_told_of(tmp_path: Path) -> None:
    fs = FaultyFileSystem()
    store = open_faulty(tmp_path / "s", fs, sync="everysec")
    store.set(b"k", b"v")
    fs.fail_next("append.sync", errno.EIO, ".data")
    store._durability.sync_now()  # type: ignore[attr-defined]
    with pytest.raises(ReadOnlyError, match="fsync failed"):
        store.set(b"k2", b"v2")
    store.close()  # the failure was reported once, to the writer
    assert fds_on(tmp_path) == []
