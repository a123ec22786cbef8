"""The fault-injecting file system the crash tests rely on."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest

from kvs import KvStore
from kvs.log.engine import LogStore
from kvs.log.faultfs import FaultyFileSystem, FileImage, SimulatedCrash

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
    # listdir first: opening checks that the directory holds no other engine's data
    assert names[:2] == ["listdir", "makedirs"] and "lock" in names and "open_append" in names
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


# -- the power-cut model -------------------------------------------------------------------


def _synced_file(fs: FaultyFileSystem, path: Path, data: bytes) -> None:
    writer = fs.create(str(path))
    writer.write(data)
    writer.sync()
    writer.close()


def test_a_file_created_without_a_directory_fsync_vanishes_in_a_power_cut(
    tmp_path: Path,
) -> None:
    fs = FaultyFileSystem()
    fs.makedirs(str(tmp_path / "d"))
    _synced_file(fs, tmp_path / "d" / "a", b"synced")
    assert fs.crash_image(str(tmp_path / "d")) == {}
    assert not fs.durable_name(str(tmp_path / "d" / "a"))
    fs.fsync_dir(str(tmp_path / "d"))
    assert fs.crash_image(str(tmp_path / "d")) == {"a": FileImage(b"synced", 6)}
    assert fs.durable_name(str(tmp_path / "d" / "a"))


def test_an_unsynced_rename_reverts_and_content_follows_the_file(tmp_path: Path) -> None:
    fs = FaultyFileSystem()
    d = tmp_path / "d"
    fs.makedirs(str(d))
    _synced_file(fs, d / "x.tmp", b"content")
    fs.fsync_dir(str(d))
    fs.rename(str(d / "x.tmp"), str(d / "x"))
    assert fs.crash_image(str(d)) == {"x.tmp": FileImage(b"content", 7)}
    fs.fsync_dir(str(d))
    # Synced under the old name, durable under the new one: the same file.
    assert fs.crash_image(str(d)) == {"x": FileImage(b"content", 7)}
    fs.power_cut(str(d), str(tmp_path / "cut"))
    assert os.listdir(tmp_path / "cut") == ["x"]
    assert (tmp_path / "cut" / "x").read_bytes() == b"content"


def test_a_removed_file_comes_back_with_its_durable_content_until_the_directory_is_synced(
    tmp_path: Path,
) -> None:
    fs = FaultyFileSystem()
    d = tmp_path / "d"
    fs.makedirs(str(d))
    _synced_file(fs, d / "gone", b"old")
    fs.fsync_dir(str(d))
    fs.remove(str(d / "gone"))
    assert not (d / "gone").exists()
    assert fs.crash_image(str(d)) == {"gone": FileImage(b"old", 3)}
    fs.fsync_dir(str(d))
    assert fs.crash_image(str(d)) == {}


def test_files_present_before_the_wrapper_saw_the_directory_count_as_durable(
    tmp_path: Path,
) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "old").write_bytes(b"abc\0\0")
    fs = FaultyFileSystem()
    assert fs.crash_image(str(tmp_path / "d")) == {"old": FileImage(b"abc", 5)}


def test_a_power_cut_drops_the_unsynced_tail_of_the_active_file(tmp_path: Path) -> None:
    fs = FaultyFileSystem()
    path = tmp_path / "s"
    store = open_store(path, fs=fs, sync="no")
    try:
        store.set("synced", "1")
        store.sync()
        store.set("unsynced", "2")
        fs.power_cut(str(path), str(tmp_path / "cut1"))
        store.sync()
        fs.power_cut(str(path), str(tmp_path / "cut2"))
    finally:
        store.close()
    with open_store(tmp_path / "cut1") as cut:
        assert (cut.get("synced"), cut.get("unsynced")) == ("1", None)
    with open_store(tmp_path / "cut2") as cut:
        assert (cut.get("synced"), cut.get("unsynced")) == ("1", "2")


def test_a_harsh_power_cut_keeps_the_synced_bytes_and_varies_the_unsynced_ones(
    tmp_path: Path,
) -> None:
    fs = FaultyFileSystem()
    path = tmp_path / "s"
    store = open_store(path, fs=fs, sync="no")
    try:
        store.set("synced", "s" * 100)
        store.sync()
        for i in range(5):
            store.set(f"unsynced{i}", "u" * 300)
        gentle = fs.crash_image(str(path))
        (name,) = [n for n in gentle if n.endswith(".data")]
        durable = gentle[name].data
        harsh = [fs.crash_image(str(path), random.Random(seed))[name] for seed in range(40)]
        reordered = fs.crash_image(str(path), random.Random(1), reorder_block=512)[name]
    finally:
        store.close()
    assert all(image.data.startswith(durable) for image in harsh)
    tails = {image.data[len(durable) :].rstrip(b"\0") for image in harsh}
    assert len(tails) > 10  # different prefixes, zeros, garbage
    assert any(b"u" * 300 in tail for tail in tails)  # some keep whole records
    assert any(len(tail) < 300 for tail in tails)  # some lose most of the unsynced bytes
    assert reordered.data.startswith(durable)


def test_the_audit_records_whether_names_and_content_were_durable(tmp_path: Path) -> None:
    fs = FaultyFileSystem()
    d = tmp_path / "d"
    fs.makedirs(str(d))
    _synced_file(fs, d / "f", b"header")
    handle = fs.open_append(str(d / "f"), 4096)
    handle.buffer[6:9] = b"one"  # before the directory fsync
    fs.fsync_dir(str(d))
    handle.buffer[9:12] = b"two"
    fs.rename(str(d / "f"), str(d / "g"))  # unsynced content, renamed
    handle.close(12)
    fs.remove(str(d / "g"))
    writes = [e for e in fs.audit if e.name == "append.write"]
    assert [e.name_durable for e in writes] == [False, True]
    (rename,) = [e for e in fs.audit if e.name == "rename"]
    assert not rename.content_durable and rename.name_durable
    (remove,) = [e for e in fs.audit if e.name == "remove"]
    assert remove.content_durable and not remove.name_durable
