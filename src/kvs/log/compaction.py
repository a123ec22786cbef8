"""Compaction: copy the live records of the sealed data files into new files, drop the rest.

``LogStore.compact`` drives it; this module does the part that needs no lock:

1. The engine seals the active file and takes a snapshot of every index entry that points into
   a sealed file (the *inputs*: all data files but the new active one). Output files get
   numbers reserved between the newest input and the new active file, so at recovery an output
   is read after every input and before any newer write.
2. ``merge`` copies each snapshot record, checksum verified, byte for byte into output files
   written under ``.tmp`` names, skipping expired records. Tombstones are not copied: every
   older record of that key is in an input too, and goes away with it. Each output and its hint
   are synced, renamed to their final names, and the directory is synced. **This is the commit
   point.** A crash before the renames leaves only ``.tmp`` files, which recovery removes; a
   crash between renames leaves some outputs under their final names, which is harmless: they
   hold copies of records that are still in the inputs, and are read after them.
3. The engine re-points index entries that still hold the snapshot location (a key written
   during the merge keeps its newer location) and then deletes the inputs, **oldest first**,
   each deletion made durable (directory fsync) before the next:
   whatever prefix of them a crash leaves behind, every key's newest record is in an output or
   a later file, and every tombstone still needed sits in a file newer than the value it hides.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import itemgetter

from kvs.errors import CorruptionError
from kvs.log import filenames, hintfile, record
from kvs.log.fs import FileSystem, ReadBuffer, Writer

_EXPIRES = struct.Struct("<Q")
_WRITE_CHUNK = 1 << 20
# A location is ``file_id << 64 | offset << 32 | end``: this shift keeps the file id and the
# offset's MiB.
_BUCKET_SHIFT = 32 + 20


@dataclass
class Output:
    file_id: int
    nonce: int
    path: str
    end: int
    keys: list[bytes] = field(default_factory=list)
    locations: list[int] = field(default_factory=list)  # hint-style (no file number)
    expiries: dict[int, int] = field(default_factory=dict)


@dataclass
class MergeResult:
    outputs: list[Output]
    moves: list[tuple[bytes, int, int]]  # key, old location, new location
    expired: list[tuple[bytes, int]]  # key, old location


def merge(
    fs: FileSystem,
    directory: str,
    snapshot: list[tuple[bytes, int]],
    views: dict[int, ReadBuffer],
    output_ids: Iterator[int],
    max_file_size: int,
    clock: int,
) -> MergeResult:
    """Write the records of ``snapshot`` into new, committed output files (steps 2 above).

    Empties ``snapshot``.
    """
    outputs: list[Output] = []
    moves: list[tuple[bytes, int, int]] = []
    expired: list[tuple[bytes, int]] = []
    writer: Writer | None = None
    current: Output | None = None
    pending: list[bytes] = []
    pending_len = 0
    temp_paths: list[str] = []
    try:
        for key, location in _in_file_order(snapshot):
            file_id = location >> 64
            offset = (location >> 32) & 0xFFFFFFFF
            size = (location & 0xFFFFFFFF) - offset
            data = views[file_id][offset : offset + size]
            if record.checksum(data) != record.CRC_RESIDUE:
                raise CorruptionError(
                    filenames.data_file(directory, file_id), offset, "record checksum mismatch"
                )
            expires_ms = _EXPIRES.unpack_from(data, 9)[0]
            if expires_ms and expires_ms <= clock:
                expired.append((key, location))
                continue
            if current is None or (
                current.end + size > max_file_size and current.end > record.FILE_HEADER_SIZE
            ):
                if writer is not None and current is not None:
                    writer.write(b"".join(pending))
                    pending, pending_len = [], 0
                    finishing, writer = writer, None  # _finish closes it, even if it fails
                    _finish(fs, directory, finishing, current, temp_paths)
                file_id_out = next(output_ids)
                current = Output(
                    file_id_out,
                    record.new_nonce(),
                    filenames.data_file(directory, file_id_out),
                    record.FILE_HEADER_SIZE,
                )
                outputs.append(current)
                temp = filenames.temp_file(current.path)
                temp_paths.append(temp)
                writer = fs.create(temp)
                writer.write(record.encode_file_header(current.file_id, current.nonce))
            new_offset = current.end
            pending.append(data)
            pending_len += size
            current.end += size
            low = hintfile.pack_location(new_offset, size)
            if expires_ms:
                current.expiries[len(current.keys)] = expires_ms
            current.keys.append(key)
            current.locations.append(low)
            moves.append((key, location, (current.file_id << 64) | low))
            if pending_len >= _WRITE_CHUNK and writer is not None:
                writer.write(b"".join(pending))
                pending, pending_len = [], 0
        if writer is not None and current is not None:
            writer.write(b"".join(pending))
            finishing, writer = writer, None
            _finish(fs, directory, finishing, current, temp_paths)
        # Commit: every output is complete and synced under its temp name; now rename.
        for out in outputs:
            fs.rename(filenames.temp_file(out.path), out.path)
            hint_path = filenames.hint_file(directory, out.file_id)
            fs.rename(filenames.temp_file(hint_path), hint_path)
        fs.fsync_dir(directory)
    except BaseException:
        if writer is not None:
            writer.close()
        for temp in temp_paths:
            with contextlib.suppress(OSError):
                fs.remove(temp)
        raise
    return MergeResult(outputs, moves, expired)


def _in_file_order(snapshot: list[tuple[bytes, int]]) -> Iterator[tuple[bytes, int]]:
    """``snapshot`` by location: file, then offset, so each input is read front to back.

    Not one ``sort``: sorting a million entries holds the GIL for about half a second, and
    writers with it. The entries go into buckets of one MiB of input each, in a Python loop
    (which lets other threads run), and each bucket is sorted on its own, when it is reached.
    ``snapshot`` is emptied, so that the entries are freed a bucket at a time.
    """
    buckets: dict[int, list[tuple[bytes, int]]] = {}
    for entry in snapshot:
        region = entry[1] >> _BUCKET_SHIFT
        bucket = buckets.get(region)
        if bucket is None:
            buckets[region] = [entry]
        else:
            bucket.append(entry)
    snapshot.clear()
    for region in sorted(buckets):
        bucket = buckets.pop(region)
        bucket.sort(key=itemgetter(1))
        yield from bucket


def _finish(
    fs: FileSystem, directory: str, writer: Writer, out: Output, temp_paths: list[str]
) -> None:
    """Sync and close an output data file, then write and sync its hint (both still .tmp)."""
    try:
        writer.sync()
    finally:
        writer.close()
    hint_path = filenames.temp_file(filenames.hint_file(directory, out.file_id))
    temp_paths.append(hint_path)
    hint = fs.create(hint_path)
    try:
        hint.write(
            hintfile.encode(out.file_id, out.nonce, out.end, out.keys, out.locations, out.expiries)
        )
        hint.sync()
    finally:
        hint.close()
    # Only the hint needed these: freed now, one output's worth, not all at the end.
    out.keys, out.locations, out.expiries = [], [], {}
