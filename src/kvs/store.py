"""``KvStore``: the public face of a store, whatever engine is behind it.

Keys and values are ``str`` or ``bytes`` (``bytearray`` and ``memoryview`` are taken as bytes).
A ``str`` is stored as its UTF-8 encoding plus a flag, so:

* ``get`` returns a value of the type it was set with (``str`` or ``bytes``);
* ``"a"`` and ``b"a"`` name the *same* key; iteration and scans yield each key as the type it
  was last set with.

Anything else (``int``, ``bool``, ``None``, ...) is a ``TypeError``: convert it first.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

from kvs.errors import KeyNotFound

Key = str | bytes
Value = str | bytes
SyncPolicy = Literal["always", "everysec", "no"]


def to_bytes(data: object, what: str) -> bytes:
    """``data`` as bytes, for the types a key or value may have (``str`` is UTF-8)."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"{what} must be str or bytes, not {type(data).__name__}; convert it first")


def now_ms() -> int:
    """Wall-clock Unix time in milliseconds: the clock every engine's expiry uses."""
    return time.time_ns() // 1_000_000


def expiry_ms(ttl: float, ceiling: int = 1 << 63) -> int:
    """The wall-clock expiry, in ms, of a ``ttl`` of seconds from now.

    Raises ``ValueError`` for a ttl that is not positive and finite, or whose expiry would not
    fit below ``ceiling`` (the engine's field: a signed 64-bit INTEGER in SQLite by default).
    """
    if not ttl > 0 or ttl == float("inf"):
        raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
    expires = now_ms() + max(1, int(ttl * 1000))
    if expires >= ceiling:
        raise ValueError(f"ttl of {ttl!r} seconds is too large")
    return expires


@dataclass
class WriteBatch:
    """Sets and removes applied together by ``KvStore.write``: all of them, or none.

    Removes of absent keys raise ``KeyNotFound`` when the batch is written (and nothing is
    applied) unless ``missing_ok=True``.
    """

    ops: list[tuple[Literal["set", "remove"], Key, Value | None, float | None, bool]] = field(
        default_factory=list
    )

    def set(self, key: Key, value: Value, ttl: float | None = None) -> None:
        self.ops.append(("set", key, value, ttl, False))

    def remove(self, key: Key, missing_ok: bool = False) -> None:
        self.ops.append(("remove", key, None, None, missing_ok))

    def __len__(self) -> int:
        return len(self.ops)


class _BatchContext:
    def __init__(self, store: KvStore) -> None:
        self._store = store
        self.batch = WriteBatch()

    def __enter__(self) -> WriteBatch:
        return self.batch

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self._store.write(self.batch)


class KvStore(ABC):
    """A persistent key-value store. Open one with ``KvStore.open(path, **options)``.

    Thread safety: every method may be called from any number of threads at once.
    """

    @classmethod
    def open(cls, path: str, *, engine: str = "kvs", **options: Any) -> KvStore:
        """Open (creating if missing) the store at ``path`` with the named engine (see
        ``kvs.engines``). Options of the default log engine: see ``kvs.log.engine.LogStore``.
        """
        from kvs import engines

        return engines.open_engine(engine, path, **options)

    # -- the engine's part -------------------------------------------------------------------

    @abstractmethod
    def set(self, key: Key, value: Value, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``; with ``ttl``, the key vanishes after that many seconds.

        A set without ``ttl`` clears any expiry the key had.
        """

    @abstractmethod
    def get(self, key: Key) -> Value | None:
        """The value under ``key`` (``str`` or ``bytes``, as it was set), or ``None``."""

    @abstractmethod
    def remove(self, key: Key) -> None:
        """Remove ``key``; raises ``KeyNotFound`` (a ``KeyError``) if it is absent."""

    @abstractmethod
    def ttl(self, key: Key) -> float | None:
        """Seconds until ``key`` expires, ``None`` if it never does; ``KeyNotFound`` if absent."""

    @abstractmethod
    def expire(self, key: Key, ttl: float | None) -> bool:
        """Set (or with ``None`` remove) the expiry of an existing key; False if it is absent."""

    @abstractmethod
    def write(self, batch: WriteBatch) -> None:
        """Apply every operation of ``batch`` atomically, also across a crash."""

    @abstractmethod
    def scan(self, prefix: Key = b"") -> Iterator[Key]:
        """The keys that start with ``prefix``, in byte order (a snapshot, taken at the call)."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def sync(self) -> None:
        """Make every write so far durable now, whatever the sync policy."""

    @abstractmethod
    def compact(self) -> None:
        """Reclaim the space of overwritten, removed and expired records now."""

    @abstractmethod
    def close(self) -> None:
        """Flush, sync and release the store. Idempotent."""

    @abstractmethod
    def stats(self) -> dict[str, int | float | str]:
        """Counters that describe the store (keys, bytes, files, ...)."""

    # -- conveniences, the same for every engine ---------------------------------------------

    def update(self, items: Mapping[Key, Value] | Iterable[tuple[Key, Value]]) -> None:
        """Set many keys at once, atomically."""
        batch = WriteBatch()
        for key, value in items.items() if isinstance(items, Mapping) else items:
            batch.set(key, value)
        self.write(batch)

    def clear(self) -> None:
        """Remove every key, atomically. Keys other threads set meanwhile may survive."""
        batch = WriteBatch()
        for key in list(self.scan()):
            batch.remove(key, missing_ok=True)
        self.write(batch)

    def batch(self) -> _BatchContext:
        """``with store.batch() as b: b.set(...); b.remove(...)``, written on a clean exit."""
        return _BatchContext(self)

    def items(self, prefix: Key = b"") -> Iterator[tuple[Key, Value]]:
        """``(key, value)`` pairs for the keys starting with ``prefix``, in byte order."""
        for key in self.scan(prefix):
            value = self.get(key)
            if value is not None:
                yield key, value

    def __getitem__(self, key: Key) -> Value:
        value = self.get(key)
        if value is None:
            raise KeyNotFound(key)
        return value

    def __setitem__(self, key: Key, value: Value) -> None:
        self.set(key, value)

    def __delitem__(self, key: Key) -> None:
        self.remove(key)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str | bytes | bytearray | memoryview):
            return False
        return self.get(key if isinstance(key, str | bytes) else bytes(key)) is not None

    def __iter__(self) -> Iterator[Key]:
        return self.scan()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
