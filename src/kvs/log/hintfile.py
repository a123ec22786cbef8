"""The hint-file format: a data file's key directory, so opening a store reads no values.

A hint file ``kvs-<id>.hint`` describes the first ``covered_len`` bytes of data file ``<id>``:
for every key touched there, where its last record is (or that it was removed). Opening a
store loads the hint and scans only the data after ``covered_len``. A hint that is damaged,
cut short, or names another file (a different ``data_nonce``) is ignored and the data file is
scanned instead; a hint is never needed for correctness.

Layout (little-endian), columns rather than rows so it loads with a few C-level calls::

    0        4         6       8              16           24            32      36        40
    +--------+---------+-------+--------------+------------+-------------+-------+---------+
    | magic  | version | flags | data_file_id | data_nonce | covered_len | count | n_expiry|
    | "KVSH" | u16 = 1 | u16=0 | u64          | u64        | u64         | u32   | u32     |
    +--------+---------+-------+--------------+------------+-------------+-------+---------+
    | locations: count x u64                                                             |
    | key lengths: count x u32                                                           |
    | keys: the keys, back to back                                                       |
    | expiries: n_expiry x (entry index u32, expires_ms u64)                             |
    | CRC-32C u32 of every byte above                                                     |
    +------------------------------------------------------------------------------------+

A location packs ``offset << 32 | end``: the offset of the key's record in the data file and
the offset just past it (both < 4 GiB). These are the low 64 bits of the engine's in-memory
location, so a hint loads with one C-level ``map``. Location 0 marks a key removed in this file
(a tombstone); header flag bit 0
(``HAS_TOMBSTONES``) says whether there are any, so a hint without them loads without looking
at each entry. Each key appears at most once.
"""

from __future__ import annotations

import struct
import sys
from array import array
from dataclasses import dataclass
from itertools import accumulate, pairwise
from typing import Final

from kvs.log import record

MAGIC: Final = b"KVSH"
VERSION: Final = 1
HEADER: Final = struct.Struct("<4sHHQQQII")
HEADER_SIZE: Final = HEADER.size  # 40
EXPIRY: Final = struct.Struct("<IQ")
CRC: Final = struct.Struct("<I")

HAS_TOMBSTONES: Final = 0x0001
_SLICE: Final = 32_768


def pack_location(offset: int, size: int) -> int:
    return (offset << 32) | (offset + size)


@dataclass
class Hint:
    data_file_id: int
    data_nonce: int
    covered_len: int
    keys: list[bytes]
    locations: list[int]
    expiries: dict[int, int]  # entry index -> expires_ms
    has_tombstones: bool


def encode(
    data_file_id: int,
    data_nonce: int,
    covered_len: int,
    keys: list[bytes],
    locations: list[int],
    expiries: dict[int, int],
) -> bytes:
    has_tombstones = False
    locs = array("Q")
    lens = array("I")
    # In slices: one C call over a whole file's half a million keys holds the GIL ~10 ms, and
    # with it the writers on other threads (this runs on the hint and compaction threads).
    for start in range(0, len(keys), _SLICE):
        some = locations[start : start + _SLICE]
        has_tombstones = has_tombstones or 0 in some
        locs.fromlist(some)
        lens.extend(map(len, keys[start : start + _SLICE]))
    flags = HAS_TOMBSTONES if has_tombstones else 0
    if sys.byteorder != "little":  # pragma: no cover - the format is little-endian
        locs.byteswap()
        lens.byteswap()
    parts = [
        HEADER.pack(
            MAGIC, VERSION, flags, data_file_id, data_nonce, covered_len, len(keys), len(expiries)
        ),
        locs.tobytes(),
        lens.tobytes(),
        b"".join(keys),
        b"".join(EXPIRY.pack(index, ms) for index, ms in sorted(expiries.items())),
    ]
    body = b"".join(parts)
    return body + CRC.pack(record.checksum(body))


def decode(data: bytes) -> Hint | str:
    """The hint, or a reason why ``data`` is not a valid one."""
    if len(data) < HEADER_SIZE + CRC.size:
        return "hint file is cut short"
    if record.checksum(data[:-4]) != CRC.unpack(data[-4:])[0]:
        return "hint file checksum mismatch"
    magic, version, flags, file_id, nonce, covered, count, n_expiry = HEADER.unpack(
        data[:HEADER_SIZE]
    )
    if magic != MAGIC:
        return "not a kvs hint file (bad magic number)"
    if version != VERSION:
        return f"unsupported hint file version {version}"
    pos = HEADER_SIZE
    locs_end = pos + 8 * count
    lens_end = locs_end + 4 * count
    if lens_end > len(data) - 4:
        return "hint file entry count runs past its end"
    locs = array("Q")
    locs.frombytes(data[pos:locs_end])
    lens = array("I")
    lens.frombytes(data[locs_end:lens_end])
    if sys.byteorder != "little":  # pragma: no cover
        locs.byteswap()
        lens.byteswap()
    ends = list(accumulate(lens, initial=lens_end))
    keys_end = ends[-1]
    expiry_end = keys_end + EXPIRY.size * n_expiry
    if expiry_end != len(data) - 4:
        return "hint file sections do not add up to its length"
    keys = [data[a:b] for a, b in pairwise(ends)]
    expiries = {
        index: ms for index, ms in EXPIRY.iter_unpack(data[keys_end:expiry_end]) if index < count
    }
    return Hint(
        file_id, nonce, covered, keys, locs.tolist(), expiries, bool(flags & HAS_TOMBSTONES)
    )
