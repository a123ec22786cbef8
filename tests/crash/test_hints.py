"""Hint files are an optimisation only: whatever state one is in, opening gives the same map.

Damaged (cut short, bits flipped), missing, stale (an older version of the same file's hint) or
foreign (another file's hint renamed, or the hint of another store's file with the same number)
hint files must all give exactly the key -> value map of a clean open.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

import pytest

from .helpers import (
    Expected,
    assert_contents,
    contents,
    copy_dir,
    data_files,
    flip_bit,
    hint_files,
    hint_of,
    kvs_warnings,
    open_store,
    read,
    write,
)

BIG = 1 << 20


def fill(store: object, prefix: str, count: int, size: int, seed: int) -> None:
    from kvs import KvStore

    assert isinstance(store, KvStore)
    rng = random.Random(seed)
    for i in range(count):
        store.set(f"{prefix}{i}", rng.randbytes(size))


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    """Data files 1 and 2 with hint files, file 3 without; plus the older hint of file 1."""
    root = tmp_path_factory.mktemp("hints")
    path = root / "store"
    saved: dict[str, bytes] = {}
    # A hint is written at close when >= 256 KiB of the active file are not yet hinted.
    store = open_store(path, max_file_size=BIG)
    try:
        fill(store, "a", 75, 4000, 1)
        store.set("s-key", "a str value")
    finally:
        store.close()
    first = data_files(path)[0]
    saved["old-hint-1"] = read(hint_of(first))
    store = open_store(path, max_file_size=BIG)
    try:
        fill(store, "a", 40, 3000, 2)  # overwrite keys the old hint knows
        for i in range(40, 50):
            store.remove(f"a{i}")
        fill(store, "b", 60, 3000, 3)
        store.set("s-key", "changed")
        store.set("ttl-key", "lives", ttl=3600)
    finally:
        store.close()
    assert read(hint_of(first)) != saved["old-hint-1"]
    store = open_store(path, max_file_size=512 << 10)  # file 1 is now sealed
    try:
        fill(store, "c", 70, 4000, 4)
        fill(store, "a", 10, 100, 5)
        store.remove("b3")
    finally:
        store.close()
    store = open_store(path, max_file_size=4096)  # file 2 sealed too
    try:
        store.set("a0", "newest")
        store.remove("c1")
        store.set(b"d", b"in file 3")
    finally:
        store.close()
    files = data_files(path)
    assert len(files) == 3
    assert hint_files(path) == [hint_of(files[0]), hint_of(files[1])]

    other = root / "other"  # another store whose file 1 also has a hint
    store = open_store(other, max_file_size=BIG)
    try:
        fill(store, "a", 70, 4000, 99)
    finally:
        store.close()
    saved["foreign-hint-1"] = read(hint_of(data_files(other)[0]))
    return path, saved


@pytest.fixture(scope="module")
def clean_map(store_dir: tuple[Path, dict[str, bytes]]) -> Expected:
    path, _ = store_dir
    work = Path(str(path) + "-clean")
    copy_dir(path, work)
    store = open_store(work)
    try:
        result = contents(store)
    finally:
        store.close()
    shutil.rmtree(work)
    assert result[b"a0"] == "newest" and b"a45" not in result and b"c1" not in result
    assert result[b"s-key"] == "changed" and len(result) > 180
    return result


def open_and_compare(work: Path, expected: Expected) -> None:
    store = open_store(work)
    try:
        assert_contents(store, expected)
    finally:
        store.close()
    store = open_store(work)  # and whatever the first open changed, again
    try:
        assert_contents(store, expected)
    finally:
        store.close()


def hint_path(work: Path, index: int) -> str:
    return hint_of(data_files(work)[index])


def test_clean_open_uses_the_hints(
    store_dir: tuple[Path, dict[str, bytes]],
    clean_map: Expected,
    tmp_path: Path,
    kvs_log: pytest.LogCaptureFixture,
) -> None:
    work = Path(copy_dir(store_dir[0], tmp_path / "store"))
    open_and_compare(work, clean_map)
    assert kvs_warnings(kvs_log) == []


@pytest.mark.parametrize("index", [0, 1])
def test_truncated_hint_file_gives_the_same_map(
    store_dir: tuple[Path, dict[str, bytes]],
    clean_map: Expected,
    tmp_path: Path,
    index: int,
    kvs_log: pytest.LogCaptureFixture,
) -> None:
    path, _ = store_dir
    size = os.path.getsize(hint_path(path, index))
    rng = random.Random(index)
    cuts = {0, 1, 4, 8, 39, 40, 41, 48, size // 2, size - 5, size - 4, size - 1}
    cuts |= set(rng.sample(range(size), 8))
    for cut in sorted(cuts):
        work = Path(copy_dir(path, tmp_path / f"cut{cut}"))
        hint = hint_path(work, index)
        write(hint, read(hint)[:cut])
        kvs_log.clear()
        open_and_compare(work, clean_map)
        assert kvs_warnings(kvs_log), f"a hint cut at {cut} is ignored with a warning"
        shutil.rmtree(work)


@pytest.mark.parametrize("index", [0, 1])
def test_hint_file_with_flipped_bits_gives_the_same_map(
    store_dir: tuple[Path, dict[str, bytes]], clean_map: Expected, tmp_path: Path, index: int
) -> None:
    path, _ = store_dir
    size = os.path.getsize(hint_path(path, index))
    rng = random.Random(100 + index)
    offsets = set(range(0, 40, 3)) | {size - 4, size - 1} | set(rng.sample(range(size), 12))
    for offset in sorted(offsets):
        work = Path(copy_dir(path, tmp_path / f"flip{offset}"))
        flip_bit(hint_path(work, index), offset, offset % 8)
        open_and_compare(work, clean_map)
        shutil.rmtree(work)


@pytest.mark.parametrize("which", ["first", "second", "both"])
def test_deleted_hint_file_gives_the_same_map(
    store_dir: tuple[Path, dict[str, bytes]], clean_map: Expected, tmp_path: Path, which: str
) -> None:
    work = Path(copy_dir(store_dir[0], tmp_path / "store"))
    if which in ("first", "both"):
        os.remove(hint_path(work, 0))
    if which in ("second", "both"):
        os.remove(hint_path(work, 1))
    open_and_compare(work, clean_map)


def test_older_hint_of_the_same_file_gives_the_same_map(
    store_dir: tuple[Path, dict[str, bytes]], clean_map: Expected, tmp_path: Path
) -> None:
    """The hint file 1 had before more records were appended to it covers only a prefix."""
    path, saved = store_dir
    work = Path(copy_dir(path, tmp_path / "store"))
    write(hint_path(work, 0), saved["old-hint-1"])
    open_and_compare(work, clean_map)


def test_hint_of_another_file_renamed_gives_the_same_map(
    store_dir: tuple[Path, dict[str, bytes]],
    clean_map: Expected,
    tmp_path: Path,
    kvs_log: pytest.LogCaptureFixture,
) -> None:
    path, _ = store_dir
    work = Path(copy_dir(path, tmp_path / "swapped"))
    first, second = hint_path(work, 0), hint_path(work, 1)
    a, b = read(first), read(second)
    write(first, b)
    write(second, a)
    open_and_compare(work, clean_map)
    assert len(kvs_warnings(kvs_log)) >= 2

    work = Path(copy_dir(path, tmp_path / "newest"))  # a hint for the un-hinted newest file
    shutil.copy(hint_path(work, 1), hint_path(work, 2))
    open_and_compare(work, clean_map)


def test_hint_of_another_store_with_the_same_file_number_gives_the_same_map(
    store_dir: tuple[Path, dict[str, bytes]], clean_map: Expected, tmp_path: Path
) -> None:
    path, saved = store_dir
    work = Path(copy_dir(path, tmp_path / "store"))
    write(hint_path(work, 0), saved["foreign-hint-1"])
    open_and_compare(work, clean_map)


def test_orphan_hint_without_data_file_is_removed(
    store_dir: tuple[Path, dict[str, bytes]], clean_map: Expected, tmp_path: Path
) -> None:
    work = Path(copy_dir(store_dir[0], tmp_path / "store"))
    orphan = str(work / "kvs-0000000007.hint")
    shutil.copy(hint_path(work, 0), orphan)
    open_and_compare(work, clean_map)
    assert not os.path.exists(orphan)


def test_sealed_data_files_get_hint_files(tmp_path: Path) -> None:
    """Each rotated file gets its hint from a background thread (a regression test: the
    thread used to start before the file was registered as sealed, and gave up)."""
    path = tmp_path / "store"
    store = open_store(path, max_file_size=4096)
    try:
        for i in range(100):
            store.set(f"k{i}", "x" * 200)
        time.sleep(0.3)  # let the background hint writers run (close() would do their jobs)
    finally:
        store.close()
    sealed = data_files(path)[:-1]
    assert len(sealed) >= 4
    assert hint_files(path) == [hint_of(p) for p in sealed]
