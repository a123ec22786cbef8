"""``RedisStore``: a ``KvStore`` kept on a Redis server, a Valkey server, a ``kvs-server``, or a
Redis/Valkey Cluster.

    KvStore.open("redis://127.0.0.1:6379/0", engine="redis")          # one server, database 0
    KvStore.open("redis+cluster://10.0.0.5:7000", engine="redis")     # a cluster, any seed node

The "path" is a URL: ``redis://``, ``rediss://`` (TLS) or ``unix://`` for one server (read by
``redis.Redis.from_url``: user, password, database number and query options as redis-py takes
them), or ``redis+cluster://`` / ``rediss+cluster://`` for a cluster (read by
``redis.cluster.RedisCluster.from_url``; the host is only a seed, the client finds every node).
Needs redis-py (``pip install 'kvs-store[redis]'``).

On the server
-------------
The store owns its database: every key in it is one of the store's keys, stored under its own
bytes (``"a"`` and ``b"a"`` are the same Redis key). A value is a Redis string of one *tag*
byte and then the value's bytes. The tag is an ASCII digit whose bits are flags::

    b"0" + value    bytes key, bytes value        bit 0 (1): the value was set as str
    b"1" + value    bytes key, str value          bit 1 (2): the key was last set as str
    b"2" + value    str key, bytes value
    b"3" + value    str key, str value (UTF-8)

so ``SET greeting 3hello`` in ``redis-cli`` is ``store["greeting"] = "hello"``. A value without a
tag (written by something else) makes ``get`` raise ``KvsError``. Expiry is Redis's own
(``SET ... PX``, ``PEXPIRE``, ``PERSIST``, ``PTTL``), in milliseconds.

Guarantees
----------
* **Atomicity.** ``write(batch)`` is one ``MULTI``/``EXEC`` transaction: every operation or
  none. Removes of absent keys raise ``KeyNotFound`` and apply nothing: the keys are checked
  under ``WATCH`` and the transaction is retried if one of them changes before ``EXEC``.
  A server without ``WATCH`` (kvs-server before it had one, some proxies) gets the same
  check, but it is not atomic with the write: a key another client removes between the check
  and ``EXEC`` is not reported (the batch is still applied as a whole; its remove of that key
  does nothing).
  On a cluster a transaction can only touch one hash slot, so a batch whose keys span several
  slots raises ``NotSupportedError`` before writing anything: give keys that must change
  together a common ``{hashtag}`` (``{user:1}:name``, ``{user:1}:mail``). ``update`` is a
  batch too. ``clear`` on a cluster is atomic per hash slot, not across slots, and so is
  ``write_by_slot(batch)``, which writes any batch as one transaction per slot (``kvs
  import`` uses it).
* **Durability** is the server's: its ``appendonly``/``appendfsync`` settings (or, for
  ``kvs-server``, ``--sync``) decide what survives a crash, and ``sync()`` does nothing. With
  ``wait_replicas=N`` every write is followed by ``WAIT N`` on the same connection, and raises
  ``ReplicationError`` (the write *was* applied on the primary) if fewer replicas acknowledged
  it within ``wait_timeout`` seconds. Redis replication is asynchronous: a failover can lose
  writes that no replica had received.
* **Ordering.** Each command and each batch is applied at one point in time on its primary;
  commands from one thread are applied in the order issued. ``scan`` sorts the keys by bytes,
  but is not a snapshot: it walks the key space with ``SCAN`` (on a cluster, every primary in
  turn), so a key set or removed meanwhile may or may not appear; a key present throughout
  appears exactly once. ``len`` is ``DBSIZE`` summed over the primaries, which may count keys
  that have expired but that Redis has not reclaimed yet (``compact()`` walks every key with
  ``SCAN``, which makes Redis delete the expired ones it meets).
* **Failures.** A connection failure, a failover (``MOVED``, ``CLUSTERDOWN``, ``READONLY``,
  ``LOADING``, ``TRYAGAIN``) is retried, with the cluster's slot map refreshed, for up to
  ``retry_timeout`` seconds; then ``ServerUnavailableError`` names the URL. A command whose
  reply was lost may have been applied before it is retried: sets are idempotent, but a
  retried remove (or batch with removes) can then raise ``KeyNotFound`` for a key its first
  attempt removed.

Options: ``retry_timeout`` (default 10 s), ``wait_replicas`` (0), ``wait_timeout`` (1 s);
anything else goes to redis-py (``socket_timeout``, ``password``, ``ssl_ca_certs``, ...; an
unknown one is a ``TypeError``). There is no ``sync`` option: see Durability.

How it talks to the server: redis-py keeps the connection pools (one per node) and the
cluster's slot map; this module sends its own command sequences on a pooled connection
(``WATCH``/``EXISTS``/``MULTI``/``EXEC``/``WAIT`` must share one), reads every reply, and
retries. ``scan`` reads the tag byte of each key it finds with ``GETRANGE key 0 0`` (the
whole value on a server without ``GETRANGE``), 1000 keys per round trip;
``items_with_ttl`` (for ``kvs export``) reads values and TTLs the same way.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, TypeVar

import redis
import redis.exceptions as rx
from redis.backoff import NoBackoff
from redis.cluster import REDIS_ALLOWED_KEYS, RedisCluster
from redis.crc import key_slot
from redis.retry import Retry

from kvs.errors import KeyNotFound, KvsError, NotSupportedError, StoreClosedError
from kvs.store import Key, KvStore, Value, WriteBatch, to_bytes

T = TypeVar("T")

#: Tag bits (see the module docstring); the tag byte is ``_TAG_BASE | bits``.
VALUE_STR = 1
KEY_STR = 2
_TAG_BASE = 0x30  # b"0"

#: Keys per round trip when ``scan`` reads the tags (key types) of the keys it found.
_TAG_CHUNK = 1000
#: Keys per round trip (per primary) when ``items_with_ttl`` reads values and ttls.
_ITEMS_CHUNK = 1000
#: ``SCAN ... COUNT`` hint.
_SCAN_COUNT = 1000
#: ``write`` retries this many times when a watched key changes before ``EXEC``.
_MAX_WATCH_RETRIES = 1000
#: The back-off between retries of a failed command grows to this many seconds.
_MAX_BACKOFF = 0.5

Command = tuple[bytes | str | int, ...]
Op = tuple[Literal["set", "remove"], Key, bytes, bytes | None, int | None, bool]

#: Errors that a retry (after a topology refresh, on a cluster) can cure.
_TRANSIENT: tuple[type[BaseException], ...] = (
    rx.ConnectionError,
    rx.TimeoutError,
    rx.ClusterDownError,  # also MASTERDOWN
    rx.TryAgainError,
    rx.AskError,  # also MOVED
    rx.ReadOnlyError,  # a write reached a node that is a replica now
    rx.SlotNotCoveredError,
    rx.RedisClusterException,  # "cannot connect to any node" while refreshing the slot map
)
#: ... except these: a wrong password does not get better.
_PERMANENT: tuple[type[BaseException], ...] = (
    rx.AuthenticationError,
    rx.AuthorizationError,
    rx.CrossSlotTransactionError,
)


class ServerUnavailableError(KvsError, ConnectionError):
    """The server (or, on a cluster, the node that owns a key) could not be reached, also
    after retrying for ``retry_timeout`` seconds. ``url`` names the store (without password)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach {url}: {reason}")
        self.url = url


class ReplicationError(KvsError):
    """A write was applied on the primary, but fewer than ``wait_replicas`` replicas
    acknowledged it within ``wait_timeout`` seconds."""


class RedisURLError(KvsError, ValueError):
    """The store's URL is not one the redis engine reads."""


def redact(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, for messages."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port is not None else ""
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))
    except ValueError:
        return "<unparseable url>"


def encode_value(key: Key, value: Value) -> bytes:
    """The Redis string stored for ``value`` under ``key``: tag byte + value bytes."""
    bits = KEY_STR if isinstance(key, str) else 0
    if isinstance(value, str):
        return bytes((_TAG_BASE | bits | VALUE_STR,)) + value.encode()
    return bytes((_TAG_BASE | bits,)) + to_bytes(value, "value")


def _tag_bits(data: bytes, key: bytes) -> int:
    bits = data[0] - _TAG_BASE if data else -1
    if not 0 <= bits <= 3:
        raise KvsError(
            f"the value under key {key!r} was not written by kvs (it has no type tag); "
            "the redis engine needs a database of its own"
        )
    return bits


def decode_value(data: bytes, key: bytes) -> Value:
    """The value a stored Redis string holds (see ``encode_value``)."""
    if _tag_bits(data, key) & VALUE_STR:
        return data[1:].decode()
    return data[1:]


def _glob_escape(prefix: bytes) -> bytes:
    """A ``SCAN MATCH`` pattern for the keys starting with ``prefix``."""
    out = bytearray()
    for byte in prefix:
        if byte in b"*?[]\\":
            out.append(0x5C)
        out.append(byte)
    return bytes(out) + b"*"


def _ttl_ms(ttl: float | None) -> int | None:
    """``ttl`` seconds as ``PX`` milliseconds (at least 1); ``ValueError`` for a ttl that is
    not positive, or whose expiry time Redis could not hold (64-bit milliseconds)."""
    if ttl is None:
        return None
    if not ttl > 0 or ttl == float("inf"):
        raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
    ms = max(1, int(ttl * 1000))
    if time.time() * 1000 + ms >= 1 << 63:
        raise ValueError(f"ttl of {ttl!r} seconds is too large")
    return ms


def _check_cluster_options(options: dict[str, Any]) -> None:
    """``TypeError`` for an option neither ``RedisCluster`` nor its node clients take (it
    would drop it silently; a single server's client refuses it by itself)."""
    known = set(inspect.signature(RedisCluster.__init__).parameters) | set(REDIS_ALLOWED_KEYS)
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown option(s) for the redis engine: {', '.join(unknown)}")


def _is_unknown_command(error: BaseException) -> bool:
    return isinstance(error, rx.ResponseError) and "unknown command" in str(error).lower()


def _raise_first_error(replies: Sequence[Any]) -> None:
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply


class RedisStore(KvStore):
    """The redis engine; see the module docstring. Open it with
    ``KvStore.open(url, engine="redis", **options)``:

    ``retry_timeout``
        Seconds to keep retrying a command through connection failures and failovers before
        raising ``ServerUnavailableError`` (default 10; 0: one attempt).
    ``wait_replicas`` / ``wait_timeout``
        Follow every write with ``WAIT wait_replicas wait_timeout`` (default 0: do not wait).
    anything else
        Passed to redis-py's client (``socket_timeout``, ``username``, ``ssl_cert_reqs``, ...).
    """

    def __init__(
        self,
        url: str,
        *,
        retry_timeout: float = 10.0,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
        **client_options: Any,
    ) -> None:
        if retry_timeout < 0:
            raise ValueError("retry_timeout must be 0 or more seconds")
        if wait_replicas < 0 or wait_timeout <= 0:
            raise ValueError("wait_replicas must be 0 or more, wait_timeout above 0 seconds")
        self.url = redact(url)
        self._retry_timeout = float(retry_timeout)
        self._wait: Command | None = (
            ("WAIT", wait_replicas, max(1, int(wait_timeout * 1000))) if wait_replicas else None
        )
        self._wait_replicas = wait_replicas
        self._closed = False
        self._refresh_lock = threading.Lock()
        #: Whether the server knows WATCH / GETRANGE (not every Redis-protocol server does);
        #: None: not asked yet.
        self._has_watch: bool | None = None
        self._has_getrange: bool | None = None

        scheme, sep, rest = url.partition("://")
        scheme = scheme.lower()
        if not sep or scheme not in ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"):
            raise RedisURLError(
                f"the redis engine opens a URL (redis://host:port/db, rediss://..., unix://..., "
                f"redis+cluster://host:port), not {self.url!r}"
            )
        options: dict[str, Any] = {
            "socket_connect_timeout": 5.0,
            "socket_timeout": 30.0,
            **client_options,
            "decode_responses": False,
        }
        self._cluster: RedisCluster | None = None
        self._client: redis.Redis | None = None
        if scheme.endswith("+cluster"):
            db = urllib.parse.urlsplit(url).path.strip("/")
            if db not in ("", "0"):
                raise RedisURLError(f"a cluster has only database 0, not {db!r}: {self.url}")
            _check_cluster_options(client_options)
        else:
            # One attempt per call: the retries (and their timing) are this class's.
            options.setdefault("retry", Retry(NoBackoff(), 0))

        def connect() -> None:
            try:
                if scheme.endswith("+cluster"):
                    plain = scheme.removesuffix("+cluster") + "://" + rest
                    # Finds every node through the seed: fails here if the seed is down.
                    self._cluster = RedisCluster.from_url(plain, **options)
                else:
                    self._client = redis.Redis.from_url(url, **options)
            except ValueError as error:  # a bad port, database number, query option
                raise RedisURLError(f"{self.url}: {error}") from None
            self._ping()

        try:
            self._retrying(connect, retry=False)
        except BaseException:
            self._close_clients()
            raise

    # -- connections, retries, errors --------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"store {self.url} is closed")

    def _client_for(self, slot: int | None) -> redis.Redis:
        """The client of the server, or of the primary that owns ``slot`` on a cluster."""
        if self._cluster is None:
            assert self._client is not None
            return self._client
        node = self._cluster.nodes_manager.get_node_from_slot(slot if slot is not None else 0)
        return self._cluster.get_redis_connection(node)

    def _primaries(self) -> list[redis.Redis]:
        if self._cluster is None:
            assert self._client is not None
            return [self._client]
        cluster: Any = self._cluster  # get_primaries is not annotated
        return [cluster.get_redis_connection(node) for node in cluster.get_primaries()]

    def _slot(self, raw_key: bytes) -> int | None:
        return None if self._cluster is None else key_slot(raw_key)

    @contextlib.contextmanager
    def _connection(self, client: redis.Redis) -> Iterator[Any]:
        """A connection of ``client``'s pool, for a sequence of commands of one's own (WATCH
        state, WAIT after a write). Dropped, not reused, after an error other than ours."""
        pool: Any = client.connection_pool
        conn: Any = pool.get_connection()
        try:
            yield conn
        except KvsError:
            raise
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    @staticmethod
    def _roundtrip(conn: Any, commands: Sequence[Command]) -> list[Any]:
        """Send ``commands`` in one write and read every reply; an error reply is returned as
        its exception (all replies are read, so the connection stays in step)."""
        conn.send_packed_command(conn.pack_commands(commands))
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(conn.read_response())
            except rx.ResponseError as error:
                replies.append(error)
        return replies

    def _refresh_topology(self) -> None:
        if self._cluster is None:
            return
        with self._refresh_lock:
            self._cluster.nodes_manager.initialize()

    def _retrying(self, action: Callable[[], T], *, retry: bool = True) -> T:
        """Run ``action`` until it succeeds, retrying transient failures (refreshing a
        cluster's slot map) for ``retry_timeout`` seconds; map redis-py's errors to ours."""
        self._check_open()
        deadline = time.monotonic() + (self._retry_timeout if retry else 0.0)
        delay = 0.02
        while True:
            try:
                return action()
            except _PERMANENT as error:
                raise KvsError(f"{self.url}: {error}") from None
            except rx.AskError as error:
                if self._cluster is None:  # redirected: this server is one node of a cluster
                    raise KvsError(
                        f"{self.url} is a node of a Redis Cluster ({error}): open the "
                        "cluster as redis+cluster://host:port"
                    ) from None
                if time.monotonic() + delay > deadline:
                    raise ServerUnavailableError(self.url, str(error)) from None
            except _TRANSIENT as error:
                if time.monotonic() + delay > deadline:
                    raise ServerUnavailableError(
                        self.url, str(error) or type(error).__name__
                    ) from None
            except rx.RedisError as error:
                raise KvsError(f"{self.url}: {error}") from None
            time.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF)
            self._check_open()
            with contextlib.suppress(rx.RedisError, rx.RedisClusterException):
                self._refresh_topology()  # if this fails, so does the next attempt

    def _run(self, slot: int | None, commands: Sequence[Command], *, wait: bool = False) -> Any:
        """Send ``commands`` to the server that owns ``slot`` (retrying); the last reply.
        With ``wait`` (a write) and ``wait_replicas``, follow them with ``WAIT``."""

        def attempt() -> Any:
            with self._connection(self._client_for(slot)) as conn:
                sent = list(commands)
                if wait and self._wait is not None:
                    sent.append(self._wait)
                replies = self._roundtrip(conn, sent)
            _raise_first_error(replies)
            if wait and self._wait is not None:
                self._check_replicas(replies.pop())
            return replies[-1]

        return self._retrying(attempt)

    def _check_replicas(self, acknowledged: Any) -> None:
        if isinstance(acknowledged, Exception):  # a server without WAIT, say
            raise acknowledged
        if not isinstance(acknowledged, int) or acknowledged < self._wait_replicas:
            raise ReplicationError(
                f"{self.url}: a write was applied on the primary but acknowledged by "
                f"{acknowledged} of {self._wait_replicas} replicas in time"
            )

    def _ping(self) -> None:
        for client in self._primaries():
            with self._connection(client) as conn:
                _raise_first_error(self._roundtrip(conn, [("PING",)]))

    # -- reads -------------------------------------------------------------------------------

    def get(self, key: Key) -> Value | None:
        raw = to_bytes(key, "key")
        data = self._run(self._slot(raw), [("GET", raw)])
        return None if data is None else decode_value(data, raw)

    def ttl(self, key: Key) -> float | None:
        raw = to_bytes(key, "key")
        ms = self._run(self._slot(raw), [("PTTL", raw)])
        if ms == -2:
            raise KeyNotFound(key)
        return None if ms < 0 else ms / 1000

    def __len__(self) -> int:
        return self._retrying(self._dbsize)

    def _dbsize(self) -> int:
        total = 0
        for client in self._primaries():
            with self._connection(client) as conn:
                (size,) = self._roundtrip(conn, [("DBSIZE",)])
            _raise_first_error([size])
            total += int(size)
        return total

    def _scan_keys(self, prefix: bytes) -> dict[redis.Redis, list[bytes]]:
        """The keys that start with ``prefix``, by the primary that holds them."""
        pattern = _glob_escape(prefix)
        found: dict[redis.Redis, list[bytes]] = {}
        for client in self._primaries():
            keys: set[bytes] = set()  # SCAN may return a key twice
            with self._connection(client) as conn:
                cursor: Any = b"0"
                while True:
                    command = ("SCAN", cursor, "MATCH", pattern, "COUNT", _SCAN_COUNT)
                    (reply,) = self._roundtrip(conn, [command])
                    _raise_first_error([reply])
                    cursor, batch = reply
                    keys.update(key for key in batch if key.startswith(prefix))
                    if int(cursor) == 0:
                        break
            found[client] = sorted(keys)
        return found

    def _key_bits(self, client: redis.Redis, keys: list[bytes]) -> dict[bytes, int]:
        """The tag bits of ``keys`` (all on ``client``'s server); keys gone meanwhile are
        left out. Reads one byte per key (``GETRANGE``), or the whole value if the server
        has no ``GETRANGE``."""
        bits: dict[bytes, int] = {}
        for start in range(0, len(keys), _TAG_CHUNK):
            chunk = keys[start : start + _TAG_CHUNK]
            with self._connection(client) as conn:
                replies: list[Any] = []
                if self._has_getrange is not False:
                    replies = self._roundtrip(conn, [("GETRANGE", key, 0, 0) for key in chunk])
                    if replies and _is_unknown_command(replies[0]):
                        self._has_getrange = False
                    else:
                        self._has_getrange = True
                if self._has_getrange is False:
                    replies = self._roundtrip(conn, [("GET", key) for key in chunk])
            _raise_first_error(replies)
            for key, data in zip(chunk, replies, strict=True):
                if data:  # b"" / None: removed or expired since the SCAN
                    bits[key] = _tag_bits(data, key)
        return bits

    def scan(self, prefix: Key = b"") -> Iterator[Key]:
        raw_prefix = to_bytes(prefix, "prefix")
        self._check_open()

        def attempt() -> list[Key]:
            typed: list[tuple[bytes, Key]] = []
            for client, keys in self._scan_keys(raw_prefix).items():
                for key, bits in self._key_bits(client, keys).items():
                    typed.append((key, key.decode() if bits & KEY_STR else key))
            typed.sort(key=lambda pair: pair[0])
            return [key for _, key in typed]

        return iter(self._retrying(attempt))

    def items_with_ttl(
        self, prefix: Key = b"", chunk: int = _ITEMS_CHUNK
    ) -> Iterator[tuple[Key, Value, float | None]]:
        """``(key, value, ttl)`` for every key that starts with ``prefix``, in byte order; the
        ttl in seconds (``None``: never expires), as ``ttl(key)`` gives it. For ``kvs export``.

        Reads in few round trips: the keys with ``SCAN`` (one per page, per primary), then
        ``GET`` and ``PTTL`` of ``chunk`` keys at a time, one round trip per primary holding
        some of them; so at most ``chunk`` values are in memory at once. Not a snapshot, as
        ``scan``: a key removed or expired before its chunk is read is left out, and each
        value and ttl are read at the time of their chunk (each pair is not atomic either: a
        key set between its ``GET`` and ``PTTL`` may pair the old value with the new ttl).
        """
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1, not {chunk}")
        raw_prefix = to_bytes(prefix, "prefix")
        self._check_open()
        found = self._retrying(lambda: self._scan_keys(raw_prefix))
        keys = sorted({key for on_primary in found.values() for key in on_primary})
        for start in range(0, len(keys), chunk):
            part = keys[start : start + chunk]
            read = self._retrying(functools.partial(self._read_with_ttl, part))
            for key in part:
                item = read.get(key)
                if item is not None:
                    yield item

    def _read_with_ttl(self, keys: list[bytes]) -> dict[bytes, tuple[Key, Value, float | None]]:
        """One attempt: ``GET`` + ``PTTL`` of each key on the server that owns its slot now
        (so that a retry after a slot moved goes to its new owner), one round trip per
        server; keys gone meanwhile are left out."""
        by_client: dict[redis.Redis, list[bytes]] = {}
        for key in keys:
            by_client.setdefault(self._client_for(self._slot(key)), []).append(key)
        found: dict[bytes, tuple[Key, Value, float | None]] = {}
        for client, on_client in by_client.items():
            commands: list[Command] = []
            for key in on_client:
                commands += [("GET", key), ("PTTL", key)]
            with self._connection(client) as conn:
                replies = self._roundtrip(conn, commands)
            _raise_first_error(replies)
            for index, key in enumerate(on_client):
                data, ms = replies[2 * index], replies[2 * index + 1]
                if not data or ms == -2:  # removed or expired since the SCAN
                    continue
                typed: Key = key.decode() if _tag_bits(data, key) & KEY_STR else key
                found[key] = (typed, decode_value(data, key), None if ms < 0 else ms / 1000)
        return found

    # -- writes ------------------------------------------------------------------------------

    def set(self, key: Key, value: Value, ttl: float | None = None) -> None:
        raw = to_bytes(key, "key")
        data = encode_value(key, value)
        ms = _ttl_ms(ttl)
        command: Command = ("SET", raw, data) if ms is None else ("SET", raw, data, "PX", ms)
        self._run(self._slot(raw), [command], wait=True)

    def remove(self, key: Key) -> None:
        raw = to_bytes(key, "key")
        if not self._run(self._slot(raw), [("DEL", raw)], wait=True):
            raise KeyNotFound(key)

    def expire(self, key: Key, ttl: float | None) -> bool:
        raw = to_bytes(key, "key")
        ms = _ttl_ms(ttl)
        slot = self._slot(raw)
        if ms is not None:
            return bool(self._run(slot, [("PEXPIRE", raw, ms)], wait=True))
        # PERSIST's 0 means "absent" or "had no expiry": ask EXISTS in the same transaction.
        replies = self._run(
            slot, [("MULTI",), ("EXISTS", raw), ("PERSIST", raw), ("EXEC",)], wait=True
        )
        if not isinstance(replies, list):
            raise KvsError(f"{self.url}: unexpected reply to EXEC: {replies!r}")
        _raise_first_error(replies)
        return bool(replies[0])

    def write(self, batch: WriteBatch) -> None:
        if not batch.ops:
            return
        ops = self._ops(batch)
        slot = self._batch_slot([raw for _, _, raw, _, _, _ in ops])
        self._transact(slot, ops)

    @property
    def cluster(self) -> bool:
        """Whether the store is a Redis Cluster (a ``redis+cluster://`` URL)."""
        return self._cluster is not None

    def write_by_slot(self, batch: WriteBatch) -> int:
        """Apply ``batch`` as one atomic transaction per hash slot that its keys fall in;
        return how many transactions that was (on one server: ``write(batch)``, one).

        For a batch whose keys need not change together across slots (``kvs import``, a bulk
        load): each slot's operations are all applied or none, in their order in the batch
        (so every key ends as the batch leaves it), but the slots are independent: if one
        fails, the slots written before it stay written, and a reader may see some slots'
        changes before others'. The transactions of slots with only sets (and removes with
        ``missing_ok``) go to each primary in one round trip, several ``MULTI``/``EXEC``
        blocks in a row, and are sent again whole after a failover (they are idempotent); a
        slot with a remove that must find its key is checked and written as ``write`` does.
        """
        if not batch.ops:
            return 0
        ops = self._ops(batch)
        if self._cluster is None:
            self._transact(None, ops)
            return 1
        groups: dict[int, list[Op]] = {}
        for item in ops:
            groups.setdefault(key_slot(item[2]), []).append(item)
        checked = {
            slot: group
            for slot, group in groups.items()
            if any(op == "remove" and not missing_ok for op, *_, missing_ok in group)
        }
        for slot in sorted(checked):
            self._transact(slot, checked[slot])
        idempotent = {slot: group for slot, group in groups.items() if slot not in checked}
        if idempotent:
            self._retrying(lambda: self._transact_idempotent(idempotent))
        return len(groups)

    def _transact_idempotent(self, groups: dict[int, list[Op]]) -> None:
        """One attempt at ``write_by_slot``'s pipelined part: every slot of ``groups`` (no
        removes that must find their key) as its own MULTI/EXEC, one round trip per primary."""
        by_client: dict[redis.Redis, list[list[Command]]] = {}
        for slot in sorted(groups):
            plan = self._plan(groups[slot], {})  # no checked removes: never raises
            if plan:
                by_client.setdefault(self._client_for(slot), []).append(plan)
        for client, plans in by_client.items():
            sent: list[Command] = []
            for plan in plans:
                sent += [("MULTI",), *plan, ("EXEC",)]
            if self._wait is not None:
                sent.append(self._wait)
            with self._connection(client) as conn:
                replies = self._roundtrip(conn, sent)
            acknowledged = replies.pop() if self._wait is not None else None
            at = 0
            for plan in plans:
                block = replies[at : at + len(plan) + 2]  # MULTI, the queued ones, EXEC
                at += len(plan) + 2
                result = block[-1]
                _raise_first_error(block[:-1])  # MOVED, say: retried after a refresh
                if result is None or isinstance(result, Exception):
                    raise result or KvsError(f"{self.url}: EXEC without WATCH was aborted")
                _raise_first_error(result)
            if self._wait is not None:
                self._check_replicas(acknowledged)

    @staticmethod
    def _ops(batch: WriteBatch) -> list[Op]:
        """The operations of ``batch`` with their keys and values encoded for the server."""
        ops: list[Op] = []
        for op, key, value, ttl, missing_ok in batch.ops:
            raw = to_bytes(key, "key")
            if op == "set":
                assert value is not None
                ms = _ttl_ms(ttl)
                ops.append(("set", key, raw, encode_value(key, value), ms, False))
            else:
                ops.append(("remove", key, raw, None, None, missing_ok))
        return ops

    def clear(self) -> None:
        """Remove every key of the database (on a cluster: of every primary). Atomic on one
        server; on a cluster, atomic per hash slot. Keys other clients set meanwhile may
        survive."""
        self._check_open()
        by_slot: dict[int | None, list[Op]] = {}
        for keys in self._retrying(lambda: self._scan_keys(b"")).values():
            for raw in keys:
                by_slot.setdefault(self._slot(raw), []).append(
                    ("remove", raw, raw, None, None, True)
                )
        for slot, ops in sorted(by_slot.items(), key=lambda item: item[0] or 0):
            self._transact(slot, ops)

    def _batch_slot(self, raw_keys: list[bytes]) -> int | None:
        """The one hash slot of a cluster batch; ``NotSupportedError`` if there are several."""
        if self._cluster is None:
            return None
        slots = sorted({key_slot(raw) for raw in raw_keys})
        if len(slots) == 1:
            return slots[0]
        examples: dict[int, bytes] = {}
        for raw in raw_keys:
            examples.setdefault(key_slot(raw), raw)
        shown = ", ".join(f"{examples[slot]!r} -> {slot}" for slot in slots[:5])
        more = f" and {len(slots) - 5} more" if len(slots) > 5 else ""
        raise NotSupportedError(
            f"a batch on a Redis Cluster is atomic only within one hash slot, and this one's "
            f"keys map to {len(slots)} slots ({shown}{more}); nothing was written. Give keys "
            "that change together a common {hashtag}, e.g. '{user:1}:name' and "
            "'{user:1}:mail': only the part in braces picks the slot"
        )

    def _transact(self, slot: int | None, ops: list[Op]) -> None:
        """Apply ``ops`` in one MULTI/EXEC on the server of ``slot``; see ``write``."""
        # Keys whose first operation in the batch is a remove that must find them: their
        # existence is checked on the server (under WATCH); every later step follows from it.
        strict: list[bytes] = []
        seen: set[bytes] = set()
        for op, _, raw, _, _, missing_ok in ops:
            if raw not in seen:
                seen.add(raw)
                if op == "remove" and not missing_ok:
                    strict.append(raw)

        def attempt() -> bool:
            """One try; False if a watched key changed before EXEC."""
            with self._connection(self._client_for(slot)) as conn:
                watching = False
                present: dict[bytes, bool] = {}
                if strict:
                    if self._has_watch is not False:
                        (reply,) = self._roundtrip(conn, [("WATCH", *strict)])
                        if _is_unknown_command(reply):
                            self._has_watch = False  # check without WATCH
                        else:
                            _raise_first_error([reply])
                            self._has_watch = watching = True
                    replies = self._roundtrip(conn, [("EXISTS", raw) for raw in strict])
                    _raise_first_error(replies)
                    present = {raw: bool(n) for raw, n in zip(strict, replies, strict=True)}
                try:
                    commands = self._plan(ops, present)
                except KeyNotFound:
                    if watching:
                        _raise_first_error(self._roundtrip(conn, [("UNWATCH",)]))
                    raise
                if not commands:
                    if watching:
                        _raise_first_error(self._roundtrip(conn, [("UNWATCH",)]))
                    return True
                sent = [("MULTI",), *commands, ("EXEC",)]
                if self._wait is not None:
                    sent.append(self._wait)
                replies = self._roundtrip(conn, sent)
            acknowledged = replies.pop() if self._wait is not None else None
            result = replies[-1]
            if isinstance(result, Exception):  # EXECABORT: say why a command was refused
                _raise_first_error(replies[:-1])
                raise result
            _raise_first_error(replies[:-1])
            if result is None:
                return False  # a watched key changed: nothing was applied
            _raise_first_error(result)
            if self._wait is not None:
                self._check_replicas(acknowledged)
            return True

        for _ in range(_MAX_WATCH_RETRIES):
            if self._retrying(attempt):
                return
        raise KvsError(
            f"{self.url}: gave up writing a batch after {_MAX_WATCH_RETRIES} attempts: other "
            "clients kept changing the keys it removes"
        )

    @staticmethod
    def _plan(ops: list[Op], present: dict[bytes, bool]) -> list[Command]:
        """The commands of a batch, given which of its strictly removed keys exist; raises
        ``KeyNotFound`` (before anything is sent) for a remove that cannot succeed."""
        state: dict[bytes, bool | None] = dict(present)  # None: unknown (and irrelevant)
        commands: list[Command] = []
        for op, key, raw, data, ms, missing_ok in ops:
            if op == "set":
                assert data is not None
                commands.append(("SET", raw, data) if ms is None else ("SET", raw, data, "PX", ms))
                state[raw] = True
            else:
                if state.get(raw) is False:
                    if missing_ok:
                        continue
                    raise KeyNotFound(key)
                commands.append(("DEL", raw))
                state[raw] = False
        return commands

    # -- maintenance -------------------------------------------------------------------------

    def sync(self) -> None:
        """Nothing to do: durability is the server's (its ``appendfsync`` policy). With
        ``wait_replicas``, every write has already waited for its replicas."""
        self._check_open()

    def compact(self) -> None:
        """Walk every key once with ``SCAN``: Redis deletes each expired key it meets (it
        otherwise reclaims them lazily and by sampling). The rest is the server's business."""
        self._retrying(lambda: self._scan_keys(b""))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._close_clients()

    def _close_clients(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
        if self._client is not None:
            self._client.close()

    def stats(self) -> dict[str, int | float | str]:
        def attempt() -> dict[str, int | float | str]:
            primaries = self._primaries()
            info: dict[str, str] = {}
            used_memory = 0
            for client in primaries:
                with self._connection(client) as conn:
                    (reply,) = self._roundtrip(conn, [("INFO",)])
                _raise_first_error([reply])
                text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
                fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
                info.setdefault("redis_version", fields.get("redis_version", "?"))
                used_memory += int(fields.get("used_memory", "0") or 0)
            return {
                "engine": "redis",
                "url": self.url,
                "mode": "cluster" if self._cluster is not None else "single",
                "primaries": len(primaries),
                "keys": self._dbsize(),
                "used_memory": used_memory,
                "redis_version": info.get("redis_version", "?"),
            }

        return self._retrying(attempt)

    def __repr__(self) -> str:
        return f"<RedisStore {self.url!r}{' closed' if self._closed else ''}>"
