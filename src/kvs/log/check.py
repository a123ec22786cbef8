"""``kvs check``: verify every record of every file in a store, and optionally repair.

Checking changes nothing: it takes the directory lock (so no writer is active), reads every data
file record by record (including the parts that hint files cover, which opening skips), checks
every hint entry against the record it points to, and reports each problem with file and offset.
In a sealed file, reading goes on after damage, so every damaged span is reported.

``repair`` (``kvs check --fix``) acts only on what was reported:

* a torn tail of the newest data file is cut off (what opening the store would do anyway);
* other damage, only after the caller confirmed it and a backup copy
  ``<file>.corrupt-<unix time>`` was written: the newest file is cut at it; a sealed file has
  its damaged spans cut out and keeps the valid records after them (dropping them could drop
  a remove and bring an older value back);
* hint files that are damaged or disagree with their data file are deleted (they are rebuilt
  from the data when needed); ``.tmp`` leftovers are deleted.

``StoreCheck`` holds the lock from the check to the repair, so nothing can write between the
report and the fix (``kvs check --fix`` asks its question inside it); ``repair`` on its own
checks again and refuses a report that no longer describes the store.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Literal

from kvs.errors import KvsError, StoreLockedError
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
    #: Where the damage ends: the next valid record, or ``None`` for the end of the file.
    end: int | None = None

    def __str__(self) -> str:
        where = f"offset {self.offset}: " if self.kind in ("torn-tail", "corruption") else ""
        return f"{os.path.basename(self.path)}: {where}{self.reason} ({self.kind})"


@dataclass
class Report:
    files: int = 0
    records: int = 0
    problems: list[Problem] = field(default_factory=list)


class StoreCheck:
    """The directory lock, held while a store is checked and repaired::

    with StoreCheck(directory) as store_check:
        report = store_check.check()
        if report.problems and confirmed(report):
            store_check.repair(report)
    """

    def __init__(self, directory: str, fs: FileSystem | None = None) -> None:
        self.directory = directory
        self._fs = fs or OsFileSystem()
        self._handle: LockHandle | None = None

    def __enter__(self) -> StoreCheck:
        self._handle = _lock(self._fs, self.directory)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def check(self) -> Report:
        """Verify every file without changing anything."""
        return _check(self._fs, self.directory)

    def repair(self, report: Report) -> list[str]:
        """Fix what ``report`` (from ``check`` under this same lock) lists; return what was
        done."""
        return _repair(self._fs, self.directory, report)


class StaleReportError(KvsError):
    """``repair`` was given a report that no longer describes the store."""


def check(directory: str, fs: FileSystem | None = None) -> Report:
    """Verify the store in ``directory`` without changing it."""
    with StoreCheck(directory, fs) as store_check:
        return store_check.check()


def repair(directory: str, report: Report, fs: FileSystem | None = None) -> list[str]:
    """Fix what ``report`` lists (see the module docstring); return what was done.

    The lock was let go after ``report`` was made, so the store is checked again first:
    another process may have opened it and written since. Raises ``StaleReportError`` if the
    report no longer matches, and changes nothing then.
    """
    with StoreCheck(directory, fs) as store_check:
        if store_check.check() != report:
            raise StaleReportError(
                f"{directory} changed since it was checked; run 'kvs check' again"
            )
        return store_check.repair(report)


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
            _check_records(report, path, buffer, size, newest)
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


def _check_records(report: Report, path: str, buffer: ReadBuffer, size: int, newest: bool) -> None:
    """Count the valid records of one data file and report its damage.

    The newest file is reported up to its first damage, which a repair cuts off with the rest:
    what is left is the store as it was before that record. In a sealed file, reading goes on
    after each damaged span, and a repair cuts out the spans alone: records in later files are
    kept whatever happens, so dropping this file's later records (a remove among them) would
    give a state that never existed.
    """
    start = record.FILE_HEADER_SIZE
    while True:
        try:
            for _entry in record.iter_records(buffer, start, size):
                report.records += 1
            return
        except record.BadRecord as bad:
            reason = bad.reason
            if newest:
                later = record.valid_record_after_damage(buffer, bad.offset, size)
                kind: ProblemKind = "corruption" if later is not None else "torn-tail"
                end = None  # cut at the first damage, with everything after it
            else:
                later = end = _end_of_damage(buffer, bad.offset, size)
                kind = "corruption"
                reason += "; in a sealed (not newest) file"
            if later is not None:
                reason += f"; valid records follow at offset {later}"
            report.problems.append(Problem(kind, path, bad.offset, reason, end))
            if end is None:
                return
            start = end


def _end_of_damage(buffer: ReadBuffer, offset: int, size: int) -> int | None:
    """Where the damage that starts at ``offset`` of a sealed file ends: the next valid record,
    or ``None`` if none follows.

    When the damaged record's own length still leads exactly to a valid record (or to the end
    of the file), that is where: a bit flip in a record whose value holds the image of a
    record (a kvs data file stored as a value) must not turn that image into a record.
    """
    if offset + record.RECORD_HEADER_SIZE <= size:
        flags, key_len, value_len, _ = record.RECORD_HEADER.unpack(
            buffer[offset : offset + record.RECORD_HEADER_SIZE]
        )
        claimed: int = offset + record.FRAMING + value_len
        if not flags & record.BATCH:
            claimed += key_len
        if claimed == size:
            return None
        if claimed < size:
            try:
                record.check_record(buffer, claimed, size)
            except record.BadRecord:
                pass
            else:
                return claimed
    return record.valid_record_after_damage(buffer, offset, size)


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


def _repair(fs: FileSystem, directory: str, report: Report) -> list[str]:
    """``repair``'s work; requires the lock."""
    done: list[str] = []
    damaged: dict[str, list[Problem]] = {}
    for problem in report.problems:
        if problem.kind in ("temp-file", "bad-hint"):
            if os.path.exists(problem.path):  # a damaged data file's hint may be gone
                fs.remove(problem.path)
                done.append(f"removed {os.path.basename(problem.path)}")
        else:
            damaged.setdefault(problem.path, []).append(problem)
    for path, problems in damaged.items():
        done.append(_repair_data_file(fs, directory, path, problems))
    fs.fsync_dir(directory)
    return done


def _repair_data_file(fs: FileSystem, directory: str, path: str, problems: list[Problem]) -> str:
    """Back up ``path``, then cut its damaged spans out (or remove it if its header is bad)."""
    name = os.path.basename(path)
    backup = f"{path}.corrupt-{int(time.time())}"
    shutil.copyfile(path, backup)
    os.chmod(backup, 0o600)
    size = fs.size(path)
    parsed = filenames.parse(name)
    if parsed is not None:
        hint_path = filenames.hint_file(directory, parsed[1])
        if os.path.exists(hint_path):
            fs.remove(hint_path)  # its offsets are about to be wrong
    saved = f"(backup: {os.path.basename(backup)})"
    if any(problem.offset < record.FILE_HEADER_SIZE for problem in problems):
        fs.remove(path)
        return f"removed {name} {saved}"
    spans = sorted((p.offset, size if p.end is None else p.end) for p in problems)
    dropped = sum(end - start for start, end in spans)
    if len(spans) == 1 and spans[0][1] == size:
        fs.truncate(path, spans[0][0])
        return f"cut {name} at offset {spans[0][0]}, dropping {dropped} bytes {saved}"
    keep_from = 0
    kept: list[tuple[int, int]] = []
    for start, end in spans:
        kept.append((keep_from, start))
        keep_from = end
    kept.append((keep_from, size))
    temp = filenames.temp_file(path)
    reader = fs.open_read(path)
    try:
        writer = fs.create(temp)
        try:
            for start, end in kept:
                if end > start:
                    writer.write(bytes(reader.buffer[start:end]))
            writer.sync()
        finally:
            writer.close()
    finally:
        reader.close()
    fs.rename(temp, path)
    where = ", ".join(f"{start}-{end}" for start, end in spans)
    return f"cut the damaged bytes {where} out of {name}, dropping {dropped} bytes {saved}"
