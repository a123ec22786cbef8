"""``SqliteStore``: the ``sqlite`` engine, Python's ``sqlite3`` behind the ``KvStore`` interface.

A store directory holds:

==========================  ================================================================
``kvs.lock``                the directory lock, as for the log engine: one process per
                            directory, whatever the engine (a second one gets
                            ``StoreLockedError`` naming the holder's pid)
``kvs.sqlite3``             the database (mode 0600), in WAL mode
``kvs.sqlite3-wal``         SQLite's write-ahead log, while the store is open
==========================  ================================================================

The database has one table::

    kv(k BLOB PRIMARY KEY, v BLOB NOT NULL, flags INTEGER NOT NULL, expires_ms INTEGER)
    WITHOUT ROWID

``flags`` says whether the key (1) and the value (2) were given as ``str``; ``expires_ms`` is a
wall-clock time in milliseconds, ``NULL`` for never. Expired rows are invisible at once and
deleted by ``compact`` (or when the key is set again). ``PRAGMA user_version`` is the format.

Atomicity: every call is one SQLite transaction, a ``WriteBatch`` included, so it is applied
entirely or not at all, also across a crash or a power cut (SQLite's WAL commit), with any
``sync`` policy but ``"no"`` (see below).

Durability, by ``sync`` (SQLite's ``synchronous``). A killed process loses nothing that was
acknowledged, whatever the policy: every commit is in the operating system when it returns.
A power cut or kernel crash can take:

``"always"`` (``synchronous=FULL``)
    nothing: every commit fsyncs the WAL before it returns.
``"everysec"`` (``synchronous=NORMAL``, the default)
    about the last second of commits: a background thread fsyncs the WAL once a second when
    anything was committed (SQLite alone would only sync at its checkpoints, every ~4 MiB of
    changes). What survives is always a consistent prefix of the commits.
``"no"`` (``synchronous=OFF``)
    anything since the last ``sync()``/``close()``, and, since SQLite then never orders its
    writes with fsync, the database may be left corrupt. ``sync()`` makes everything durable
    (a checkpoint run with ``synchronous=FULL``).

``sync()`` and ``close()`` make every commit so far durable under every policy.

Thread safety: one connection (``check_same_thread=False``), used only under ``_lock``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from kvs.errors import (
    CorruptionError,
    FormatError,
    KeyNotFound,
    KvsError,
    LimitError,
    ReadOnlyError,
    StorageError,
    StoreClosedError,
    StoreLockedError,
)
from kvs.log import filenames
from kvs.log.fs import LockHandle, OsFileSystem
from kvs.store import Key, KvStore, SyncPolicy, Value, WriteBatch, expiry_ms, now_ms, to_bytes

log = logging.getLogger("kvs.sqlite")

DB_NAME = filenames.SQLITE_NAME
#: ``PRAGMA user_version`` of the table layout described above.
FORMAT_VERSION = 1
KEY_STR = 1
VALUE_STR = 2
SYNCHRONOUS: dict[str, str] = {"always": "FULL", "everysec": "NORMAL", "no": "OFF"}
#: Seconds between the background fsyncs of ``sync="everysec"``.
EVERYSEC_INTERVAL = 1.0

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS kv("
    "k BLOB PRIMARY KEY, v BLOB NOT NULL, flags INTEGER NOT NULL, expires_ms INTEGER"
    ") WITHOUT ROWID"
)
_LIVE = "(expires_ms IS NULL OR expires_ms > ?)"
_SET = "INSERT OR REPLACE INTO kv(k, v, flags, expires_ms) VALUES (?, ?, ?, ?)"
_GET = "SELECT v, flags, expires_ms FROM kv WHERE k = ?"
_REMOVE = f"DELETE FROM kv WHERE k = ? AND {_LIVE}"

# SQLite primary result codes (the low byte of an extended code).
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_TOOBIG, _SQLITE_NOTADB = 10, 11, 13, 18, 26

_open_stores: weakref.WeakSet[SqliteStore] = weakref.WeakSet()
#: Connections a forked child inherited. Never closed: closing one would checkpoint and delete
#: the WAL of the database the parent still has open.
_inherited: list[sqlite3.Connection] = []


def _after_fork_in_child() -> None:
    for store in list(_open_stores):
        store._disown_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _key(key: object) -> tuple[bytes, int]:
    """``(raw key, KEY_STR or 0)``."""
    if isinstance(key, str):
        return key.encode(), KEY_STR
    return to_bytes(key, "key"), 0


def _value(value: object) -> tuple[bytes, int]:
    """``(raw value, VALUE_STR or 0)``."""
    if isinstance(value, str):
        return value.encode(), VALUE_STR
    return to_bytes(value, "value"), 0


def _prefix_end(prefix: bytes) -> bytes | None:
    """The least key above every key starting with ``prefix``; ``None`` if there is none."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SqliteStore(KvStore):
    """The ``sqlite`` engine: ``SqliteStore(path, sync="everysec")``; ``sync`` is
    ``"always"``, ``"everysec"`` or ``"no"`` (see the module docstring for what each loses).
    No other option: the log engine's (``max_file_size``, ...) are a ``TypeError`` here.

    Invariants: ``_conn`` is ``None`` exactly when the store is closed (or inherited across a
    fork); ``_synced <= _commits``, counting write transactions since the open.
    """

    def __init__(self, path: str, *, sync: SyncPolicy = "everysec", **unknown: Any) -> None:
        if unknown:
            raise TypeError(
                f"the sqlite engine has no option {', '.join(map(repr, sorted(unknown)))}; "
                "it takes: sync"
            )
        if sync not in SYNCHRONOUS:
            raise ValueError(f"sync must be 'always', 'everysec' or 'no', not {sync!r}")
        self.path = os.path.abspath(os.fspath(path))
        self.db_path = os.path.join(self.path, DB_NAME)
        self._wal_path = self.db_path + "-wal"
        self._sync_policy: SyncPolicy = sync
        self._owner_pid = os.getpid()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed_reason = f"store {self.path} is closed"
        self._failure: str | None = None  # set when an fsync failed: writes are refused
        self._commits = 0
        self._synced = 0
        self._dir_synced = False
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

        self._lock_handle: LockHandle = self._take_lock()
        try:
            self._refuse_other_engines_data()
            self._conn = self._connect()
        except BaseException:
            self._lock_handle.close()
            raise
        if sync == "everysec":
            self._flusher = threading.Thread(
                target=self._every_second, name="kvs-sqlite-everysec", daemon=True
            )
            self._flusher.start()
        _open_stores.add(self)

    # -- opening -----------------------------------------------------------------------------

    def _take_lock(self) -> LockHandle:
        fs = OsFileSystem()
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
                handle.close()
                raise
        except OSError as error:
            if isinstance(error, KvsError):
                raise
            raise StorageError(getattr(error, "filename", None) or self.path, error) from None
        return handle

    @staticmethod
    def _read_owner(lock_path: str) -> int | None:
        try:
            with open(lock_path, "rb") as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _refuse_other_engines_data(self) -> None:
        """Opening another engine's directory would show an empty store and write beside
        its data: refuse, as kvs-server and the kvs engine do."""
        engine_file = filenames.engine_file(self.path)

        def read_engine_file() -> bytes:
            with open(engine_file, "rb") as f:
                return f.read()

        try:
            holder = filenames.engine_holding(os.listdir(self.path), read_engine_file)
        except OSError as error:
            raise StorageError(getattr(error, "filename", None) or engine_file, error) from None
        if holder not in (None, "sqlite"):
            raise KvsError(
                f"{self.path} holds data of the {holder!r} engine; open it with engine={holder!r}"
            )

    def _connect(self) -> sqlite3.Connection:
        try:
            if not os.path.exists(self.db_path):
                # Created here rather than by SQLite for its mode: SQLite gives the WAL the
                # database file's mode. Its name must be durable before any commit is.
                fd = os.open(self.db_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                os.close(fd)
                _fsync_dir(self.path)
        except OSError as error:
            raise StorageError(getattr(error, "filename", None) or self.db_path, error) from None
        try:
            conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as error:
            raise self._translate(error) from error
        try:
            # Exclusive: no -shm file and no lock traffic per transaction; kvs.lock already
            # keeps every other process out.
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise KvsError(f"{self.db_path}: could not switch to WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous={SYNCHRONOUS[self._sync_policy]}")
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > FORMAT_VERSION:
                raise FormatError(
                    f"{self.db_path} has format version {version}; this kvs reads up to "
                    f"{FORMAT_VERSION}"
                )
            if version == 0:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(_SCHEMA)
                conn.execute(f"PRAGMA user_version={FORMAT_VERSION}")
                conn.execute("COMMIT")
        except BaseException as error:
            conn.close()
            if isinstance(error, sqlite3.Error):
                raise self._translate(error) from error
            raise
        return conn

    # -- the connection, under the lock --------------------------------------------------------

    def _translate(self, error: sqlite3.Error) -> KvsError:
        """The kvs error for a SQLite one."""
        code = getattr(error, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        message = str(error)
        if isinstance(error, sqlite3.DataError) or primary == _SQLITE_TOOBIG:
            return LimitError(f"{message} (SQLite's limit)")
        if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            return CorruptionError(self.db_path, 0, message)
        if primary in (_SQLITE_IOERR, _SQLITE_FULL):
            number = errno.ENOSPC if primary == _SQLITE_FULL else errno.EIO
            return StorageError(self.db_path, OSError(number, message))
        return KvsError(f"{self.db_path}: {message}")

    @contextlib.contextmanager
    def _locked(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """The connection, with ``_lock`` held; SQLite's errors come out as kvs errors."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreClosedError(self._closed_reason)
            if write and self._failure is not None:
                raise ReadOnlyError(f"store {self.path} is read-only: {self._failure}; reopen it")
            try:
                yield conn
            except sqlite3.Error as error:
                raise self._translate(error) from error

    # -- reads -------------------------------------------------------------------------------

    def get(self, key: Key) -> Value | None:
        raw, _ = _key(key)
        with self._locked() as conn:
            row = conn.execute(_GET, (raw,)).fetchone()
        if row is None or (row[2] is not None and row[2] <= now_ms()):
            return None
        value: bytes = row[0]
        return value.decode() if row[1] & VALUE_STR else value

    def ttl(self, key: Key) -> float | None:
        raw, _ = _key(key)
        with self._locked() as conn:
            row = conn.execute(_GET, (raw,)).fetchone()
        now = now_ms()
        if row is None or (row[2] is not None and row[2] <= now):
            raise KeyNotFound(key)
        return None if row[2] is None else max(0.0, (row[2] - now) / 1000)

    def _select(self, columns: str, prefix: Key) -> list[Any]:
        """Rows of ``columns`` for the live keys starting with ``prefix``, in key order."""
        low = to_bytes(prefix, "prefix")
        high = _prefix_end(low)
        where = f"k >= ? AND {_LIVE}" + ("" if high is None else " AND k < ?")
        params: tuple[Any, ...] = (low, now_ms()) if high is None else (low, now_ms(), high)
        with self._locked() as conn:
            return conn.execute(
                f"SELECT {columns} FROM kv WHERE {where} ORDER BY k", params
            ).fetchall()

    def scan(self, prefix: Key = b"") -> Iterator[Key]:
        # Not a generator: the snapshot is taken now, at the call, not at the first next().
        rows = self._select("k, flags", prefix)
        return iter([k.decode() if flags & KEY_STR else k for k, flags in rows])

    def items(self, prefix: Key = b"") -> Iterator[tuple[Key, Value]]:
        # One query rather than the default scan-then-get: a snapshot, and n times fewer trips.
        rows = self._select("k, v, flags", prefix)
        return iter(
            [
                (k.decode() if flags & KEY_STR else k, v.decode() if flags & VALUE_STR else v)
                for k, v, flags in rows
            ]
        )

    def __len__(self) -> int:
        with self._locked() as conn:
            return int(
                conn.execute(f"SELECT count(*) FROM kv WHERE {_LIVE}", (now_ms(),)).fetchone()[0]
            )

    # -- writes ------------------------------------------------------------------------------

    def set(self, key: Key, value: Value, ttl: float | None = None) -> None:
        raw, key_flag = _key(key)
        raw_value, value_flag = _value(value)
        expires = None if ttl is None else expiry_ms(ttl)
        with self._locked(write=True) as conn:
            conn.execute(_SET, (raw, raw_value, key_flag | value_flag, expires))
            self._commits += 1

    def remove(self, key: Key) -> None:
        raw, _ = _key(key)
        with self._locked(write=True) as conn:
            # An expired row is not deleted here: it is not there as far as anyone can see.
            if conn.execute(_REMOVE, (raw, now_ms())).rowcount == 0:
                raise KeyNotFound(key)
            self._commits += 1

    def expire(self, key: Key, ttl: float | None) -> bool:
        raw, _ = _key(key)
        expires = None if ttl is None else expiry_ms(ttl)
        with self._locked(write=True) as conn:
            cursor = conn.execute(
                f"UPDATE kv SET expires_ms = ? WHERE k = ? AND {_LIVE}", (expires, raw, now_ms())
            )
            if cursor.rowcount == 0:
                return False
            self._commits += 1
            return True

    def write(self, batch: WriteBatch) -> None:
        # Convert and validate everything first: a bad type or ttl anywhere in the batch
        # raises before the transaction begins.
        prepared: list[tuple[bool, bytes, bytes, int, int | None, bool]] = []
        for op, key, value, ttl, missing_ok in batch.ops:
            raw, key_flag = _key(key)
            if op == "set":
                assert value is not None
                raw_value, value_flag = _value(value)
                expires = None if ttl is None else expiry_ms(ttl)
                prepared.append((True, raw, raw_value, key_flag | value_flag, expires, False))
            else:
                prepared.append((False, raw, b"", 0, None, missing_ok))
        if not prepared:
            return
        now = now_ms()
        with self._locked(write=True) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for is_set, raw, raw_value, flags, expires, missing_ok in prepared:
                    if is_set:
                        conn.execute(_SET, (raw, raw_value, flags, expires))
                    elif conn.execute(_REMOVE, (raw, now)).rowcount == 0 and not missing_ok:
                        raise KeyNotFound(raw)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            self._commits += 1

    def clear(self) -> None:
        with self._locked(write=True) as conn:
            conn.execute("DELETE FROM kv")
            self._commits += 1

    # -- durability --------------------------------------------------------------------------

    def sync(self) -> None:
        """Make every commit so far durable now, whatever the policy."""
        # write=True: after a failed fsync nothing is retried (ReadOnlyError), as for writes.
        with self._locked(write=True) as conn:
            if self._sync_policy == "no" and self._synced < self._commits:
                # synchronous=OFF never fsyncs, not even at checkpoints: run one checkpoint
                # the FULL way (sync the WAL, copy it in, sync the database).
                target = self._commits
                conn.execute("PRAGMA synchronous=FULL")
                try:
                    busy = conn.execute("PRAGMA wal_checkpoint(FULL)").fetchone()[0]
                finally:
                    conn.execute(f"PRAGMA synchronous={SYNCHRONOUS['no']}")
                if busy:  # the only connection, in exclusive mode: cannot happen
                    raise KvsError(f"{self.db_path}: the checkpoint of sync() was blocked")
                self._synced = target
            if self._sync_policy != "everysec":
                return  # "always": every commit synced the WAL before it returned
        try:
            self._fsync_wal()
        except OSError as error:
            if isinstance(error, KvsError):
                raise
            self._fsync_failed(error)
            raise StorageError(self._wal_path, error) from None

    def _fsync_wal(self) -> None:
        """``everysec``: fsync the WAL. Under ``synchronous=NORMAL`` SQLite syncs the WAL and
        then the database at each checkpoint, so every commit not in a synced checkpoint is in
        the WAL: syncing it makes every commit so far durable."""
        with self._locked():
            target = self._commits
            if target <= self._synced:
                return
            try:
                fd = os.open(self._wal_path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                # No WAL: everything went into the database at a checkpoint, which synced it.
                self._synced = target
                return
        # Outside the lock: writers go on meanwhile. An fsync covers what the file holds when
        # it runs, so at least every commit up to ``target``.
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if not self._dir_synced:  # the WAL's name, once per open
            _fsync_dir(self.path)
            self._dir_synced = True
        with self._lock:
            self._synced = max(self._synced, target)

    def _fsync_failed(self, error: BaseException) -> None:
        # Never retried: after a failed fsync the kernel may have dropped the dirty pages.
        with self._lock:
            if self._failure is None:
                log.error("fsync of %s failed: %s; the store is now read-only", self.path, error)
                self._failure = f"fsync failed: {error}"

    def _every_second(self) -> None:
        while not self._stop.wait(EVERYSEC_INTERVAL):
            try:
                self._fsync_wal()
            except StoreClosedError:
                return
            except OSError as error:
                self._fsync_failed(error)
                return
            except Exception:  # keep the thread's failure visible, and stop
                log.exception("background sync of %s failed", self.path)
                return

    # -- maintenance -------------------------------------------------------------------------

    def compact(self) -> None:
        """Delete expired rows, ``VACUUM`` the file and empty the WAL into it."""
        with self._locked(write=True) as conn:
            conn.execute(
                "DELETE FROM kv WHERE expires_ms IS NOT NULL AND expires_ms <= ?", (now_ms(),)
            )
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._commits += 1

    def close(self) -> None:
        """Make every commit durable, release the database and the directory. Idempotent."""
        self._stop.set()
        flusher = self._flusher
        if flusher is not None and flusher is not threading.current_thread():
            flusher.join()
        with self._lock:
            conn = self._conn
            if conn is None:
                return
            self._conn = None
            error: sqlite3.Error | None = None
            try:
                # SQLite checkpoints into the database and deletes the WAL when its last
                # connection closes; FULL makes that checkpoint fsync, whatever the policy.
                conn.execute("PRAGMA synchronous=FULL")
                conn.close()
            except sqlite3.Error as failed:
                error = failed
            finally:
                self._lock_handle.close()
                _open_stores.discard(self)
        if error is not None:
            raise self._translate(error) from error

    def _disown_after_fork(self) -> None:
        """In a forked child: every further use raises; the inherited connection is kept
        from ever being closed (see ``_inherited``)."""
        self._lock = threading.Lock()  # another thread of the parent may have held it
        self._closed_reason = (
            f"store {self.path} was opened in process {self._owner_pid}; "
            "a forked child must open the store itself"
        )
        if self._conn is not None:
            _inherited.append(self._conn)
            self._conn = None
        self._flusher = None

    def __del__(self) -> None:
        if getattr(self, "_conn", None) is not None and self._owner_pid == os.getpid():
            with contextlib.suppress(Exception):
                self.close()

    def stats(self) -> dict[str, int | float | str]:
        now = now_ms()
        with self._locked() as conn:
            page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
            free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
            keys, live = conn.execute(
                f"SELECT count(*), coalesce(sum(length(k) + length(v)), 0) FROM kv WHERE {_LIVE}",
                (now,),
            ).fetchone()
            expired = conn.execute(
                "SELECT count(*) FROM kv WHERE expires_ms IS NOT NULL AND expires_ms <= ?",
                (now,),
            ).fetchone()[0]
            try:
                wal_bytes = os.path.getsize(self._wal_path)
            except OSError:
                wal_bytes = 0
        return {
            "engine": "sqlite",
            "keys": int(keys),
            "live_bytes": int(live),
            "stale_bytes": free * page_size,  # free pages: what VACUUM would give back
            "expired_rows": int(expired),
            "file_bytes": pages * page_size,
            "wal_bytes": wal_bytes,
            "sync": self._sync_policy,
        }

    def __repr__(self) -> str:
        return f"<SqliteStore {self.path!r}{' closed' if self._conn is None else ''}>"
