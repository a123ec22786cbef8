"""An I/O error while the active data file is rotated (sealed, and a new one started).

The write that needed the rotation fails with a ``KvsError``; everything acknowledged before
stays readable and survives a reopen; afterwards the store either keeps working or refuses
writes cleanly (``ReadOnlyError``), and it never touches a file it has already closed.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from kvs import KvsError, ReadOnlyError
from kvs.log.faultfs import FaultyFileSystem

from .helpers import Expected, assert_contents, open_store

OPTIONS = {"max_file_size": 4096}


def rotate_with_failure(
    path: Path, op: str, suffix: str
) -> tuple[FaultyFileSystem, Expected, list[str]]:
    """Fill the active file, make ``op`` fail during the rotation, and keep using the store.
    Returns the fs, the acknowledged map, and a list of problems found while still open."""
    fs = FaultyFileSystem()
    store = open_store(path, fs=fs, **OPTIONS)
    acknowledged: Expected = {}
    problems: list[str] = []
    try:
        for i in range(15):
            store.set(f"k{i}", "x" * 200)
            acknowledged[f"k{i}".encode()] = "x" * 200
        first_file_ops = fs.count
        fs.fail_next(op, errno.EIO, suffix)
        failed = False
        for i in range(15, 40):
            try:
                store.set(f"k{i}", "y" * 200)
                acknowledged[f"k{i}".encode()] = "y" * 200
            except ReadOnlyError:
                failed = True
            except KvsError as error:
                if failed:  # only the write that hit the error may fail with it
                    problems.append(f"set k{i} after the failure: {type(error).__name__}: {error}")
                    break
                assert str(path) in str(error)
                failed = True
            except Exception as error:
                problems.append(f"set k{i}: {type(error).__name__}: {error}")
                break
        assert failed, f"no rotation failed at {op}: {fs.ops[first_file_ops:]}"
        for key, value in acknowledged.items():
            try:
                if store.get(key) != value:
                    problems.append(f"get {key!r}: wrong value")
            except Exception as error:
                problems.append(f"get {key!r}: {type(error).__name__}: {error}")
                break
    finally:
        try:
            store.close()
        except KvsError:
            pass
        except Exception as error:
            problems.append(f"close: {type(error).__name__}: {error}")
    if fs.misuse:
        problems.append(f"operations on closed files: {fs.misuse[:3]}")
    return fs, acknowledged, problems


@pytest.mark.parametrize(
    ("op", "suffix"),
    [
        # sealing the full file (close syncs it)
        ("append.close", "01.data"),
        ("open_read", "01.data"),
        # starting the next one
        ("create", "02.data"),
        ("writer.write", "02.data"),
        ("writer.sync", "02.data"),
        ("writer.close", "02.data"),
        ("open_append", "02.data"),
    ],
)
def test_io_error_during_rotation_loses_no_acknowledged_write(
    tmp_path: Path, op: str, suffix: str
) -> None:
    path = tmp_path / "store"
    _, acknowledged, problems = rotate_with_failure(path, op, suffix)
    assert not problems, "\n".join(problems)
    store = open_store(path, **OPTIONS)
    try:
        assert_contents(store, acknowledged)
    finally:
        store.close()


@pytest.mark.parametrize("sync", ["always", "everysec", "no"])
@pytest.mark.parametrize(
    ("op", "suffix"),
    [
        ("create", "02.data"),
        ("writer.write", "02.data"),
        ("writer.sync", "02.data"),
        ("fsync_dir", "store"),
        ("open_append", "02.data"),
        ("append.reserve", "02.data"),
    ],
)
def test_disk_full_while_starting_the_next_file_passes_once_there_is_room(
    tmp_path: Path, op: str, suffix: str, sync: str
) -> None:
    """A10: ENOSPC while the next data file is made fails that write only; the store stays
    writable, without a reopen, once the disk has room again (it used to turn read-only).
    The half-made file is removed and its number reused, so no damage is left behind."""
    path = tmp_path / "store"
    fs = FaultyFileSystem()
    store = open_store(path, fs=fs, sync=sync, **OPTIONS)
    acknowledged: Expected = {}
    try:
        for i in range(15):
            store.set(f"k{i}", "x" * 200)
            acknowledged[f"k{i}".encode()] = "x" * 200
        fs.fail_next(op, errno.ENOSPC, suffix)
        failures = 0
        for i in range(15, 40):
            try:
                store.set(f"k{i}", "y" * 200)
            except ReadOnlyError as error:
                raise AssertionError(f"set k{i}: the store turned read-only: {error}") from None
            except KvsError as error:
                assert isinstance(error, OSError) and error.errno == errno.ENOSPC, error
                failures += 1
                assert store.get(f"k{i - 1}") is not None  # reads keep working
                continue
            acknowledged[f"k{i}".encode()] = "y" * 200
        assert failures == 1, f"{op} never failed: {fs.ops[-20:]}"
        assert_contents(store, acknowledged)
    finally:
        store.close()
    assert not fs.misuse, fs.misuse[:3]
    names = sorted(p.name for p in path.glob("kvs-*.data"))
    assert names == [f"kvs-{n:010d}.data" for n in range(1, len(names) + 1)], names
    store = open_store(path, **OPTIONS)
    try:
        assert_contents(store, acknowledged)
    finally:
        store.close()
