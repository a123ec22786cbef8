"""The file-system seam: every byte the log engine reads or writes goes through here.

The engine never imports ``os`` for file work. ``OsFileSystem`` is the real thing; tests wrap it
(``kvs.log.faultfs.FaultyFileSystem``) to count operations, fail the Nth one, or stop the world
at a chosen step to simulate a crash.

Three kinds of open file:

* ``AppendFile``: the active data file. It is sized up front to its capacity (a sparse file),
  blocks are reserved in chunks with ``posix_fallocate`` *before* they are written (so a full
  disk is an ``OSError`` here, never a ``SIGBUS`` later), and records are copied straight into a
  shared memory map. A write into a ``MAP_SHARED`` mapping is in the kernel's page cache the
  moment the copy ends, so a killed process loses nothing it wrote; ``sync`` is ``fdatasync``.
* ``ReadFile``: a sealed data file, mapped read-only. A read is a slice of the map.
* ``Writer``: a new file written front to back (hint files, compaction output), then synced.

Buffers are anything that slices like ``bytes``: the engine reads ``buffer[a:b]`` and writes
``buffer[a:b] = data``. For the OS they are ``mmap`` objects.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from typing import Protocol

#: Disk blocks are reserved for the active file this many bytes at a time (at least).
RESERVE_CHUNK = 4 << 20


class Buffer(Protocol):
    def __getitem__(self, index: slice, /) -> bytes: ...

    def __setitem__(self, index: slice, value: bytes, /) -> None: ...

    def __len__(self) -> int: ...


class ReadBuffer(Protocol):
    def __getitem__(self, index: slice, /) -> bytes: ...

    def __len__(self) -> int: ...


class AppendFile(Protocol):
    path: str
    buffer: Buffer
    capacity: int

    def reserve(self, end: int) -> int:
        """Make sure bytes ``[0, end)`` have disk blocks; return how many bytes now have.

        Raises ``OSError`` (ENOSPC) when the disk is full.
        """

    def sync(self) -> None:
        """Make everything written so far durable (``fdatasync``)."""

    def close(self, final_size: int) -> None:
        """Unmap, cut the file to ``final_size`` bytes, sync that, and close it."""


class ReadFile(Protocol):
    path: str
    buffer: ReadBuffer
    size: int

    def close(self) -> None: ...


class Writer(Protocol):
    path: str

    def write(self, data: bytes) -> None: ...

    def sync(self) -> None: ...

    def close(self) -> None: ...


class LockHandle(Protocol):
    def write_owner(self, text: str) -> None: ...

    def close(self) -> None: ...


class FileSystem(Protocol):
    """What the engine may do to the file system; nothing else."""

    def makedirs(self, path: str) -> None: ...

    def listdir(self, path: str) -> list[str]: ...

    def size(self, path: str) -> int: ...

    def read_bytes(self, path: str) -> bytes: ...

    def create(self, path: str) -> Writer: ...

    def open_append(self, path: str, capacity: int) -> AppendFile: ...

    def open_read(self, path: str) -> ReadFile: ...

    def truncate(self, path: str, size: int) -> None: ...

    def rename(self, src: str, dst: str) -> None: ...

    def remove(self, path: str) -> None: ...

    def fsync_dir(self, path: str) -> None: ...

    def lock(self, path: str) -> LockHandle:
        """Take an exclusive lock on ``path`` at once; ``BlockingIOError`` if it is held."""


class OsAppendFile:
    def __init__(self, path: str, capacity: int) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            self._allocated = size
            if size < capacity:
                os.ftruncate(fd, capacity)
            self.capacity = max(size, capacity)
            self._map = mmap.mmap(fd, self.capacity)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.buffer: Buffer = self._map

    def reserve(self, end: int) -> int:
        if end > self._allocated:
            target = min(max(end, self._allocated + RESERVE_CHUNK), self.capacity)
            os.posix_fallocate(self._fd, self._allocated, target - self._allocated)
            self._allocated = target
        return self._allocated

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def close(self, final_size: int) -> None:
        try:
            self._map.close()
            os.ftruncate(self._fd, final_size)
            # Durable before the file counts as sealed: a sealed file must not regain its
            # preallocated zero tail after a power cut (that would read as corruption).
            os.fsync(self._fd)
        finally:
            os.close(self._fd)


class OsReadFile:
    def __init__(self, path: str) -> None:
        self.path = path
        with open(path, "rb") as f:
            self.size = os.fstat(f.fileno()).st_size
            # An empty file cannot be mapped; it has nothing to read anyway.
            self.buffer: ReadBuffer = (
                mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if self.size else b""
            )

    def close(self) -> None:
        if isinstance(self.buffer, mmap.mmap):
            self.buffer.close()


class OsWriter:
    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


class OsLockHandle:
    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            # flock, not fcntl: an flock belongs to this open file description, so closing some
            # other descriptor on the same file does not drop it (SQLite's POSIX-lock trap).
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise BlockingIOError(error.errno, "lock is held", path) from None
            raise
        self._fd = fd

    def write_owner(self, text: str) -> None:
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, text.encode(), 0)

    def close(self) -> None:
        if self._fd >= 0:  # once only: the number may belong to another file afterwards
            fd, self._fd = self._fd, -1
            os.close(fd)


class OsFileSystem:
    """The real file system."""

    def makedirs(self, path: str) -> None:
        os.makedirs(path, mode=0o700, exist_ok=True)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def size(self, path: str) -> int:
        return os.stat(path).st_size

    def read_bytes(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def create(self, path: str) -> Writer:
        return OsWriter(path)

    def open_append(self, path: str, capacity: int) -> AppendFile:
        return OsAppendFile(path, capacity)

    def open_read(self, path: str) -> ReadFile:
        return OsReadFile(path)

    def truncate(self, path: str, size: int) -> None:
        os.truncate(path, size)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def remove(self, path: str) -> None:
        os.remove(path)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def lock(self, path: str) -> LockHandle:
        return OsLockHandle(path)
