"""Regressions for bugs the simulated power cuts found (issue 5), one test each."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from kvs import CorruptionError, KvStore
from kvs.log import record
from kvs.log.faultfs import FaultyFileSystem, write_image


def test_a_cut_torn_tail_of_a_full_newest_file_stays_cut_after_a_power_cut(
    tmp_path: Path,
) -> None:
    """Opening cut the torn tail of a full newest file and sealed it without syncing the cut;
    a power cut then brought the tail back in a file that was no longer the newest, and the
    store would not open (CorruptionError) although every acknowledged write was on disk."""
    path = str(tmp_path / "s")
    with KvStore.open(path, max_file_size=64 << 10) as store:
        for i in range(400):
            store.set(b"k%d" % i, b"v" * 100)
    newest = sorted(Path(path).glob("kvs-*.data"))[-1]
    with open(newest, "ab") as f:
        f.write(b"\x07torn")
    fs = FaultyFileSystem()
    # A lower max_file_size makes the newest file "full": it is sealed, not appended to.
    with KvStore.open(path, max_file_size=4096, sync="always", fs=fs) as store:
        store.set(b"after", b"1")
        fs.power_cut(path, str(tmp_path / "cut"))
    with KvStore.open(str(tmp_path / "cut"), max_file_size=4096) as store:
        assert store.get(b"after") == b"1" and store.get(b"k399") == b"v" * 100


@pytest.mark.parametrize("rest", [b"zeros", b"garbage"])
def test_a_newest_file_whose_header_a_power_cut_kept_only_in_part_is_removed(
    tmp_path: Path, rest: bytes
) -> None:
    """A new data file's name can become durable (through another file's directory fsync)
    before its header is; a power cut may then keep part of the header, then zeros or
    garbage. Nothing was ever written after such a header, yet opening refused the store
    with CorruptionError instead of removing the file as an interrupted creation."""
    with KvStore.open(str(tmp_path)) as store:
        store.set(b"a", b"1")
    header = record.encode_file_header(2, 12345)
    filler = bytes(20) if rest == b"zeros" else os.urandom(20)
    second = tmp_path / "kvs-0000000002.data"
    second.write_bytes(header[:12] + filler + bytes(4064))
    with KvStore.open(str(tmp_path)) as store:
        assert store.get(b"a") == b"1"
        store.set(b"b", b"2")
    assert not second.exists()
    with KvStore.open(str(tmp_path)) as store:
        assert (store.get(b"a"), store.get(b"b")) == (b"1", b"2")


def test_a_damaged_newest_header_with_records_after_it_is_still_corruption(
    tmp_path: Path,
) -> None:
    """The counterpart: valid records after a bad header are real data, never removed."""
    with KvStore.open(str(tmp_path)) as store:
        store.set(b"a", b"1")
    data = tmp_path / "kvs-0000000001.data"
    raw = bytearray(data.read_bytes())
    raw[20] ^= 0xFF  # in the nonce: the header CRC fails
    data.write_bytes(bytes(raw))
    with pytest.raises(CorruptionError):
        KvStore.open(str(tmp_path))
    assert data.read_bytes() == bytes(raw)


def test_compaction_inputs_deleted_out_of_order_by_a_power_cut_do_not_bring_back_removed_keys(
    tmp_path: Path,
) -> None:
    """Compaction deleted its inputs oldest first but synced the directory only once at the
    end. A file system may persist directory changes out of order: if a power cut kept the
    deletion of a newer input (holding a tombstone) but not of an older one (holding the
    value), the removed key came back. Each deletion is now durable before the next."""
    path = str(tmp_path / "s")
    with KvStore.open(path, max_file_size=4096, auto_compact=False) as store:
        for i in range(8):
            store.set(b"gone%d" % i, b"old" * 300)  # values in the oldest files
        for i in range(8):
            store.remove(b"gone%d" % i)  # tombstones in newer ones
            store.set(b"kept%d" % i, b"k" * 300)
    fs = FaultyFileSystem()
    images = []

    def observe(moment: str, number: int, name: str, where: str) -> None:
        if moment == "before" and name == "fsync_dir":
            for seed in range(20):
                images.append(fs.crash_image(path, random.Random(seed), names_in_order=False))

    with KvStore.open(path, max_file_size=4096, auto_compact=False, fs=fs) as store:
        fs.observer = observe
        store.compact()
        fs.observer = None
    assert len(images) >= 40
    for number, image in enumerate(images):
        target = tmp_path / f"cut{number}"
        write_image(image, str(target))
        with KvStore.open(str(target), max_file_size=4096) as store:
            assert sorted(store.scan()) == [b"kept%d" % i for i in range(8)], number


@pytest.mark.parametrize("rest", [b"zeros", b"garbage"])
def test_check_agrees_with_open_about_an_interrupted_newest_header(
    tmp_path: Path, rest: bytes
) -> None:
    """After opening learned to remove a newest file whose header a power cut kept only in
    part, ``kvs check`` still called it corruption (exit 1) and ``--fix`` kept a backup of
    nothing. Both now treat it as the torn tail it is; real damage stays corruption."""
    from kvs.log import check

    with KvStore.open(str(tmp_path)) as store:
        store.set(b"a", b"1")
    filler = bytes(20) if rest == b"zeros" else os.urandom(20)
    (tmp_path / "kvs-0000000002.data").write_bytes(
        record.encode_file_header(2, 12345)[:12] + filler + bytes(4064)
    )
    problems = check.check(str(tmp_path)).problems
    assert [(p.kind, Path(p.path).name, p.offset) for p in problems] == [
        ("torn-tail", "kvs-0000000002.data", 0)
    ]
    (tmp_path / "kvs-0000000002.data").unlink()
    first = tmp_path / "kvs-0000000001.data"
    raw = bytearray(first.read_bytes())
    raw[20] ^= 0xFF  # a bad header with a valid record after it: real damage
    first.write_bytes(bytes(raw))
    assert [p.kind for p in check.check(str(tmp_path)).problems] == ["corruption"]
