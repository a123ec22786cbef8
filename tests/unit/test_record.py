"""The data-file record format: encode, validate, scan."""

from __future__ import annotations

import struct

import pytest

from kvs.log import record
from kvs.log.record import BadRecord


def _file(*records: bytes) -> bytes:
    return record.encode_file_header(7, 1234) + b"".join(records)


def test_record_layout_is_header_key_value_crc() -> None:
    rec = record.encode_record(record.KEY_STR, b"key", b"value", 99)
    flags, key_len, value_len, expires = struct.unpack("<BIIQ", rec[:17])
    assert (flags, key_len, value_len, expires) == (record.KEY_STR, 3, 5, 99)
    assert rec[17:25] == b"keyvalue"
    assert struct.unpack("<I", rec[-4:])[0] == record.checksum(rec[:-4])
    assert record.checksum(rec) == record.CRC_RESIDUE


def test_file_header_round_trips_and_rejects_damage() -> None:
    head = record.encode_file_header(42, 0xDEADBEEF)
    assert len(head) == record.FILE_HEADER_SIZE == 32
    assert record.decode_file_header(head) == record.FileHeader(42, 0xDEADBEEF)
    assert "magic" in str(record.decode_file_header(b"XXXX" + head[4:]))
    damaged = head[:10] + bytes([head[10] ^ 1]) + head[11:]
    assert "checksum" in str(record.decode_file_header(damaged))
    assert "short" in str(record.decode_file_header(head[:31]))


def test_iter_records_yields_every_entry_in_order() -> None:
    a = record.encode_record(0, b"a", b"1")
    b = record.encode_record(record.TOMBSTONE, b"a", b"")
    data = _file(a, b)
    entries = list(record.iter_records(data, 32, len(data)))
    assert [(e.offset, e.size, e.flags, e.key) for e in entries] == [
        (32, len(a), 0, b"a"),
        (32 + len(a), len(b), record.TOMBSTONE, b"a"),
    ]


def test_batch_members_are_records_and_the_batch_checks_whole() -> None:
    members = [record.encode_record(0, b"x", b"1"), record.encode_record(0, b"y", b"22")]
    batch = record.encode_batch(members)
    data = _file(batch)
    entries = list(record.iter_records(data, 32, len(data)))
    assert [e.key for e in entries] == [b"x", b"y"]
    # Members are addressable and self-checking on their own.
    first = entries[0]
    assert record.checksum(data[first.offset : first.offset + first.size]) == record.CRC_RESIDUE
    # Any damaged byte anywhere in the batch rejects all of it, at the batch's offset.
    for i in range(len(batch)):
        bad = bytearray(data)
        bad[32 + i] ^= 0x40
        with pytest.raises(BadRecord) as caught:
            list(record.iter_records(bytes(bad), 32, len(bad)))
        assert caught.value.offset == 32


def test_truncated_record_is_bad_at_its_own_offset() -> None:
    a = record.encode_record(0, b"a", b"1")
    b = record.encode_record(0, b"b", b"2" * 50)
    data = _file(a, b)
    for cut in range(32 + len(a) + 1, len(data)):
        entries = []
        with pytest.raises(BadRecord) as caught:
            entries.extend(record.iter_records(data[:cut], 32, cut))
        assert caught.value.offset == 32 + len(a)
        assert [e.key for e in entries] == [b"a"]


def test_huge_length_is_rejected_without_reading_it() -> None:
    rec = bytearray(record.encode_record(0, b"k", b"v"))
    rec[5:9] = struct.pack("<I", 0xFFFFFFFF)  # value_len
    data = _file(bytes(rec))
    with pytest.raises(BadRecord, match="past the end"):
        list(record.iter_records(data, 32, len(data)))


def test_unknown_flags_are_corruption() -> None:
    body = struct.pack("<BIIQ", 0x80, 1, 1, 0) + b"kv"
    rec = body + struct.pack("<I", record.checksum(body))
    data = _file(rec)
    with pytest.raises(BadRecord, match="flags"):
        list(record.iter_records(data, 32, len(data)))


def test_find_valid_record_skips_zeros_and_garbage() -> None:
    good = record.encode_record(0, b"", b"")  # starts with many zero bytes itself
    data = _file(b"\x00" * 5000, b"garbage!", good)
    found = record.find_valid_record(data, 32, len(data))
    assert found == len(data) - len(good)
    assert record.find_valid_record(_file(b"\x00" * 5000, b"junk"), 32, 5036) is None
