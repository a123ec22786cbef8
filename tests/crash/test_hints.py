"""Hint files are an optimisation only: whatever state one is in, opening gives the same map.

Damaged (cut short, bits flipped), missing, stale (an older version of the same file's hint) or
foreign (another file's hint renamed, or the hint of another store's file with the same number)
hint files must all give exactly the key -> value map of a clean open. A small hint is also cut
at every offset and flipped at every byte, and must give the same ``stats()`` too.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from soakmode import soak_scale

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


@pytest.fixture(scope="module")
def small_hint_store(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Expected, dict[str, object]]:
    """A store whose sealed first file has a small hint (tombstones and an expiry in it), its
    clean map, and its clean ``stats()``."""
    path = tmp_path_factory.mktemp("small-hint") / "store"
    store = open_store(path, max_file_size=4096)
    try:
        store.set("old", "in an older file")
        store.compact()  # "old" now sits in a file older than the one hinted below
        store.set("a", "1")
        store.set(b"b", b"\x00\x01")
        store.set("t", "with ttl", ttl=3600)
        store.remove("old")  # a tombstone in the hint hides the older file's value
        store.update({b"x": b"1", b"y": b"2"})
        store.set("fill", "f" * 3500)  # rotates: the file above is sealed and hinted
        store.set("new", "in the newest file")
    finally:
        store.close()
    files = data_files(path)
    hinted = [f for f in files if os.path.exists(hint_of(f))]
    assert len(hinted) == 1, hint_files(path)
    store = open_store(path, max_file_size=4096)
    try:
        expected = contents(store)
        stats = store.stats()
    finally:
        store.close()
    assert b"old" not in expected and expected[b"t"] == "with ttl"
    return path, expected, stats


def open_and_compare_stats(work: Path, expected: Expected, stats: dict[str, object]) -> None:
    store = open_store(work, max_file_size=4096)
    try:
        assert_contents(store, expected)
        assert store.stats() == stats
    finally:
        store.close()


def damage_every_way(
    base: Path,
    tmp_path: Path,
    damage: Callable[[str, int, int], None],
    offsets: range,
    expected: Expected,
    stats: dict[str, object],
) -> int:
    """For each offset, damage the hint of a fresh copy with ``damage(path, offset, size)``
    and open it: the same map and stats as a clean open. Returns how many were tried."""
    hint = hint_files(base)[0]
    size = os.path.getsize(hint)
    tried = 0
    for offset in offsets:
        work = Path(copy_dir(base, tmp_path / f"w{offset}"))
        damaged = os.path.join(work, os.path.basename(hint))
        damage(damaged, offset, size)
        open_and_compare_stats(work, expected, stats)
        shutil.rmtree(work)
        tried += 1
    return tried


def test_small_hint_cut_at_every_offset_gives_the_same_map_and_stats(
    small_hint_store: tuple[Path, Expected, dict[str, object]], tmp_path: Path
) -> None:
    base, expected, stats = small_hint_store
    size = os.path.getsize(hint_files(base)[0])
    assert size < 400  # small: every offset is cheap (about a second in all)

    def cut(path: str, offset: int, _size: int) -> None:
        write(path, read(path)[:offset])

    assert damage_every_way(base, tmp_path, cut, range(size), expected, stats) == size


def test_small_hint_with_each_byte_flipped_gives_the_same_map_and_stats(
    small_hint_store: tuple[Path, Expected, dict[str, object]], tmp_path: Path
) -> None:
    """Every byte, one bit each (bit ``offset % 8``); every bit of every byte under --soak."""
    base, expected, stats = small_hint_store
    size = os.path.getsize(hint_files(base)[0])
    bits = soak_scale(1, 8)

    def flip(path: str, offset: int, _size: int) -> None:
        byte, bit = divmod(offset, bits)
        flip_bit(path, byte, (byte + bit) % 8)

    assert damage_every_way(base, tmp_path, flip, range(size * bits), expected, stats)


def test_small_hint_deleted_or_replaced_by_an_empty_file_gives_the_same_map_and_stats(
    small_hint_store: tuple[Path, Expected, dict[str, object]], tmp_path: Path
) -> None:
    base, expected, stats = small_hint_store

    def delete(path: str, offset: int, _size: int) -> None:
        if offset == 0:
            os.remove(path)
        else:
            write(path, b"")

    assert damage_every_way(base, tmp_path, delete, range(2), expected, stats) == 2
