"""Bad input on one connection while another client keeps being served, and a Hypothesis fuzz
of random and mutated command streams: the server answers ``-ERR Protocol error: ...``,
closes that connection, and never dies."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from .conftest import Spawn
from .helpers import ServerProcess, free_port, is_closed, recv_all, recv_until, resp

BAD_INPUTS: list[tuple[str, bytes, str]] = [
    ("count-not-a-number", b"*abc\r\n", "invalid multibulk length"),
    ("count-plus-sign", b"*+1\r\n$4\r\nPING\r\n", "invalid multibulk length"),
    ("count-leading-zero", b"*01\r\n$4\r\nPING\r\n", "invalid multibulk length"),
    ("count-huge", b"*99999999999\r\n", "invalid multibulk length"),
    ("count-bare-cr", b"*1\rX", "invalid multibulk length"),
    ("bulk-negative", b"*1\r\n$-5\r\n", "invalid bulk length"),
    ("bulk-minus-one", b"*1\r\n$-1\r\n", "invalid bulk length"),
    ("bulk-huge", b"*1\r\n$99999999999999\r\n", "invalid bulk length"),
    ("bulk-not-a-number", b"*1\r\n$x\r\n", "invalid bulk length"),
    ("bulk-no-crlf-after-payload", b"*1\r\n$3\r\nGETxx", "invalid bulk length"),
    ("missing-dollar", b"*1\r\nfoo\r\n", "expected '$', got 'f'"),
    ("unbalanced-quotes", b'SET "k v\r\n', "unbalanced quotes in request"),
    ("quote-then-letter", b"SET 'k'v x\r\n", "unbalanced quotes in request"),
    ("inline-too-long", b"A" * 70_000, "too big inline request"),
    ("count-line-too-long", b"*" + b"1" * 70_000, "too big mbulk count string"),
    ("bulk-line-too-long", b"*1\r\n$" + b"2" * 70_000, "too big bulk count string"),
    ("binary-garbage", b"*\xff\xfe\x00garbage\r\n", "invalid multibulk length"),
    ("inline-garbage-then-bad", b"\xff\xfe\x00\x01\r\n*-\r\n", "invalid multibulk length"),
    ("after-a-good-command", resp("SET", "bad", "1") + b"*1\r\n$-2\r\n", "invalid bulk length"),
]


class Watcher(threading.Thread):
    """A well-behaved client: PING and GET in a loop; records every failure."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis(port=port, socket_timeout=10, retry=None)  # type: ignore[arg-type]
        self.client.set("watched", "still here")
        self.stop = threading.Event()
        self.rounds = 0
        self.failures: list[BaseException] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                assert self.client.ping() is True
                assert self.client.get("watched") == b"still here"
                self.rounds += 1
            except BaseException as error:
                self.failures.append(error)
                return
            time.sleep(0.002)

    def finish(self) -> None:
        self.stop.set()
        self.join(20)
        assert not self.failures, self.failures


@pytest.fixture
def watched(spawn: Spawn) -> Iterator[tuple[ServerProcess, Watcher]]:
    server = spawn()
    watcher = Watcher(server.port)
    watcher.start()
    yield server, watcher
    watcher.finish()
    assert watcher.rounds > 0
    assert server.proc.poll() is None, server.log()


def test_each_bad_input_gets_a_protocol_error_and_is_closed(
    watched: tuple[ServerProcess, Watcher],
) -> None:
    server, watcher = watched
    for name, payload, text in BAD_INPUTS:
        with server.connect() as sock:
            sock.sendall(payload)
            reply = recv_all(sock)
        error = b"-ERR Protocol error: " + text.encode() + b"\r\n"
        if name == "after-a-good-command":
            assert reply == b"+OK\r\n" + error
        elif name == "inline-garbage-then-bad":
            assert reply.startswith(b"-ERR unknown command '\xff\xfe'") and reply.endswith(error)
        else:
            assert reply == error, name
        assert watcher.client.ping() is True
    assert watcher.client.get("bad") == b"1"
    assert "Traceback" not in server.log()


def test_bad_input_in_resp3_and_after_auth(spawn: Spawn) -> None:
    server = spawn("--requirepass", "pw")
    with server.connect() as sock:
        sock.sendall(resp("HELLO", "3", "AUTH", "default", "pw"))
        recv_until(sock, b"*0\r\n")
        sock.sendall(b"*1\r\n$-7\r\n")
        assert recv_all(sock) == b"-ERR Protocol error: invalid bulk length\r\n"
    assert server.client(password="pw").ping() is True


def test_unterminated_frames_then_eof_or_reset(watched: tuple[ServerProcess, Watcher]) -> None:
    server, watcher = watched
    partials = [
        b"*3\r\n$3\r\nSET\r\n$1\r\nk",
        b"*2\r\n$3\r\nGET\r\n",
        b"*1\r\n$100000\r\n" + b"x" * 50_000,
        b"*5",
        b"PING",
        b'SET "half',
    ]
    for partial in partials:
        with server.connect() as sock:  # half-close: the server sees EOF mid-command
            sock.sendall(partial)
            sock.shutdown(socket.SHUT_WR)
            assert recv_all(sock) == b""
        sock = server.connect()  # reset mid-command
        sock.sendall(partial)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    assert watcher.client.ping() is True
    assert watcher.client.exists("k") == 0
    deadline = time.monotonic() + 5  # every raw connection is gone (redis-py's stay)
    while any(not c["lib-name"] for c in watcher.client.client_list()):
        assert time.monotonic() < deadline, watcher.client.client_list()
        time.sleep(0.05)


def test_many_bad_clients_at_once(watched: tuple[ServerProcess, Watcher]) -> None:
    server, watcher = watched
    socks = [server.connect() for _ in range(50)]
    for i, sock in enumerate(socks):
        sock.sendall(BAD_INPUTS[i % len(BAD_INPUTS)][1])
    for sock in socks:
        assert is_closed(sock, 10)
        sock.close()
    assert watcher.client.ping() is True


# -- fuzz -------------------------------------------------------------------------------------

CORPUS = [
    resp("SET", "fz", "1"),
    resp("GET", "fz"),
    resp("INCR", "fz"),
    resp("MSET", "a", "1", "b", "2"),
    resp("MGET", "a", "b", "c"),
    resp("DEL", "a"),
    resp("EXPIRE", "b", "100"),
    resp("SCAN", "0", "MATCH", "*", "COUNT", "5"),
    resp("MULTI"),
    resp("EXEC"),
    resp("HELLO", "3"),
    resp("HELLO", "2"),
    resp("CLIENT", "SETNAME", "x"),
    resp("SET", "bin", bytes(range(256))),
    resp("APPEND", "fz", "\r\n"),
    resp("WATCH", "fz", "a"),
    resp("UNWATCH"),
    resp("INCRBYFLOAT", "f", "-1.25e-2"),
    resp("SETRANGE", "fz", "2", "ab"),
    resp("GETRANGE", "fz", "0", "-2"),
    resp("COPY", "fz", "c", "REPLACE"),
    b"PING\r\n",
    b'SET "q k" "\\x41\\n"\r\n',
    b"GET 'q k'\r\n",
    b"KEYS *\r\n",
    b"\r\n",
    b"*0\r\n",
    b"*-1\r\n",
]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    server = ServerProcess(
        root / "data", ["--addr", f"127.0.0.1:{port}", "--dir", str(root / "data")], port, root
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.close()


def _mutate(data: st.DataObject, stream: bytes) -> bytes:
    out = bytearray(stream)
    for _ in range(data.draw(st.integers(0, 6), label="mutations")):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "dup", "cut"]))
        pos = data.draw(st.integers(0, max(0, len(out) - 1)))
        if op == "flip" and out:
            out[pos] = data.draw(st.integers(0, 255))
        elif op == "insert":
            out[pos:pos] = data.draw(
                st.sampled_from([b"\r\n", b"*", b"$", b"-1", b"9999999999", b"\x00", b'"', b"'"])
                | st.binary(max_size=8)
            )
        elif op == "delete" and out:
            del out[pos : pos + data.draw(st.integers(1, 4))]
        elif op == "dup":
            out[pos:pos] = out[pos : pos + data.draw(st.integers(1, 32))]
        elif op == "cut":
            del out[pos:]
    return bytes(out)


def _session(server: ServerProcess, payload: bytes) -> None:
    sock = server.connect()
    try:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            return  # closed on us already (a protocol error): fine
        assert is_closed(sock, 10), "the server did not close a connection after EOF"
    finally:
        sock.close()


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
@given(data=st.data())
def test_fuzz_server_survives(fuzz_server: ServerProcess, data: st.DataObject) -> None:
    if data.draw(st.booleans(), label="random bytes"):
        payload = data.draw(st.binary(max_size=512), label="payload")
    else:
        commands = data.draw(st.lists(st.sampled_from(CORPUS), min_size=1, max_size=12))
        payload = _mutate(data, b"".join(commands))
    assume(b"shutdown" not in payload.lower())  # the one command that may stop it
    _session(fuzz_server, payload)
    assert fuzz_server.proc.poll() is None, fuzz_server.log()
    with fuzz_server.connect() as other:
        other.sendall(b"PING\r\n")
        assert recv_until(other) == b"+PONG\r\n"


def test_fuzz_server_log_has_no_internal_errors(fuzz_server: ServerProcess) -> None:
    # Runs after the fuzz (file order): no command crashed with an internal error.
    log = fuzz_server.log()
    assert "Traceback" not in log, log[-5000:]
    assert fuzz_server.proc.poll() is None
