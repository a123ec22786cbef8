"""Command dispatch: ``(server state, session, argv) -> reply bytes``. No sockets here.

Every command runs to completion on the event loop's thread, one at a time, so each is atomic
with respect to every other client. A ``MULTI``/``EXEC`` block runs against an overlay of the
store (``_Transaction``) and is written as one atomic batch: all of its writes or none, also
across a crash. ``WATCH`` makes the next ``EXEC`` fail when a watched key changes first: while
any key is watched, ``state.store`` is a ``_SignallingStore`` that reports every key a write
changes, as Redis's ``signalModifiedKey`` does.

Replies and error texts are Redis's, so that redis-py maps them to its exception classes and
redis-cli prints what Redis users expect.
"""

from __future__ import annotations

import hmac
import os
import re
import time
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Final

from crc32c import crc32c

from kvs import __version__
from kvs.errors import KeyNotFound, KvsError, ReadOnlyError
from kvs.protocol.resp import OK, PONG, QUEUED, RESP2, RESP3, ReplyEncoder
from kvs.server import longdouble
from kvs.store import Key, KvStore, Value, WriteBatch

#: What INFO and HELLO report as ``redis_version``: the Redis command set kvs follows.
REDIS_COMPAT_VERSION: Final = "7.0.0"

_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1
_WRONG_INT: Final = b"-ERR value is not an integer or out of range\r\n"
_SYNTAX: Final = b"-ERR syntax error\r\n"
_NOAUTH: Final = b"-NOAUTH Authentication required.\r\n"
_WRONGPASS: Final = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
_ZERO: Final = b":0\r\n"
_ONE: Final = b":1\r\n"


class Shutdown(Exception):
    """Raised by SHUTDOWN: the server stops after sending nothing more to this client."""


@dataclass
class ServerState:
    """What every connection shares."""

    store: KvStore
    password: bytes | None = None
    engine: str = "kvs"
    sync: str = "everysec"
    directory: str = "."
    bind: str = "127.0.0.1:4000"
    max_clients: int = 10_000
    max_bulk_len: int = 512 * 1024 * 1024
    max_query_buffer: int = 1024 * 1024 * 1024
    started: float = field(default_factory=time.time)
    commands_processed: int = 0
    connections_received: int = 0
    clients: dict[int, Session] = field(default_factory=dict)
    next_client_id: int = 1
    #: The key space as SCAN last listed it (see _scan), shared by every walk in progress.
    scan_snapshot: _ScanSnapshot | None = None
    scan_epoch: int = 0
    #: WATCHed key -> the sessions watching it, by id.
    watchers: dict[bytes, dict[int, Session]] = field(default_factory=dict)
    #: The store as opened; ``store`` is a _SignallingStore over it while keys are watched
    #: (and this very store otherwise, so that commands pay nothing for WATCH unless it is used).
    plain_store: KvStore = field(init=False)

    def __post_init__(self) -> None:
        self.plain_store = self.store

    def new_session(self) -> Session:
        session = Session(self.next_client_id, authenticated=self.password is None)
        self.next_client_id += 1
        self.connections_received += 1
        self.clients[session.id] = session
        return session

    def end_session(self, session: Session) -> None:
        """The connection is gone: forget the client and its watches."""
        self.clients.pop(session.id, None)
        self.unwatch_all(session)

    def watch(self, session: Session, key: bytes) -> None:
        if key in session.watching:
            return
        # Whether it is there now: a key that was, and is gone at EXEC without a write
        # having changed it, expired meanwhile (which Redis also counts as a change).
        session.watching[key] = _present(self.plain_store, key)
        self.watchers.setdefault(key, {})[session.id] = session
        if self.store is self.plain_store:
            self.store = _SignallingStore(self.plain_store, self)

    def unwatch_all(self, session: Session) -> None:
        for key in session.watching:
            watching = self.watchers.get(key)
            if watching is not None:
                watching.pop(session.id, None)
                if not watching:
                    del self.watchers[key]
        session.watching.clear()
        session.watch_dirty = False
        if not self.watchers:
            self.store = self.plain_store

    def touch(self, key: bytes) -> None:
        """``key`` was changed: the next EXEC of every client watching it fails."""
        watching = self.watchers.get(key)
        if watching:
            for session in watching.values():
                session.watch_dirty = True

    def watched_keys_changed(self, session: Session) -> bool:
        """Whether a key ``session`` watches changed since (a write, or an expiry)."""
        if session.watch_dirty:
            return True
        return any(
            was_present and not _present(self.plain_store, key)
            for key, was_present in session.watching.items()
        )


@dataclass
class Session:
    """One client connection's state."""

    id: int
    authenticated: bool = True
    name: bytes | None = None
    encoder: ReplyEncoder = field(default_factory=lambda: ReplyEncoder(RESP2))
    transaction: _Transaction | None = None
    transaction_failed: bool = False
    closing: bool = False  # QUIT: close once the reply is written
    library: bytes = b""
    #: WATCHed keys -> whether each was present when watched.
    watching: dict[bytes, bool] = field(default_factory=dict)
    watch_dirty: bool = False  # a watched key was written since: the next EXEC fails


Handler = Callable[[ServerState, Session, list[bytes]], bytes]


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    arity: int  # Redis style: n = exactly n words (name included); -n = at least n
    handler: Handler
    write: bool = False
    no_auth: bool = False  # allowed before AUTH
    in_transaction: bool = True  # queued inside MULTI (False: runs at once, e.g. EXEC)
    no_multi: bool = False  # refused inside MULTI, as Redis's CMD_NO_MULTI (SHUTDOWN)
    #: Subcommand -> Redis arity (counting the command's own name), checked before the
    #: command runs or is queued: as in Redis 7, where each is a command of its own.
    subcommands: Mapping[bytes, int] | None = None


#: Every command by its lower-case name (what COMMAND COUNT and COMMAND list).
COMMANDS: dict[bytes, Command] = {}
# The same commands also under their upper-case names, the way clients send them, so that
# dispatch is one dict lookup without lower() for nearly every request. Kept by register().
_BY_WIRE_NAME: dict[bytes, Command] = {}


def register(cmd: Command) -> None:
    """Add ``cmd`` to the command table (under its name, in any case)."""
    name = cmd.name.encode()
    COMMANDS[name] = cmd
    _BY_WIRE_NAME[name] = cmd
    _BY_WIRE_NAME[name.upper()] = cmd


def command(
    name: str,
    arity: int,
    *,
    write: bool = False,
    no_auth: bool = False,
    queue: bool = True,
    no_multi: bool = False,
    subcommands: Mapping[bytes, int] | None = None,
) -> Callable[[Handler], Handler]:
    def add(handler: Handler) -> Handler:
        register(Command(name, arity, handler, write, no_auth, queue, no_multi, subcommands))
        return handler

    return add


def lookup(name: bytes) -> Command | None:
    """The command called ``name`` (any case), or None."""
    return _BY_WIRE_NAME.get(name) or COMMANDS.get(name.lower())


def execute(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """Run one command and return its complete reply."""
    state.commands_processed += 1
    cmd = _BY_WIRE_NAME.get(argv[0]) or COMMANDS.get(argv[0].lower())
    if cmd is None:
        if session.transaction is not None:
            session.transaction_failed = True
        return _unknown_command(argv)
    arity = cmd.arity
    if (len(argv) != arity) if arity > 0 else (len(argv) < -arity):
        if cmd.name == "exec":  # Redis's execCommandAbort: the transaction ends here
            session.transaction = None
            state.unwatch_all(session)
            return _EXEC_ARITY
        if session.transaction is not None:
            session.transaction_failed = True
        return b"-ERR wrong number of arguments for '%b' command\r\n" % cmd.name.encode()
    if not session.authenticated and not cmd.no_auth:
        return _NOAUTH
    if cmd.subcommands is not None:
        refused = _check_subcommand(cmd, argv)
        if refused is not None:
            if session.transaction is not None:
                session.transaction_failed = True
            return refused
    if session.transaction is not None:
        if cmd.no_multi:
            session.transaction_failed = True
            return b"-ERR Command not allowed inside a transaction\r\n"
        if cmd.in_transaction:
            session.transaction.queued.append((cmd, argv))
            return QUEUED
    # _run(), inlined: this is the path of every command.
    try:
        return cmd.handler(state, session, argv)
    except KvsError as error:
        return _store_error_reply(error)


def plain_reply(state: ServerState, session: Session, argv: list[bytes]) -> bytes | None:
    """The reply ``execute`` would give to ``argv`` if it is a plain ``GET key`` or ``SET key
    value`` (a SET has three arguments, a GET two), run without the dispatch and checks,
    which cannot apply: the caller has checked that ``session`` is authenticated and not in
    a transaction. None, and nothing run, for any other request. (``run_plain`` spells the
    same out in its loop: a call per request costs a pipeline 8-12% more time.)"""
    name = argv[0]
    try:
        if len(argv) == 3 and (name == b"SET" or name == b"set"):
            state.store.set(argv[1], argv[2])
            reply = OK
        elif len(argv) == 2 and (name == b"GET" or name == b"get"):
            value = state.store.get(argv[1])
            reply = session.encoder.bulk(value.encode() if isinstance(value, str) else value)
        else:
            return None
    except KvsError as error:
        reply = _store_error_reply(error)
    state.commands_processed += 1
    return reply


def run_plain(
    state: ServerState,
    session: Session,
    ready: list[list[bytes]],
    replies: list[bytes],
    budget: int,
) -> tuple[int, bool]:
    """The fast lane of a pipeline: run the plain ``GET key`` and ``SET key value`` requests
    at the end of ``ready`` (the parser's requests parsed ahead, last first), appending their
    replies to ``replies``, until another request comes up or the replies added pass
    ``budget`` bytes. Each gets the reply ``execute`` would give, without its dispatch and
    checks, which cannot apply: the caller has checked that ``session`` is authenticated and
    not in a transaction. Returns the bytes of replies added and whether a SET ran."""
    store = state.store
    get, put, bulk = store.get, store.set, session.encoder.bulk
    append = replies.append
    added = 0
    ran = 0
    wrote = False
    while ready and added < budget:
        argv = ready[-1]
        name = argv[0]
        if len(argv) == 2 and (name == b"GET" or name == b"get"):
            try:
                value = get(argv[1])
                reply = bulk(value.encode() if isinstance(value, str) else value)
            except KvsError as error:
                reply = _store_error_reply(error)
        elif len(argv) == 3 and (name == b"SET" or name == b"set"):
            wrote = True
            try:
                put(argv[1], argv[2])
                reply = OK
            except KvsError as error:
                reply = _store_error_reply(error)
        else:
            break
        ready.pop()
        append(reply)
        added += len(reply)
        ran += 1
    state.commands_processed += ran
    return added, wrote


_EXEC_ARITY: Final = (
    b"-EXECABORT Transaction discarded because of: wrong number of arguments for 'exec' command\r\n"
)


def _check_subcommand(cmd: Command, argv: list[bytes]) -> bytes | None:
    """Redis 7's error for an unknown subcommand of ``cmd`` or a wrong number of arguments
    to a known one; None if ``argv`` may run."""
    assert cmd.subcommands is not None
    if len(argv) < 2:
        return None  # COMMAND alone
    sub = argv[1].lower()
    arity = cmd.subcommands.get(sub)
    if arity is None:
        return b"-ERR unknown subcommand '%b'. Try %b HELP.\r\n" % (
            _printable(argv[1]),
            cmd.name.upper().encode(),
        )
    if (len(argv) != arity) if arity > 0 else (len(argv) < -arity):
        return b"-ERR wrong number of arguments for '%b|%b' command\r\n" % (
            cmd.name.encode(),
            _printable(sub),
        )
    return None


def _run(cmd: Command, state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """The handler's reply, or the store's error as a Redis error reply."""
    try:
        return cmd.handler(state, session, argv)
    except KvsError as error:
        return _store_error_reply(error)


def _store_error_reply(error: KvsError) -> bytes:
    """A store error as Redis replies it: ``-READONLY`` for a read-only store, else ``-ERR``
    (LimitError, StorageError, ...)."""
    prefix = b"-READONLY" if isinstance(error, ReadOnlyError) else b"-ERR"
    return b"%b %b\r\n" % (prefix, _one_line(str(error)))


def _unknown_command(argv: list[bytes]) -> bytes:
    shown = b"".join(b"'%b' " % _printable(arg) for arg in argv[1:][:64])
    return b"-ERR unknown command '%b', with args beginning with: %b\r\n" % (
        _printable(argv[0]),
        shown,
    )


def _printable(data: bytes) -> bytes:
    return data[:128].replace(b"\r", b" ").replace(b"\n", b" ")


def _one_line(text: str) -> bytes:
    return text.replace("\r", " ").replace("\n", " ").encode()


_INTEGER: Final = re.compile(rb"-?[1-9][0-9]*|0")


def _parse_int(data: bytes) -> int | None:
    """A Redis integer argument as string2ll reads it: decimal, optional '-', no spaces, no
    leading zeros (so not "01" nor "-0"), within int64."""
    if not data or len(data) > 20 or not _INTEGER.fullmatch(data):
        return None
    value = int(data)
    return value if _INT64_MIN <= value <= _INT64_MAX else None


# -- connection, server -------------------------------------------------------------------


@command("ping", -1, no_auth=True)
def _ping(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    if len(argv) > 2:
        return b"-ERR wrong number of arguments for 'ping' command\r\n"
    if not session.authenticated:
        return _NOAUTH
    return session.encoder.bulk(argv[1]) if len(argv) == 2 else PONG


@command("echo", 2)
def _echo(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    return session.encoder.bulk(argv[1])


@command("quit", -1, no_auth=True, queue=False)
def _quit(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    session.closing = True
    return OK


@command("select", 2)
def _select(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    index = _parse_int(argv[1])
    if index is None:
        return _WRONG_INT
    return OK if index == 0 else b"-ERR DB index is out of range\r\n"


def _check_password(state: ServerState, user: bytes, password: bytes) -> bool:
    if state.password is None:
        # No password set: the default user takes any password, as in Redis ("nopass").
        return hmac.compare_digest(user, b"default")
    # Both comparisons always run, in constant time: no timing hint about which one failed.
    user_ok = hmac.compare_digest(user, b"default")
    password_ok = hmac.compare_digest(password, state.password)
    return user_ok and password_ok


@command("auth", -2, no_auth=True)
def _auth(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    if len(argv) > 3:
        return _SYNTAX
    if state.password is None and len(argv) == 2:
        return (
            b"-ERR AUTH <password> called without any password configured for the default "
            b"user. Are you sure your configuration is correct?\r\n"
        )
    user, password = (b"default", argv[1]) if len(argv) == 2 else (argv[1], argv[2])
    if not _check_password(state, user, password):
        return _WRONGPASS
    session.authenticated = True
    return OK


@command("hello", -1, no_auth=True)
def _hello(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    protocol = session.encoder.protocol
    args = argv[1:]
    if args:
        version = _parse_int(args[0])
        if version is None:
            return b"-ERR Protocol version is not an integer or out of range\r\n"
        if version not in (RESP2, RESP3):
            return b"-NOPROTO unsupported protocol version\r\n"
        protocol = version
        args = args[1:]
    name = None
    while args:
        option = args[0].lower()
        if option == b"auth" and len(args) >= 3:
            if not _check_password(state, args[1], args[2]):
                return _WRONGPASS
            session.authenticated = True
            args = args[3:]
        elif option == b"setname" and len(args) >= 2:
            name = args[1]
            if not _valid_client_name(name):
                return _BAD_CLIENT_NAME
            args = args[2:]
        else:
            return b"-ERR Syntax error in HELLO option '%b'\r\n" % _printable(args[0])
    if not session.authenticated:
        return (
            b"-NOAUTH HELLO must be called with the client already authenticated, otherwise "
            b"the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the "
            b"client and select the RESP protocol version at the same time\r\n"
        )
    if name is not None:
        session.name = name
    session.encoder = ReplyEncoder(protocol)
    enc = session.encoder
    fields = [
        (b"server", enc.bulk(b"redis")),
        (b"version", enc.bulk(REDIS_COMPAT_VERSION.encode())),
        (b"proto", enc.integer(protocol)),
        (b"id", enc.integer(session.id)),
        (b"mode", enc.bulk(b"standalone")),
        (b"role", enc.bulk(b"master")),
        (b"modules", enc.array([])),
    ]
    return enc.map([(enc.bulk(key), value) for key, value in fields])


_BAD_CLIENT_NAME: Final = (
    b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
)


def _valid_client_name(name: bytes) -> bool:
    """Redis's rule: printable ASCII without spaces ('!' to '~'). A name goes into CLIENT
    LIST's lines as it is: a newline in it could forge another client's line."""
    return not name.translate(None, _CLIENT_NAME_BYTES)


_CLIENT_NAME_BYTES: Final = bytes(range(0x21, 0x7F))


@command(
    "client",
    -2,
    subcommands={
        b"setname": 3,
        b"getname": 2,
        b"id": 2,
        b"setinfo": 4,
        b"info": 2,
        b"list": 2,
    },
)
def _client(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    sub = argv[1].lower()
    enc = session.encoder
    if sub == b"setname":
        if not _valid_client_name(argv[2]):
            return _BAD_CLIENT_NAME
        session.name = argv[2] or None
        return OK
    if sub == b"getname":
        return enc.bulk(session.name)
    if sub == b"id":
        return enc.integer(session.id)
    if sub == b"setinfo":
        session.library = argv[3]
        return OK
    if sub == b"info":
        return enc.verbatim(_client_line(session))
    # list
    return enc.verbatim(b"".join(_client_line(s) for s in state.clients.values()))


def _client_line(session: Session) -> bytes:
    return b"id=%d name=%b lib-name=%b resp=%d\n" % (
        session.id,
        session.name or b"",
        session.library,
        session.encoder.protocol,
    )


@command("command", -1, subcommands={b"count": 2, b"docs": -2, b"info": -2})
def _command(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    enc = session.encoder
    sub = argv[1].lower() if len(argv) > 1 else b""
    if sub == b"count":
        return enc.integer(len(COMMANDS))
    if sub == b"docs":
        return enc.map([]) if enc.protocol == RESP3 else enc.array([])
    if sub in (b"", b"info"):
        wanted = [a.lower() for a in argv[2:]] if sub == b"info" else sorted(COMMANDS)
        entries = []
        for name in wanted:
            cmd = COMMANDS.get(name)
            if cmd is None:
                entries.append(enc.null_array)
                continue
            flags = [enc.simple(b"write" if cmd.write else b"readonly")]
            keyed = cmd.name in _KEYED
            first_key, last_key, step = _KEY_RANGES.get(cmd.name, (1, 1, 1) if keyed else (0, 0, 0))
            entries.append(
                enc.array(
                    [
                        enc.bulk(cmd.name.encode()),
                        enc.integer(cmd.arity),
                        enc.set(flags),
                        enc.integer(first_key),
                        enc.integer(last_key),
                        enc.integer(step),
                        enc.set([]),  # ACL categories
                        enc.array([]),  # tips
                        enc.array([]),  # key specifications
                        enc.array([]),  # subcommands
                    ]
                )
            )
        return enc.array(entries)
    raise AssertionError("unreachable: execute() checked the subcommand")


@command("config", -2, subcommands={b"get": -3, b"set": -4, b"resetstat": 2, b"rewrite": 2})
def _config(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    enc = session.encoder
    sub = argv[1].lower()
    if sub != b"get":
        return (
            b"-ERR CONFIG %b is not supported: kvs-server takes its settings from its "
            b"command line\r\n" % sub.upper()
        )
    host, _, port = state.bind.rpartition(":")
    values = {
        b"appendonly": b"yes",
        b"appendfsync": state.sync.encode(),
        b"bind": host.strip("[]").encode(),
        b"client-query-buffer-limit": str(state.max_query_buffer).encode(),
        b"databases": b"1",
        b"dir": os.path.abspath(state.directory).encode(),
        b"maxclients": str(state.max_clients).encode(),
        b"port": port.encode(),
        b"proto-max-bulk-len": str(state.max_bulk_len).encode(),
        b"protected-mode": b"yes",
        b"requirepass": b"" if state.password is None else b"(set)",
        b"save": b"",
        b"timeout": b"0",
    }
    pairs: list[tuple[bytes, bytes]] = []
    for pattern in argv[2:]:
        matcher = _glob(pattern.lower())
        for key, value in values.items():
            if matcher(key) and all(key != k for k, _ in pairs):
                pairs.append((key, value))
    return enc.map([(enc.bulk(k), enc.bulk(v)) for k, v in pairs])


@command("info", -1)
def _info(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    store = state.store
    stats = store.stats()
    uptime = int(time.time() - state.started)
    sections = {
        "server": [
            f"redis_version:{REDIS_COMPAT_VERSION}",
            f"kvs_version:{__version__}",
            "redis_mode:standalone",
            f"process_id:{os.getpid()}",
            f"tcp_port:{state.bind.rpartition(':')[2]}",
            f"uptime_in_seconds:{uptime}",
            f"engine:{state.engine}",
        ],
        "clients": [f"connected_clients:{len(state.clients)}", f"maxclients:{state.max_clients}"],
        "persistence": [
            "loading:0",
            "aof_enabled:1",
            f"kvs_sync:{state.sync}",
            f"kvs_live_bytes:{stats.get('live_bytes', 0)}",
            f"kvs_stale_bytes:{stats.get('stale_bytes', 0)}",
        ],
        "stats": [
            f"total_connections_received:{state.connections_received}",
            f"total_commands_processed:{state.commands_processed}",
        ],
        "keyspace": [f"db0:keys={len(store)},expires=0"] if len(store) else [],
    }
    wanted = {a.decode(errors="replace").lower() for a in argv[1:]}
    if not wanted or wanted & {"all", "everything", "default"}:
        wanted = set(sections)
    text = "\r\n".join(
        f"# {name.capitalize()}\r\n" + "\r\n".join(lines)
        for name, lines in sections.items()
        if name in wanted
    )
    return session.encoder.verbatim(text.encode() + b"\r\n")


@command("dbsize", 1)
def _dbsize(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    return session.encoder.integer(len(_db(session, state)))


@command("shutdown", -1, queue=False, no_multi=True)
def _shutdown(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    for option in argv[1:]:
        if option.lower() not in (b"nosave", b"save", b"now", b"force", b"abort"):
            return _SYNTAX
    if any(o.lower() == b"abort" for o in argv[1:]):
        return b"-ERR No shutdown in progress.\r\n"
    raise Shutdown


# -- keys and strings ----------------------------------------------------------------------

_KEYED: Final = {
    "get", "set", "getdel", "mget", "mset", "del", "unlink", "exists", "expire", "pexpire",
    "ttl", "pttl", "persist", "type", "strlen", "append", "incr", "incrby", "decr", "decrby",
    "getset", "setnx", "expireat", "pexpireat", "setex", "psetex", "msetnx", "getex",
    "rename", "renamenx", "touch", "watch", "getrange", "substr", "setrange", "incrbyfloat",
    "copy",
}  # fmt: skip
#: COMMAND INFO's (first key, last key, step) where it is not (1, 1, 1), as Redis reports it.
_KEY_RANGES: Final = {
    "mget": (1, -1, 1), "del": (1, -1, 1), "unlink": (1, -1, 1), "exists": (1, -1, 1),
    "touch": (1, -1, 1), "mset": (1, -1, 2), "msetnx": (1, -1, 2), "rename": (1, 2, 1),
    "renamenx": (1, 2, 1), "watch": (1, -1, 1), "copy": (1, 2, 1),
}  # fmt: skip


def _db(session: Session, state: ServerState) -> KvStore | _Transaction:
    return session.transaction if session.transaction is not None else state.store


def _get_bytes(db: KvStore | _Transaction, key: bytes) -> bytes | None:
    value = db.get(key)
    if value is None or isinstance(value, bytes):
        return value
    return value.encode()


@command("get", 2)
def _get(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    # _get_bytes(_db(...)) inlined: the most frequent command.
    value = (state.store if session.transaction is None else session.transaction).get(argv[1])
    if isinstance(value, str):
        value = value.encode()
    return session.encoder.bulk(value)


@command("set", -3, write=True)
def _set(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    if len(argv) == 3 and session.transaction is None:
        state.store.set(argv[1], argv[2])  # plain SET key value: nothing else to decide
        return OK
    db, enc = _db(session, state), session.encoder
    key, value = argv[1], argv[2]
    ttl: float | None = None
    nx = xx = get = keepttl = False
    # As Redis: the options first (the same expiry option may come again, the last one
    # counts; two different ones are a syntax error), then the expiry's number.
    expiry_option: bytes | None = None
    expiry_text = b""
    i = 3
    while i < len(argv):
        option = argv[i].lower()
        if option in (b"ex", b"px", b"exat", b"pxat") and i + 1 < len(argv):
            if keepttl or expiry_option not in (None, option):
                return _SYNTAX
            expiry_option, expiry_text = option, argv[i + 1]
            i += 2
        elif option == b"nx" and not xx:
            nx = True
            i += 1
        elif option == b"xx" and not nx:
            xx = True
            i += 1
        elif option == b"get":
            get = True
            i += 1
        elif option == b"keepttl" and expiry_option is None:
            keepttl = True
            i += 1
        else:
            return _SYNTAX
    if expiry_option is not None:
        parsed = _expiry_seconds(expiry_option, expiry_text, b"set")
        if isinstance(parsed, bytes):
            return parsed
        ttl = parsed
    old = _get_bytes(db, key) if (nx or xx or get) else None
    exists = old is not None if (nx or xx or get) else False
    if (nx and exists) or (xx and not exists):
        return enc.bulk(old) if get else enc.null_bulk
    if ttl is not None and ttl <= 0:  # an absolute time already past: Redis deletes the key
        if exists or _get_bytes(db, key) is not None:
            db.remove(key)
        return enc.bulk(old) if get else OK
    if keepttl:
        ttl = _remaining_ttl(db, key)
    db.set(key, value, ttl=ttl)
    return enc.bulk(old) if get else OK


@command("setnx", 3, write=True)
def _setnx(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    db = _db(session, state)
    if _get_bytes(db, argv[1]) is not None:
        return _ZERO
    db.set(argv[1], argv[2])
    return _ONE


@command("getset", 3, write=True)
def _getset(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    db = _db(session, state)
    old = _get_bytes(db, argv[1])
    db.set(argv[1], argv[2])
    return session.encoder.bulk(old)


@command("getdel", 2, write=True)
def _getdel(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    db = _db(session, state)
    old = _get_bytes(db, argv[1])
    if old is not None:
        db.remove(argv[1])
    return session.encoder.bulk(old)


def _expiry_seconds(option: bytes, text: bytes, command_name: bytes) -> float | bytes:
    """The time to live that expiry ``option`` (ex, px, exat, pxat) with number ``text``
    gives, in seconds (<= 0 for an absolute time already past); or the error reply, as
    Redis's getExpireMillisecondsOrReply words it."""
    number = _parse_int(text)
    if number is None:
        return _WRONG_INT
    seconds = option in (b"ex", b"exat")
    if number <= 0 or _expire_overflows(number, seconds, option):
        return b"-ERR invalid expire time in '%b' command\r\n" % command_name
    if option == b"ex":
        return float(number)
    if option == b"px":
        return number / 1000
    return ((number * 1000 if seconds else number) - time.time() * 1000) / 1000


def _set_expiring(
    state: ServerState, session: Session, argv: list[bytes], option: bytes, name: bytes
) -> bytes:
    """SETEX key seconds value, PSETEX key milliseconds value."""
    ttl = _expiry_seconds(option, argv[2], name)
    if isinstance(ttl, bytes):
        return ttl
    _db(session, state).set(argv[1], argv[3], ttl=ttl)
    return OK


register(Command("setex", 4, partial(_set_expiring, option=b"ex", name=b"setex"), write=True))
register(Command("psetex", 4, partial(_set_expiring, option=b"px", name=b"psetex"), write=True))


@command("getex", -2, write=True)
def _getex(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    # As Redis: the options first (one kind of expiry, which may come again, the last one
    # counting; or PERSIST), then the key, and only for a present key the expiry's number.
    expiry_option: bytes | None = None
    expiry_text = b""
    persist = False
    i = 2
    while i < len(argv):
        option = argv[i].lower()
        if option in (b"ex", b"px", b"exat", b"pxat") and i + 1 < len(argv):
            if persist or expiry_option not in (None, option):
                return _SYNTAX
            expiry_option, expiry_text = option, argv[i + 1]
            i += 2
        elif option == b"persist" and expiry_option is None:
            persist = True
            i += 1
        else:
            return _SYNTAX
    db, enc, key = _db(session, state), session.encoder, argv[1]
    value = _get_bytes(db, key)
    if value is None:
        return enc.null_bulk
    if expiry_option is not None:
        ttl = _expiry_seconds(expiry_option, expiry_text, b"getex")
        if isinstance(ttl, bytes):
            return ttl
        if ttl <= 0:  # an absolute time already past: Redis deletes the key
            db.remove(key)
        else:
            db.expire(key, ttl)
    elif persist and db.ttl(key) is not None:
        db.expire(key, None)
    return enc.bulk(value)


@command("mget", -2)
def _mget(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    db = _db(session, state)
    return session.encoder.bulk_array([_get_bytes(db, key) for key in argv[1:]])


@command("mset", -3, write=True)
def _mset(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    if len(argv) % 2 == 0:
        return b"-ERR wrong number of arguments for 'mset' command\r\n"
    _db(session, state).update(list(zip(argv[1::2], argv[2::2], strict=True)))
    return OK


@command("msetnx", -3, write=True)
def _msetnx(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    if len(argv) % 2 == 0:
        return b"-ERR wrong number of arguments for 'msetnx' command\r\n"
    db = _db(session, state)
    if any(_get_bytes(db, key) is not None for key in argv[1::2]):
        return _ZERO
    db.update(list(zip(argv[1::2], argv[2::2], strict=True)))
    return _ONE


def _rename_generic(state: ServerState, session: Session, argv: list[bytes], nx: bool) -> bytes:
    """RENAME / RENAMENX: the value and its time to live move to the new name, in one batch."""
    db, source, target = _db(session, state), argv[1], argv[2]
    value = _get_bytes(db, source)
    if value is None:
        return b"-ERR no such key\r\n"
    if source == target:
        return _ZERO if nx else OK
    if nx and _get_bytes(db, target) is not None:
        return _ZERO
    try:
        ttl = db.ttl(source)
    except KeyNotFound:  # expired between the two reads
        return b"-ERR no such key\r\n"
    batch = WriteBatch()
    batch.set(target, value, ttl=ttl)
    batch.remove(source)
    db.write(batch)
    return _ONE if nx else OK


register(Command("rename", 3, partial(_rename_generic, nx=False), write=True))
register(Command("renamenx", 3, partial(_rename_generic, nx=True), write=True))


@command("copy", -3, write=True)
def _copy(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    # Redis's copyCommand, with one database: the options first, then the keys.
    replace = False
    i = 3
    while i < len(argv):
        option = argv[i].lower()
        if option == b"replace":
            replace = True
            i += 1
        elif option == b"db" and i + 1 < len(argv):
            index = _parse_int(argv[i + 1])
            if index is None or not -(2**31) <= index < 2**31:
                return _WRONG_INT
            if index != 0:
                return b"-ERR DB index is out of range\r\n"
            i += 2
        else:
            return _SYNTAX
    db, source, target = _db(session, state), argv[1], argv[2]
    if source == target:
        return b"-ERR source and destination objects are the same\r\n"
    value = _get_bytes(db, source)
    if value is None:
        return _ZERO
    if not replace and _get_bytes(db, target) is not None:
        return _ZERO
    db.set(target, value, ttl=_remaining_ttl(db, source))
    return _ONE


@command("del", -2, write=True)
def _del(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    db, enc = _db(session, state), session.encoder
    keys = list(dict.fromkeys(argv[1:]))
    present = [key for key in keys if db.get(key) is not None]
    if len(present) == 1:
        db.remove(present[0])
    elif present:
        batch = WriteBatch()
        for key in present:
            batch.remove(key)
        db.write(batch)
    return enc.integer(len(present))


register(Command("unlink", -2, _del, write=True))


@command("exists", -2)
def _exists(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    db = _db(session, state)
    return session.encoder.integer(sum(db.get(key) is not None for key in argv[1:]))


register(Command("touch", -2, _exists))  # no access times here: TOUCH counts, as EXISTS


@command("time", 1)
def _time(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    now_us = time.time_ns() // 1000
    return session.encoder.bulk_array([b"%d" % (now_us // 1_000_000), b"%d" % (now_us % 1_000_000)])


@command("type", 2)
def _type(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    return b"+string\r\n" if _db(session, state).get(argv[1]) is not None else b"+none\r\n"


@command("strlen", 2)
def _strlen(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    value = _get_bytes(_db(session, state), argv[1])
    return session.encoder.integer(0 if value is None else len(value))


@command("getrange", 4)
def _getrange(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    # Redis's getrangeCommand: inclusive bounds, negative ones count from the end, then both
    # are clamped into the value; an absent key reads as the empty string.
    start, end = _parse_int(argv[2]), _parse_int(argv[3])
    if start is None or end is None:
        return _WRONG_INT
    value = _get_bytes(_db(session, state), argv[1]) or b""
    size = len(value)
    if start < 0 and end < 0 and start > end:
        return session.encoder.bulk(b"")
    start = max(0, start + size if start < 0 else start)
    end = min(size - 1, max(0, end + size if end < 0 else end))
    return session.encoder.bulk(value[start : end + 1] if start <= end else b"")


register(Command("substr", 4, _getrange))  # GETRANGE's old name, kept by Redis 7


@command("setrange", 4, write=True)
def _setrange(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    # Redis's setrangeCommand: the value is zero-padded up to the offset; the time to live
    # stays; an empty piece changes nothing (and creates no key).
    offset = _parse_int(argv[2])
    if offset is None:
        return _WRONG_INT
    if offset < 0:
        return b"-ERR offset is out of range\r\n"
    db, enc, key, piece = _db(session, state), session.encoder, argv[1], argv[3]
    old = _get_bytes(db, key)
    if not piece:
        return enc.integer(0 if old is None else len(old))
    if offset + len(piece) > state.max_bulk_len:
        return b"-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n"
    value = old or b""
    if len(value) < offset:
        value += bytes(offset - len(value))
    value = value[:offset] + piece + value[offset + len(piece) :]
    db.set(key, value, ttl=_remaining_ttl(db, key) if old is not None else None)
    return enc.integer(len(value))


@command("incrbyfloat", 3, write=True)
def _incrbyfloat(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    # Parsed, added and written as Redis does, in C's long double (see longdouble).
    db, key = _db(session, state), argv[1]
    old = _get_bytes(db, key)
    current = longdouble.parse(old) if old is not None else longdouble.parse(b"0")
    increment = longdouble.parse(argv[2])
    if current is None or increment is None:
        return b"-ERR value is not a valid float\r\n"
    total = longdouble.add_and_format(current, increment)
    if total is None:
        return b"-ERR increment would produce NaN or Infinity\r\n"
    db.set(key, total, ttl=_remaining_ttl(db, key) if old is not None else None)
    return session.encoder.bulk(total)


def _remaining_ttl(db: KvStore | _Transaction, key: bytes) -> float | None:
    """The seconds ``key`` has left (None: no expiry, or gone meanwhile), for a write that
    keeps the time to live, as Redis's in-place changes do."""
    try:
        return db.ttl(key)
    except KeyNotFound:
        return None


@command("append", 3, write=True)
def _append(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    db, enc = _db(session, state), session.encoder
    key = argv[1]
    old = _get_bytes(db, key)
    value = (old or b"") + argv[2]
    db.set(key, value, ttl=_remaining_ttl(db, key) if old is not None else None)
    return enc.integer(len(value))


def _incr_by(db: KvStore | _Transaction, enc: ReplyEncoder, key: bytes, delta: int) -> bytes:
    old = _get_bytes(db, key)
    current = 0 if old is None else _parse_int(old)
    if current is None:
        return _WRONG_INT
    value = current + delta
    if not _INT64_MIN <= value <= _INT64_MAX:
        return b"-ERR increment or decrement would overflow\r\n"
    db.set(key, b"%d" % value, ttl=_remaining_ttl(db, key) if old is not None else None)
    return enc.integer(value)


@command("incr", 2, write=True)
def _incr(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    return _incr_by(_db(session, state), session.encoder, argv[1], 1)


@command("decr", 2, write=True)
def _decr(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    return _incr_by(_db(session, state), session.encoder, argv[1], -1)


@command("incrby", 3, write=True)
def _incrby(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    delta = _parse_int(argv[2])
    if delta is None:
        return _WRONG_INT
    return _incr_by(_db(session, state), session.encoder, argv[1], delta)


@command("decrby", 3, write=True)
def _decrby(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    delta = _parse_int(argv[2])
    if delta is None:
        return _WRONG_INT
    if delta == _INT64_MIN:
        return b"-ERR decrement would overflow\r\n"
    return _incr_by(_db(session, state), session.encoder, argv[1], -delta)


# -- expiry ---------------------------------------------------------------------------------


def _expire_overflows(number: int, seconds: bool, option: bytes) -> bool:
    """Whether an expire time is past what Redis accepts: its absolute time in milliseconds
    must fit a signed 64-bit integer (else "invalid expire time", never a store error)."""
    if seconds and not -(_INT64_MAX // 1000) <= number <= _INT64_MAX // 1000:
        return True
    when_ms = number * 1000 if seconds else number
    if option in (b"ex", b"px"):  # relative: Redis adds the current time
        when_ms += int(time.time() * 1000)
    return when_ms > _INT64_MAX


def _expire_generic(
    db: KvStore | _Transaction, enc: ReplyEncoder, argv: list[bytes], unit_ms: int, absolute: bool
) -> bytes:
    # As Redis checks them: the options, then the number.
    flags = {a.lower() for a in argv[3:]}
    for option in argv[3:]:
        if option.lower() not in (b"nx", b"xx", b"gt", b"lt"):
            return b"-ERR Unsupported option %b\r\n" % _printable(option)
    if b"nx" in flags and len(flags) > 1:
        return b"-ERR NX and XX, GT or LT options at the same time are not compatible\r\n"
    if {b"gt", b"lt"} <= flags:
        return b"-ERR GT and LT options at the same time are not compatible\r\n"
    number = _parse_int(argv[2])
    if number is None:
        return _WRONG_INT
    if _expire_overflows(number, unit_ms == 1000, b"exat" if absolute else b"ex"):
        return b"-ERR invalid expire time in '%b' command\r\n" % _printable(argv[0].lower())
    key = argv[1]
    try:
        current = db.ttl(key)
    except KeyNotFound:
        return _ZERO
    target_ms = number * unit_ms
    seconds = (target_ms - time.time() * 1000) / 1000 if absolute else target_ms / 1000
    if (b"nx" in flags and current is not None) or (b"xx" in flags and current is None):
        return _ZERO
    if b"gt" in flags and (current is None or seconds <= current):
        return _ZERO
    if b"lt" in flags and current is not None and seconds >= current:
        return _ZERO
    if seconds <= 0:
        db.remove(key)
        return _ONE
    return _ONE if db.expire(key, seconds) else _ZERO


@command("expire", -3, write=True)
def _expire(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    return _expire_generic(_db(session, state), session.encoder, argv, 1000, False)


@command("pexpire", -3, write=True)
def _pexpire(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    return _expire_generic(_db(session, state), session.encoder, argv, 1, False)


@command("expireat", -3, write=True)
def _expireat(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    return _expire_generic(_db(session, state), session.encoder, argv, 1000, True)


@command("pexpireat", -3, write=True)
def _pexpireat(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    return _expire_generic(_db(session, state), session.encoder, argv, 1, True)


def _ttl_reply(db: KvStore | _Transaction, key: bytes, scale: int) -> int:
    try:
        remaining = db.ttl(key)
    except KeyNotFound:
        return -2
    if remaining is None:
        return -1
    return int(remaining * scale + 0.5) if scale == 1 else int(remaining * scale)


@command("ttl", 2)
def _ttl(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    return session.encoder.integer(_ttl_reply(_db(session, state), argv[1], 1))


@command("pttl", 2)
def _pttl(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    return session.encoder.integer(_ttl_reply(_db(session, state), argv[1], 1000))


@command("persist", 2, write=True)
def _persist(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    db = _db(session, state)
    try:
        current = db.ttl(argv[1])
    except KeyNotFound:
        return _ZERO
    if current is None:
        return _ZERO
    return _ONE if db.expire(argv[1], None) else _ZERO


# -- iteration ------------------------------------------------------------------------------


def _glob(pattern: bytes) -> Callable[[bytes], bool]:
    """Redis's glob (``*``, ``?``, ``[...]``, ``\\`` escapes) over bytes."""
    if pattern == b"*":
        return lambda key: True
    regex = re.compile(_glob_regex(pattern), re.DOTALL)
    return lambda key: regex.fullmatch(key) is not None


def _glob_regex(pattern: bytes) -> bytes:
    """Translate a pattern the way Redis's ``stringmatchlen`` reads it: ``\\x`` is a literal
    x (also inside brackets), ``[^...]`` negates, ``[a-z]`` ranges (either order), and an
    unclosed ``[`` takes the rest of the pattern as its set."""
    out: list[bytes] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == 0x2A:  # *
            out.append(b".*")
        elif c == 0x3F:  # ?
            out.append(b".")
        elif c == 0x5C and i + 1 < n:  # backslash escape
            i += 1
            out.append(b"\\x%02x" % pattern[i])
        elif c == 0x5B:  # [
            i += 1
            negate = i < n and pattern[i] == 0x5E  # ^
            if negate:
                i += 1
            items: list[bytes] = []
            while i < n and pattern[i] != 0x5D:  # ]
                if pattern[i] == 0x5C and i + 1 < n:
                    i += 1
                    items.append(b"\\x%02x" % pattern[i])
                elif i + 2 < n and pattern[i + 1] == 0x2D:  # a-z
                    low, high = sorted((pattern[i], pattern[i + 2]))
                    items.append(b"\\x%02x-\\x%02x" % (low, high))
                    i += 2
                else:
                    items.append(b"\\x%02x" % pattern[i])
                i += 1
            if items:
                out.append(b"[%b%b]" % (b"^" if negate else b"", b"".join(items)))
            else:
                out.append(b"." if negate else b"(?!)")
        else:
            out.append(b"\\x%02x" % c)
        i += 1
    return b"".join(out)


def _key_hash(key: bytes) -> int:
    return crc32c(key)


@command("keys", 2)
def _keys(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    matcher = _glob(argv[1])
    keys = [k if isinstance(k, bytes) else k.encode() for k in _db(session, state).scan()]
    return session.encoder.bulk_array([key for key in keys if matcher(key)])


# SCAN cursors: the epoch of the snapshot a walk last used (1 .. 2**31-1) times 2**32, plus
# the hash of the next key to visit. 0 starts a walk, and ends one.
_SCAN_HASH_BITS: Final = 32
_SCAN_HASH_MASK: Final = (1 << _SCAN_HASH_BITS) - 1
_SCAN_MAX_EPOCH: Final = (1 << 31) - 1


_CURSOR: Final = re.compile(rb"[+-]?[0-9]+")


def _parse_cursor(data: bytes) -> int | None:
    """A SCAN cursor as Redis reads it (strtoul): an optional sign, digits (leading zeros
    too), at most 2**64 - 1; a negative number wraps around, as in C."""
    if not _CURSOR.fullmatch(data):
        return None
    value = int(data)
    if abs(value) > _UINT64_MAX:
        return None
    return value % (_UINT64_MAX + 1)


_UINT64_MAX: Final = (1 << 64) - 1


@dataclass
class _ScanSnapshot:
    """Every key at one moment, in order of hash (``hashes[i]`` is ``keys[i]``'s)."""

    epoch: int
    keys: list[bytes]
    hashes: array[int]


def _scan_snapshot(state: ServerState, db: KvStore | _Transaction) -> _ScanSnapshot:
    """List the key space now, in hash order, and keep it for the next SCAN calls (not one
    seen inside a MULTI block, which holds the block's own writes)."""
    keys = [k if isinstance(k, bytes) else k.encode() for k in db.scan()]
    keys.sort(key=_key_hash)
    state.scan_epoch = state.scan_epoch % _SCAN_MAX_EPOCH + 1
    snapshot = _ScanSnapshot(state.scan_epoch, keys, array("I", map(_key_hash, keys)))
    if db is state.store:
        state.scan_snapshot = snapshot
    return snapshot


def _present(store: KvStore | _Transaction, key: bytes) -> bool:
    """Whether ``key`` is (still) there: ttl() reads no value, and raises if it is absent."""
    try:
        store.ttl(key)
    except KeyNotFound:
        return False
    return True


@command("scan", -2)
def _scan(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """SCAN walks the keys in order of a fixed hash (crc32c); the cursor holds the next hash
    to visit, so that a walk is a series of ranges of that order, and keys of one hash are
    never split across two calls. Redis's guarantee holds: a key present for the whole walk
    is returned (exactly once); one added or removed meanwhile may or may not be.

    The order comes from a snapshot of the key space sorted by hash, kept in ``state`` and
    shared by every walk: SCAN 0 takes a new one (it must hold every key present when the
    walk starts), a later call uses the one kept if it was taken since the walk's own
    snapshot (the cursor carries its epoch), else takes a new one, which is just as right:
    any listing made after a walk started holds every key present for the whole walk. So
    a full walk lists the key space once, not once per call: O(N log N), not O(N**2 / count).
    Keys removed since the snapshot are skipped (one index lookup each, no value read).
    """
    cursor = _parse_cursor(argv[1])
    if cursor is None:
        return b"-ERR invalid cursor\r\n"
    matcher: Callable[[bytes], bool] = lambda key: True  # noqa: E731
    count = 10
    i = 2
    while i < len(argv):
        option = argv[i].lower()
        if option == b"match" and i + 1 < len(argv):
            matcher = _glob(argv[i + 1])
        elif option == b"count" and i + 1 < len(argv):
            parsed = _parse_int(argv[i + 1])
            if parsed is None:
                return _WRONG_INT
            if parsed < 1:
                return _SYNTAX
            count = parsed
        elif option == b"type" and i + 1 < len(argv):
            if argv[i + 1].lower() != b"string":
                matcher = lambda key: False  # noqa: E731
        else:
            return _SYNTAX
        i += 2
    epoch, position = cursor >> _SCAN_HASH_BITS, cursor & _SCAN_HASH_MASK
    db = _db(session, state)
    snapshot = state.scan_snapshot
    if cursor == 0 or snapshot is None or not 0 < epoch <= snapshot.epoch or db is not state.store:
        # A new walk; or a cursor older than any snapshot kept (or one from another run of
        # the server, or made up by hand); or a walk inside MULTI: list the keys now, and
        # go on from its position.
        snapshot = _scan_snapshot(state, db)
    keys, hashes = snapshot.keys, snapshot.hashes
    start = bisect_left(hashes, position)
    stop = min(start + count, len(keys))
    while stop < len(keys) and stop > start and hashes[stop] == hashes[stop - 1]:
        stop += 1  # never split keys of equal hash across two calls
    batch = [key for key in keys[start:stop] if matcher(key) and _present(db, key)]
    if stop < len(keys):
        next_cursor = snapshot.epoch << _SCAN_HASH_BITS | hashes[stop]
    else:
        next_cursor = 0
        if state.scan_snapshot is snapshot:
            state.scan_snapshot = None  # this walk is over: free the listing
    enc = session.encoder
    return enc.array([enc.bulk(b"%d" % next_cursor), enc.bulk_array(batch)])


@command("flushdb", -1, write=True)
def _flushdb(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    if any(a.lower() not in (b"async", b"sync") for a in argv[1:]) or len(argv) > 2:
        return _SYNTAX
    _db(session, state).clear()
    return OK


register(Command("flushall", -1, _flushdb, write=True))


# -- transactions ---------------------------------------------------------------------------


class _Transaction:
    """The store as a MULTI block sees it: reads see the block's own writes, and every write
    is collected into one batch that EXEC applies atomically."""

    def __init__(self, store: KvStore) -> None:
        self.store = store
        self.queued: list[tuple[Command, list[bytes]]] = []
        self.pending: dict[bytes, tuple[bytes, float | None] | None] = {}  # None: removed
        self.cleared = False

    def get(self, key: bytes) -> bytes | None:
        if key in self.pending:
            entry = self.pending[key]
            return None if entry is None else entry[0]
        return None if self.cleared else _get_bytes(self.store, key)

    def ttl(self, key: bytes) -> float | None:
        if key in self.pending:
            entry = self.pending[key]
            if entry is None:
                raise KeyNotFound(key)
            return entry[1]
        if self.cleared:
            raise KeyNotFound(key)
        return self.store.ttl(key)

    def set(self, key: bytes, value: bytes, ttl: float | None = None) -> None:
        self.pending[key] = (value, ttl)

    def scan(self) -> list[bytes]:
        """Every key as the block sees it, sorted (as ``KvStore.scan``)."""
        keys: set[bytes] = set()
        if not self.cleared:
            keys.update(k if isinstance(k, bytes) else k.encode() for k in self.store.scan())
        for key, entry in self.pending.items():
            if entry is None:
                keys.discard(key)
            else:
                keys.add(key)
        return sorted(keys)

    def __len__(self) -> int:
        return len(self.scan())

    def remove(self, key: bytes) -> None:
        if self.get(key) is None:
            raise KeyNotFound(key)
        self.pending[key] = None

    def write(self, batch: WriteBatch) -> None:
        for op, key, value, ttl, _ in batch.ops:
            raw = key if isinstance(key, bytes) else key.encode()
            if op == "set":
                assert isinstance(value, bytes)
                self.set(raw, value, ttl)
            else:
                self.pending[raw] = None

    def update(self, pairs: list[tuple[bytes, bytes]]) -> None:
        for key, value in pairs:
            self.set(key, value)

    def expire(self, key: bytes, ttl: float | None) -> bool:
        value = self.get(key)
        if value is None:
            return False
        self.pending[key] = (value, ttl)
        return True

    def clear(self) -> None:
        self.pending.clear()
        self.cleared = True

    def commit(self) -> None:
        batch = WriteBatch()
        if self.cleared:
            for key in self.store.scan():
                raw = key if isinstance(key, bytes) else key.encode()
                if raw not in self.pending:
                    batch.remove(raw, missing_ok=True)
        for key, entry in self.pending.items():
            if entry is None:
                batch.remove(key, missing_ok=True)
            else:
                batch.set(key, entry[0], ttl=entry[1])
        if batch.ops:
            self.store.write(batch)


class _SignallingStore(KvStore):
    """``state.store`` while any key is watched: the store, plus a ``state.touch`` for every
    key a write changes. A write that changes nothing (removing an absent key, the expiry
    of an absent key) touches nothing, as in Redis; a set touches its key even when the
    value stays the same, as in Redis."""

    def __init__(self, store: KvStore, state: ServerState) -> None:
        self._store = store
        self._state = state

    def set(self, key: Key, value: Value, ttl: float | None = None) -> None:
        self._store.set(key, value, ttl)
        self._state.touch(_raw(key))

    def get(self, key: Key) -> Value | None:
        return self._store.get(key)

    def remove(self, key: Key) -> None:
        self._store.remove(key)
        self._state.touch(_raw(key))

    def ttl(self, key: Key) -> float | None:
        return self._store.ttl(key)

    def expire(self, key: Key, ttl: float | None) -> bool:
        changed = self._store.expire(key, ttl)
        if changed:
            self._state.touch(_raw(key))
        return changed

    def write(self, batch: WriteBatch) -> None:
        watched = self._state.watchers
        changed = [
            raw
            for op, key, _, _, _ in batch.ops
            if (raw := _raw(key)) in watched and (op == "set" or _present(self._store, raw))
        ]
        self._store.write(batch)
        for key in changed:
            self._state.touch(key)

    def update(self, items: Mapping[Key, Value] | Iterable[tuple[Key, Value]]) -> None:
        pairs = list(items.items() if isinstance(items, Mapping) else items)
        self._store.update(pairs)
        for key, _ in pairs:
            self._state.touch(_raw(key))

    def clear(self) -> None:
        present = [key for key in self._state.watchers if _present(self._store, key)]
        self._store.clear()
        for key in present:
            self._state.touch(key)

    def scan(self, prefix: Key = b"") -> Iterator[Key]:
        return self._store.scan(prefix)

    def __len__(self) -> int:
        return len(self._store)

    def sync(self) -> None:
        self._store.sync()

    def compact(self) -> None:
        self._store.compact()

    def close(self) -> None:
        self._store.close()

    def stats(self) -> dict[str, int | float | str]:
        return self._store.stats()


def _raw(key: Key) -> bytes:
    return key if isinstance(key, bytes) else key.encode()


@command("watch", -2, queue=False)
def _watch(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    if session.transaction is not None:  # an error that leaves the block as it was
        return b"-ERR WATCH inside MULTI is not allowed\r\n"
    for key in argv[1:]:
        state.watch(session, key)
    return OK


@command("unwatch", 1)
def _unwatch(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    state.unwatch_all(session)
    return OK


@command("multi", 1, queue=False)
def _multi(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    if session.transaction is not None:
        return b"-ERR MULTI calls can not be nested\r\n"
    session.transaction = _Transaction(state.store)
    session.transaction_failed = False
    return OK


@command("discard", 1, queue=False)
def _discard(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    if session.transaction is None:
        return b"-ERR DISCARD without MULTI\r\n"
    session.transaction = None
    state.unwatch_all(session)
    return OK


@command("exec", 1, queue=False)
def _exec(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    tx = session.transaction
    if tx is None:
        return b"-ERR EXEC without MULTI\r\n"
    session.transaction = None
    changed = state.watched_keys_changed(session)
    state.unwatch_all(session)
    if session.transaction_failed:
        return b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    if changed:
        return session.encoder.null_array
    # Run the queued commands against the overlay (every handler reads and writes through
    # _db(), so they see each other's writes), then write everything as one batch, through
    # the store as it is now (it signals watched keys if anyone watches since MULTI).
    tx.store = state.store
    session.transaction = tx
    try:
        replies = [_run(cmd, state, session, queued) for cmd, queued in tx.queued]
    finally:
        session.transaction = None
    tx.commit()
    return session.encoder.array(replies)


__all__ = [
    "COMMANDS",
    "ServerState",
    "Session",
    "Shutdown",
    "execute",
    "lookup",
    "plain_reply",
    "register",
    "run_plain",
]
