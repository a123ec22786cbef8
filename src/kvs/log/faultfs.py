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

For the power-loss simulation to come, the wrapper keeps per path the bytes written
(``written``: high-water mark) and the size at the last sync (``synced``); a ``close`` of an
``AppendFile`` syncs (see ``OsAppendFile.close``), so it counts as a sync too.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
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

    # -- the gate every operation passes -----------------------------------------------------

    def _op(self, name: str, path: str, token: int | None = None) -> None:
        """Count operation ``name`` on ``path`` (of handle ``token``), or raise its fault."""
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

    def listdir(self, path: str) -> list[str]:
        self._op("listdir", path)
        return self.inner.listdir(path)

    def size(self, path: str) -> int:
        self._op("size", path)
        return self.inner.size(path)

    def read_bytes(self, path: str) -> bytes:
        self._op("read_bytes", path)
        return self.inner.read_bytes(path)

    def create(self, path: str) -> Writer:
        self._op("create", path)
        writer = _Writer(self, self.inner.create(path))
        with self._mutex:
            self.written[path] = 0
            self.synced[path] = 0
        return writer

    def open_append(self, path: str, capacity: int) -> AppendFile:
        self._op("open_append", path)
        return _AppendFile(self, self.inner.open_append(path, capacity))

    def open_read(self, path: str) -> ReadFile:
        self._op("open_read", path)
        return _ReadFile(self, self.inner.open_read(path))

    def truncate(self, path: str, size: int) -> None:
        self._op("truncate", path)
        self.inner.truncate(path, size)
        with self._mutex:
            for sizes in (self.written, self.synced):
                if sizes.get(path, 0) > size:
                    sizes[path] = size

    def rename(self, src: str, dst: str) -> None:
        self._op("rename", src)
        self.inner.rename(src, dst)
        with self._mutex:
            for sizes in (self.written, self.synced):
                if src in sizes:
                    sizes[dst] = sizes.pop(src)

    def remove(self, path: str) -> None:
        self._op("remove", path)
        self.inner.remove(path)
        with self._mutex:
            self.written.pop(path, None)
            self.synced.pop(path, None)

    def fsync_dir(self, path: str) -> None:
        self._op("fsync_dir", path)
        self.inner.fsync_dir(path)

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
        owner.fs._op("append.write", owner.path, owner.token)
        self._inner[index] = value
        end = index.stop if index.stop is not None else len(self._inner)
        owner.fs._note_written(owner.path, end)

    def __len__(self) -> int:
        return len(self._inner)


class _AppendFile:
    def __init__(self, fs: FaultyFileSystem, inner: AppendFile) -> None:
        self.fs = fs
        self.inner = inner
        self.path = inner.path
        self.capacity = inner.capacity
        self.buffer: Buffer = _AppendBuffer(self, inner.buffer)
        # A dying process unmaps and closes, but never cuts the file to its final size: the
        # file is already ``capacity`` bytes long, so closing at that size changes nothing.
        self.token = fs._track(lambda: inner.close(inner.capacity))

    def reserve(self, end: int) -> int:
        self.fs._op("append.reserve", self.path, self.token)
        return self.inner.reserve(end)

    def sync(self) -> None:
        self.fs._op("append.sync", self.path, self.token)
        self.inner.sync()
        self.fs._note_synced(self.path)

    def close(self, final_size: int) -> None:
        self.fs._close(self.token, "append.close", self.path, lambda: self.inner.close(final_size))
        with self.fs._mutex:  # cut to final_size, and synced
            self.fs.written[self.path] = min(self.fs.written.get(self.path, 0), final_size)
            self.fs.synced[self.path] = self.fs.written[self.path]


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
    def __init__(self, fs: FaultyFileSystem, inner: Writer) -> None:
        self.fs = fs
        self.inner = inner
        self.path = inner.path
        self._written = 0
        self.token = fs._track(inner.close)

    def write(self, data: bytes) -> None:
        self.fs._op("writer.write", self.path, self.token)
        self.inner.write(data)
        self._written += len(data)
        self.fs._note_written(self.path, self._written)

    def sync(self) -> None:
        self.fs._op("writer.sync", self.path, self.token)
        self.inner.sync()
        self.fs._note_synced(self.path)

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
