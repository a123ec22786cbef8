"""``MemoryStore``: the ``memory`` engine, a dict behind the ``KvStore`` interface.

Nothing is written anywhere: the ``path`` is ignored and every key is gone at ``close`` (or when
the process ends). It exists as the simplest correct engine: the reference model the contract
tests hold the other engines to, and a stand-in for tests of code built on ``KvStore``.

Guarantees: every operation is atomic with respect to other threads (one lock); a batch is
applied entirely or not at all; ``sync`` and ``compact`` make nothing more durable (there is
nothing to make durable), ``compact`` only drops expired keys early.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from kvs.errors import KeyNotFound, StoreClosedError
from kvs.store import Key, KvStore, SyncPolicy, Value, WriteBatch, expiry_ms, now_ms, to_bytes

_POLICIES = ("always", "everysec", "no")


def _key(key: object) -> tuple[bytes, bool]:
    """``(raw key, given as str)``."""
    if isinstance(key, str):
        return key.encode(), True
    return to_bytes(key, "key"), False


def _value(value: object) -> Value:
    """The value as it is kept: ``str`` stays ``str``, any bytes-like becomes ``bytes``."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        value.encode()  # as the engines that store UTF-8: a lone surrogate is refused
        return value
    return to_bytes(value, "value")


class MemoryStore(KvStore):
    """The ``memory`` engine. ``MemoryStore(path, sync=...)``: both are accepted for symmetry
    with the on-disk engines and ignored; any other option is a ``TypeError``.

    Thread safety: ``_lock`` guards ``_data`` and ``_expiry``; every method takes it.
    Invariant: a key in ``_expiry`` is also in ``_data``.
    """

    def __init__(
        self, path: str | None = None, *, sync: SyncPolicy = "everysec", **unknown: Any
    ) -> None:
        if unknown:
            raise TypeError(
                f"the memory engine has no option {', '.join(map(repr, sorted(unknown)))}; "
                "it takes: sync"
            )
        if sync not in _POLICIES:
            raise ValueError(f"sync must be 'always', 'everysec' or 'no', not {sync!r}")
        self.path = "" if path is None else str(path)
        self._lock = threading.Lock()
        # raw key -> (value as set, key was given as str)
        self._data: dict[bytes, tuple[Value, bool]] = {}
        self._expiry: dict[bytes, int] = {}
        self._closed = False

    def _check_open(self) -> None:
        """Requires ``_lock``."""
        if self._closed:
            raise StoreClosedError(f"memory store {self.path!r} is closed")

    def _live(self, raw: bytes, now: int | None = None) -> bool:
        """Whether ``raw`` is present and unexpired; drops it if it expired. Requires ``_lock``."""
        if raw not in self._data:
            return False
        expires = self._expiry.get(raw)
        if expires is not None and expires <= (now_ms() if now is None else now):
            del self._data[raw]
            del self._expiry[raw]
            return False
        return True

    # -- reads -------------------------------------------------------------------------------

    def get(self, key: Key) -> Value | None:
        raw, _ = _key(key)
        with self._lock:
            self._check_open()
            return self._data[raw][0] if self._live(raw) else None

    def ttl(self, key: Key) -> float | None:
        raw, _ = _key(key)
        with self._lock:
            self._check_open()
            if not self._live(raw):
                raise KeyNotFound(key)
            expires = self._expiry.get(raw)
        return None if expires is None else max(0.0, (expires - now_ms()) / 1000)

    def scan(self, prefix: Key = b"") -> Iterator[Key]:
        # Not a generator: the snapshot is taken now, at the call, not at the first next().
        raw_prefix = to_bytes(prefix, "prefix")
        with self._lock:
            self._check_open()
            now = now_ms()
            selected = sorted(
                (raw, is_str)
                for raw, (_, is_str) in self._data.items()
                if raw.startswith(raw_prefix)
                and not (raw in self._expiry and self._expiry[raw] <= now)
            )
        return iter([raw.decode() if is_str else raw for raw, is_str in selected])

    def items(self, prefix: Key = b"") -> Iterator[tuple[Key, Value]]:
        raw_prefix = to_bytes(prefix, "prefix")
        with self._lock:
            self._check_open()
            now = now_ms()
            selected = sorted(
                (raw, is_str, value)
                for raw, (value, is_str) in self._data.items()
                if raw.startswith(raw_prefix)
                and not (raw in self._expiry and self._expiry[raw] <= now)
            )
        return iter([(raw.decode() if is_str else raw, value) for raw, is_str, value in selected])

    def __len__(self) -> int:
        with self._lock:
            self._check_open()
            now = now_ms()
            return len(self._data) - sum(1 for ms in self._expiry.values() if ms <= now)

    # -- writes ------------------------------------------------------------------------------

    def set(self, key: Key, value: Value, ttl: float | None = None) -> None:
        raw, is_str = _key(key)
        kept = _value(value)
        expires = None if ttl is None else expiry_ms(ttl)
        with self._lock:
            self._check_open()
            self._put(raw, kept, is_str, expires)

    def _put(self, raw: bytes, value: Value, is_str: bool, expires: int | None) -> None:
        """Requires ``_lock``."""
        self._data[raw] = (value, is_str)
        if expires is None:
            self._expiry.pop(raw, None)
        else:
            self._expiry[raw] = expires

    def remove(self, key: Key) -> None:
        raw, _ = _key(key)
        with self._lock:
            self._check_open()
            if not self._live(raw):
                raise KeyNotFound(key)
            del self._data[raw]
            self._expiry.pop(raw, None)

    def expire(self, key: Key, ttl: float | None) -> bool:
        raw, _ = _key(key)
        expires = None if ttl is None else expiry_ms(ttl)
        with self._lock:
            self._check_open()
            if not self._live(raw):
                return False
            if expires is None:
                self._expiry.pop(raw, None)
            else:
                self._expiry[raw] = expires
            return True

    def write(self, batch: WriteBatch) -> None:
        # Convert and validate everything before taking the lock: a bad type or ttl anywhere
        # in the batch must leave the store untouched.
        prepared: list[tuple[bool, bytes, Value, bool, int | None, bool]] = []
        for op, key, value, ttl, missing_ok in batch.ops:
            raw, is_str = _key(key)
            if op == "set":
                assert value is not None
                expires = None if ttl is None else expiry_ms(ttl)
                prepared.append((True, raw, _value(value), is_str, expires, False))
            else:
                prepared.append((False, raw, b"", False, None, missing_ok))
        with self._lock:
            self._check_open()
            # Decide every remove against the state the batch itself builds up, then apply:
            # a KeyNotFound is raised before anything changed.
            present: dict[bytes, bool] = {}
            for is_set, raw, _, _, _, missing_ok in prepared:
                if raw not in present:
                    present[raw] = self._live(raw)
                if not is_set and not present[raw] and not missing_ok:
                    raise KeyNotFound(raw)
                present[raw] = is_set
            for is_set, raw, value, is_str, expires, _ in prepared:
                if is_set:
                    self._put(raw, value, is_str, expires)
                else:
                    self._data.pop(raw, None)
                    self._expiry.pop(raw, None)

    def update(self, items: Mapping[Key, Value] | Iterable[tuple[Key, Value]]) -> None:
        batch = WriteBatch()
        for key, value in items.items() if isinstance(items, Mapping) else items:
            batch.set(key, value)
        self.write(batch)

    def clear(self) -> None:
        with self._lock:
            self._check_open()
            self._data.clear()
            self._expiry.clear()

    # -- maintenance -------------------------------------------------------------------------

    def sync(self) -> None:
        with self._lock:
            self._check_open()

    def compact(self) -> None:
        with self._lock:
            self._check_open()
            now = now_ms()
            for raw in [raw for raw, ms in self._expiry.items() if ms <= now]:
                del self._data[raw]
                del self._expiry[raw]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._data = {}
            self._expiry = {}

    def stats(self) -> dict[str, int | float | str]:
        with self._lock:
            self._check_open()
            now = now_ms()
            live = [
                (raw, value)
                for raw, (value, _) in self._data.items()
                if not (raw in self._expiry and self._expiry[raw] <= now)
            ]
            return {
                "engine": "memory",
                "keys": len(live),
                "live_bytes": sum(
                    len(raw) + (len(v.encode()) if isinstance(v, str) else len(v))
                    for raw, v in live
                ),
                "stale_bytes": 0,
                "expiring_keys": len(self._expiry),
                "sync": "none",
            }

    def __repr__(self) -> str:
        return f"<MemoryStore{' closed' if self._closed else ''}>"
