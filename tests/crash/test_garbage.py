"""Bytes after the last record of the newest data file that are not records.

Random garbage or zeros after the last record are a torn tail: cut off with one warning, and
no key appears that was never written. Zeros in the *middle* of the newest file, with valid
records after them, are damage: ``CorruptionError`` naming the file and the offset.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from kvs import CorruptionError

from .helpers import (
    Expected,
    assert_contents,
    copy_dir,
    data_files,
    kvs_warnings,
    open_store,
    parse_records,
    read,
    write,
)

OPTIONS = {"max_file_size": 8192}
SIZES = [1, 2, 7, 16, 17, 20, 21, 22, 100, 1000, 4096]
RANDOM_SIZES = random.Random(1234).sample(range(3, 4096), 5)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Expected]:
    path = tmp_path_factory.mktemp("garbage") / "store"
    expected: Expected = {}
    store = open_store(path, **OPTIONS)
    try:
        for i in range(150):
            key, value = f"key{i}", f"value{i}-" + "x" * (i % 90)
            store.set(key, value)
            expected[key.encode()] = value
        for i in range(0, 150, 10):
            store.remove(f"key{i}")
            del expected[f"key{i}".encode()]
        with store.batch() as batch:
            batch.set(b"b1", b"one")
            batch.set(b"b2", b"two")
        expected.update({b"b1": b"one", b"b2": b"two"})
        store.set("last", "last value")
        expected[b"last"] = "last value"
    finally:
        store.close()
    assert len(data_files(path)) >= 2
    return path, expected


def open_after_appending(
    base: tuple[Path, Expected], work: Path, tail: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path, expected = base
    copy_dir(path, work)
    newest = data_files(work)[-1]
    original = read(newest)
    write(newest, original + tail)
    caplog.clear()
    store = open_store(work, **OPTIONS)
    try:
        warnings = kvs_warnings(caplog)
        assert len(warnings) == 1, [w.getMessage() for w in warnings]
        assert f"offset {len(original)}" in warnings[0].getMessage()
        assert_contents(store, expected)  # no phantom keys
        store.set("after", "garbage")
    finally:
        store.close()
    assert read(newest)[: len(original)] == original
    assert len(read(newest)) == len(original) + 21 + len(b"after") + len(b"garbage")
    store = open_store(work, **OPTIONS)
    try:
        assert_contents(store, {**expected, b"after": "garbage"})
    finally:
        store.close()


@pytest.mark.parametrize("size", SIZES + RANDOM_SIZES)
def test_random_garbage_after_the_last_record_is_a_torn_tail(
    base: tuple[Path, Expected], tmp_path: Path, size: int, kvs_log: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(size)
    for attempt in range(3):
        garbage = rng.randbytes(size)
        open_after_appending(base, tmp_path / f"g{attempt}", garbage, kvs_log)


@pytest.mark.parametrize("size", SIZES + RANDOM_SIZES)
def test_zeros_after_the_last_record_are_a_torn_tail(
    base: tuple[Path, Expected], tmp_path: Path, size: int, kvs_log: pytest.LogCaptureFixture
) -> None:
    open_after_appending(base, tmp_path / "z", bytes(size), kvs_log)


def test_garbage_that_looks_like_a_record_header_is_a_torn_tail(
    base: tuple[Path, Expected], tmp_path: Path, kvs_log: pytest.LogCaptureFixture
) -> None:
    """Plausible framing (flags 0, small lengths) with a wrong checksum, and a huge length."""
    header = bytes([0]) + (3).to_bytes(4, "little") + (5).to_bytes(4, "little") + bytes(8)
    open_after_appending(base, tmp_path / "a", header + b"abcdefgh" + b"\x01\x02\x03\x04", kvs_log)
    huge = bytes([0]) + (0xFFFFFFFF).to_bytes(4, "little") * 2 + bytes(8) + b"rest"
    open_after_appending(base, tmp_path / "b", huge, kvs_log)


def test_zero_region_in_the_middle_of_the_newest_file_is_corruption(
    base: tuple[Path, Expected], tmp_path: Path
) -> None:
    path, _ = base
    for name, first, zeros_len in [("whole", 5, None), ("part", 9, 10), ("two", 12, -1)]:
        work = Path(copy_dir(path, tmp_path / name))
        newest = data_files(work)[-1]
        data = bytearray(read(newest))
        recs = parse_records(bytes(data))
        assert len(recs) > first + 3
        start = recs[first].offset
        if zeros_len is None:  # one whole record
            end = recs[first].end
        elif zeros_len < 0:  # two whole records
            end = recs[first + 1].end
        else:  # the first bytes of a record
            end = start + zeros_len
        data[start:end] = bytes(end - start)
        write(newest, bytes(data))
        with pytest.raises(CorruptionError) as info:
            open_store(work, **OPTIONS)
        assert info.value.path == newest
        assert info.value.offset == start
        assert newest in str(info.value) and str(start) in str(info.value)
        assert os.path.getsize(newest) == len(data)  # nothing was cut off


def test_garbage_in_the_preallocated_tail_of_an_unclean_store_is_a_torn_tail(
    base: tuple[Path, Expected], tmp_path: Path, kvs_log: pytest.LogCaptureFixture
) -> None:
    """A crash leaves the active file at its full preallocated size; junk right after the
    last record (with zeros after it) is still a torn tail."""
    path, expected = base
    work = Path(copy_dir(path, tmp_path / "store"))
    newest = data_files(work)[-1]
    data = read(newest)
    end = len(data)
    junk = random.Random(7).randbytes(300)
    write(newest, data + junk + bytes(OPTIONS["max_file_size"] - end - len(junk)))
    store = open_store(work, **OPTIONS)
    try:
        warnings = kvs_warnings(kvs_log)
        assert len(warnings) == 1 and f"offset {end}" in warnings[0].getMessage()
        assert_contents(store, expected)
    finally:
        store.close()
    assert read(newest) == data
