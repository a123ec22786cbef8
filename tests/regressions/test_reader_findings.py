"""Regressions for bugs the file-reader fuzzing (tests/crash/test_reader_fuzz.py) found."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kvs import FormatError, KvStore
from kvs.log.record import checksum


def test_format_error_names_the_data_file(tmp_path: Path) -> None:
    """A header of another format version used to give a ``FormatError`` that did not say
    which file; every open-time error names its file."""
    with KvStore.open(str(tmp_path)) as s:
        s.set(b"a", b"1")
    data = tmp_path / "kvs-0000000001.data"
    raw = bytearray(data.read_bytes())
    struct.pack_into("<H", raw, 4, 3)
    struct.pack_into("<I", raw, 24, checksum(bytes(raw[:24])))
    data.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match=r"kvs-0000000001\.data.*version 3"):
        KvStore.open(str(tmp_path))
