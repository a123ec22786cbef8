"""The fault-injecting file system the crash tests rely on."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from kvs import KvStore
from kvs.log.engine import LogStore
from kvs.log.faultfs import FaultyFileSystem, SimulatedCrash

from .helpers import abandon, open_store


def test_every_operation_is_counted_and_named(tmp_path: Path) -> None:
    fs = FaultyFileSystem()
    store = open_store(tmp_path / "s", fs=fs)
    opened = fs.count
    store.set("k", "v")
    assert fs.ops[-1][0] == "append.write" and fs.ops[-1][1].endswith(".data")
    assert {name for name, _ in fs.ops[opened:]} <= {"append.reserve", "append.write"}
    store.close()
    names = [name for name, _ in fs.ops]
    assert names[0] == "makedirs" and "lock" in names and "open_append" in names
    assert names[-1] == "lock.close" and "append.close" in names
    assert len(fs.ops_named("append.write")) == 1
    assert SimulatedCrash.__mro__[1] is BaseException


def test_crash_at_stops_that_operation_and_every_later_one(tmp_path: Path) -> None:
    fs = FaultyFileSystem()
    store = open_store(tmp_path / "s", fs=fs)
    store.set("a", "1")
    fs.crash_at(fs.count + 2)
    store.set("b", "2")  # operation count + 1 runs
    with pytest.raises(SimulatedCrash) as info:
        store.set("c", "3")
    assert info.value.op_number == fs.count and fs.crashed
    with pytest.raises(SimulatedCrash):
        store.set("d", "4")
    abandon(store, fs)
    # The lock and the maps are released: a fresh store opens at once and sees a, b.
    store = open_store(tmp_path / "s")
    try:
        assert (store.get("a"), store.get("b"), store.get("c")) == ("1", "2", None)
    finally:
        store.close()


def test_fail_at_fails_once_or_from_then_on(tmp_path: Path) -> None:
    fs = FaultyFileSystem()
    store = open_store(tmp_path / "s", fs=fs, max_file_size=4096)
    try:
        fs.fail_at(fs.count + 1, errno.ENOSPC)
        with pytest.raises(OSError) as info:
            fs.listdir(str(tmp_path / "s"))
        assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "s")
        fs.listdir(str(tmp_path / "s"))  # once only
        fs.fail_at(fs.count + 1, errno.EIO, persistent=True)
        for _ in range(2):
            with pytest.raises(OSError):
                fs.size(str(tmp_path / "s" / "kvs.lock"))
        fs.disarm()
        assert fs.size(str(tmp_path / "s" / "kvs.lock")) > 0
        fs.fail_next("append.write", errno.EIO)
        with pytest.raises(OSError):
            store.set("x", "y")
    finally:
        store.close()
    assert fs.misuse == []


def test_failed_close_still_releases_the_descriptor(tmp_path: Path) -> None:
    fs = FaultyFileSystem()
    store = open_store(tmp_path / "s", fs=fs)
    store.set("k", "v")
    fs.fail_next("lock.close", errno.EIO)
    with pytest.raises(OSError):
        store.close()
    KvStore.open(str(tmp_path / "s")).close()  # the lock was released anyway


def test_use_of_a_closed_handle_is_refused_and_recorded(tmp_path: Path) -> None:
    fs = FaultyFileSystem()
    writer = fs.create(str(tmp_path / "f"))
    writer.write(b"abc")
    writer.sync()
    writer.close()
    with pytest.raises(OSError) as info:
        writer.write(b"more")
    assert info.value.errno == errno.EBADF
    assert fs.misuse == [("writer.write", str(tmp_path / "f"))]
    assert (tmp_path / "f").read_bytes() == b"abc"
    assert fs.written[str(tmp_path / "f")] == fs.synced[str(tmp_path / "f")] == 3


def test_written_and_synced_sizes_are_tracked(tmp_path: Path) -> None:
    fs = FaultyFileSystem()
    store = open_store(tmp_path / "s", fs=fs, sync="no")
    assert isinstance(store, LogStore)
    try:
        store.set("k", "v" * 100)
        data = next(path for name, path in fs.ops if name == "open_append")
        assert fs.written[data] == 32 + 21 + 1 + 100
        assert fs.synced[data] == 32  # only the header, synced when the file was created
        store.sync()
        assert fs.synced[data] == fs.written[data]
    finally:
        store.close()
