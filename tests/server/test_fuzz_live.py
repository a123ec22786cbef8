"""Fuzz of a live kvs-server from several connections at once (RELIABILITY.md D2, second half).

Hypothesis draws, per example, one to four payloads: random bytes, or valid multibulk and
inline commands that are then mutated (bytes flipped, inserted, deleted, duplicated, lengths
replaced by huge or negative numbers, cut short). All of them are sent at the same time, each
on its own connection. The request parser is sans-I/O, so the test knows what the server must
make of each payload by running the same parser over it: the commands it holds, and whether
(and with which text) it is a protocol error. Per connection:

* the reply stream is well-formed RESP with exactly one reply per command, in order;
* a payload that is a protocol error ends with ``-ERR Protocol error: <text>``, and the
  server closes the connection by itself (the client never closes its side);
* any other payload is answered and the connection closed when the client half-closes.

Between examples a redis-py client does a real round trip (SET of a fresh token, GET it back,
PING), the server process is alive, and its RSS stays within a bound of where it started. A
watcher thread does the same round trip continuously during the whole fuzz.

Default: a short run; ``--soak``: many more examples, not derandomized.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from soakmode import soak_enabled, soak_scale

from kvs.client.replies import NEED_DATA, ReplyParser
from kvs.protocol import ProtocolError, RespParser

from .helpers import ServerProcess, free_port, resp, rss_kib

RSS_GROWTH_LIMIT_KIB = 150 * 1024

CORPUS = [
    resp("SET", "fz", "1"),
    resp("SET", "fz", "v", "EX", "100", "GET"),
    resp("GET", "fz"),
    resp("INCR", "n"),
    resp("INCRBY", "n", "-7"),
    resp("APPEND", "fz", "\r\n*1\r\n"),
    resp("MSET", "a", "1", "b", "2", "c", "3"),
    resp("MGET", "a", "b", "c", "nope"),
    resp("DEL", "a", "zz"),
    resp("EXISTS", "a", "b"),
    resp("EXPIRE", "b", "100"),
    resp("TTL", "b"),
    resp("SCAN", "0", "MATCH", "*", "COUNT", "5"),
    resp("KEYS", "*"),
    resp("DBSIZE"),
    resp("MULTI"),
    resp("EXEC"),
    resp("DISCARD"),
    resp("HELLO", "3"),
    resp("HELLO", "2"),
    resp("CLIENT", "SETNAME", "fuzz"),
    resp("CLIENT", "INFO"),
    resp("INFO", "server"),
    resp("COMMAND", "COUNT"),
    resp("SET", "bin", bytes(range(256))),
    resp("ECHO", b"x" * 300),
    resp("GETDEL", "c"),
    resp("WATCH", "fz", "n"),
    resp("UNWATCH"),
    resp("INCRBYFLOAT", "f", "1.5e-3"),
    resp("INCRBYFLOAT", "f", "0x1p-1074"),
    resp("SETRANGE", "fz", "3", "xyz"),
    resp("GETRANGE", "fz", "-3", "-1"),
    resp("COPY", "fz", "fz2", "REPLACE"),
    resp("SET", "fz", "1", "GET"),
    b"*2\r\n$3\r\nGET\r\n$100000\r\n",  # a long bulk that never comes
    b"PING\r\n",
    b"ping hello\n",
    b'SET "q k" "\\x41\\n\\t"\r\n',
    b"GET 'q k'\r\n",
    b"  \t\r\n",
    b"*0\r\n",
    b"*-1\r\n",
]
NUMBERS = [b"0", b"-1", b"-2", b"1", b"99999999999", b"536870913", b"1048577", b"00", b"+3"]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    commands = draw(st.lists(st.sampled_from(CORPUS), min_size=1, max_size=10))
    out = bytearray(b"".join(commands))
    for _ in range(draw(st.integers(0, 5))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "dup", "number", "cut"]))
        pos = draw(st.integers(0, max(0, len(out) - 1)))
        if op == "flip" and out:
            out[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            out[pos:pos] = draw(
                st.sampled_from([b"\r\n", b"\n", b"\r", b"*", b"$", b"\x00", b'"', b"'", b"\\"])
                | st.binary(max_size=8)
            )
        elif op == "delete" and out:
            del out[pos : pos + draw(st.integers(1, 4))]
        elif op == "dup":
            out[pos:pos] = out[pos : pos + draw(st.integers(1, 64))]
        elif op == "number":
            # Replace the digits after a '*' or '$' with another count.
            star = max(out.rfind(b"*", 0, pos + 1), out.rfind(b"$", 0, pos + 1))
            if star >= 0:
                end = star + 1
                while end < len(out) and out[end] in b"-0123456789":
                    end += 1
                out[star + 1 : end] = draw(st.sampled_from(NUMBERS))
        elif op == "cut":
            del out[pos:]
    return bytes(out)


payloads = st.one_of(st.binary(min_size=1, max_size=600), mutated())


def predict(payload: bytes) -> tuple[list[list[bytes]], bytes | None, bool]:
    """What the server must make of ``payload``: the commands it runs, the protocol error it
    sends last (or None), and whether a QUIT ends the connection first."""
    parser = RespParser()  # the server's defaults
    commands: list[list[bytes]] = []
    error: bytes | None = None
    try:
        parser.feed(payload)
        while (command := parser.next_command()) is not None:
            commands.append(command)
            if command[0].lower() == b"quit":
                return commands, None, True
    except ProtocolError as exc:
        error = exc.reply
    return commands, error, False


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """(everything received, whether the connection ended with a reset)."""
    sock.settimeout(timeout)
    data = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(data), True
        if not chunk:
            return bytes(data), False
        data += chunk


def replies_of(data: bytes, *, complete: bool = True) -> list[object]:
    """The replies in ``data`` (well-formed RESP, else ReplyProtocolError); with
    ``complete``, nothing may be left over."""
    parser = ReplyParser()
    parser.feed(data)
    replies = []
    while (reply := parser.next_reply()) is not NEED_DATA:
        replies.append(reply)
    if complete:
        assert parser.buffered_bytes == 0, f"a partial reply at the end: {data[-200:]!r}"
    return replies


class Watcher(threading.Thread):
    """A well-behaved redis-py client doing SET/GET/PING round trips throughout the fuzz."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis(port=port, socket_timeout=10, retry=None)  # type: ignore[arg-type]
        self.stop = threading.Event()
        self.rounds = 0
        self.slowest = 0.0
        self.failures: list[BaseException] = []

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                token = f"watch-{self.rounds}".encode()
                assert self.client.set("watcher", token) is True
                # A fuzz connection may have run FLUSHALL or DEL on it in between: only a
                # missing value is allowed, never another one.
                assert self.client.get("watcher") in (token, None)
                assert self.client.ping() is True
                self.slowest = max(self.slowest, time.monotonic() - started)
                self.rounds += 1
                time.sleep(0.005)
        except BaseException as error:
            self.failures.append(error)
        finally:
            self.client.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, int]]:
    """One server for the whole fuzz, its starting RSS (KiB), and a watcher thread."""
    root: Path = tmp_path_factory.mktemp("fuzz-live")
    port = free_port()
    args = ["--addr", f"127.0.0.1:{port}", "--dir", str(root / "data")]
    server = ServerProcess(root / "data", args, port, root)
    watcher: Watcher | None = None
    try:
        server.wait_ready()
        time.sleep(0.2)
        watcher = Watcher(port)
        watcher.start()
        yield server, rss_kib(server.pid)
        watcher.stop.set()
        watcher.join(20)
        assert not watcher.failures, watcher.failures
        assert watcher.rounds > 10
        assert watcher.slowest < 5.0, f"a round trip took {watcher.slowest:.1f}s"
        assert server.proc.poll() is None, server.log()[-5000:]
        log = server.log()
        assert "Traceback" not in log and "internal error" not in log, log[-5000:]
    finally:
        if watcher is not None:
            watcher.stop.set()
        server.close()


@settings(
    max_examples=soak_scale(300, 20_000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=not soak_enabled(),
)
@given(batch=st.lists(payloads, min_size=1, max_size=4))
def test_fuzzed_connections_get_protocol_errors_and_others_are_served(
    live: tuple[ServerProcess, int], batch: list[bytes]
) -> None:
    server, baseline = live
    predictions = [predict(payload) for payload in batch]
    assume(not any(c[0].lower() == b"shutdown" for p in predictions for c in p[0]))
    socks: list[socket.socket] = []
    try:
        for payload, (_, error, quits) in zip(batch, predictions, strict=True):
            sock = server.connect()
            socks.append(sock)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(payload)
                if error is None and not quits:
                    sock.shutdown(socket.SHUT_WR)  # else the server must close by itself
        for sock, payload, (commands, error, _) in zip(socks, batch, predictions, strict=True):
            data, reset = read_until_closed(sock, 15)
            where = f"payload {payload[:300]!r} -> {data[:300]!r}"
            expected = len(commands) + (error is not None)
            if reset:
                # Bytes still unread at the server's close turn its FIN into a reset, which
                # may discard the tail of the replies: what did arrive must be in order.
                assert len(replies_of(data, complete=False)) <= expected, where
                continue
            replies = replies_of(data)
            assert len(replies) == expected, where
            if error is not None:
                assert data.endswith(error), where
                assert error.startswith(b"-ERR Protocol error: ")
    finally:
        for sock in socks:
            sock.close()
    assert server.proc.poll() is None, server.log()[-5000:]
    client = server.client()
    try:
        token = f"rt-{time.monotonic_ns()}".encode()
        assert client.set("roundtrip", token) is True
        assert client.get("roundtrip") == token
        assert client.ping() is True
    finally:
        client.close()
    grown = rss_kib(server.pid) - baseline
    assert grown < RSS_GROWTH_LIMIT_KIB, f"server RSS grew by {grown // 1024} MiB"
