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
``fs.crash_at(fs.count + k)`` targets the k-th operation from now):

``crash_at(n)``
    Operation ``n`` raises ``SimulatedCrash`` instead of running, and so does every operation
    after it, on any thread: the process is "dead". ``SimulatedCrash`` derives from
    ``BaseException`` so that the engine's ``except Exception`` / ``except OSError`` blocks let
    it through. ``release_all()`` then closes every file, map and lock the wrapper handed out,
    without doing anything a dying process would not (an active file is *not* cut to its
    final size), so the directory can be reopened by a fresh store in the same test process.
``fail_at(n, errno_code, persistent=False)``
    Operation ``n`` raises ``OSError(errno_code)`` naming its path instead of running; with
    ``persistent=True`` every later operation fails the same way. A failed ``close`` still
    releases the descriptor (as ``close(2)`` does), so nothing leaks.

For the power-loss simulation to come, the wrapper keeps per path the bytes written
(``written``: high-water mark) and the size at the last sync (``synced``).
"""

from __future__ import annotations

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
        #: Per path: highest byte offset written, and the size at the last sync.
        self.written: dict[str, int] = {}
        self.synced: dict[str, int] = {}
        self.crashed = False
        self._crash_at: int | None = None
        self._fail_at: int | None = None
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

    def fail_at(self, n: int, errno_code: int, persistent: bool = False) -> None:
        """Make operation ``n`` (and with ``persistent`` every later one) raise ``OSError``."""
        self._fail_at = n
        self._fail_errno = errno_code
        self._fail_persistent = persistent

    def disarm(self) -> None:
        """Cancel pending faults (a crash that already happened stays)."""
        self._crash_at = None
        self._fail_at = None

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

    def _op(self, name: str, path: str) -> None:
        with self._mutex:
            if self.crashed:
                raise SimulatedCrash(len(self.ops), name, path)
            self.ops.append((name, path))
            number = len(self.ops)
            if self._crash_at is not None and number >= self._crash_at:
                self.crashed = True
                raise SimulatedCrash(number, name, path)
            if self._fail_at is not None and (
                number == self._fail_at or (self._fail_persistent and number > self._fail_at)
            ):
                code = self._fail_errno
                raise OSError(code, f"{os.strerror(code)} (injected at operation {number})", path)

    def _track(self, release: Callable[[], None]) -> int:
        """Remember how to release a handed-out handle; returns its token."""
        with self._mutex:
            token = next(self._tokens)
            self._handles[token] = release
            return token

    def _untrack(self, token: int) -> Callable[[], None] | None:
        with self._mutex:
            return self._handles.pop(token, None)

    def _close(self, token: int, name: str, path: str, close: Callable[[], None]) -> None:
        """A close operation: on an injected error the handle is still released."""
        try:
            self._op(name, path)
        except OSError:
            release = self._untrack(token)
            if release is not None:
                release()
            raise
        if self._untrack(token) is not None:
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


class _AppendBuffer:
    """The active file's map: a slice assignment is an ``append.write`` operation."""

    def __init__(self, owner: _AppendFile, inner: Buffer) -> None:
        self._owner = owner
        self._inner = inner

    def __getitem__(self, index: slice, /) -> bytes:
        return self._inner[index]

    def __setitem__(self, index: slice, value: bytes, /) -> None:
        owner = self._owner
        owner.fs._op("append.write", owner.path)
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
        self._token = fs._track(lambda: inner.close(inner.capacity))

    def reserve(self, end: int) -> int:
        self.fs._op("append.reserve", self.path)
        return self.inner.reserve(end)

    def sync(self) -> None:
        self.fs._op("append.sync", self.path)
        self.inner.sync()
        self.fs._note_synced(self.path)

    def close(self, final_size: int) -> None:
        self.fs._close(self._token, "append.close", self.path, lambda: self.inner.close(final_size))


class _ReadFile:
    def __init__(self, fs: FaultyFileSystem, inner: ReadFile) -> None:
        self.fs = fs
        self.inner = inner
        self.path = inner.path
        self.size = inner.size
        self.buffer: ReadBuffer = inner.buffer
        self._token = fs._track(inner.close)

    def close(self) -> None:
        self.fs._close(self._token, "read.close", self.path, self.inner.close)


class _Writer:
    def __init__(self, fs: FaultyFileSystem, inner: Writer) -> None:
        self.fs = fs
        self.inner = inner
        self.path = inner.path
        self._written = 0
        self._token = fs._track(inner.close)

    def write(self, data: bytes) -> None:
        self.fs._op("writer.write", self.path)
        self.inner.write(data)
        self._written += len(data)
        self.fs._note_written(self.path, self._written)

    def sync(self) -> None:
        self.fs._op("writer.sync", self.path)
        self.inner.sync()
        self.fs._note_synced(self.path)

    def close(self) -> None:
        self.fs._close(self._token, "writer.close", self.path, self.inner.close)


class _LockHandle:
    def __init__(self, fs: FaultyFileSystem, inner: LockHandle, path: str) -> None:
        self.fs = fs
        self.inner = inner
        self.path = path
        self._token = fs._track(inner.close)

    def write_owner(self, text: str) -> None:
        self.fs._op("lock.write_owner", self.path)
        self.inner.write_owner(text)

    def close(self) -> None:
        self.fs._close(self._token, "lock.close", self.path, self.inner.close)
