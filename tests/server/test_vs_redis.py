"""kvs-server against a real redis-server: the same commands, the same replies.

Each script runs on a flushed database of both servers, one command at a time through
redis-py (RESP2 and RESP3); every reply, or every error's class and text, must be equal.
Replies that depend on the clock are compared after ``_comparable`` (a TTL in whole seconds
is exact on both; a PTTL is compared to the second; TIME by shape). Needs ``redis-server``
(``.ci/run`` installs it); skipped without it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from kvs.localservers import RedisServer, free_port

from .helpers import ServerProcess

Script = list[tuple[str, ...]]


@pytest.fixture(scope="module")
def real_redis() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    root = Path(tempfile.mkdtemp(prefix="kvs-vs-redis-"))
    server = RedisServer(root, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _raw(client: redis.Redis) -> redis.Redis:
    """``client`` with INCRBYFLOAT's reply left as the server's bytes (redis-py makes it a
    float, which hides the very digits being compared)."""
    client.response_callbacks.pop("INCRBYFLOAT", None)
    return client


def _run(client: redis.Redis, script: Script) -> list[Any]:
    client.flushdb()
    replies: list[Any] = []
    for command in script:
        try:
            reply = client.execute_command(*command)
        except redis.ResponseError as error:
            reply = ("error", type(error).__name__, str(error))
        replies.append(_comparable(command[0].upper(), reply))
    return replies


def _comparable(name: str, reply: Any) -> Any:
    if isinstance(reply, Exception):  # inside an EXEC reply
        return ("error", type(reply).__name__, str(reply))
    if name == "EXEC" and isinstance(reply, list):
        return [_comparable("", item) for item in reply]
    if name == "PTTL" and isinstance(reply, int) and reply > 0:
        return ("pttl, seconds", round(reply / 1000))
    if name == "TIME" and not (isinstance(reply, tuple) and reply[0] == "error"):
        seconds, micros = reply
        assert abs(int(seconds) - time.time()) < 5 and 0 <= int(micros) < 1_000_000
        return "a time"
    return reply


def _compare(kvs: ServerProcess, real: RedisServer, protocol: int, script: Script) -> None:
    ours = _raw(kvs.client(protocol))
    theirs = _raw(real.client(protocol=protocol, socket_timeout=20, retry=None))
    try:
        expected = _run(theirs, script)
        got = _run(ours, script)
    finally:
        ours.close()
        theirs.close()
    for command, want, have in zip(script, expected, got, strict=True):
        assert have == want, f"{command}: redis replied {want!r}, kvs-server {have!r}"


FAR = str(2**62)  # an absolute time far past what fits in milliseconds
SCRIPTS: dict[str, Script] = {
    "setex": [
        ("SETEX", "k", "100", "v"),
        ("GET", "k"),
        ("TTL", "k"),
        ("SETEX", "k", "0", "v"),
        ("SETEX", "k", "-5", "v"),
        ("SETEX", "k", "ten", "v"),
        ("SETEX", "k", "1.5", "v"),
        ("SETEX", "k", "9223372036854775807", "v"),
        ("SETEX", "k", "9223372036854775", "v"),
        ("setex", "k", "100"),
        ("GET", "k"),
        ("SET", "plain", "x"),
        ("SETEX", "plain", "50", "y"),
        ("TTL", "plain"),
    ],
    "set with an expiry": [
        ("SET", "k", "v", "EX", "100"),
        ("TTL", "k"),
        ("SET", "k", "v", "PX", "100000"),
        ("PTTL", "k"),
        ("SET", "k", "v", "EXAT", str(int(time.time()) + 200)),
        ("TTL", "k"),
        ("SET", "k", "v", "EX", "0"),
        ("SET", "k", "v", "EX", "x"),
        ("SET", "k", "v", "PX", "9223372036854775807"),
        ("SET", "k", "v", "EXAT", FAR),
        ("SET", "k", "w", "PXAT", "1", "GET"),
        ("EXISTS", "k"),
        ("SET", "k", "w", "PXAT", "1", "GET"),
        ("SET", "k", "v", "NX", "EXAT", "1"),
        ("EXISTS", "k"),
    ],
    "psetex": [
        ("PSETEX", "k", "100000", "v"),
        ("PTTL", "k"),
        ("TTL", "k"),
        ("PSETEX", "k", "0", "v"),
        ("PSETEX", "k", "9223372036854775807", "v"),
        ("PSETEX", "k", "x", "v"),
        ("GET", "k"),
    ],
    "msetnx": [
        ("MSETNX", "a", "1", "b", "2"),
        ("MGET", "a", "b"),
        ("MSETNX", "b", "3", "c", "4"),
        ("MGET", "a", "b", "c"),
        ("MSETNX", "c", "1", "c", "2"),
        ("GET", "c"),
        ("MSETNX", "d", "1", "e"),
        ("MSETNX", "d"),
        ("EXISTS", "d", "e"),
    ],
    "getex": [
        ("GETEX", "missing"),
        ("GETEX", "missing", "EX", "ten"),
        ("SET", "k", "v"),
        ("GETEX", "k"),
        ("TTL", "k"),
        ("GETEX", "k", "EX", "100"),
        ("TTL", "k"),
        ("GETEX", "k", "PX", "200000"),
        ("TTL", "k"),
        ("GETEX", "k", "PERSIST"),
        ("TTL", "k"),
        ("GETEX", "k", "EXAT", str(int(time.time()) + 300)),
        ("TTL", "k"),
        ("GETEX", "k", "EX", "100", "EX", "200"),
        ("TTL", "k"),
        ("GETEX", "k", "EX", "100", "PX", "200"),
        ("GETEX", "k", "EX", "100", "PERSIST"),
        ("GETEX", "k", "PERSIST", "EX", "100"),
        ("GETEX", "k", "PERSIST", "PERSIST"),
        ("GETEX", "k", "EX"),
        ("GETEX", "k", "NX"),
        ("GETEX", "k", "KEEPTTL"),
        ("GETEX", "k", "EX", "0"),
        ("GETEX", "k", "EX", "-1"),
        ("GETEX", "k", "EX", "abc"),
        ("GETEX", "k", "EXAT", "0"),
        ("GETEX", "k", "PXAT", FAR),
        ("GETEX", "k", "EX", "9223372036854775807"),
        ("GET", "k"),
        ("GETEX", "k", "PXAT", "1"),
        ("GETEX", "k", "PXAT", "1"),
        ("EXISTS", "k"),
        ("SET", "k2", "v"),
        ("GETEX", "k2", "EXAT", "1"),
        ("EXISTS", "k2"),
    ],
    "rename": [
        ("RENAME", "missing", "x"),
        ("SET", "a", "1"),
        ("RENAME", "a", "b"),
        ("MGET", "a", "b"),
        ("RENAME", "b", "b"),
        ("GET", "b"),
        ("SET", "c", "3"),
        ("EXPIRE", "b", "100"),
        ("RENAME", "b", "c"),
        ("MGET", "b", "c"),
        ("TTL", "c"),
        ("SET", "d", "4"),
        ("EXPIRE", "d", "50"),
        ("RENAME", "c", "d"),
        ("TTL", "d"),
        ("rename", "d"),
    ],
    "renamenx": [
        ("RENAMENX", "missing", "x"),
        ("SET", "a", "1"),
        ("SET", "b", "2"),
        ("RENAMENX", "a", "b"),
        ("MGET", "a", "b"),
        ("RENAMENX", "a", "a"),
        ("EXPIRE", "a", "100"),
        ("RENAMENX", "a", "c"),
        ("MGET", "a", "b", "c"),
        ("TTL", "c"),
    ],
    "touch and time": [
        ("SET", "a", "1"),
        ("TOUCH", "a", "b", "a"),
        ("TOUCH",),
        ("TIME",),
        ("TIME", "extra"),
    ],
    "in a transaction": [
        ("SET", "a", "1"),
        ("MULTI",),
        ("SETEX", "b", "100", "2"),
        ("RENAME", "a", "c"),
        ("MSETNX", "c", "9", "d", "9"),
        ("GETEX", "b", "PERSIST"),
        ("RENAMENX", "b", "e"),
        ("SETEX", "f", "0", "x"),
        ("EXEC",),
        ("MGET", "a", "b", "c", "d", "e", "f"),
        ("TTL", "e"),
        ("MULTI",),
        ("GETEX", "e", "EX"),
        ("EXEC",),
        ("MULTI",),
        ("PSETEX", "g"),
        ("EXEC",),
        ("EXISTS", "g"),
    ],
}


# -- WATCH -----------------------------------------------------------------------------------

GETRANGE_BOUNDS = [
    ("0", "0"), ("0", "4"), ("0", "-1"), ("-3", "-1"), ("-1", "-3"), ("5", "3"),
    ("-100", "2"), ("3", "100"), ("100", "200"), ("-100", "-50"), ("-1", "-1"),
    ("11", "11"), ("12", "12"), ("0", "-100"), ("-5", "100"),
    ("9223372036854775807", "9223372036854775807"),
    ("-9223372036854775808", "9223372036854775807"),
]  # fmt: skip
SCRIPTS["getrange"] = [
    ("GETRANGE", "missing", "0", "-1"),
    ("GETRANGE", "missing", "x", "1"),
    ("SET", "empty", ""),
    ("GETRANGE", "empty", "0", "-1"),
    ("GETRANGE", "empty", "0", "0"),
    ("SET", "k", "Hello, world"),
    *[("GETRANGE", "k", start, end) for start, end in GETRANGE_BOUNDS],
    ("GETRANGE", "k", "1.5", "2"),
    ("GETRANGE", "k", "0", "9223372036854775808"),
    ("GETRANGE", "k", "01", "2"),
    ("GETRANGE", "k", "0"),
    ("MULTI",),
    ("SET", "k", "abc"),
    ("GETRANGE", "k", "1", "-1"),
    ("EXEC",),
]

# Increments whose sums show every rounding of Redis's long double arithmetic.
FLOAT_INCREMENTS = [
    "0.1", "0.2", "10.5", "-0.3", "1e-17", "5.0e3", "2.0e2", "3", "-3", "1e308", "1e308",
    "-2e308", "0.000000000000000001", "1.5", "123456789.123456789", "-123456789.123456789",
    "0x1p-3", "0X10", "+7", ".5", "5.", "1e4000", "-1e4000", "1e-4940", "-0", "1e18",
    "9007199254740993", "0.30000000000000004", "3.0000000000000000001", "1e-20",
]  # fmt: skip
FLOAT_SUMS = [
    ("10", "0.1"), ("0.1", "0.2"), ("1.1", "2.2"), ("3.3", "-3.3"), ("1e-10", "1e-10"),
    ("-0.0000000000000000001", "0"), ("2.675", "0"), ("0x1.fffffffffffffffep16383", "1"),
    ("1", "1e-18"), ("1", "5e-18"), ("0.000000000000000005", "0"),
    ("0.000000000000000015", "0"), ("0.000000000000000025", "0"),
]  # fmt: skip
NOT_FLOATS = [
    "", " 1", "1 ", "abc", "nan", "NaN", "inf", "-inf", "Infinity", "1e", "--1", "0x", ".",
    "1e5000", "1e-5000", "1.2.3", "1,5", "\u0661",
]  # fmt: skip
SCRIPTS["incrbyfloat"] = [
    ("INCRBYFLOAT", "f", "10.5"),
    *[("INCRBYFLOAT", "f", increment) for increment in FLOAT_INCREMENTS],
    ("GET", "f"),
    *[
        step
        for start, increment in FLOAT_SUMS
        for step in [("SET", "g", start), ("INCRBYFLOAT", "g", increment)]
    ],
    *[("INCRBYFLOAT", "f", bad) for bad in NOT_FLOATS],
    ("SET", "text", "hello"),
    ("INCRBYFLOAT", "text", "1"),
    ("SET", "inf", "inf"),
    ("INCRBYFLOAT", "inf", "1"),
    ("SET", "n", "1\x00junk"),
    ("INCRBYFLOAT", "n", "1"),
    ("SET", "t", "1", "EX", "100"),
    ("INCRBYFLOAT", "t", "0.5"),
    ("TTL", "t"),
    ("INCRBYFLOAT", "f"),
    ("MULTI",),
    ("INCRBYFLOAT", "m", "1.5"),
    ("INCRBYFLOAT", "m", "x"),
    ("GET", "m"),
    ("EXEC",),
]
SCRIPTS["setrange, substr and copy"] = [
    ("SETRANGE", "s", "0", "hello"),
    ("SETRANGE", "s", "6", "world"),
    ("GET", "s"),
    ("SETRANGE", "s", "0", "J"),
    ("SETRANGE", "s", "3", ""),
    ("SETRANGE", "missing", "5", ""),
    ("EXISTS", "missing"),
    ("SETRANGE", "s", "-1", "x"),
    ("SETRANGE", "s", "x", "x"),
    ("SETRANGE", "s", "536870911", "xy"),
    ("SETRANGE", "s", "9223372036854775807", "xy"),
    ("SETRANGE", "pad", "3", "a"),
    ("GET", "pad"),
    ("SET", "t", "abc", "EX", "100"),
    ("SETRANGE", "t", "1", "ZZZ"),
    ("GET", "t"),
    ("TTL", "t"),
    ("SUBSTR", "s", "0", "4"),
    ("SUBSTR", "s", "-5", "-1"),
    ("SUBSTR", "missing", "0", "1"),
    ("SUBSTR", "s", "0"),
    ("COPY", "s", "c"),
    ("GET", "c"),
    ("COPY", "s", "c"),
    ("COPY", "t", "c", "REPLACE"),
    ("GET", "c"),
    ("TTL", "c"),
    ("COPY", "missing", "c", "REPLACE"),
    ("COPY", "s", "s"),
    ("COPY", "s", "d", "DB", "0"),
    ("COPY", "s", "d", "DB", "x"),
    ("COPY", "s", "d", "DB", "-1"),
    ("COPY", "s", "d", "DB", "99"),
    ("COPY", "s", "d", "DB"),
    ("COPY", "s", "d", "bogus"),
    ("COPY", "s"),
    ("MULTI",),
    ("SETRANGE", "u", "2", "x"),
    ("COPY", "u", "v"),
    ("SUBSTR", "v", "0", "-1"),
    ("EXEC",),
]

SCRIPTS["watch, one client"] = [
    ("SET", "k", "1"),
    ("WATCH", "k"),
    ("SET", "k", "2"),  # the watcher's own write counts too
    ("MULTI",),
    ("SET", "x", "1"),
    ("EXEC",),
    ("GET", "x"),
    ("WATCH", "k"),
    ("MULTI",),
    ("SET", "x", "1"),
    ("EXEC",),  # nothing changed: runs
    ("WATCH",),
    ("UNWATCH", "k"),
    ("MULTI",),
    ("WATCH", "k"),  # an error that leaves the block as it was
    ("UNWATCH",),  # queued
    ("EXEC",),
    ("WATCH", "k"),
    ("SET", "k", "3"),
    ("UNWATCH",),
    ("MULTI",),
    ("EXEC",),
    ("WATCH", "k"),
    ("SET", "k", "4"),
    ("DISCARD",),  # without MULTI: an error, the watch stays
    ("EXEC",),  # without MULTI: an error, the watch stays
    ("MULTI",),
    ("EXEC",),
    ("WATCH", "k"),
    ("SET", "k", "5"),
    ("MULTI",),
    ("DISCARD",),  # ends the watch
    ("MULTI",),
    ("EXEC",),
    ("WATCH", "k", "k", "other"),
    ("SET", "k", "5"),  # the same value is still a write
    ("MULTI",),
    ("EXEC",),
    ("WATCH", "k"),
    ("SET", "k", "6"),
    ("MULTI",),
    ("NOSUCHCOMMAND",),
    ("EXEC",),  # EXECABORT, and the watch ends with it
    ("MULTI",),
    ("EXEC",),
]

SCRIPTS["watch, which writes count"] = [
    ("SET", "k", "1"),
    ("SET", "ttl", "1", "EX", "100"),
    # Writes that change nothing do not count:
    ("WATCH", "k", "missing", "ttl"),
    ("DEL", "missing"),
    ("SETNX", "k", "z"),
    ("SET", "k", "z", "NX"),
    ("SET", "missing", "z", "XX"),
    ("EXPIRE", "missing", "10"),
    ("PERSIST", "k"),
    ("GETDEL", "missing"),
    ("MSETNX", "k", "1", "missing", "2"),
    ("RENAMENX", "k", "ttl"),
    ("GET", "k"),
    ("MULTI",),
    ("EXEC",),
    # Each of these does:
    *[
        step
        for write in [
            ("SET", "k", "2"),
            ("DEL", "k"),
            ("SETNX", "missing", "1"),
            ("EXPIRE", "k", "100"),
            ("PERSIST", "ttl"),
            ("GETEX", "k", "EX", "50"),
            ("INCR", "k"),
            ("APPEND", "k", "x"),
            ("GETSET", "k", "y"),
            ("GETDEL", "k"),
            ("MSET", "a", "1", "k", "2"),
            ("MSETNX", "missing", "1", "b", "2"),
            ("RENAME", "ttl", "k"),
            ("RENAME", "k", "ttl"),
            ("FLUSHDB",),
        ]
        for step in [
            ("SET", "k", "1"),
            ("SET", "ttl", "1", "EX", "100"),
            ("DEL", "missing"),
            ("WATCH", "k", "missing", "ttl"),
            write,
            ("MULTI",),
            ("EXEC",),
        ]
    ],
    # FLUSHDB counts only for the keys it removed:
    ("FLUSHDB",),
    ("WATCH", "k"),
    ("FLUSHDB",),
    ("MULTI",),
    ("EXEC",),
]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_replies_match_redis(
    name: str, shared_server: ServerProcess, real_redis: RedisServer, protocol: int
) -> None:
    _compare(shared_server, real_redis, protocol, SCRIPTS[name])


def test_command_info_key_positions_match_redis(
    shared_server: ServerProcess, real_redis: RedisServer
) -> None:
    """redis-cli and cluster-aware clients find the keys of a command from COMMAND INFO."""
    names = ["get", "mset", "msetnx", "rename", "renamenx", "touch", "setex", "getex", "time"]
    names += ["watch", "unwatch", "getrange", "substr", "setrange", "incrbyfloat", "copy"]
    ours = shared_server.client(2)
    theirs = real_redis.client(protocol=2)
    try:
        got = ours.execute_command("COMMAND", "INFO", *names)
        expected = theirs.execute_command("COMMAND", "INFO", *names)
    finally:
        ours.close()
        theirs.close()
    for name, have, want in zip(names, got, expected, strict=True):
        # name, arity, flags (not compared: Redis lists many more), first key, last key, step
        assert [have[0], have[1], *have[3:6]] == [want[0], want[1], *want[3:6]], name


# (client, command...) steps: client 0 and 1 are two connections to the same server.
TWO_CLIENTS: dict[str, list[tuple[Any, ...]]] = {
    "another client writes": [
        (0, "SET", "k", "1"),
        (0, "WATCH", "k"),
        (1, "SET", "k", "2"),
        (0, "MULTI"),
        (0, "SET", "x", "1"),
        (0, "EXEC"),
        (0, "GET", "x"),
    ],
    "another client reads or writes other keys": [
        (0, "SET", "k", "1"),
        (0, "WATCH", "k"),
        (1, "GET", "k"),
        (1, "SET", "other", "2"),
        (1, "TTL", "k"),
        (0, "MULTI"),
        (0, "INCR", "k"),
        (0, "EXEC"),
    ],
    "both watch, the first to EXEC wins": [
        (0, "WATCH", "k"),
        (1, "WATCH", "k"),
        (0, "MULTI"),
        (0, "SET", "k", "from 0"),
        (1, "MULTI"),
        (1, "SET", "k", "from 1"),
        (0, "EXEC"),
        (1, "EXEC"),
        (0, "GET", "k"),
    ],
    "a block that began before the WATCH": [
        (1, "MULTI"),
        (1, "SET", "k", "from 1"),
        (0, "WATCH", "k"),
        (1, "EXEC"),
        (0, "MULTI"),
        (0, "SET", "k", "from 0"),
        (0, "EXEC"),
        (0, "GET", "k"),
    ],
    "a block of another client that changes nothing watched": [
        (0, "WATCH", "k"),
        (1, "MULTI"),
        (1, "SET", "j", "1"),
        (1, "DEL", "k"),
        (1, "EXEC"),
        (0, "MULTI"),
        (0, "SET", "k", "from 0"),
        (0, "EXEC"),
    ],
    "a watched key expires": [
        (0, "SET", "k", "1", "PX", "100"),
        (0, "WATCH", "k"),
        ("sleep", 0.3),
        (0, "MULTI"),
        (0, "SET", "x", "1"),
        (0, "EXEC"),
        (0, "SET", "k", "1", "PX", "50"),
        ("sleep", 0.2),
        (0, "WATCH", "k"),  # already expired: only a write counts now
        (0, "MULTI"),
        (0, "EXEC"),
        (0, "WATCH", "k"),
        (1, "SET", "k", "2"),
        (0, "MULTI"),
        (0, "EXEC"),
    ],
}


def _run_two(clients: list[redis.Redis], script: list[tuple[Any, ...]]) -> list[Any]:
    clients[0].flushdb()
    replies: list[Any] = []
    for who, *command in script:
        if who == "sleep":
            time.sleep(command[0])
            continue
        try:
            reply = clients[who].execute_command(*command)
        except redis.ResponseError as error:
            reply = ("error", type(error).__name__, str(error))
        replies.append((who, command, _comparable(command[0].upper(), reply)))
    return replies


@pytest.mark.parametrize("name", sorted(TWO_CLIENTS))
def test_watch_with_two_clients_matches_redis(
    name: str, shared_server: ServerProcess, real_redis: RedisServer, protocol: int
) -> None:
    ours = [shared_server.client(protocol) for _ in range(2)]
    theirs = [real_redis.client(protocol=protocol, socket_timeout=20, retry=None) for _ in range(2)]
    try:
        expected = _run_two(theirs, TWO_CLIENTS[name])
        got = _run_two(ours, TWO_CLIENTS[name])
    finally:
        for client in ours + theirs:
            client.close()
    assert got == expected


_float_text = st.builds(
    lambda sign, whole, fraction, exponent: f"{sign}{whole}{fraction}{exponent}",
    st.sampled_from(["", "-", "+"]),
    st.integers(0, 10**25).map(str) | st.just(""),
    st.integers(0, 10**25).map(lambda n: f".{n:0{len(str(n)) + 2}d}") | st.just(""),
    st.integers(-330, 330).map(lambda e: f"e{e}") | st.just(""),
)


@settings(max_examples=300, deadline=None)
@given(start=_float_text, increment=_float_text)
def test_incrbyfloat_rounds_as_redis_does(
    start: str, increment: str, shared_server: ServerProcess, real_redis: RedisServer
) -> None:
    """Redis adds in C's long double and prints with %.17Lf (kvs.server.longdouble): any
    two decimal numbers give the same reply, digit for digit, or the same error."""
    _compare(
        shared_server,
        real_redis,
        2,
        [("SET", "f", start), ("INCRBYFLOAT", "f", increment), ("GET", "f")],
    )
