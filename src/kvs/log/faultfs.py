"""A fault-injecting ``FileSystem`` for tests: count operations, fail one, or crash at one.

``FaultyFileSystem`` wraps another file system (the real ``OsFileSystem`` by default) and every
object it hands out (``AppendFile`` and its ``buffer``, ``ReadFile``, ``Writer``,
``LockHandle``). Each call that changes or queries the file system is an *operation*: it gets
the next number (from 1) and is recorded in ``fs.ops`` as ``(name, path)``. Operation names:

=================  ==========================================================================
file system        ``makedirs listdir size read_bytes create open_append open_read truncate
                   rename remove fsync_dir lock``
``AppendFile``     ``append.write`` (a slice assignment to ``buffer``), ``append.reserve``,
                   ``append.sync``, ``append.close``
``ReadFile``       ``read.close`` (reads from its buffer are not operations)
``Writer``         ``writer.write``, ``writer.sync``, ``writer.close``
``LockHandle``     ``lock.write_owner``, ``lock.close``
=================  ==========================================================================

Faults, armed by operation number (``fs.count`` is the number of operations so far, so
``fs.crash_at(fs.count + k)`` targets the k-th operation from now) or by name:

``crash_at(n)`` / ``crash_next(name, path_suffix="")``
    Operation ``n`` (or the next one called ``name`` on a path ending in ``path_suffix``)
    raises ``SimulatedCrash`` instead of running, and so does every operation after it, on any
    thread: the process is "dead". ``SimulatedCrash`` derives from ``BaseException`` so that
    the engine's ``except Exception`` / ``except OSError`` blocks let it through.
    ``release_all()`` then closes every file, map and lock the wrapper handed out, without
    doing anything a dying process would not (an active file is *not* cut to its final
    size), so the directory can be reopened by a fresh store in the same test process.
``fail_at(n, errno_code, persistent=False)`` / ``fail_next(name, errno_code, path_suffix="")``
    The operation raises ``OSError(errno_code)`` naming its path instead of running; with
    ``persistent=True`` every later operation fails the same way. A failed ``close`` still
    releases the descriptor (as ``close(2)`` does), so nothing leaks.

An operation on a handle that was already closed is not passed on (the real descriptor
number may belong to another file by then): it raises ``OSError(EBADF)`` and is recorded in
``fs.misuse``, which tests can assert is empty.

The wrapper keeps per path the bytes written (``written``: high-water mark) and the size at
the last sync (``synced``); a ``close`` of an ``AppendFile`` syncs (see ``OsAppendFile.close``),
so it counts as a sync too.

Power cuts
----------
The wrapper also records what a power cut would leave, in the strictest POSIX reading (the
model of LevelDB's fault-injection test and of ALICE):

* a file's *content* is durable as of its last sync (``AppendFile.sync``, ``Writer.sync``, the
  sync inside ``AppendFile.close``); files are tracked by identity (an inode-like number), so
  content synced under a ``.tmp`` name is still there after a rename;
* a directory's *names* are durable as of its last ``fsync_dir``: a creation, rename or removal
  not yet covered by one is undone (a new file vanishes, a renamed file is back under its old
  name, a removed file comes back with its durable content).

``crash_image(directory)`` is that state as ``{name: FileImage}`` and ``power_cut(directory,
target)`` writes it into a fresh directory, which a store can then be opened on. With a
``random.Random`` they build a *harsh* state instead: each file with unsynced changes keeps a
random prefix of them, possibly followed by zeros or garbage (write reordering within the
unsynced region, as ALICE and SQLite's crash VFS model it); with ``reorder_block`` the unsynced
region is instead kept or dropped block by block, so a later block can survive an earlier one.
The harsh state also keeps only a prefix of the directory's changes since its last fsync
(``names_in_order=False``: any subset, for a file system that reorders them). Content is
captured by reading the file when it is synced, not by copying every write. Files present in
a directory when the wrapper first sees it count as durable; a lock file taken through
``lock`` is not tracked (nothing reads it at open).

``observer`` (if set) is called as ``observer("before", number, name, path)`` before each
operation runs and as ``observer("after", number, name, path)`` once a sync or ``fsync_dir``
has completed; tests use it to take a crash image at every sync point without stopping the
workload. ``audit`` lists, for every ``append.write``, ``rename`` and ``remove``, whether the
file's name and content were durable and which names in its directory were not (A8).
"""

from __future__ import annotations

import errno
import os
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count

from kvs.log.fs import (
    AppendFile,
    Buffer,
    FileSystem,
    LockHandle,
    OsFileSystem,
    ReadBuffer,
    ReadFile,
    Writer,
)


class SimulatedCrash(BaseException):
    """The simulated process died at this operation (see ``FaultyFileSystem.crash_at``)."""

    def __init__(self, op_number: int, name: str, path: str) -> None:
        super().__init__(f"simulated crash at operation {op_number} ({name} {path})")
        self.op_number = op_number
        self.name = name
        self.path = path


@dataclass(frozen=True)
class FileImage:
    """A file as a power cut leaves it: ``data``, then zeros up to ``size`` bytes."""

    data: bytes
    size: int

    def content(self) -> bytes:
        return self.data[: self.size] + bytes(max(0, self.size - len(self.data)))


@dataclass
class _Inode:
    """One file, whatever names it has had. ``durable`` is its content as of its last sync."""

    durable: FileImage
    extent: int  # no byte at or past this offset was ever written: the rest reads as zeros
    size: int
    changes: int = 0  # writes and truncations so far
    synced_changes: int = 0  # ``changes`` as of the snapshot the last sync made durable

    @property
    def dirty(self) -> bool:
        return self.changes != self.synced_changes


@dataclass(frozen=True)
class AuditEvent:
    """The durability of one ``append.write``, ``rename`` or ``remove`` as it ran."""

    op_number: int
    name: str
    path: str
    #: The path's directory entry, naming this file, would survive a power cut.
    name_durable: bool
    #: The file has no unsynced writes or truncations.
    content_durable: bool
    #: Other names in the directory whose current entry a power cut would undo.
    pending: tuple[str, ...]


Observer = Callable[[str, int, str, str], None]


class FaultyFileSystem:
    """A ``FileSystem`` that records every operation and injects crashes and I/O errors."""

    def __init__(self, inner: FileSystem | None = None) -> None:
        self.inner: FileSystem = inner if inner is not None else OsFileSystem()
        #: Every operation attempted so far, in order; operation ``n`` is ``ops[n - 1]``.
        self.ops: list[tuple[str, str]] = []
        #: Operations attempted on a handle after it was closed (each raised EBADF); a real
        #: file system might instead have hit whatever file reused the descriptor.
        self.misuse: list[tuple[str, str]] = []
        #: Per path: highest byte offset written, and the size at the last sync.
        self.written: dict[str, int] = {}
        self.synced: dict[str, int] = {}
        self.crashed = False
        self._crash_at: int | None = None
        self._crash_name: tuple[str, str] | None = None  # (op name, path suffix)
        self._fail_at: int | None = None
        self._fail_name: tuple[str, str] | None = None
        self._fail_errno = 0
        self._fail_persistent = False
        self._mutex = threading.RLock()
        self._handles: dict[int, Callable[[], None]] = {}  # token -> release
        self._tokens = count()
        #: Called before every operation and after every completed sync (see the module doc).
        self.observer: Observer | None = None
        #: One entry per ``append.write``, ``rename`` and ``remove``, in order.
        self.audit: list[AuditEvent] = []
        self._inodes: dict[int, _Inode] = {}
        self._names: dict[str, int] = {}  # path -> inode, for files in known directories
        self._durable_names: dict[str, dict[str, int]] = {}  # directory -> name -> inode
        self._durable_as_of: dict[str, int] = {}  # directory -> the newest snapshot applied
        # Name changes not yet known durable, per directory: (sequence, name, inode or None).
        self._name_changes: dict[str, list[tuple[int, str, int | None]]] = {}
        self._sequence = count(1)  # orders name changes and directory snapshots
        self._inode_numbers = count(1)

    # -- arming faults -----------------------------------------------------------------------

    @property
    def count(self) -> int:
        """How many operations were attempted so far."""
        return len(self.ops)

    def crash_at(self, n: int) -> None:
        """Crash (raise ``SimulatedCrash``) when operation ``n`` is about to run."""
        self._crash_at = n

    def crash_next(self, name: str, path_suffix: str = "") -> None:
        """Crash at the next operation called ``name`` on a path ending in ``path_suffix``."""
        self._crash_name = (name, path_suffix)

    def fail_at(self, n: int, errno_code: int, persistent: bool = False) -> None:
        """Make operation ``n`` (and with ``persistent`` every later one) raise ``OSError``."""
        self._fail_at = n
        self._fail_errno = errno_code
        self._fail_persistent = persistent

    def fail_next(self, name: str, errno_code: int, path_suffix: str = "") -> None:
        """Make the next operation called ``name`` on a path ending in ``path_suffix`` (only
        that one) raise ``OSError``."""
        self._fail_name = (name, path_suffix)
        self._fail_errno = errno_code

    def disarm(self) -> None:
        """Cancel pending faults (a crash that already happened stays)."""
        self._crash_at = self._crash_name = None
        self._fail_at = self._fail_name = None

    def release_all(self) -> None:
        """Close every handle still open, as the death of the process would."""
        with self._mutex:
            releases = list(self._handles.values())
            self._handles.clear()
        for release in releases:
            release()

    def ops_named(self, name: str) -> list[int]:
        """The numbers of the operations called ``name``."""
        return [i for i, (op, _) in enumerate(self.ops, 1) if op == name]

    # -- power cuts --------------------------------------------------------------------------

    def crash_image(
        self,
        directory: str,
        rng: random.Random | None = None,
        reorder_block: int = 0,
        names_in_order: bool = True,
    ) -> dict[str, FileImage]:
        """What a power cut now would leave in ``directory``: ``{name: FileImage}``.

        Without ``rng``: every durable name with its file's durable content. With ``rng``, a
        harsh state: the directory keeps a random prefix of its changes since its last fsync
        (creations, renames, removals, in order), and each file with unsynced changes keeps a
        random part of them (see the module doc); ``reorder_block`` > 0 keeps or drops those
        block by block instead. With ``names_in_order=False`` the directory keeps any subset
        of its pending changes, not only a prefix (a file system that reorders them).
        """
        directory = os.path.abspath(directory)
        with self._mutex:
            self._know_dir(directory)
            out: dict[str, FileImage] = {}
            names = self._durable_names[directory]
            if rng is not None:  # the directory too: only some of its pending changes
                changes = self._name_changes.get(directory, [])
                names = dict(names)
                if names_in_order:
                    changes = changes[: rng.randint(0, len(changes))]
                else:
                    changes = [change for change in changes if rng.random() < 0.5]
                for _, name, changed in changes:
                    if changed is None:
                        names.pop(name, None)
                    else:
                        names[name] = changed
            for name, ident in sorted(names.items()):
                inode = self._inodes[ident]
                image = inode.durable
                if rng is not None and inode.dirty:
                    current = self._current_content(ident)
                    if current is not None:
                        image = _harsh_image(image, current, rng, reorder_block)
                out[name] = image
            return out

    def power_cut(
        self,
        directory: str,
        target: str,
        rng: random.Random | None = None,
        reorder_block: int = 0,
        names_in_order: bool = True,
    ) -> dict[str, FileImage]:
        """Write ``crash_image(directory, ...)`` into the new directory ``target``."""
        image = self.crash_image(directory, rng, reorder_block, names_in_order)
        write_image(image, target)
        return image

    def durable_name(self, path: str) -> bool:
        """Whether ``path``'s directory entry, as it is now, would survive a power cut."""
        path = os.path.abspath(path)
        with self._mutex:
            ident = self._names.get(path)
            directory, name = os.path.split(path)
            durable = self._durable_names.get(directory, {})
            return ident is not None and durable.get(name) == ident

    def _know_dir(self, directory: str) -> None:
        """Start tracking ``directory``: the files already in it count as durable."""
        if directory in self._durable_names:
            return
        names: dict[str, int] = {}
        try:
            listing = self.inner.listdir(directory)
        except OSError:
            listing = []
        for name in listing:
            path = os.path.join(directory, name)
            try:
                data = self.inner.read_bytes(path)
            except OSError:
                continue  # a subdirectory, or gone meanwhile
            ident = self._new_inode(FileImage(data.rstrip(b"\x00"), len(data)))
            self._names[path] = names[name] = ident
        self._durable_names[directory] = names

    def _new_inode(self, durable: FileImage) -> int:
        ident = next(self._inode_numbers)
        self._inodes[ident] = _Inode(durable, len(durable.data), durable.size)
        return ident

    def _inode_at(self, path: str) -> int:
        """The file now at ``path`` (tracked from now on if it was not)."""
        path = os.path.abspath(path)
        self._know_dir(os.path.dirname(path))
        ident = self._names.get(path)
        if ident is None:  # made behind the wrapper's back: taken as found, not durable
            data = self.inner.read_bytes(path)
            ident = self._new_inode(FileImage(data.rstrip(b"\x00"), len(data)))
            self._names[path] = ident
        return ident

    def _current_content(self, ident: int) -> FileImage | None:
        """The file's content as the page cache has it now, or None once it is unlinked."""
        path = next((p for p, i in self._names.items() if i == ident), None)
        if path is None:
            return None
        try:
            reader = self.inner.open_read(path)  # a map: a sparse tail is not read
        except OSError:
            return None
        try:
            return FileImage(bytes(reader.buffer[0 : self._inodes[ident].extent]), reader.size)
        finally:
            reader.close()

    def _set_entry(self, path: str, ident: int | None) -> None:
        """Point the entry ``path`` at file ``ident`` (None: unlink it); log the change."""
        if ident is None:
            del self._names[path]
        else:
            self._names[path] = ident
        directory, name = os.path.split(path)
        self._name_changes.setdefault(directory, []).append((next(self._sequence), name, ident))

    def _pending(self, directory: str, exclude: str = "") -> tuple[str, ...]:
        """Names in ``directory`` whose current entry is not the durable one."""
        durable = self._durable_names.get(directory, {})
        return tuple(
            sorted(
                name
                for path, ident in self._names.items()
                for where, name in [os.path.split(path)]
                if where == directory and name != exclude and durable.get(name) != ident
            )
        )

    def _record(self, number: int, name: str, path: str) -> None:
        """Add the audit entry of operation ``number`` (before it changes anything)."""
        path = os.path.abspath(path)
        directory, base = os.path.split(path)
        ident = self._names.get(path)
        inode = self._inodes.get(ident) if ident is not None else None
        self.audit.append(
            AuditEvent(
                number,
                name,
                path,
                ident is not None and self._durable_names.get(directory, {}).get(base) == ident,
                inode is not None and not inode.dirty,
                self._pending(directory, exclude=base),
            )
        )

    def _changed(self, ident: int, extent: int | None = None, size: int | None = None) -> None:
        inode = self._inodes[ident]
        inode.changes += 1
        if extent is not None:
            inode.extent = extent
        if size is not None:
            inode.size = size

    def _made_durable(self, ident: int, image: FileImage, changes: int) -> None:
        """A sync of a snapshot taken at ``changes`` completed."""
        with self._mutex:
            inode = self._inodes[ident]
            if changes >= inode.synced_changes:  # else a sync that started later finished first
                inode.durable = image
                inode.synced_changes = changes

    # -- the gate every operation passes -----------------------------------------------------

    def _op(self, name: str, path: str, token: int | None = None) -> int:
        """Count operation ``name`` on ``path`` (of handle ``token``), or raise its fault.
        Returns the operation's number."""
        with self._mutex:
            if self.crashed:
                raise SimulatedCrash(len(self.ops), name, path)
            if token is not None and token not in self._handles:
                self.misuse.append((name, path))
                raise OSError(errno.EBADF, f"{name} on a closed file", path)
            self.ops.append((name, path))
            number = len(self.ops)
            if (self._crash_at is not None and number >= self._crash_at) or _matches(
                self._crash_name, name, path
            ):
                self.crashed = True
                raise SimulatedCrash(number, name, path)
            failing = self._fail_at is not None and (
                number == self._fail_at or (self._fail_persistent and number > self._fail_at)
            )
            if _matches(self._fail_name, name, path):
                self._fail_name = None
                failing = True
            if failing:
                code = self._fail_errno
                raise OSError(code, f"{os.strerror(code)} (injected at operation {number})", path)
            if self.observer is not None:
                self.observer("before", number, name, path)
            return number

    def _after_sync(self, number: int, name: str, path: str) -> None:
        if self.observer is not None:
            with self._mutex:
                self.observer("after", number, name, path)

    def _track(self, release: Callable[[], None]) -> int:
        """Remember how to release a handed-out handle; returns its token."""
        with self._mutex:
            token = next(self._tokens)
            self._handles[token] = release
            return token

    def _close(self, token: int, name: str, path: str, close: Callable[[], None]) -> None:
        """A close operation: on an injected error the handle is still released."""
        try:
            self._op(name, path, token)
        except OSError:
            with self._mutex:
                release = self._handles.pop(token, None)
            if release is not None:
                release()
            raise
        with self._mutex:
            del self._handles[token]
        close()

    def _note_written(self, path: str, end: int) -> None:
        with self._mutex:
            if end > self.written.get(path, 0):
                self.written[path] = end

    def _note_synced(self, path: str) -> None:
        with self._mutex:
            self.synced[path] = self.written.get(path, 0)

    # -- FileSystem --------------------------------------------------------------------------

    def makedirs(self, path: str) -> None:
        self._op("makedirs", path)
        self.inner.makedirs(path)
        with self._mutex:
            self._know_dir(os.path.abspath(path))

    def listdir(self, path: str) -> list[str]:
        self._op("listdir", path)
        with self._mutex:
            self._know_dir(os.path.abspath(path))
        return self.inner.listdir(path)

    def size(self, path: str) -> int:
        self._op("size", path)
        return self.inner.size(path)

    def read_bytes(self, path: str) -> bytes:
        self._op("read_bytes", path)
        return self.inner.read_bytes(path)

    def create(self, path: str) -> Writer:
        self._op("create", path)
        with self._mutex:
            self._know_dir(os.path.dirname(os.path.abspath(path)))
        inner = self.inner.create(path)
        with self._mutex:
            ident = self._new_inode(FileImage(b"", 0))
            self._set_entry(os.path.abspath(path), ident)
            writer = _Writer(self, inner, ident)
            self.written[path] = 0
            self.synced[path] = 0
        return writer

    def open_append(self, path: str, capacity: int) -> AppendFile:
        self._op("open_append", path)
        with self._mutex:
            ident = self._inode_at(path)
        inner = self.inner.open_append(path, capacity)
        with self._mutex:
            if inner.capacity != self._inodes[ident].size:  # extended: not yet durable
                self._changed(ident, size=inner.capacity)
        return _AppendFile(self, inner, ident)

    def open_read(self, path: str) -> ReadFile:
        self._op("open_read", path)
        return _ReadFile(self, self.inner.open_read(path))

    def truncate(self, path: str, size: int) -> None:
        self._op("truncate", path)
        with self._mutex:
            ident = self._inode_at(path)
        self.inner.truncate(path, size)
        with self._mutex:
            self._changed(ident, extent=min(self._inodes[ident].extent, size), size=size)
            for sizes in (self.written, self.synced):
                if sizes.get(path, 0) > size:
                    sizes[path] = size

    def rename(self, src: str, dst: str) -> None:
        number = self._op("rename", src)
        with self._mutex:
            ident = self._inode_at(src)
            self._know_dir(os.path.dirname(os.path.abspath(dst)))
            self._record(number, "rename", src)
        self.inner.rename(src, dst)
        with self._mutex:
            self._set_entry(os.path.abspath(src), None)
            self._set_entry(os.path.abspath(dst), ident)
            for sizes in (self.written, self.synced):
                if src in sizes:
                    sizes[dst] = sizes.pop(src)

    def remove(self, path: str) -> None:
        number = self._op("remove", path)
        with self._mutex:
            self._inode_at(path)
            self._record(number, "remove", path)
        self.inner.remove(path)
        with self._mutex:
            self._set_entry(os.path.abspath(path), None)
            self.written.pop(path, None)
            self.synced.pop(path, None)

    def fsync_dir(self, path: str) -> None:
        number = self._op("fsync_dir", path)
        directory = os.path.abspath(path)
        with self._mutex:
            self._know_dir(directory)
            # Snapshot before: an entry changed while the fsync runs need not be covered.
            snapshot = next(self._sequence)
            names = {
                os.path.basename(p): ident
                for p, ident in self._names.items()
                if os.path.dirname(p) == directory
            }
        self.inner.fsync_dir(path)
        with self._mutex:
            # Concurrent fsyncs: the one that started last covers the most.
            if snapshot > self._durable_as_of.get(directory, 0):
                self._durable_names[directory] = names
                self._durable_as_of[directory] = snapshot
                self._name_changes[directory] = [
                    change
                    for change in self._name_changes.get(directory, [])
                    if change[0] > snapshot
                ]
        self._after_sync(number, "fsync_dir", path)

    def lock(self, path: str) -> LockHandle:
        self._op("lock", path)
        return _LockHandle(self, self.inner.lock(path), path)


def _matches(target: tuple[str, str] | None, name: str, path: str) -> bool:
    return target is not None and target[0] == name and path.endswith(target[1])


class _AppendBuffer:
    """The active file's map: a slice assignment is an ``append.write`` operation."""

    def __init__(self, owner: _AppendFile, inner: Buffer) -> None:
        self._owner = owner
        self._inner = inner

    def __getitem__(self, index: slice, /) -> bytes:
        return self._inner[index]

    def __setitem__(self, index: slice, value: bytes, /) -> None:
        owner = self._owner
        fs = owner.fs
        number = fs._op("append.write", owner.path, owner.token)
        end = index.stop if index.stop is not None else len(self._inner)
        with fs._mutex:
            fs._record(number, "append.write", owner.path)
            fs._changed(owner.ident, extent=max(fs._inodes[owner.ident].extent, end))
        self._inner[index] = value
        fs._note_written(owner.path, end)

    def __len__(self) -> int:
        return len(self._inner)


class _AppendFile:
    def __init__(self, fs: FaultyFileSystem, inner: AppendFile, ident: int) -> None:
        self.fs = fs
        self.inner = inner
        self.ident = ident
        self.path = inner.path
        self.capacity = inner.capacity
        self.buffer: Buffer = _AppendBuffer(self, inner.buffer)
        # A dying process unmaps and closes, but never cuts the file to its final size: the
        # file is already ``capacity`` bytes long, so closing at that size changes nothing.
        self.token = fs._track(lambda: inner.close(inner.capacity))

    def reserve(self, end: int) -> int:
        self.fs._op("append.reserve", self.path, self.token)
        return self.inner.reserve(end)

    def _snapshot(self, size: int) -> tuple[FileImage, int]:
        """The content to count as durable once a sync that starts now completes: read
        before the sync, so that nothing written during it is counted."""
        with self.fs._mutex:
            inode = self.fs._inodes[self.ident]
            changes, extent = inode.changes, min(inode.extent, size)
        return FileImage(bytes(self.inner.buffer[0:extent]), size), changes

    def sync(self) -> None:
        number = self.fs._op("append.sync", self.path, self.token)
        image, changes = self._snapshot(self.inner.capacity)
        self.inner.sync()
        self.fs._made_durable(self.ident, image, changes)
        self.fs._note_synced(self.path)
        self.fs._after_sync(number, "append.sync", self.path)

    def close(self, final_size: int) -> None:
        image, changes = self._snapshot(final_size)
        self.fs._close(self.token, "append.close", self.path, lambda: self.inner.close(final_size))
        fs = self.fs
        with fs._mutex:  # cut to final_size, and synced
            inode = fs._inodes[self.ident]
            inode.extent, inode.size = min(inode.extent, final_size), final_size
            fs._made_durable(self.ident, image, changes)
            fs.written[self.path] = min(fs.written.get(self.path, 0), final_size)
            fs.synced[self.path] = fs.written[self.path]
        fs._after_sync(fs.count, "append.close", self.path)


class _ReadFile:
    def __init__(self, fs: FaultyFileSystem, inner: ReadFile) -> None:
        self.fs = fs
        self.inner = inner
        self.path = inner.path
        self.size = inner.size
        self.buffer: ReadBuffer = inner.buffer
        self.token = fs._track(inner.close)

    def close(self) -> None:
        with self.fs._mutex:
            if self.token not in self.fs._handles and not self.fs.crashed:
                return  # closing a read map twice is harmless, as with ``OsReadFile``
        self.fs._close(self.token, "read.close", self.path, self.inner.close)


class _Writer:
    def __init__(self, fs: FaultyFileSystem, inner: Writer, ident: int) -> None:
        self.fs = fs
        self.inner = inner
        self.ident = ident
        self.path = inner.path
        self._written = 0
        self._chunks: list[bytes] = []  # what was written: the content a sync makes durable
        self.token = fs._track(inner.close)

    def write(self, data: bytes) -> None:
        self.fs._op("writer.write", self.path, self.token)
        self.inner.write(data)
        self._written += len(data)
        self._chunks.append(bytes(data))
        with self.fs._mutex:
            self.fs._changed(self.ident, extent=self._written, size=self._written)
        self.fs._note_written(self.path, self._written)

    def sync(self) -> None:
        number = self.fs._op("writer.sync", self.path, self.token)
        self._chunks = [b"".join(self._chunks)]
        with self.fs._mutex:
            changes = self.fs._inodes[self.ident].changes
        self.inner.sync()
        self.fs._made_durable(self.ident, FileImage(self._chunks[0], self._written), changes)
        self.fs._note_synced(self.path)
        self.fs._after_sync(number, "writer.sync", self.path)

    def close(self) -> None:
        self.fs._close(self.token, "writer.close", self.path, self.inner.close)


class _LockHandle:
    def __init__(self, fs: FaultyFileSystem, inner: LockHandle, path: str) -> None:
        self.fs = fs
        self.inner = inner
        self.path = path
        self.token = fs._track(inner.close)

    def write_owner(self, text: str) -> None:
        self.fs._op("lock.write_owner", self.path, self.token)
        self.inner.write_owner(text)

    def close(self) -> None:
        self.fs._close(self.token, "lock.close", self.path, self.inner.close)


def write_image(image: dict[str, FileImage], target: str) -> None:
    """Create the directory ``target`` holding the files of ``image``."""
    os.makedirs(target)
    for name, file in image.items():
        with open(os.path.join(target, name), "wb") as f:
            f.write(file.data[: file.size])
            if file.size > len(file.data):
                f.truncate(file.size)


def _common_prefix(a: bytes, b: bytes) -> int:
    """How many leading bytes ``a`` and ``b`` share."""
    limit = min(len(a), len(b))
    start = 0
    step = 4096
    while start < limit and a[start : start + step] == b[start : start + step]:
        start += step
    end = min(start + step, limit)
    while start < end and a[start] == b[start]:
        start += 1
    return min(start, limit)


def _harsh_image(
    durable: FileImage, current: FileImage, rng: random.Random, reorder_block: int
) -> FileImage:
    """A power cut's view of a file whose unsynced changes reached the disk only in part.

    The bytes both versions share stay; of the unsynced region (where they differ, up to the
    last non-zero byte written) a random prefix is kept, then possibly zeros or garbage; or,
    with ``reorder_block``, each block of the region independently holds the new bytes or
    the old. The size is the durable one or the current one.
    """
    old, new = durable.data, current.data
    first = _common_prefix(old, new)
    region_end = max(first, len(new.rstrip(b"\x00")))
    size = rng.choice([durable.size, current.size])
    if reorder_block:
        out = bytearray(new.ljust(max(len(old), len(new)), b"\x00"))
        start = first - first % reorder_block
        for block in range(start, region_end, reorder_block):
            if rng.random() < 0.5:
                low, high = max(block, first), min(block + reorder_block, region_end)
                out[low:high] = old[low:high].ljust(high - low, b"\x00")
        return FileImage(bytes(out[:size]), max(size, first))
    keep = rng.randint(first, region_end)
    filler = b""
    if rng.random() < 0.5:  # garbage where the rest of the region was (else zeros)
        room = max(0, max(durable.size, current.size) - keep)
        filler = rng.randbytes(rng.randint(1, max(1, min(room, region_end - keep + 512))))
    data = new[:keep] + filler
    return FileImage(data[:size], max(size, first))
