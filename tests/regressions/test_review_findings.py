"""Regressions for bugs found in review of the first engine (issue 2), one test each."""

from __future__ import annotations

import logging
import os
import struct
import time
from pathlib import Path

import pytest

from kvs import CorruptionError, FormatError, KvStore


def test_expired_key_does_not_bring_back_an_older_value(tmp_path: Path) -> None:
    """An expired record hides older values like a tombstone, also through a hint file."""
    with KvStore.open(str(tmp_path), sync="no", auto_compact=False) as s:
        s.set(b"K", b"old")
        s.compact()  # the old value now lives in a sealed (compacted) file
        s.set(b"K", b"new", ttl=0.2)
    time.sleep(0.3)
    with KvStore.open(str(tmp_path), sync="no", auto_compact=False) as s:
        assert s.get(b"K") is None
        s.set(b"filler", bytes(300_000))  # enough that close writes a hint for this file
    assert list(tmp_path.glob("kvs-*.hint"))
    with KvStore.open(str(tmp_path), sync="no", auto_compact=False) as s:
        assert s.get(b"K") is None


def test_a_batch_torn_before_its_checksum_is_a_torn_tail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with KvStore.open(str(tmp_path), sync="no") as s:
        s.set(b"a", b"1")
        s.update([(b"x", b"1"), (b"y", b"2")])
    data = tmp_path / "kvs-0000000001.data"
    os.truncate(data, data.stat().st_size - 4)  # every member written, the batch CRC not
    with caplog.at_level(logging.WARNING, logger="kvs"), KvStore.open(str(tmp_path)) as s:
        assert list(s.scan()) == [b"a"]
    assert sum("torn tail" in r.getMessage() for r in caplog.records) == 1


def test_a_data_file_of_a_newer_format_is_refused_not_deleted(tmp_path: Path) -> None:
    with KvStore.open(str(tmp_path)) as s:
        s.set(b"a", b"1")
    data = tmp_path / "kvs-0000000001.data"
    raw = bytearray(data.read_bytes())
    struct.pack_into("<H", raw, 4, 2)  # version 2, header CRC fixed up: a valid future file
    from kvs.log.record import checksum

    struct.pack_into("<I", raw, 24, checksum(bytes(raw[:24])))
    data.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="version 2"):
        KvStore.open(str(tmp_path))
    assert data.read_bytes() == bytes(raw)


def test_a_newest_file_with_a_damaged_header_is_corruption_not_deleted(tmp_path: Path) -> None:
    with KvStore.open(str(tmp_path)) as s:
        s.set(b"a", b"1")
    data = tmp_path / "kvs-0000000001.data"
    raw = bytearray(data.read_bytes())
    raw[0] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(CorruptionError):
        KvStore.open(str(tmp_path))
    assert data.exists()


def test_torn_tail_of_a_full_newest_file_is_cut_before_it_is_sealed(tmp_path: Path) -> None:
    path = str(tmp_path)
    with KvStore.open(path, max_file_size=64 << 10) as s:
        for i in range(400):
            s.set(b"k%d" % i, b"v" * 100)
    newest = sorted(tmp_path.glob("kvs-*.data"))[-1]
    with open(newest, "ab") as f:
        f.write(b"\x07torn")
    # Lowering max_file_size makes the newest file "full": it is sealed, not appended to.
    with KvStore.open(path, max_file_size=4096) as s:
        s.set(b"after", b"1")
    with KvStore.open(path, max_file_size=4096) as s:
        assert s.get(b"after") == b"1" and s.get(b"k399") == b"v" * 100


def test_a_huge_ttl_is_a_value_error_not_a_struct_error(tmp_path: Path) -> None:
    with KvStore.open(str(tmp_path)) as s:
        for ttl in (1e20, float("inf"), float("nan"), 0, -1):
            with pytest.raises(ValueError, match="ttl"):
                s.set("k", "v", ttl=ttl)
        assert s.get("k") is None
        s.set("k", "v", ttl=1e9)  # about 30 years: fine
        assert s.get("k") == "v"
