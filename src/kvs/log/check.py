"""``kvs check``: verify every record of every file in a store, and optionally repair.

Checking changes nothing: it takes the directory lock (so no writer is active), reads every data
file record by record (including the parts that hint files cover, which opening skips), checks
every hint entry against the record it points to, and reports each problem with file and offset.

``repair`` (``kvs check --fix``) acts only on what was reported:

* a torn tail of the newest data file is cut off (what opening the store would do anyway);
* damage anywhere else is cut off too, dropping the rest of that file, but only after the
  caller confirmed it and a backup copy ``<file>.corrupt-<unix time>`` was written;
* hint files that are damaged or disagree with their data file are deleted (they are rebuilt
  from the data when needed); ``.tmp`` leftovers are deleted.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Literal

from kvs.errors import StoreLockedError
from kvs.log import filenames, hintfile, record
from kvs.log.filenames import FileKind
from kvs.log.fs import FileSystem, LockHandle, OsFileSystem, ReadBuffer

ProblemKind = Literal["torn-tail", "corruption", "bad-hint", "temp-file"]


@dataclass
class Problem:
    kind: ProblemKind
    path: str
    offset: int
    reason: str

    def __str__(self) -> str:
        where = f"offset {self.offset}: " if self.kind in ("torn-tail", "corruption") else ""
        return f"{os.path.basename(self.path)}: {where}{self.reason} ({self.kind})"


@dataclass
class Report:
    files: int = 0
    records: int = 0
    problems: list[Problem] = field(default_factory=list)


def check(directory: str, fs: FileSystem | None = None) -> Report:
    """Verify the store in ``directory`` without changing it."""
    fs = fs or OsFileSystem()
    handle = _lock(fs, directory)
    try:
        return _check(fs, directory)
    finally:
        handle.close()


def _lock(fs: FileSystem, directory: str) -> LockHandle:
    if not os.path.isdir(directory):
        raise FileNotFoundError(2, "no such store directory", directory)
    lock_path = filenames.lock_file(directory)
    try:
        handle = fs.lock(lock_path)
    except BlockingIOError:
        try:
            pid: int | None = int(fs.read_bytes(lock_path).split()[0])
        except (OSError, ValueError, IndexError):
            pid = None
        raise StoreLockedError(os.path.abspath(directory), pid) from None
    handle.write_owner(f"{os.getpid()}\n")
    return handle


def _check(fs: FileSystem, directory: str) -> Report:
    report = Report()
    data_ids: list[int] = []
    hint_ids: list[int] = []
    for name in sorted(fs.listdir(directory)):
        parsed = filenames.parse(name)
        if parsed is None:
            continue
        file_kind, file_id = parsed
        if file_kind is FileKind.TEMP:
            report.problems.append(
                Problem("temp-file", os.path.join(directory, name), 0, "leftover temporary file")
            )
        elif file_kind is FileKind.DATA:
            data_ids.append(file_id)
        else:
            hint_ids.append(file_id)
    data_ids.sort()
    nonces: dict[int, tuple[int, int]] = {}
    for position, file_id in enumerate(data_ids):
        newest = position == len(data_ids) - 1
        path = filenames.data_file(directory, file_id)
        report.files += 1
        reader = fs.open_read(path)
        try:
            buffer, size = reader.buffer, reader.size
            head = buffer[: record.FILE_HEADER_SIZE]
            if newest and record.header_never_written(head):
                report.problems.append(
                    Problem("torn-tail", path, 0, "file header never written (crash at creation)")
                )
                continue
            header = record.decode_file_header(head)
            if isinstance(header, str):
                # As opening does: a bad newest header with no valid record after it is a
                # creation a crash or power cut interrupted, not damage.
                interrupted = (
                    newest
                    and record.find_valid_record(buffer, record.FILE_HEADER_SIZE, size) is None
                )
                kind: ProblemKind = "torn-tail" if interrupted else "corruption"
                report.problems.append(Problem(kind, path, 0, header))
                continue
            nonces[file_id] = (header.nonce, size)
            try:
                for _entry in record.iter_records(buffer, record.FILE_HEADER_SIZE, size):
                    report.records += 1
            except record.BadRecord as bad:
                later = record.valid_record_after_damage(buffer, bad.offset, size)
                torn = newest and later is None
                reason = bad.reason
                if later is not None:
                    reason += f"; valid records follow at offset {later}"
                elif not newest:
                    reason += "; in a sealed (not newest) file"
                report.problems.append(
                    Problem("torn-tail" if torn else "corruption", path, bad.offset, reason)
                )
            for hint_id in [h for h in hint_ids if h == file_id]:
                problem = _check_hint(fs, directory, hint_id, header.nonce, buffer, size)
                if problem is not None:
                    report.problems.append(problem)
        finally:
            reader.close()
    for hint_id in hint_ids:
        if hint_id not in data_ids:
            report.problems.append(
                Problem(
                    "bad-hint",
                    filenames.hint_file(directory, hint_id),
                    0,
                    "hint file without its data file",
                )
            )
    return report


def _check_hint(
    fs: FileSystem, directory: str, file_id: int, nonce: int, data: ReadBuffer, size: int
) -> Problem | None:
    path = filenames.hint_file(directory, file_id)
    hint = hintfile.decode(fs.read_bytes(path))
    if isinstance(hint, str):
        return Problem("bad-hint", path, 0, hint)
    if hint.data_file_id != file_id or hint.data_nonce != nonce:
        return Problem("bad-hint", path, 0, "describes another data file")
    if hint.covered_len > size:
        return Problem("bad-hint", path, 0, "covers more than the data file holds")
    for key, location in zip(hint.keys, hint.locations, strict=True):
        if not location:
            continue  # a tombstone
        offset = location >> 32
        record_size = (location & 0xFFFFFFFF) - offset
        try:
            flags, key_len, value_len, _ = record.check_record(data, offset, size)
        except record.BadRecord as bad:
            return Problem("bad-hint", path, 0, f"entry points at a bad record: {bad}")
        stored_key = data[
            offset + record.RECORD_HEADER_SIZE : offset + record.RECORD_HEADER_SIZE + key_len
        ]
        actual_size = record.FRAMING + key_len + value_len
        if stored_key != key or flags & record.TOMBSTONE or actual_size != record_size:
            return Problem("bad-hint", path, 0, f"entry for {key!r} does not match its record")
    return None


def repair(directory: str, report: Report, fs: FileSystem | None = None) -> list[str]:
    """Fix what ``report`` lists (see the module docstring); return what was done."""
    fs = fs or OsFileSystem()
    handle = _lock(fs, directory)
    done: list[str] = []
    try:
        for problem in report.problems:
            name = os.path.basename(problem.path)
            if problem.kind in ("temp-file", "bad-hint"):
                if os.path.exists(problem.path):  # a damaged data file's hint may be gone
                    fs.remove(problem.path)
                    done.append(f"removed {name}")
                continue
            backup = f"{problem.path}.corrupt-{int(time.time())}"
            shutil.copyfile(problem.path, backup)
            os.chmod(backup, 0o600)
            size = fs.size(problem.path)
            if problem.offset < record.FILE_HEADER_SIZE:
                fs.remove(problem.path)
                done.append(f"removed {name} (backup: {os.path.basename(backup)})")
            else:
                fs.truncate(problem.path, problem.offset)
                done.append(
                    f"cut {name} at offset {problem.offset}, dropping {size - problem.offset} "
                    f"bytes (backup: {os.path.basename(backup)})"
                )
            hint_id = filenames.parse(name)
            if hint_id is not None:
                hint_path = filenames.hint_file(directory, hint_id[1])
                if os.path.exists(hint_path):
                    fs.remove(hint_path)  # it may describe records that are now gone
        fs.fsync_dir(directory)
    finally:
        handle.close()
    return done
