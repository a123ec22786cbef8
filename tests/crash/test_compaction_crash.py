"""Compaction interrupted at every one of its file operations, by a crash or an I/O error.

The store is built once (several sealed files, overwrites, removes, TTL'd keys of which some
expired, a batch); the expected key -> value map is recorded. A clean run of ``compact()`` on
a copy counts its operations; then, for every k, a fresh copy is compacted with the k-th
operation crashing (or failing with EIO), and reopening must give back exactly that map.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from pathlib import Path

import pytest

from kvs import KvsError, ReadOnlyError
from kvs.log.faultfs import FaultyFileSystem, SimulatedCrash

from .helpers import (
    Expected,
    abandon,
    assert_contents,
    copy_dir,
    data_files,
    hint_files,
    open_store,
    temp_files,
)

OPTIONS = {"max_file_size": 4096}


def build_store(path: Path) -> Expected:
    """A store worth compacting; returns the key -> value map it must hold."""
    expected: Expected = {}
    # First a file big enough to get a hint file at close (>= 256 KiB not yet hinted); opened
    # again with the small max_file_size it is sealed, and hinted.
    store = open_store(path, max_file_size=1 << 20)
    try:
        for i in range(70):
            store.set(f"big{i % 10}", bytes([i]) * 4000)
        for i in range(5):
            store.remove(f"big{i}")
        expected.update({f"big{i}".encode(): bytes([60 + i]) * 4000 for i in range(5, 10)})
    finally:
        store.close()
    assert len(hint_files(path)) == 1
    store = open_store(path, **OPTIONS)
    try:
        for i in range(40):
            key, value = f"key{i:03d}", f"v0-{i}-" + "x" * (40 + 7 * i % 200)
            store.set(key, value)
            expected[key.encode()] = value
        for i in range(0, 40, 3):  # overwrites, bytes values
            key, bvalue = f"key{i:03d}", bytes([i]) * (30 + i)
            store.set(key, bvalue)
            expected[key.encode()] = bvalue
        for i in range(1, 40, 5):  # removes
            store.remove(f"key{i:03d}")
            del expected[f"key{i:03d}".encode()]
        store.set("gone-then-back", "first")
        store.remove("gone-then-back")
        store.set("gone-then-back", "second")
        expected[b"gone-then-back"] = "second"
        for i in range(6):  # TTL'd keys: half expire before the compaction, half never do
            store.set(f"ttl-short{i}", "s" * 100, ttl=0.05)
            store.set(f"ttl-long{i}", "l" * 100, ttl=3600)
            expected[f"ttl-long{i}".encode()] = "l" * 100
        store.set("ttl-cleared", "old", ttl=0.05)
        store.set("ttl-cleared", "new")  # a set without ttl clears the expiry
        expected[b"ttl-cleared"] = "new"
        with store.batch() as batch:
            batch.set("batch-a", "A" * 50)
            batch.set(b"batch-b", b"B" * 60)
            batch.remove("key003")
            batch.set("key004", "in-batch")
        expected.update({b"batch-a": "A" * 50, b"batch-b": b"B" * 60, b"key004": "in-batch"})
        del expected[b"key003"]
        store.update({b"bulk1": b"1" * 80, b"bulk2": b"2" * 80})
        expected.update({b"bulk1": b"1" * 80, b"bulk2": b"2" * 80})
        for i in range(20):  # more overwrites of the same few keys: stale data to reclaim
            store.set(f"hot{i % 3}", f"hot-{i}-" + "h" * 150)
        expected.update({f"hot{i % 3}".encode(): f"hot-{i}-" + "h" * 150 for i in range(17, 20)})
        store.remove("hot2")
        del expected[b"hot2"]
        time.sleep(0.1)  # the short TTLs are now past
        assert_contents(store, expected)
    finally:
        store.close()
    assert len(data_files(path)) >= 4
    assert hint_files(path)
    return expected


@pytest.fixture(scope="module")
def base_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Expected]:
    path = tmp_path_factory.mktemp("compaction-base") / "store"
    return path, build_store(path)


def count_compaction_ops(base: Path, work: Path) -> tuple[int, int, list[tuple[str, str]]]:
    """Run compact() cleanly on a copy: (ops before it, ops it did, their list)."""
    copy_dir(base, work)
    fs = FaultyFileSystem()
    store = open_store(work, fs=fs, **OPTIONS)
    try:
        before = fs.count
        store.compact()
        ops = [(name, os.path.relpath(path, work)) for name, path in fs.ops[before:]]
    finally:
        store.close()
    shutil.rmtree(work)
    return before, len(ops), ops


def check_reopened(path: Path, expected: Expected) -> None:
    """Reopen normally: the map is intact, no temp file is left, a compaction completes, and
    the map is still intact after another reopen."""
    store = open_store(path, **OPTIONS)
    try:
        assert temp_files(path) == []
        assert_contents(store, expected)
        store.compact()
        assert_contents(store, expected)
    finally:
        store.close()
    store = open_store(path, **OPTIONS)
    try:
        assert_contents(store, expected)
        assert store.get("ttl-short0") is None
    finally:
        store.close()


def test_clean_compaction_keeps_the_map_and_drops_garbage(
    base_store: tuple[Path, Expected], tmp_path: Path
) -> None:
    base, expected = base_store
    work = Path(copy_dir(base, tmp_path / "store"))
    size_before = sum(os.path.getsize(p) for p in data_files(work))
    store = open_store(work, **OPTIONS)
    try:
        store.compact()
        assert_contents(store, expected)
    finally:
        store.close()
    assert sum(os.path.getsize(p) for p in data_files(work)) < size_before
    check_reopened(work, expected)


def test_compaction_operation_count_is_deterministic(
    base_store: tuple[Path, Expected], tmp_path: Path
) -> None:
    base, _ = base_store
    first = count_compaction_ops(base, tmp_path / "a")
    second = count_compaction_ops(base, tmp_path / "b")
    assert [name for name, _ in first[2]] == [name for name, _ in second[2]]
    assert first[:2] == second[:2]
    names = {name for name, _ in first[2]}
    assert {"create", "writer.write", "writer.sync", "rename", "remove", "fsync_dir"} <= names


def test_crash_at_any_compaction_step_loses_nothing(
    base_store: tuple[Path, Expected], tmp_path: Path
) -> None:
    base, expected = base_store
    before, total, ops = count_compaction_ops(base, tmp_path / "count")
    for k in range(1, total + 1):
        work = Path(copy_dir(base, tmp_path / f"crash{k}"))
        fs = FaultyFileSystem()
        store = open_store(work, fs=fs, **OPTIONS)
        assert fs.count == before
        fs.crash_at(before + k)
        with pytest.raises(SimulatedCrash):
            store.compact()
        assert fs.crashed
        name, where = fs.ops[-1]
        assert (name, os.path.relpath(where, work)) == (ops[k - 1][0], ops[k - 1][1]), k
        abandon(store, fs)
        try:
            check_reopened(work, expected)
        except AssertionError as error:
            raise AssertionError(f"crash at compaction step {k} {ops[k - 1]}: {error}") from None
        shutil.rmtree(work)


def _error_names_a_path(error: BaseException, directory: Path) -> bool:
    where = getattr(error, "path", None) or getattr(error, "filename", None)
    return isinstance(where, str) and where.startswith(str(directory))


def run_compaction_with_error(
    base: Path, work: Path, expected: Expected, step: int, before: int
) -> None:
    copy_dir(base, work)
    fs = FaultyFileSystem()
    store = open_store(work, fs=fs, **OPTIONS)
    expected = dict(expected)
    try:
        assert fs.count == before
        fs.fail_at(before + step, errno.EIO)
        with pytest.raises((KvsError, OSError)) as info:
            store.compact()
        assert _error_names_a_path(info.value, work), repr(info.value)
        # Still usable: every read is right, and writes either work or are refused cleanly.
        assert_contents(store, expected)
        try:
            store.set("after-failure", "yes")
            store.remove("key000")
            store.set("key002", "rewritten")
            store.compact()
        except ReadOnlyError:
            pass
        expected = {
            **expected,
            **({b"after-failure": "yes"} if store.get("after-failure") is not None else {}),
        }
        if store.get("key000") is None:
            expected.pop(b"key000", None)
        if store.get("key002") == "rewritten":
            expected[b"key002"] = "rewritten"
        assert_contents(store, expected)
    finally:
        store.close()
    check_reopened(work, expected)


def test_io_error_at_any_compaction_step_keeps_the_store_intact(
    base_store: tuple[Path, Expected], tmp_path: Path
) -> None:
    base, expected = base_store
    before, total, ops = count_compaction_ops(base, tmp_path / "count")
    failures = []
    for k in range(1, total + 1):
        try:
            run_compaction_with_error(base, tmp_path / f"eio{k}", expected, k, before)
        except Exception as error:
            failures.append(f"step {k} {ops[k - 1][0]} {os.path.basename(ops[k - 1][1])}: "
                            f"{type(error).__name__}: {str(error)[:300]}")
    assert not failures, "\n".join(failures)
