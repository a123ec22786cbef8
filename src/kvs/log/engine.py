"""``LogStore``: the Bitcask-style log engine behind ``KvStore.open``.

Parts, each in its own module: ``fs`` (the file-system seam), ``filenames``, ``record`` (data
files), ``hintfile``, ``recovery`` (open), ``compaction`` (merge) and ``durability`` (fsync
policies). This module wires them together and owns the in-memory state.

Thread safety / invariants
--------------------------
* Writers (set, remove, write, rotation, the index swap of a compaction) hold ``_lock``; they
  copy the record into the active file's map *before* they publish its location in ``_index``.
* Readers take no lock. ``_index`` maps a key to an int *location*::

      file_id << 64 | offset << 32 | end          (end = offset + record size)

  which decodes with the fewest big-int operations (the read path is measured). Whether a key
  was given as ``str`` is read from its record's flags when keys are listed.

  and ``_views`` maps a file number to a buffer. A location in ``_index`` always names a
  complete, checksummed record in a file that is in ``_views``, or (for a moment during a
  rotation or compaction) a file whose buffer was just swapped or closed; a reader that trips
  on that retries once under ``_lock`` (``_get_slow``).
* ``_sync_lock`` is held by whoever fsyncs the active file or replaces it; lock order is
  ``_lock`` then ``_sync_lock``. Compactions are serialised by ``_compaction_lock``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import accumulate, repeat
from typing import NoReturn

from crc32c import crc32c

from kvs.errors import (
    CorruptionError,
    KeyNotFound,
    KvsError,
    LimitError,
    ReadOnlyError,
    StorageError,
    StoreClosedError,
    StoreLockedError,
)
from kvs.log import compaction, filenames, hintfile, record
from kvs.log.durability import Durability
from kvs.log.fs import AppendFile, FileSystem, LockHandle, OsFileSystem, ReadBuffer, ReadFile
from kvs.log.recovery import FileState, location_size, location_sizes, recover
from kvs.store import Key, KvStore, SyncPolicy, Value, WriteBatch, expiry_ms, now_ms, to_bytes

log = logging.getLogger("kvs")

_HEADER_PACK = record.RECORD_HEADER.pack
_CRC_PACK = record.CRC.pack
_crc32 = crc32c  # the C function itself: no Python wrapper call on the hot paths
_RESIDUE = record.CRC_RESIDUE
_HEAD = record.RECORD_HEADER_SIZE
_FRAMING = record.FRAMING
_U32 = 0xFFFFFFFF
_VALUE_STR = record.VALUE_STR
_EXPIRES = struct.Struct("<Q")

MIB = 1 << 20
#: Format ceiling for one record (offsets and sizes are 31-32 bits in a location).
_MAX_VALUE_CEILING = 1 << 30
#: A batch is one record: it must fit the same 31-bit size, and its members 32-bit offsets.
MAX_BATCH_BYTES = 1 << 30

#: At close, write a hint for the active file only if this many bytes are not yet covered.
HINT_AT_CLOSE_MIN_BYTES = 256 << 10


_open_stores: weakref.WeakSet[LogStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_open_stores):
        _open_stores.discard(store)  # a grandchild must not close the descriptor again
        store._disown(
            f"store {store.path} was opened in process {store._owner_pid}; "
            "a forked child must open the store itself"
        )
        # The child's copy of the lock descriptor shares the parent's flock: left open, it
        # would keep the store locked after the parent closes it, for as long as the child
        # lives. Closing a copy does not release the lock; the parent keeps it.
        with contextlib.suppress(OSError):
            store._lock_handle.close()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Unusable(dict[bytes, int]):
    """Stands in for the index of a closed store: every read raises ``StoreClosedError``."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason

    def _raise(self, *args: object) -> NoReturn:
        raise StoreClosedError(self.reason)

    get = __getitem__ = __contains__ = __iter__ = __len__ = _raise
    items = keys = values = pop = copy = _raise


@dataclass
class _HintJob:
    """What a hint for ``state`` needs, captured when the file stopped taking writes."""

    state: FileState
    index: dict[bytes, int]  # a copy: dict.copy() allocates no per-key objects
    tombstones: set[bytes]
    expiry: dict[bytes, int]


def _write_hint(fs: FileSystem, directory: str, job: _HintJob) -> None:
    """Write the hint file for ``job.state`` (temp, sync, rename, sync dir). Best effort:
    a hint only saves time at the next open, so a failure is logged, not raised."""
    state = job.state
    low, high = state.file_id << 64, (state.file_id + 1) << 64
    mask = (1 << 64) - 1
    keys: list[bytes] = []
    locations: list[int] = []
    expiries: dict[int, int] = {}
    expiry = job.expiry
    for key, location in job.index.items():
        if low <= location < high:
            if expiry and key in expiry:
                expiries[len(keys)] = expiry[key]
            keys.append(key)
            locations.append(location & mask)
    for key in job.tombstones:
        keys.append(key)
        locations.append(0)
    path = filenames.hint_file(directory, state.file_id)
    temp = filenames.temp_file(path)
    data = hintfile.encode(state.file_id, state.nonce, state.end, keys, locations, expiries)
    try:
        writer = fs.create(temp)
        try:
            writer.write(data)
            writer.sync()
        finally:
            writer.close()
        fs.rename(temp, path)
        fs.fsync_dir(directory)
        state.hinted = state.end
    except OSError as error:
        log.warning("could not write hint file %s: %s", path, error)
        with contextlib.suppress(OSError):
            fs.remove(temp)


class LogStore(KvStore):
    """The log engine. Open with ``KvStore.open(path, **options)``; options:

    ``sync``
        ``"always"``, ``"everysec"`` (default) or ``"no"``; see ``kvs.log.durability``.
    ``max_file_size``
        Data files rotate at this size (default 64 MiB).
    ``max_key_size`` / ``max_value_size``
        Larger keys or values raise ``LimitError`` (defaults 1 MiB and 512 MiB).
    ``compaction_min_stale_bytes`` / ``compaction_stale_ratio``
        Compaction starts in the background once the bytes of overwritten, removed and expired
        records pass both this many bytes (default 8 MiB) and this multiple of the live bytes
        (default 1.0, i.e. half the data is garbage).
    ``auto_compact``
        ``False`` leaves compaction to explicit ``compact()`` calls.
    ``fs``
        The file-system seam (tests pass a fault-injecting one).
    """

    def __init__(
        self,
        path: str,
        *,
        sync: SyncPolicy = "everysec",
        max_file_size: int = 64 * MIB,
        max_key_size: int = 1 * MIB,
        max_value_size: int = 512 * MIB,
        compaction_min_stale_bytes: int = 8 * MIB,
        compaction_stale_ratio: float = 1.0,
        auto_compact: bool = True,
        fs: FileSystem | None = None,
    ) -> None:
        if sync not in ("always", "everysec", "no"):
            raise ValueError(f"sync must be 'always', 'everysec' or 'no', not {sync!r}")
        if not 1 <= max_value_size <= _MAX_VALUE_CEILING:
            raise ValueError(f"max_value_size must be between 1 and {_MAX_VALUE_CEILING}")
        if not 1 <= max_key_size <= _MAX_VALUE_CEILING:
            raise ValueError(f"max_key_size must be between 1 and {_MAX_VALUE_CEILING}")
        if max_key_size + max_value_size + record.FRAMING > record.MAX_RECORD_LEN:
            raise ValueError("max_key_size + max_value_size must leave a record under 2 GiB")
        if not 4096 <= max_file_size < 1 << 32:
            raise ValueError("max_file_size must be at least 4096 and below 4 GiB")
        self.path = os.path.abspath(os.fspath(path))
        self._fs: FileSystem = fs if fs is not None else OsFileSystem()
        self._max_file_size = max_file_size
        self._max_key = max_key_size
        self._max_value = max_value_size
        self._min_stale = compaction_min_stale_bytes
        self._stale_ratio = compaction_stale_ratio
        self._auto_compact = auto_compact
        self._sync_policy: SyncPolicy = sync
        self._sync_always = sync == "always"
        self._owner_pid = os.getpid()

        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._compaction_lock = threading.Lock()
        self._compaction_thread: threading.Thread | None = None
        self._pending_hints: dict[int, _HintJob] = {}
        self._durability_syncs = 0
        self._closed = False
        self._failure: str | None = None
        self._failure_delivered = False  # a caller got ReadOnlyError because of _failure

        self._refuse_other_engines_data()
        self._lock_handle = self._take_lock()
        try:
            self._open_files()
        except BaseException as error:
            with contextlib.suppress(OSError):  # a failed close still frees the descriptor
                self._lock_handle.close()
            if isinstance(error, OSError) and not isinstance(error, KvsError):
                raise StorageError(getattr(error, "filename", None) or self.path, error) from None
            raise
        self._durability = Durability(sync, self._sync_active, self._on_sync_failure)
        _open_stores.add(self)

    # -- opening -----------------------------------------------------------------------------

    def _refuse_other_engines_data(self) -> None:
        """Opened over another engine's data, this engine would show an empty store and
        write its files beside that data: refuse before anything is created (the sqlite
        engine refuses the other way round)."""
        fs = self._fs
        try:
            names = fs.listdir(self.path)
        except FileNotFoundError:
            return  # a new store
        except OSError as error:
            raise StorageError(self.path, error) from None
        try:
            holder = filenames.engine_holding(
                names, lambda: fs.read_bytes(filenames.engine_file(self.path))
            )
        except OSError as error:
            raise StorageError(filenames.engine_file(self.path), error) from None
        if holder not in (None, "kvs"):
            raise KvsError(
                f"{self.path} holds data of the {holder!r} engine; open it with engine={holder!r}"
            )

    def _take_lock(self) -> LockHandle:
        fs = self._fs
        try:
            fs.makedirs(self.path)
            lock_path = filenames.lock_file(self.path)
            try:
                handle = fs.lock(lock_path)
            except BlockingIOError:
                raise StoreLockedError(self.path, self._read_owner(lock_path)) from None
            try:
                handle.write_owner(f"{os.getpid()}\n")
            except BaseException:
                with contextlib.suppress(OSError):
                    handle.close()
                raise
        except OSError as error:
            if isinstance(error, KvsError):
                raise
            raise StorageError(getattr(error, "filename", None) or self.path, error) from None
        return handle

    def _read_owner(self, lock_path: str) -> int | None:
        try:
            return int(self._fs.read_bytes(lock_path).split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _open_files(self) -> None:
        try:
            found = recover(self._fs, self.path)
        except OSError as error:
            if isinstance(error, KvsError):
                raise
            raise StorageError(getattr(error, "filename", None) or self.path, error) from None
        self._index: dict[bytes, int] = found.index
        self._expiry: dict[bytes, int] = found.expiry
        self._views: dict[int, ReadBuffer] = {}
        self._sealed: dict[int, FileState] = {}
        self._next_id = found.next_id
        self._active_tombstones: set[bytes] = set()
        self._total = 0  # bytes of records in all data files
        self._pos_base = 0  # logical position of the active file's offset 0 (durability)
        try:
            newest = found.files[-1] if found.files else None
            if newest is not None and found.torn_newest:
                # Cut the torn tail before anything is appended after it or the file is sealed.
                assert newest.reader is not None
                newest.reader.close()
                self._fs.truncate(newest.path, newest.end)
                if newest.end >= self._max_file_size:
                    # Sealed now, with newer files to come: the cut must be durable, or a power
                    # cut brings the torn tail back in a file that is no longer the newest,
                    # where it reads as corruption. (Closing an append handle syncs.)
                    self._fs.open_append(newest.path, newest.end).close(newest.end)
                newest.reader = self._fs.open_read(newest.path)
            for state in found.files:
                if state is newest and state.end < self._max_file_size:
                    break
                assert state.reader is not None
                self._views[state.file_id] = state.reader.buffer
                self._sealed[state.file_id] = state
                self._total += state.end - record.FILE_HEADER_SIZE
            if newest is not None and newest.file_id not in self._sealed:
                assert newest.reader is not None
                newest.reader.close()
                newest.reader = None
                self._active_tombstones = found.newest_tombstones
                self._set_active(newest, self._fs.open_append(newest.path, self._max_file_size))
                if found.torn_newest:
                    self._active.sync()
            else:
                self._start_new_active(self._max_file_size)
        except BaseException:
            for state in found.files:
                if state.reader is not None:
                    with contextlib.suppress(OSError):  # released either way
                        state.reader.close()
            if getattr(self, "_active_open", False):
                self._active_open = False
                with contextlib.suppress(OSError):
                    self._active.close(self._off)
            raise
        self._live = sum(location_sizes(self._index.values()))
        self._compact_at = self._compaction_threshold()

    def _set_active(self, state: FileState, handle: AppendFile) -> None:
        try:
            limit = handle.reserve(state.end)
        except BaseException:
            with contextlib.suppress(OSError):  # not in use yet: nothing to lose
                handle.close(state.end)
            raise
        self._active_state = state
        self._active = handle
        self._active_open = True
        self._buffer = handle.buffer
        self._base = state.file_id << 64
        self._off = state.end
        self._total += state.end - record.FILE_HEADER_SIZE
        self._limit = limit
        self._views[state.file_id] = handle.buffer

    def _start_new_active(self, capacity: int, reserve_ids: int = 0) -> None:
        """Create the next data file and make it the active one.

        On failure (a full disk, an I/O error) the file is removed again and its number given
        back, so that the next attempt makes the same file: a half-made file left behind would
        be damage once a newer file existed.
        """
        next_id = self._next_id
        file_id = next_id + reserve_ids
        self._next_id = file_id + 1
        nonce = record.new_nonce()
        path = filenames.data_file(self.path, file_id)
        try:
            writer = self._fs.create(path)
            try:
                writer.write(record.encode_file_header(file_id, nonce))
                writer.sync()
            finally:
                writer.close()
            # The new file's name must be durable before any write in it is acknowledged.
            self._fs.fsync_dir(self.path)
            state = FileState(file_id, nonce, path, record.FILE_HEADER_SIZE, 0)
            self._active_tombstones = set()
            self._set_active(state, self._fs.open_append(path, capacity))
        except BaseException:
            try:
                if os.path.exists(path):
                    self._fs.remove(path)
            except OSError:
                pass  # the next attempt's create fails on it too: no newer file gets made
            else:
                self._next_id = next_id
            raise

    def _compaction_threshold(self) -> int:
        return max(self._min_stale, int(self._live * self._stale_ratio))

    # -- reads -------------------------------------------------------------------------------

    def get(self, key: Key) -> Value | None:
        # The hot path, measured (bench/bench_embedded.py): every line here costs ~5%.
        if type(key) is not bytes:
            key = key.encode() if type(key) is str else to_bytes(key, "key")
        location = self._index.get(key)
        if location is None or (self._expiry and self._expired(key)):
            return None
        try:
            data = self._views[location >> 64][(location >> 32) & _U32 : location & _U32]
        except (KeyError, ValueError):
            return self._get_slow(key)
        if _crc32(data) != _RESIDUE:
            self._raise_corrupt(location)
        if data[0] & _VALUE_STR:
            return data[_HEAD + len(key) : -4].decode()
        return data[_HEAD + len(key) : -4]

    def _get_slow(self, key: bytes) -> Value | None:
        """A get that raced a file swap: retry with writers held off."""
        with self._lock:
            if self._closed:
                raise StoreClosedError(f"store {self.path} is closed")
            location = self._index.get(key)
            if location is None:
                return None
            view = self._views.get(location >> 64)
            if view is None:
                raise KvsError(f"{filenames.data_file(self.path, location >> 64)} is unavailable")
            data = view[(location >> 32) & _U32 : location & _U32]
        if _crc32(data) != _RESIDUE:
            self._raise_corrupt(location)
        value = data[_HEAD + len(key) : -4]
        return value.decode() if data[0] & _VALUE_STR else value

    def _raise_corrupt(self, location: int) -> NoReturn:
        raise CorruptionError(
            filenames.data_file(self.path, location >> 64),
            (location >> 32) & _U32,
            "record checksum mismatch on read",
        )

    def _expired(self, key: bytes) -> bool:
        expires = self._expiry.get(key)
        return expires is not None and expires <= now_ms()

    def ttl(self, key: Key) -> float | None:
        """Seconds until ``key`` expires; ``None`` if it has no expiry; raises if absent."""
        raw = to_bytes(key, "key")
        if self._index.get(raw) is None or self._expired(raw):
            raise KeyNotFound(key)
        expires = self._expiry.get(raw)
        return None if expires is None else max(0.0, (expires - now_ms()) / 1000)

    def scan(self, prefix: Key = b"") -> Iterator[Key]:
        # Not a generator itself: the snapshot is taken now, at the call (KvStore.scan's
        # promise), not at the first next().
        return self._scan_snapshot(to_bytes(prefix, "prefix"))

    def _scan_snapshot(self, raw_prefix: bytes) -> Iterator[Key]:
        # dict.copy() runs no Python code (list(items()) can, through the GC), so no other
        # thread can change the dict mid-copy.
        items = list(self._index.copy().items())
        expiry = self._expiry
        clock = now_ms() if expiry else 0
        selected = sorted(
            (key, location)
            for key, location in items
            if key.startswith(raw_prefix) and not (expiry and 0 < expiry.get(key, 0) <= clock)
        )
        return (
            key.decode() if self._key_is_str(key, location) else key for key, location in selected
        )

    def _key_is_str(self, key: bytes, location: int) -> bool:
        """Whether ``key`` was last set as ``str``: the KEY_STR flag of its record."""
        offset = (location >> 32) & _U32
        try:
            flags = self._views[location >> 64][offset : offset + 1]
        except (KeyError, ValueError):  # the file was compacted away meanwhile
            with self._lock:
                location = self._index.get(key, location)
                offset = (location >> 32) & _U32
                view = self._views.get(location >> 64)
                if view is None:
                    return False
                flags = view[offset : offset + 1]
        return bool(flags and flags[0] & record.KEY_STR)

    def __len__(self) -> int:
        if self._expiry:
            clock = now_ms()
            return len(self._index) - sum(
                1 for key, ms in list(self._expiry.items()) if ms <= clock and key in self._index
            )
        return len(self._index)

    # -- writes ------------------------------------------------------------------------------

    def _encode(self, key: Key, value: Value, ttl: float | None) -> tuple[bytes, bytes, int]:
        """``(raw key, record, expires_ms)`` for a set; checks types and limits."""
        if type(key) is str:
            raw_key = key.encode()
            flags = record.KEY_STR
        else:
            raw_key = to_bytes(key, "key")
            flags = 0
        if type(value) is str:
            raw_value = value.encode()
            flags |= _VALUE_STR
        else:
            raw_value = to_bytes(value, "value")
        self._check_limits(raw_key, raw_value)
        expires_ms = 0 if ttl is None else self._expires_ms(ttl)
        body = _HEADER_PACK(flags, len(raw_key), len(raw_value), expires_ms) + raw_key + raw_value
        return raw_key, body + _CRC_PACK(_crc32(body)), expires_ms

    def set(self, key: Key, value: Value, ttl: float | None = None) -> None:
        # The hot path: _encode inlined, since a call costs a tenth of a set.
        if type(key) is str:
            raw_key = key.encode()
            flags = record.KEY_STR
        elif type(key) is bytes:
            raw_key = key
            flags = 0
        else:
            raw_key = to_bytes(key, "key")
            flags = 0
        if type(value) is str:
            raw_value = value.encode()
            flags |= _VALUE_STR
        elif type(value) is bytes:
            raw_value = value
        else:
            raw_value = to_bytes(value, "value")
        if len(raw_key) > self._max_key or len(raw_value) > self._max_value:
            self._check_limits(raw_key, raw_value)
        expires_ms = 0 if ttl is None else self._expires_ms(ttl)
        body = _HEADER_PACK(flags, len(raw_key), len(raw_value), expires_ms) + raw_key + raw_value
        lock = self._lock
        lock.acquire()  # not "with": measured ~45 ns (4%) cheaper per set
        try:
            position = self._append_set(raw_key, body + _CRC_PACK(_crc32(body)), expires_ms)
        finally:
            lock.release()
        if self._sync_always:
            self._durability.wait(position)

    def _append_set(self, raw_key: bytes, rec: bytes, expires_ms: int) -> int:
        """Append the set record ``rec`` and point ``raw_key`` at it; return the logical
        position durability must reach. Requires ``_lock``."""
        if self._failure is not None:
            self._refuse_write()
        size = len(rec)
        offset = self._off
        end = offset + size
        if end > self._limit:
            offset = self._make_room(size)
            end = offset + size
        try:
            self._buffer[offset:end] = rec
        except OSError as error:
            self._write_failed(error)
        self._off = end
        index = self._index
        old = index.get(raw_key)
        index[raw_key] = self._base | (offset << 32) | end
        self._total += size
        if old is None:
            self._live += size
        else:
            self._live += size - (old & _U32) + ((old >> 32) & _U32)
            if self._total - self._live > self._compact_at:
                self._schedule_compaction()
        if expires_ms:
            self._expiry[raw_key] = expires_ms
        elif self._expiry:
            self._expiry.pop(raw_key, None)
        if self._active_tombstones:
            self._active_tombstones.discard(raw_key)
        return self._pos_base + end

    def expire(self, key: Key, ttl: float | None) -> bool:
        """Give ``key`` a new time to live (``None``: none, as Redis's PERSIST). Rewrites its
        record with the same value. Returns False, changing nothing, if the key is absent."""
        raw_key = to_bytes(key, "key")
        expires_ms = 0 if ttl is None else self._expires_ms(ttl)
        with self._lock:
            if self._failure is not None:
                self._refuse_write()
            location = self._index.get(raw_key)
            if location is None or (self._expiry and self._expired(raw_key)):
                return False
            data = self._views[location >> 64][(location >> 32) & _U32 : location & _U32]
            if _crc32(data) != _RESIDUE:
                self._raise_corrupt(location)
            value = data[_HEAD + len(raw_key) : -4]
            body = _HEADER_PACK(data[0], len(raw_key), len(value), expires_ms) + raw_key + value
            position = self._append_set(raw_key, body + _CRC_PACK(_crc32(body)), expires_ms)
        if self._sync_always:
            self._durability.wait(position)
        return True

    def clear(self) -> None:
        """Remove every key, atomically (one batch of tombstones). Keys other threads set
        meanwhile may survive."""
        batch = WriteBatch()
        for key in list(self._index):
            batch.remove(key, missing_ok=True)
        self.write(batch)

    def update(self, items: Mapping[Key, Value] | Iterable[tuple[Key, Value]]) -> None:
        """Set many keys at once, atomically (one batch record); no expiry.

        The bulk path: encoding runs in C-level ``map`` calls, not a Python loop per key.
        """
        pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
        if not pairs:
            return
        keys, values = zip(*pairs, strict=True)
        if set(map(type, keys)) != {bytes} or set(map(type, values)) != {bytes}:
            batch = WriteBatch()
            for key, value in pairs:
                batch.set(key, value)
            self.write(batch)
            return
        key_lens = list(map(len, keys))
        value_lens = list(map(len, values))
        if max(key_lens) > self._max_key or max(value_lens) > self._max_value:
            for raw_key, raw_value in zip(keys, values, strict=True):
                self._check_limits(raw_key, raw_value)
        heads = map(_HEADER_PACK, repeat(0), key_lens, value_lens, repeat(0))
        bodies = list(map(b"".join, zip(heads, keys, values, strict=False)))
        crcs = list(map(_CRC_PACK, map(_crc32, bodies)))
        container = record.encode_batch_parts([], crcs, bodies)
        sizes = list(map(_FRAMING.__add__, map(int.__add__, key_lens, value_lens)))
        size = len(container)
        self._check_batch_size(size)
        with self._lock:
            if self._failure is not None:
                self._refuse_write()
            offset = self._off
            if offset + size > self._limit:
                offset = self._make_room(size)
            self._copy_batch(offset, container)
            self._off = offset + size
            self._total += size
            base = self._base
            starts = accumulate(sizes, initial=offset + _HEAD)
            locations = [
                base | at << 32 | at + size for at, size in zip(starts, sizes, strict=False)
            ]
            new = dict(zip(keys, locations, strict=True))
            index = self._index
            olds = list(filter(None, map(index.get, new)))  # a location is never 0
            index.update(new)
            added = sum(sizes) if len(new) == len(sizes) else sum(location_sizes(new.values()))
            self._live += added - sum(location_sizes(olds))
            if self._expiry:
                for key in new:
                    self._expiry.pop(key, None)
            if self._active_tombstones:
                self._active_tombstones.difference_update(new)
            if olds and self._total - self._live > self._compact_at:
                self._schedule_compaction()
            position = self._pos_base + self._off
        if self._sync_always:
            self._durability.wait(position)

    def _copy_batch(self, offset: int, container: bytes) -> None:
        """Copy a batch record in: the header first, on its own, so that a crash in the middle
        leaves either no valid header or a valid one that says how far the torn batch
        reaches (see kvs.log.record). Requires ``_lock``."""
        try:
            self._buffer[offset : offset + _HEAD] = container[:_HEAD]
            self._buffer[offset + _HEAD : offset + len(container)] = container[_HEAD:]
        except OSError as error:
            self._write_failed(error)

    def _write_failed(self, error: OSError) -> NoReturn:
        """A copy into the active file's map failed (only a fault-injecting seam reports
        that; a real map would raise SIGBUS): nothing was published, the call fails, and the
        next write goes to the same offset."""
        if isinstance(error, KvsError):
            raise error
        raise StorageError(self._active.path, error) from None

    def _check_limits(self, raw_key: bytes, raw_value: bytes) -> None:
        if len(raw_key) > self._max_key:
            raise LimitError(f"key of {len(raw_key)} bytes is over the limit of {self._max_key}")
        if len(raw_value) > self._max_value:
            raise LimitError(
                f"value of {len(raw_value)} bytes is over the limit of {self._max_value}"
            )

    @staticmethod
    def _check_batch_size(size: int) -> None:
        if size > MAX_BATCH_BYTES:
            raise LimitError(f"batch of {size} bytes is over the limit of {MAX_BATCH_BYTES}")

    @staticmethod
    def _expires_ms(ttl: float) -> int:
        return expiry_ms(ttl, ceiling=1 << 64)  # the record's expires_ms field is a u64

    def remove(self, key: Key) -> None:
        raw_key = to_bytes(key, "key")
        rec = record.encode_record(record.TOMBSTONE, raw_key, b"")
        size = len(rec)
        with self._lock:
            if self._failure is not None:
                self._refuse_write()
            old = self._index.get(raw_key)
            if old is None or (self._expiry and self._expired(raw_key)):
                raise KeyNotFound(key)
            offset = self._off
            if offset + size > self._limit:
                offset = self._make_room(size)
            try:
                self._buffer[offset : offset + size] = rec
            except OSError as error:
                self._write_failed(error)
            self._off = offset + size
            del self._index[raw_key]
            self._expiry.pop(raw_key, None)
            self._active_tombstones.add(raw_key)
            self._total += size
            self._live -= location_size(old)
            if self._total - self._live > self._compact_at:
                self._schedule_compaction()
            position = self._pos_base + self._off
        if self._sync_always:
            self._durability.wait(position)

    def write(self, batch: WriteBatch) -> None:
        if not batch.ops:
            return
        prepared: list[tuple[bool, bytes, bytes, int, bool]] = []
        for op, key, value, ttl, missing_ok in batch.ops:
            if op == "set":
                assert value is not None
                raw_key, rec, expires_ms = self._encode(key, value, ttl)
                prepared.append((True, raw_key, rec, expires_ms, False))
            else:
                raw_key = to_bytes(key, "key")
                rec = record.encode_record(record.TOMBSTONE, raw_key, b"")
                prepared.append((False, raw_key, rec, 0, missing_ok))
        with self._lock:
            if self._failure is not None:
                self._refuse_write()
            # Decide which removes are real before writing anything: all or nothing.
            present: dict[bytes, bool] = {}
            members: list[tuple[bool, bytes, bytes, int]] = []
            for is_set, raw_key, rec, expires_ms, missing_ok in prepared:
                if raw_key not in present:
                    present[raw_key] = raw_key in self._index and not (
                        self._expiry and self._expired(raw_key)
                    )
                if not is_set and not present[raw_key]:
                    if missing_ok:
                        continue
                    raise KeyNotFound(raw_key)
                present[raw_key] = is_set
                members.append((is_set, raw_key, rec, expires_ms))
            if not members:
                return
            container = record.encode_batch([rec for _, _, rec, _ in members])
            size = len(container)
            self._check_batch_size(size)
            offset = self._off
            if offset + size > self._limit:
                offset = self._make_room(size)
            self._copy_batch(offset, container)
            self._off = offset + size
            self._total += size
            inner = offset + _HEAD
            index, expiry = self._index, self._expiry
            for is_set, raw_key, rec, expires_ms in members:
                old = index.get(raw_key)
                if old is not None:
                    self._live -= location_size(old)
                if is_set:
                    index[raw_key] = self._base | (inner << 32) | (inner + len(rec))
                    self._live += len(rec)
                    if expires_ms:
                        expiry[raw_key] = expires_ms
                    else:
                        expiry.pop(raw_key, None)
                    self._active_tombstones.discard(raw_key)
                else:
                    index.pop(raw_key, None)
                    expiry.pop(raw_key, None)
                    self._active_tombstones.add(raw_key)
                inner += len(rec)
            if self._total - self._live > self._compact_at:
                self._schedule_compaction()
            position = self._pos_base + self._off
        if self._sync_always:
            self._durability.wait(position)

    def _refuse_write(self) -> NoReturn:
        if self._closed:
            raise StoreClosedError(self._failure or f"store {self.path} is closed")
        self._failure_delivered = True
        raise ReadOnlyError(f"store {self.path} is read-only: {self._failure}; reopen it")

    def _make_room(self, size: int) -> int:
        """Room for ``size`` more bytes: reserve disk blocks, or rotate. Returns the offset.

        Requires ``_lock``.
        """
        end = self._off + size
        try:
            if self._active_open and end <= self._active.capacity:
                self._limit = self._active.reserve(end)
                if self._sync_policy == "everysec" and hasattr(self, "_durability"):
                    # Sync what the last reservation held now, in the background: a rotation
                    # syncs the whole unsynced tail under the lock, which was up to a second
                    # of writes (measured, 64 MiB files: rotations took 35-85 ms, now 23-63).
                    self._durability.sync_soon()
                return self._off
            self._rotate(max(self._max_file_size, record.FILE_HEADER_SIZE + size))
            self._limit = self._active.reserve(self._off + size)
        except OSError as error:
            if isinstance(error, KvsError):
                raise
            raise StorageError(self._active.path, error) from None
        return self._off

    def _rotate(self, capacity: int, reserve_ids: int = 0) -> dict[bytes, int] | None:
        """Seal the active file (hint, sync, trim) and start a new one. Requires ``_lock``.
        Returns the copy of the index taken for the sealed file's hint (``None`` if it needed
        none): the index as it still is, for a caller that keeps holding ``_lock``.

        If starting the new file fails (a full disk), there is no file to append to until a
        later write's rotation starts one: the write fails, reads keep working, and writes
        work again once the disk has room (RELIABILITY A10). If sealing fails, the store
        turns read-only until it is reopened.
        """
        with self._sync_lock:
            hint_job = None
            if self._active_open:  # else an earlier start failed: nothing to seal
                old_end = self._off
                hint_job = self._seal_active()
                self._pos_base += old_end
            try:
                self._start_new_active(capacity, reserve_ids)
            except OSError:
                self._limit = -1  # every write goes to _make_room, which tries again
                raise
            finally:
                # Only now: a busy hint thread would make each system call above wait for
                # the GIL, up to a switch interval each (measured: +25 ms per rotation).
                if hint_job is not None:
                    threading.Thread(
                        target=self._background_hint, args=(hint_job,), daemon=True
                    ).start()
        self._durability_mark(self._pos_base)
        return None if hint_job is None else hint_job.index

    def _durability_mark(self, position: int) -> None:
        durability = getattr(self, "_durability", None)
        if durability is not None:
            durability.mark_synced(position)

    def _seal_active(self) -> _HintJob | None:
        """Sync, trim and re-map the active file read-only. Returns the job that writes its
        hint from a snapshot of the index, for the caller to start in the background (or
        ``None``: nothing to hint). Requires ``_lock`` and ``_sync_lock``."""
        state = self._active_state
        state.end = self._off
        # One C-level copy of the index here; the filtering (a Python loop over every key)
        # runs later on another thread, so a rotation does not stall writers for it.
        needs_hint = state.end > max(state.hinted, record.FILE_HEADER_SIZE)
        job = self._hint_job_for_active() if needs_hint else None
        # Map the file read-only before the writable map goes, so that readers always have
        # one; a failure up to here changes nothing. (The new map may extend past the end the
        # file is cut to below; nothing past ``state.end`` is ever read.)
        try:
            self._active.sync()
        except OSError as error:  # never retried silently (docs/format.md section 14)
            self._failure = f"fsync of {state.path} failed: {error}"
            raise
        self._durability_mark(self._pos_base + state.end)
        reader = self._fs.open_read(state.path)
        state.reader = reader
        self._views[state.file_id] = reader.buffer
        self._sealed[state.file_id] = state
        self._active_open = False
        try:
            self._active.close(state.end)  # cut the preallocated tail, and sync that
        except OSError as error:
            self._failure = f"could not seal {state.path}: {error}"
            raise
        if job is not None:  # only now: the job checks that the file is sealed
            self._pending_hints[state.file_id] = job
        return job

    def _background_hint(self, job: _HintJob) -> None:
        with self._compaction_lock:  # a compaction may be about to delete the file
            if self._pending_hints.pop(job.state.file_id, None) is not job:
                return  # close() wrote it already
            if self._closed or job.state.file_id not in self._sealed:
                return
            _write_hint(self._fs, self.path, job)

    def _hint_job_for_active(self) -> _HintJob:
        """A hint job for the active file as it is now. Requires ``_lock``.

        The index is taken with dict.copy(), not list(items()): no tuple per key, so no
        garbage-collector passes either (1M keys: 20 ms instead of 60-150 ms).
        """
        state = self._active_state
        state.end = self._off
        return _HintJob(state, self._index.copy(), set(self._active_tombstones), dict(self._expiry))

    # -- durability --------------------------------------------------------------------------

    def _sync_active(self) -> int:
        """fdatasync the active file; return the logical position now durable."""
        with self._sync_lock:
            if not self._active_open:  # a rotation failed: see _rotate
                if self._failure is not None:
                    raise ReadOnlyError(f"store {self.path} is read-only: {self._failure}")
                return self._pos_base  # the sealing synced all there is; nothing since
            target = self._pos_base + self._off
            if target > self._durability.synced:
                try:
                    self._active.sync()
                    self._durability_syncs += 1
                except OSError as error:
                    if isinstance(error, KvsError):
                        raise
                    raise StorageError(self._active.path, error) from None
            return target

    def _on_sync_failure(self, error: BaseException) -> None:
        if self._failure is None:
            log.error("fsync of %s failed: %s; the store is now read-only", self.path, error)
            self._failure = f"fsync failed: {error}"

    def sync(self) -> None:
        """Make every write so far durable now, whatever the policy."""
        if self._closed:
            raise StoreClosedError(f"store {self.path} is closed")
        self._durability.sync_now()
        if self._failure is not None:
            self._refuse_write()

    # -- compaction --------------------------------------------------------------------------

    def _schedule_compaction(self) -> None:
        """Start a background compaction unless one runs. Requires ``_lock``."""
        if not self._auto_compact or self._closed:
            return
        thread = self._compaction_thread
        if thread is not None and thread.is_alive():
            return
        # Until the compaction measures again, do not ask on every write.
        self._compact_at = self._total
        thread = threading.Thread(target=self._background_compact, name="kvs-compaction")
        thread.daemon = True
        self._compaction_thread = thread
        thread.start()

    def _background_compact(self) -> None:
        try:
            self.compact()
        except StoreClosedError:
            pass
        except Exception:
            log.exception("background compaction of %s failed", self.path)

    def compact(self) -> None:
        with self._compaction_lock:
            self._compact()

    def _compact(self) -> None:
        fs = self._fs
        with self._lock:
            if self._closed:
                raise StoreClosedError(f"store {self.path} is closed")
            if self._failure is not None:
                self._refuse_write()
            if not self._sealed and self._off == record.FILE_HEADER_SIZE:
                return
            # Every file but a fresh active one is an input; outputs get the numbers between.
            reserve = 2 * (len(self._sealed) + 1) + 1
            first_output = self._next_id
            try:
                index = self._rotate(self._max_file_size, reserve_ids=reserve)
            except OSError as error:
                if isinstance(error, KvsError):
                    raise
                raise StorageError(self.path, error) from None
            input_ids = sorted(self._sealed)
            # Under the lock only a C-level copy (1M keys: ~20 ms; the rotation's, if it took
            # one: only read, here and by the hint thread); the selection, a Python loop over
            # every key, runs after it (it held writers off ~200 ms at 1M keys).
            if index is None:
                index = self._index.copy()
            views = dict(self._views)
        input_set = set(input_ids)
        snapshot = [(key, loc) for key, loc in index.items() if loc >> 64 in input_set]
        del index
        output_range = range(first_output, first_output + reserve)
        readers: dict[int, ReadFile] = {}
        try:
            result = compaction.merge(
                fs, self.path, snapshot, views, iter(output_range), self._max_file_size, now_ms()
            )
            for out in result.outputs:
                readers[out.file_id] = fs.open_read(out.path)
        except BaseException as error:
            for reader in readers.values():
                with contextlib.suppress(OSError):  # released either way
                    reader.close()
            # Outputs renamed before the failure are on disk and will be read at the next
            # open; they must be tracked (and compacted away later) like any sealed file, or a
            # later compaction could drop a tombstone that hides their old values.
            self._adopt_leftover_outputs(output_range)
            if isinstance(error, StopIteration):
                raise KvsError("compaction needed more output files than it reserved") from None
            if isinstance(error, OSError) and not isinstance(error, KvsError):
                path = getattr(error, "filename", None) or self.path
                raise StorageError(path, error) from None
            raise
        with self._lock:
            for out in result.outputs:
                state = FileState(out.file_id, out.nonce, out.path, out.end, out.end)
                state.reader = readers[out.file_id]
                self._views[out.file_id] = state.reader.buffer
                self._sealed[out.file_id] = state
                self._total += out.end - record.FILE_HEADER_SIZE
        self._swap_locations(result)
        with self._lock:
            inputs = [self._sealed.pop(file_id) for file_id in input_ids]
            for state in inputs:
                del self._views[state.file_id]
                self._total -= state.end - record.FILE_HEADER_SIZE
            self._compact_at = self._compaction_threshold()
        # Oldest first (see kvs.log.compaction). At the first input that cannot be deleted,
        # stop: it and every newer input stay on disk, so they stay tracked too, and the next
        # compaction takes them as inputs again. (Forgetting one would let its old values come
        # back once a later compaction dropped the tombstones that hide them.)
        for position, state in enumerate(inputs):
            try:
                if position:
                    # The previous deletion durable first: a file system may persist directory
                    # changes out of order, and a newer input gone while an older one stays
                    # would bring back the values its tombstones hid.
                    fs.fsync_dir(self.path)
                fs.remove(state.path)
            except OSError as error:
                with self._lock:
                    for kept in inputs[position:]:
                        assert kept.reader is not None
                        self._sealed[kept.file_id] = kept
                        self._views[kept.file_id] = kept.reader.buffer
                        self._total += kept.end - record.FILE_HEADER_SIZE
                raise StorageError(state.path, error) from None
            if state.reader is not None:
                with contextlib.suppress(OSError, BufferError):
                    state.reader.close()  # the file is gone either way
            # A hint left behind (this failing) is removed as an orphan at the next open.
            with contextlib.suppress(OSError):
                fs.remove(filenames.hint_file(self.path, state.file_id))
        try:
            fs.fsync_dir(self.path)
        except OSError as error:
            raise StorageError(self.path, error) from None

    def _adopt_leftover_outputs(self, output_range: range) -> None:
        """Track the outputs a failed compaction left under their final names. If that fails
        too, the store turns read-only: only a reopen can be sure to see every file."""
        try:
            present = {
                parsed[1]
                for parsed in map(filenames.parse, self._fs.listdir(self.path))
                if parsed is not None and parsed[0] is filenames.FileKind.DATA
            }
            for file_id in sorted(present.intersection(output_range)):
                path = filenames.data_file(self.path, file_id)
                reader = self._fs.open_read(path)
                header = record.decode_file_header(reader.buffer[: record.FILE_HEADER_SIZE])
                if isinstance(header, str):
                    reader.close()
                    raise KvsError(f"{path}: {header}")
                state = FileState(file_id, header.nonce, path, reader.size, 0, reader)
                with self._lock:
                    self._sealed[file_id] = state
                    self._views[file_id] = reader.buffer
                    self._total += reader.size - record.FILE_HEADER_SIZE
        except (OSError, KvsError) as error:
            log.error("after a failed compaction of %s: %s", self.path, error)
            self._failure = f"a failed compaction left files it could not track ({error})"

    def _swap_locations(self, result: compaction.MergeResult) -> None:
        """Point index entries at the copies, unless a newer write moved them meanwhile.

        Empties ``result.moves`` as it goes, from the end: a million moves freed at once would
        hold the GIL for a tenth of a second.
        """
        chunk = 10_000  # hold the write lock in short spells
        moves = result.moves
        while moves:
            spell = moves[-chunk:]
            del moves[-chunk:]
            with self._lock:
                index = self._index
                for key, old, new in spell:
                    if index.get(key) == old:
                        index[key] = new
            del spell
            # Let a writer waiting for the lock take it: a lock is not fair, and this thread
            # would otherwise take it straight back (measured: a set waited 0.6 s, 1M keys).
            time.sleep(0)
        with self._lock:
            for key, old in result.expired:
                if self._index.get(key) == old:
                    del self._index[key]
                    self._expiry.pop(key, None)
                    self._live -= location_size(old)

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        thread = self._compaction_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._compaction_lock, self._lock:
            if self._closed:
                return
            failed_before = self._durability.error
            self._durability.sync_now()  # covers writers still waiting under sync="always"
            sync_error = self._durability.error
            self._closed = True
            self._failure = self._failure or f"store {self.path} is closed"
            self._durability.stop()
            errors: list[BaseException] = []
            # The last writes may not be durable: say so, if this sync failed, or if an
            # earlier one (everysec's, in the background) did and no caller has been told.
            untold = not (self._failure_delivered or self._durability.error_delivered)
            if isinstance(sync_error, StorageError) and (sync_error is not failed_before or untold):
                errors.append(sync_error)
            for job in list(self._pending_hints.values()):
                if job.state.file_id in self._sealed:  # not a file compaction just deleted
                    _write_hint(self._fs, self.path, job)
            self._pending_hints.clear()
            with self._sync_lock:
                state = self._active_state
                state.end = self._off
                try:
                    # Data first: a hint must never describe bytes that are not durable.
                    closed_here = self._active_open
                    if closed_here:
                        self._active_open = False
                        self._active.close(state.end)
                except OSError as error:
                    errors.append(error)
                else:
                    uncovered = state.end - max(state.hinted, record.FILE_HEADER_SIZE)
                    if closed_here and uncovered >= HINT_AT_CLOSE_MIN_BYTES:
                        _write_hint(self._fs, self.path, self._hint_job_for_active())
            for sealed in self._sealed.values():
                if sealed.reader is not None:
                    with contextlib.suppress(OSError, BufferError):  # unmapped either way
                        sealed.reader.close()
            self._disown(f"store {self.path} is closed")
            try:
                self._lock_handle.close()
            except OSError as error:
                errors.append(error)
            _open_stores.discard(self)
        if errors:
            first = errors[0]
            if isinstance(first, KvsError):
                raise first
            path = getattr(first, "filename", None) or self._active.path
            raise StorageError(path, first) from first  # type: ignore[arg-type]

    def _disown(self, reason: str) -> None:
        """Make every further use raise ``StoreClosedError(reason)`` (close, or after fork)."""
        self._closed = True
        self._failure = reason
        self._index = _Unusable(reason)
        self._views = {}

    def __del__(self) -> None:
        if getattr(self, "_closed", True) is False and self._owner_pid == os.getpid():
            with contextlib.suppress(BaseException):  # e.g. a test's SimulatedCrash
                self.close()

    def stats(self) -> dict[str, int | float | str]:
        with self._lock:
            if self._closed:
                raise StoreClosedError(f"store {self.path} is closed")
            return {
                "engine": "kvs",
                "keys": len(self._index),
                "live_bytes": self._live,
                "stale_bytes": self._total - self._live,
                "data_files": len(self._sealed) + 1,
                "active_file_id": self._active_state.file_id,
                "sync": self._sync_policy,
                # fdatasyncs of the active file made for durability (sync="always" group
                # commits, everysec, sync()); not those of rotation, compaction or close
                "durability_syncs": self._durability_syncs,
            }

    def __repr__(self) -> str:
        return f"<LogStore {self.path!r}{' closed' if self._closed else ''}>"
