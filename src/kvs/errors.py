"""The kvs error hierarchy.

Every error the library raises on purpose is a ``KvsError``. The command-line tools map each
kind to one line on stderr and one exit code (see ``kvs.cli.kvs.EXIT_CODES``).
"""

from __future__ import annotations


class KvsError(Exception):
    """Root of every error kvs raises on purpose."""


class KeyNotFound(KvsError, KeyError):
    """``remove`` (or ``del store[key]``) of a key that is not in the store."""

    def __init__(self, key: object = None) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return "Key not found"


class CorruptionError(KvsError):
    """A file holds bytes that fail their checksum or do not parse.

    ``path`` and ``offset`` say where; nothing after that point in the file was trusted.
    """

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"corruption in {path} at offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class StoreLockedError(KvsError):
    """Another process holds the store's directory."""

    def __init__(self, path: str, pid: int | None) -> None:
        holder = f"process {pid}" if pid is not None else "another process"
        super().__init__(f"store {path} is locked by {holder}")
        self.path = path
        self.pid = pid


class StoreClosedError(KvsError):
    """The store was closed (or was opened in a parent process before a fork)."""


class ReadOnlyError(KvsError):
    """Writes are refused because an earlier write or fsync failed.

    Data already acknowledged stays readable; reopen the store to write again.
    """


class LimitError(KvsError, ValueError):
    """A key, value or batch is larger than the store's configured limit."""


class StorageError(KvsError, OSError):
    """The operating system refused a file operation; ``path`` names the file."""

    def __init__(self, path: str, error: OSError) -> None:
        self.reason = error.strerror or str(error)
        OSError.__init__(self, error.errno, f"{self.reason}: {path}")
        self.path = path

    def __str__(self) -> str:
        return f"{self.reason}: {self.path}"


class FormatError(KvsError):
    """A store directory holds files of an unknown format version."""


class NotSupportedError(KvsError):
    """The engine cannot do what was asked, as asked (for example a batch whose keys span
    several hash slots of a Redis Cluster, which cannot be applied atomically)."""
