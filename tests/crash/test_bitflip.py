"""One flipped bit in one record, for every byte of it (framing, key, value, CRC).

* the last record of the newest file: a torn tail, dropped (the key keeps its older value);
* a record in the middle of the newest file (valid records after it): ``CorruptionError``
  naming the file and the record's offset;
* a record in a sealed file that has no hint file: ``CorruptionError`` when opening;
* a record in a sealed file covered by a hint file: the store opens (it reads no values), a
  ``get`` of that key raises ``CorruptionError`` and every other key reads fine.

A damaged value is never returned. Damaged length fields (up to 4 GiB) must not make the
reader allocate or read that much.
"""

from __future__ import annotations

import os
import shutil
import struct
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvs import CorruptionError

from .helpers import (
    Expected,
    Rec,
    assert_contents,
    copy_dir,
    data_files,
    find_record,
    flip_bit,
    hint_files,
    hint_of,
    kvs_warnings,
    open_store,
    parse_records,
    read,
)

OPTIONS = {"max_file_size": 4096}


def flips(rec: Rec) -> Iterator[tuple[int, int]]:
    """(offset, bit) pairs: every bit of the 17-byte header and the CRC, one bit of every
    key and value byte."""
    framing = set(range(rec.offset, rec.offset + 17)) | set(range(rec.end - 4, rec.end))
    for offset in range(rec.offset, rec.end):
        if offset in framing:
            for bit in range(8):
                yield offset, bit
        else:
            yield offset, offset % 8


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Expected]:
    """Sealed files without hints, and a newest file whose last record is ``target``."""
    path = tmp_path_factory.mktemp("bitflip") / "store"
    expected: Expected = {}
    store = open_store(path, **OPTIONS)
    try:
        store.set("target", "the old value")
        for i in range(40):
            if i == 5:
                store.set("sealed-target", b"a value in a sealed file")
                expected[b"sealed-target"] = b"a value in a sealed file"
            store.set(f"filler{i}", f"filler value {i} " + "f" * 80)
            expected[f"filler{i}".encode()] = f"filler value {i} " + "f" * 80
        store.set("mid-target", "in the middle of the newest file")
        for i in range(3):
            store.set(f"after{i}", f"after {i}")
            expected[f"after{i}".encode()] = f"after {i}"
        store.set("target", "the new value!")
    finally:
        store.close()
    for hint in hint_files(path):  # hints are tested below; here every file is scanned
        os.remove(hint)
    newest = data_files(path)[-1]
    assert parse_records(read(newest))[-1].key == b"target"
    find_record(newest, b"mid-target")
    assert find_record(data_files(path)[0], b"sealed-target")
    expected[b"mid-target"] = "in the middle of the newest file"
    expected[b"target"] = "the new value!"
    return path, expected


def test_flipped_bit_in_the_last_record_is_a_torn_tail(
    plain: tuple[Path, Expected], tmp_path: Path, kvs_log: pytest.LogCaptureFixture
) -> None:
    path, expected = plain
    newest_name = os.path.basename(data_files(path)[-1])
    rec = find_record(data_files(path)[-1], b"target")
    for i, (offset, bit) in enumerate(flips(rec)):
        work = Path(copy_dir(path, tmp_path / f"s{i}"))
        flip_bit(str(work / newest_name), offset, bit)
        kvs_log.clear()
        store = open_store(work, **OPTIONS)
        try:
            warnings = kvs_warnings(kvs_log)
            assert len(warnings) == 1, (offset, bit, [w.getMessage() for w in warnings])
            assert f"offset {rec.offset}" in warnings[0].getMessage()
            assert_contents(store, {**expected, b"target": "the old value"})
        finally:
            store.close()
        assert os.path.getsize(work / newest_name) == rec.offset
        shutil.rmtree(work)


def test_flipped_bit_in_the_middle_of_the_newest_file_is_corruption(
    plain: tuple[Path, Expected], tmp_path: Path
) -> None:
    path, _ = plain
    newest_name = os.path.basename(data_files(path)[-1])
    rec = find_record(data_files(path)[-1], b"mid-target")
    for i, (offset, bit) in enumerate(flips(rec)):
        work = Path(copy_dir(path, tmp_path / f"s{i}"))
        newest = str(work / newest_name)
        flip_bit(newest, offset, bit)
        with pytest.raises(CorruptionError) as info:
            open_store(work, **OPTIONS)
        assert (info.value.path, info.value.offset) == (newest, rec.offset), (offset, bit)
        assert newest in str(info.value)
        shutil.rmtree(work)


def test_flipped_bit_in_a_sealed_file_without_hint_is_corruption_at_open(
    plain: tuple[Path, Expected], tmp_path: Path
) -> None:
    path, _ = plain
    sealed_name = os.path.basename(data_files(path)[0])
    sealed_recs = parse_records(read(data_files(path)[0]))
    targets = [find_record(data_files(path)[0], b"sealed-target"), sealed_recs[-1]]
    for rec in targets:
        for i, (offset, bit) in enumerate(flips(rec)):
            work = Path(copy_dir(path, tmp_path / f"s{rec.offset}-{i}"))
            sealed = str(work / sealed_name)
            flip_bit(sealed, offset, bit)
            with pytest.raises(CorruptionError) as info:
                open_store(work, **OPTIONS)
            assert (info.value.path, info.value.offset) == (sealed, rec.offset), (offset, bit)
            shutil.rmtree(work)


@pytest.fixture(scope="module")
def hinted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Expected]:
    """A sealed data file covered by a hint file, with ``hinted-target`` in its middle."""
    path = tmp_path_factory.mktemp("bitflip-hinted") / "store"
    expected: Expected = {}
    # A hint is written at close for >= 256 KiB not yet hinted; reopened with a smaller
    # max_file_size, that file is sealed (and stays hinted).
    store = open_store(path, max_file_size=1 << 20)
    try:
        for i in range(70):
            if i == 35:
                store.set("hinted-target", "a value covered by a hint")
                expected[b"hinted-target"] = "a value covered by a hint"
            store.set(f"bulk{i}", bytes([i]) * 4000)
            expected[f"bulk{i}".encode()] = bytes([i]) * 4000
    finally:
        store.close()
    store = open_store(path, **OPTIONS)
    try:
        store.set("in-newer-file", "newer")
        expected[b"in-newer-file"] = "newer"
    finally:
        store.close()
    first = data_files(path)[0]
    assert os.path.exists(hint_of(first))
    find_record(first, b"hinted-target")
    return path, expected


def test_flipped_bit_in_a_hinted_sealed_file_fails_only_that_get(
    hinted: tuple[Path, Expected], tmp_path: Path, kvs_log: pytest.LogCaptureFixture
) -> None:
    path, expected = hinted
    sealed_name = os.path.basename(data_files(path)[0])
    rec = find_record(data_files(path)[0], b"hinted-target")
    others = {k: v for k, v in expected.items() if k != b"hinted-target"}
    for i, (offset, bit) in enumerate(flips(rec)):
        work = Path(copy_dir(path, tmp_path / f"s{i}"))
        sealed = str(work / sealed_name)
        flip_bit(sealed, offset, bit)
        kvs_log.clear()
        store = open_store(work, **OPTIONS)
        try:
            assert kvs_warnings(kvs_log) == []
            with pytest.raises(CorruptionError) as info:
                store.get("hinted-target")
            assert (info.value.path, info.value.offset) == (sealed, rec.offset), (offset, bit)
            for key, value in others.items():
                assert store.get(key) == value
        finally:
            store.close()
        shutil.rmtree(work)


def test_flipped_bit_in_a_hinted_file_is_never_read_back_as_a_value(
    hinted: tuple[Path, Expected], tmp_path: Path
) -> None:
    """Whatever byte of the value is damaged, get raises; it never returns other bytes."""
    path, _ = hinted
    sealed_name = os.path.basename(data_files(path)[0])
    rec = find_record(data_files(path)[0], b"bulk10")
    value_start = rec.offset + 17 + rec.key_len
    for offset in range(value_start, rec.end - 4, 397):
        work = Path(copy_dir(path, tmp_path / f"v{offset}"))
        flip_bit(str(work / sealed_name), offset, 3)
        store = open_store(work, **OPTIONS)
        try:
            with pytest.raises(CorruptionError):
                store.get("bulk10")
            assert store.get("bulk11") == bytes([11]) * 4000
        finally:
            store.close()
        shutil.rmtree(work)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("key_len", 0xFFFFFFFF),
        ("key_len", 0x7FFFFFFF),
        ("key_len", 0x80000000),
        ("value_len", 0xFFFFFFFF),
        ("value_len", 0x7FFFFFFF),
        ("value_len", 0x10000000),
    ],
)
def test_huge_length_field_neither_allocates_nor_crashes(
    plain: tuple[Path, Expected],
    tmp_path: Path,
    field: str,
    value: int,
    kvs_log: pytest.LogCaptureFixture,
) -> None:
    path, expected = plain
    newest_name = os.path.basename(data_files(path)[-1])
    where = 1 if field == "key_len" else 5
    for target in (b"target", b"mid-target"):
        work = Path(copy_dir(path, tmp_path / target.decode()))
        newest = str(work / newest_name)
        rec = find_record(newest, target)
        with open(newest, "r+b") as f:
            f.seek(rec.offset + where)
            f.write(struct.pack("<I", value))
        tracemalloc.start()
        try:
            if target == b"target":  # the last record: a torn tail
                store = open_store(work, **OPTIONS)
                try:
                    assert_contents(store, {**expected, b"target": "the old value"})
                finally:
                    store.close()
            else:
                with pytest.raises(CorruptionError) as info:
                    open_store(work, **OPTIONS)
                assert (info.value.path, info.value.offset) == (newest, rec.offset)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 8 << 20, f"opening allocated {peak} bytes"
        shutil.rmtree(work)


def test_flipped_bit_in_a_trailing_batch_drops_the_whole_batch(
    tmp_path: Path, kvs_log: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "store"
    store = open_store(path, **OPTIONS)
    try:
        store.set("a", "before")
        with store.batch() as batch:
            batch.set("a", "in batch")
            batch.set("b", "in batch")
            batch.set("c", "in batch")
    finally:
        store.close()
    newest = data_files(path)[-1]
    batch_rec = parse_records(read(newest))[-1]
    assert batch_rec.is_batch
    # A bit of the last member's value: the first two members are intact.
    flip_bit(newest, batch_rec.end - 4 - 4 - 2, 0)
    store = open_store(path, **OPTIONS)
    try:
        assert len(kvs_warnings(kvs_log)) == 1
        assert_contents(store, {b"a": "before"})
    finally:
        store.close()
