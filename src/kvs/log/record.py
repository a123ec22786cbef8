"""The data-file format: a file header, then records back to back.

Data file header (32 bytes, little-endian)::

    0        4         6       8          16         24       28       32
    +--------+---------+-------+----------+----------+--------+--------+
    | magic  | version | flags | file_id  | nonce    | crc32  | unused |
    | "KVSD" | u16 = 1 | u16=0 | u64      | u64      | u32    | u32 =0 |
    +--------+---------+-------+----------+----------+--------+--------+
    crc32 (CRC-32C, as in records) covers bytes 0..23. ``nonce`` is random per file; a hint
    file names it, so a hint left over from another file with the same number is never believed.

Record (21 bytes of framing + key + value)::

    0       1         5           9            17
    +-------+---------+-----------+------------+-----+-------+-------+
    | flags | key_len | value_len | expires_ms | key | value | crc32 |
    | u8    | u32     | u32       | u64        |     |       | u32   |
    +-------+---------+-----------+------------+-----+-------+-------+
    \\___________________ crc32 covers all of these ___________/

``crc32`` is the CRC-32C (Castagnoli, as in LevelDB and iSCSI; hardware-accelerated through
the ``crc32c`` package) of every byte before it in the record, stored little-endian at the
*end*: a record is written front to back, so a torn write cannot leave a checksum that matches,
and the whole record checks with one call (the CRC of data followed by its own CRC is the
constant ``CRC_RESIDUE``).

``flags`` bits: ``TOMBSTONE`` (a remove: no value), ``VALUE_STR`` / ``KEY_STR`` (the caller
passed ``str``; ``get`` and iteration hand back ``str``), ``BATCH`` (see below). Unknown bits
are corruption. ``expires_ms`` is a Unix time in milliseconds, 0 for no expiry.

A batch is one record whose ``value`` is the batch's records (each complete with its own CRC)
and whose ``key_len`` is how many there are. Its ``expires_ms`` field instead holds a CRC-32C
of its first 9 bytes (flags, count, length), so the header can be trusted on its own: after a
crash in the middle of a batch, recovery knows exactly how far the torn batch reaches. The
batch's own (trailing) CRC covers its 17-byte header followed by the 4-byte CRC fields of its
members, in order (each member's CRC already covers that member's bytes; checksumming the
member CRCs rather than all the bytes again keeps bulk writes cheap). A batch counts only if
its header, every member and its CRC are valid, so after a crash it is either all there or
treated as torn: never half applied. The engine copies the header into the file before the
rest (two copies), so a torn batch always has either no valid header or a valid one.

Lengths are checked against the bytes that are really left in the file before anything is
read, and against ``MAX_KEY_LEN`` / ``MAX_RECORD_LEN``, so a damaged length cannot make a
reader allocate or skip more than the file holds.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from typing import Final

from crc32c import crc32c

from kvs.errors import FormatError
from kvs.log.fs import ReadBuffer


def checksum(data: bytes, value: int = 0) -> int:
    """CRC-32C of ``data``, continuing from ``value``."""
    return crc32c(data, value)


MAGIC: Final = b"KVSD"
VERSION: Final = 1
FILE_HEADER: Final = struct.Struct("<4sHHQQI4x")
FILE_HEADER_SIZE: Final = FILE_HEADER.size  # 32

RECORD_HEADER: Final = struct.Struct("<BIIQ")
RECORD_HEADER_SIZE: Final = RECORD_HEADER.size  # 17
CRC: Final = struct.Struct("<I")
CRC_SIZE: Final = 4
FRAMING: Final = RECORD_HEADER_SIZE + CRC_SIZE  # 21
CRC_RESIDUE: Final = 0x48674BC7  # checksum(data + CRC.pack(checksum(data)))

TOMBSTONE: Final = 0x01
VALUE_STR: Final = 0x02
KEY_STR: Final = 0x04
BATCH: Final = 0x08
KNOWN_FLAGS: Final = TOMBSTONE | VALUE_STR | KEY_STR | BATCH

#: Hard limits of the format (the store's configured limits are lower).
MAX_KEY_LEN: Final = (1 << 31) - 1
MAX_RECORD_LEN: Final = (1 << 31) - 1


def encode_file_header(file_id: int, nonce: int) -> bytes:
    head = FILE_HEADER.pack(MAGIC, VERSION, 0, file_id, nonce, 0)
    return head[:24] + CRC.pack(checksum(head[:24])) + bytes(4)


def new_nonce() -> int:
    return int.from_bytes(os.urandom(8), "little")


@dataclass(frozen=True)
class FileHeader:
    file_id: int
    nonce: int


def header_never_written(data: bytes) -> bool:
    """True for a header a crash cut short (or left as zeros) while creating its file."""
    return len(data) < FILE_HEADER_SIZE or not data[:FILE_HEADER_SIZE].strip(b"\x00")


def decode_file_header(data: bytes) -> FileHeader | str:
    """The header, or a reason why ``data`` is not a valid one.

    Raises ``FormatError`` for a valid header of another format version.
    """
    if len(data) < FILE_HEADER_SIZE:
        return "file header is cut short"
    magic, version, _flags, file_id, nonce, crc = FILE_HEADER.unpack(data[:FILE_HEADER_SIZE])
    if magic != MAGIC:
        return "not a kvs data file (bad magic number)"
    if checksum(data[:24]) != crc:
        return "file header checksum mismatch"
    if version != VERSION:
        raise FormatError(
            f"data file format version {version} is not supported by this kvs "
            f"(it reads version {VERSION}); use a newer kvs"
        )
    return FileHeader(file_id, nonce)


def encode_record(flags: int, key: bytes, value: bytes, expires_ms: int = 0) -> bytes:
    body = RECORD_HEADER.pack(flags, len(key), len(value), expires_ms) + key + value
    return body + CRC.pack(checksum(body))


def encode_batch(records: list[bytes]) -> bytes:
    """One record holding ``records`` (each already encoded): all applied, or none."""
    return encode_batch_parts(records, [rec[-CRC_SIZE:] for rec in records], [])


def encode_batch_parts(records: list[bytes], crcs: list[bytes], bodies: list[bytes]) -> bytes:
    """``encode_batch`` for members given as ``bodies[i] + crcs[i]`` (or whole in ``records``).

    Exactly one of ``records`` and ``bodies`` is non-empty; the bulk write path passes bodies
    and CRCs apart so that no member is copied twice.
    """
    if bodies:
        inner = b"".join(chain.from_iterable(zip(bodies, crcs, strict=True)))
    else:
        inner = b"".join(records)
    head = batch_header(len(crcs), len(inner))
    return head + inner + CRC.pack(checksum(b"".join(crcs), checksum(head)))


_BATCH_HEAD_START: Final = struct.Struct("<BII")


def batch_header(count: int, span: int) -> bytes:
    """A batch's 17-byte header; the ``expires_ms`` field holds the CRC of the other fields."""
    start = _BATCH_HEAD_START.pack(BATCH, count, span)
    return start + struct.pack("<Q", checksum(start))


def batch_header_span(head: bytes) -> int | None:
    """The ``value_len`` of a valid batch header, else None."""
    if len(head) != RECORD_HEADER_SIZE or head[0] != BATCH:
        return None
    if struct.unpack_from("<Q", head, 9)[0] != checksum(head[:9]):
        return None
    span: int = struct.unpack_from("<I", head, 5)[0]
    return span


@dataclass(frozen=True, slots=True)
class Entry:
    """One set or remove found in a data file."""

    offset: int
    size: int
    flags: int
    key: bytes
    expires_ms: int


class BadRecord(Exception):
    """Raised by ``iter_records`` at the first record that is not valid."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason


def check_record(buffer: ReadBuffer, offset: int, end: int) -> tuple[int, int, int, int]:
    """Validate the record at ``offset``; return ``(flags, key_len, value_len, expires_ms)``.

    Raises ``BadRecord`` if it runs past ``end``, has impossible lengths or unknown flags, or
    fails its checksum. A batch is checked whole: every member, and the batch's own CRC.
    """
    if offset + FRAMING > end:
        raise BadRecord(offset, "record header runs past the end of the file")
    head = buffer[offset : offset + RECORD_HEADER_SIZE]
    flags, key_len, value_len, expires_ms = RECORD_HEADER.unpack(head)
    if flags & ~KNOWN_FLAGS:
        raise BadRecord(offset, f"unknown record flags 0x{flags:02x}")
    if flags & BATCH:
        size = FRAMING + value_len
    else:
        if key_len > MAX_KEY_LEN:
            raise BadRecord(offset, f"key length {key_len} is impossible")
        size = FRAMING + key_len + value_len
    if size > MAX_RECORD_LEN or offset + size > end:
        raise BadRecord(offset, f"record length {size} runs past the end of the file")
    if flags & BATCH:
        if batch_header_span(head) is None:
            raise BadRecord(offset, "batch header checksum mismatch")
        _check_batch(buffer, offset, key_len, value_len, head)
    elif checksum(buffer[offset : offset + size]) != CRC_RESIDUE:
        raise BadRecord(offset, "record checksum mismatch")
    return flags, key_len, value_len, expires_ms


def _check_batch(buffer: ReadBuffer, offset: int, count: int, span: int, head: bytes) -> None:
    inner = offset + RECORD_HEADER_SIZE
    inner_end = inner + span
    crcs = []
    while inner < inner_end:
        try:
            f, klen, vlen, _ = check_record(buffer, inner, inner_end)
        except BadRecord as error:
            raise BadRecord(offset, f"batch member at {inner}: {error.reason}") from None
        if f & BATCH:
            raise BadRecord(offset, "batch nested in a batch")
        inner += FRAMING + klen + vlen
        crcs.append(buffer[inner - CRC_SIZE : inner])
    if len(crcs) != count:
        raise BadRecord(offset, f"batch says {count} records but holds {len(crcs)}")
    stored = buffer[inner_end : inner_end + CRC_SIZE]
    if CRC.pack(checksum(b"".join(crcs), checksum(head))) != stored:
        raise BadRecord(offset, "batch checksum mismatch")


def iter_records(buffer: ReadBuffer, start: int, end: int) -> Iterator[Entry]:
    """Every set and remove in ``buffer[start:end]``, in order, batches opened up.

    Raises ``BadRecord`` at the first invalid record; the entries yielded before it are good.
    """
    offset = start
    while offset < end:
        flags, key_len, value_len, expires_ms = check_record(buffer, offset, end)
        if flags & BATCH:
            inner = offset + RECORD_HEADER_SIZE
            inner_end = inner + value_len
            while inner < inner_end:
                f, klen, vlen, exp = RECORD_HEADER.unpack(
                    buffer[inner : inner + RECORD_HEADER_SIZE]
                )
                size = FRAMING + klen + vlen
                key = buffer[inner + RECORD_HEADER_SIZE : inner + RECORD_HEADER_SIZE + klen]
                yield Entry(inner, size, f, key, exp)
                inner += size
            offset = inner_end + CRC_SIZE
        else:
            size = FRAMING + key_len + value_len
            key = buffer[offset + RECORD_HEADER_SIZE : offset + RECORD_HEADER_SIZE + key_len]
            yield Entry(offset, size, flags, key, expires_ms)
            offset += size


def valid_record_after_damage(buffer: ReadBuffer, bad_offset: int, end: int) -> int | None:
    """The first valid record after the bad record at ``bad_offset``, if any.

    A batch torn by a crash may hold complete, valid members anywhere in its extent (a large
    copy need not run front to back); they belong to the torn batch and are not evidence of
    records after it. Its header was written first and checks on its own, so when it is
    valid the whole extent it claims is stepped over.
    """
    start = bad_offset + 1
    span = batch_header_span(buffer[bad_offset : bad_offset + RECORD_HEADER_SIZE])
    if span is not None:
        start = max(start, bad_offset + FRAMING + span)
    return find_valid_record(buffer, start, end)


def find_valid_record(buffer: ReadBuffer, start: int, end: int) -> int | None:
    """The offset of the first complete, valid record at or after ``start``, if any.

    Used to tell a torn tail (nothing valid follows the damage) from damage in the middle of
    a file (valid records follow it). Runs of zero bytes are skipped in bulk.
    """
    offset = start
    chunk = 1 << 20
    skip_from = start  # zero runs before this offset were already skipped
    while offset + FRAMING <= end:
        if offset >= skip_from and buffer[offset : offset + 1] == b"\x00":
            # Skip zeros a chunk at a time (a preallocated tail is mostly zeros), then step
            # back a header's length: a record may itself start with zero bytes.
            block = buffer[offset : min(offset + chunk, end)]
            stripped = block.lstrip(b"\x00")
            if not stripped:
                offset += len(block)
                continue
            first_nonzero = offset + len(block) - len(stripped)
            skip_from = first_nonzero + 1
            offset = max(offset, first_nonzero - RECORD_HEADER_SIZE)
        try:
            check_record(buffer, offset, end)
        except BadRecord:
            offset += 1
            continue
        return offset
    return None
