"""Limits at the boundary and one past: bulk length, argument count, inline length, query
buffer, pre-AUTH limits, maxclients, output back-pressure, handshake (slow-loris) timeout."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import redis

from kvs.server.app import Limits

from .conftest import InProc, Spawn
from .helpers import InProcessServer, ServerProcess, is_closed, recv_until, resp, rss_kib


def exchange(server: InProcessServer, payload: bytes, suffix: bytes = b"\r\n") -> bytes:
    with server.connect() as sock:
        sock.sendall(payload)
        return recv_until(sock, suffix)


def assert_protocol_error(sock: socket.socket, text: str) -> None:
    reply = recv_until(sock)
    assert reply == b"-ERR Protocol error: " + text.encode() + b"\r\n"
    assert is_closed(sock, 10), "the server did not close the connection"


def test_max_bulk_len(inproc: InProc) -> None:
    server = inproc(limits=Limits(max_bulk_len=1000))
    value = b"v" * 1000
    with server.connect() as sock:
        sock.sendall(resp("SET", "k", value) + resp("GET", "k"))
        assert recv_until(sock, value + b"\r\n") == b"+OK\r\n$1000\r\n" + value + b"\r\n"
        sock.sendall(resp("SET", "k", value + b"v"))
        assert_protocol_error(sock, "invalid bulk length")
    assert server.client().get("k") == value


def test_max_args(inproc: InProc) -> None:
    server = inproc(limits=Limits(max_args=5))
    with server.connect() as sock:
        sock.sendall(resp("MSET", "a", "1", "b", "2"))  # 5 arguments
        assert recv_until(sock) == b"+OK\r\n"
        sock.sendall(resp("DEL", "a", "b", "c", "d", "e"))  # 6
        assert_protocol_error(sock, "invalid multibulk length")
    assert server.client().mget("a", "b") == [b"1", b"2"]


def test_inline_64k_boundary(shared_server: ServerProcess) -> None:
    limit = 64 * 1024
    word = b"x" * (limit - len(b"ECHO "))
    with shared_server.connect() as sock:
        sock.sendall(b"ECHO " + word + b"\r\n")  # exactly 64 KiB before the CRLF
        assert recv_until(sock, word + b"\r\n") == b"$%d\r\n%b\r\n" % (len(word), word)
        sock.sendall(b"ECHO " + word + b"x\r\n")
        assert_protocol_error(sock, "too big inline request")
    with shared_server.connect() as sock:  # too long is known before the line ends
        sock.sendall(b"x" * (limit + 2))
        assert_protocol_error(sock, "too big inline request")
    assert shared_server.client().ping() is True


def test_count_lines_are_bounded_too(shared_server: ServerProcess) -> None:
    with shared_server.connect() as sock:
        sock.sendall(b"*" + b"1" * 70_000)
        assert_protocol_error(sock, "too big mbulk count string")
    with shared_server.connect() as sock:
        sock.sendall(b"*1\r\n$" + b"9" * 70_000)
        assert_protocol_error(sock, "too big bulk count string")


def test_query_buffer_limit(inproc: InProc) -> None:
    server = inproc(limits=Limits(max_query_buffer=10_000))
    with server.connect() as sock:
        sock.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000\r\n" + b"a" * 5000)
        time.sleep(0.2)
        # Held: the arguments read ("SET", "k": 4 bytes) and the unparsed payload. 10,000 in
        # all is the limit itself: still fine.
        sock.sendall(b"a" * 4996)
        assert not is_closed(sock, 0.3)
        sock.sendall(b"a")
        assert_protocol_error(sock, "query buffer limit exceeded")
    assert server.client().get("k") is None


def test_unauthenticated_limits(inproc: InProc) -> None:
    server = inproc(password=b"pw")
    with server.connect() as sock:
        sock.sendall(resp("ECHO", *["a"] * 9))  # 10 arguments: parsed, refused by arity
        assert recv_until(sock) == b"-ERR wrong number of arguments for 'echo' command\r\n"
        sock.sendall(resp("AUTH", "p" * 16384))  # a 16384-byte bulk: parsed
        assert recv_until(sock).startswith(b"-WRONGPASS")
        sock.sendall(resp("ECHO", *["a"] * 10))  # 11
        assert_protocol_error(sock, "unauthenticated multibulk length")
    with server.connect() as sock:
        sock.sendall(resp("AUTH", "p" * 16385))
        assert_protocol_error(sock, "unauthenticated bulk length")
    with server.connect() as sock:  # after AUTH, the ordinary limits
        big = b"v" * 100_000
        sock.sendall(resp("AUTH", "pw") + resp("MSET", *[b"k", big] * 10) + resp("STRLEN", "k"))
        assert recv_until(sock, b":100000\r\n") == b"+OK\r\n+OK\r\n:100000\r\n"
    with server.connect() as sock:  # HELLO ... AUTH lifts them too
        sock.sendall(resp("HELLO", "2", "AUTH", "default", "pw"))
        recv_until(sock, b"*0\r\n")
        sock.sendall(resp("ECHO", b"e" * 20_000))
        assert recv_until(sock, b"e\r\n") == b"$20000\r\n" + b"e" * 20_000 + b"\r\n"


def test_maxclients(spawn: Spawn) -> None:
    server = spawn("--maxclients", "2")
    time.sleep(0.3)  # until the server has seen the readiness probe's connection close
    first, second = server.connect(), server.connect()
    try:
        for sock in (first, second):
            sock.sendall(b"PING\r\n")
            assert recv_until(sock) == b"+PONG\r\n"
        with server.connect() as third:
            assert recv_until(third) == b"-ERR max number of clients reached\r\n"
            assert is_closed(third)
        client = server.client()
        with pytest.raises(redis.ConnectionError, match="max number of clients reached"):
            client.ping()
        first.close()
        time.sleep(0.2)
        assert client.ping() is True  # a slot is free again
        client.close()
        second.sendall(b"INFO clients\r\n")
        assert b"maxclients:2" in recv_until(second, b"\r\n\r\n")
    finally:
        first.close()
        second.close()
    assert server.proc.poll() is None


def test_non_reading_client_does_not_grow_memory(spawn: Spawn) -> None:
    """A client that pipelines GETs of a large value and never reads: the server stops
    reading from it (or closes it) instead of buffering ~GBs of replies, and keeps serving
    everyone else promptly."""
    server = spawn()
    client = server.client()
    client.set("big", b"x" * 200_000)
    time.sleep(0.2)
    baseline = rss_kib(server.pid)
    peak = [baseline]
    stop = threading.Event()

    def sample() -> None:  # RSS every few ms, also while the test thread waits on the server
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], rss_kib(server.pid))
            except (OSError, RuntimeError):
                return
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    sock = server.connect()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    requests = b"GET big\r\n" * 10_000  # each 9-byte request asks for 200 KB
    sent = 0
    slowest_ping = 0.0
    deadline = time.monotonic() + 3
    try:
        while time.monotonic() < deadline:
            try:
                sent += sock.send(requests)
            except BlockingIOError:
                time.sleep(0.02)
            except (ConnectionResetError, BrokenPipeError):
                break  # closed by the server: also fine
            started = time.monotonic()
            assert client.ping() is True  # everyone else is still served...
            slowest_ping = max(slowest_ping, time.monotonic() - started)
    finally:
        stop.set()
        sampler.join(5)
        sock.close()
    assert sent > 100_000  # it really asked for > 2 GB of replies
    grown = peak[0] - baseline
    assert grown < 100 * 1024, f"RSS grew by {grown // 1024} MiB"
    assert slowest_ping < 2.0, f"a PING took {slowest_ping:.1f}s"  # ...promptly
    assert client.get("big") == b"x" * 200_000
    assert server.proc.poll() is None
    assert "Traceback" not in server.log()


def test_slow_reader_gets_every_reply_in_order(inproc: InProc) -> None:
    """Back-pressure pauses a connection; it must then resume and answer everything."""
    server = inproc()
    client = server.client()
    for i in range(4):
        client.set(f"v{i}", bytes([65 + i]) * 50_000)
    n = 2000
    requests = b"".join(b"GET v%d\r\n" % (i % 4) for i in range(n)) + b"PING\r\n"
    expected = b"".join(b"$50000\r\n" + bytes([65 + i % 4]) * 50_000 + b"\r\n" for i in range(n))
    expected += b"+PONG\r\n"
    with server.connect(timeout=30) as sock:
        sender = threading.Thread(target=sock.sendall, args=(requests,))
        sender.start()
        time.sleep(0.5)  # let the server hit its high-water mark
        assert client.ping() is True
        received = bytearray()
        while len(received) < len(expected):
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            received += chunk
        sender.join(10)
    assert len(received) == len(expected)
    assert bytes(received) == expected


def test_slow_reader_with_group_commit(inproc: InProc) -> None:
    server = inproc(sync="always")
    client = server.client()
    client.set("v", b"z" * 30_000)
    n = 300  # every 64 KiB of replies waits for its own fsync: keep it short
    requests = b"".join(b"GET v\r\nINCR n\r\n" for _ in range(n))
    expected = b"".join(b"$30000\r\n" + b"z" * 30_000 + b"\r\n:%d\r\n" % (i + 1) for i in range(n))
    with server.connect(timeout=30) as sock:
        sender = threading.Thread(target=sock.sendall, args=(requests,))
        sender.start()
        time.sleep(0.3)
        received = recv_until(sock, b":%d\r\n" % n, limit=len(expected))
        sender.join(10)
    assert received == expected
    assert client.get("n") == str(n).encode()


def test_output_buffer_limit_closes_the_client(inproc: InProc) -> None:
    server = inproc(limits=Limits(max_output_buffer=512 * 1024))
    client = server.client()
    client.set("big", b"x" * 100_000)
    sock = server.connect()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    closed = False
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not closed:
        try:
            sock.send(b"GET big\r\n" * 1000)
        except BlockingIOError:
            time.sleep(0.05)
        except (ConnectionResetError, BrokenPipeError):
            closed = True
    sock.setblocking(True)
    closed = closed or is_closed(sock, 5)
    sock.close()
    assert closed, "a client past max_output_buffer must be disconnected"
    assert client.ping() is True


def test_slow_loris_partial_command_is_closed(inproc: InProc) -> None:
    server = inproc(limits=Limits(handshake_timeout=0.5))
    with server.connect() as sock:
        sock.sendall(b"*2\r\n$3\r\nGET\r\n$1")  # never finished
        started = time.monotonic()
        assert is_closed(sock, 10)
        assert 0.3 < time.monotonic() - started < 5
    with server.connect() as idle:  # nothing at all
        assert is_closed(idle, 10)
    with server.connect() as good:  # a complete first command: no deadline afterwards
        good.sendall(b"PING\r\n")
        assert recv_until(good) == b"+PONG\r\n"
        time.sleep(1.0)
        good.sendall(b"PING\r\n")
        assert recv_until(good) == b"+PONG\r\n"
    assert server.alive()


def test_limits_from_the_command_line(spawn: Spawn) -> None:
    """The flags (Redis's config names and size units) reach the server: each at its boundary
    and one past, and in CONFIG GET."""
    server = spawn(
        "--proto-max-bulk-len", "1kb", "--client-query-buffer-limit", "2mb",
        "--handshake-timeout", "0.5",
    )  # fmt: skip
    config = server.client(decode_responses=True).config_get("*")
    assert config["proto-max-bulk-len"] == "1024"
    assert config["client-query-buffer-limit"] == str(2 * 1024 * 1024)
    value = b"v" * 1024
    with server.connect() as sock:
        sock.sendall(resp("SET", "k", value))
        assert recv_until(sock) == b"+OK\r\n"
        sock.sendall(resp("SET", "k", value + b"v"))
        assert_protocol_error(sock, "invalid bulk length")
    with server.connect() as idle:  # no complete command within the handshake timeout
        started = time.monotonic()
        assert is_closed(idle, 10)
        assert time.monotonic() - started < 5
    assert server.client().get("k") == value


@pytest.mark.parametrize(
    "flag",
    [
        ("--proto-max-bulk-len", "12x"),
        ("--client-query-buffer-limit", "0"),
        ("--handshake-timeout", "-1"),
        ("--maxclients", "0"),
    ],
)
def test_bad_limit_values_are_usage_errors(flag: tuple[str, str]) -> None:
    import subprocess

    from .helpers import KVS_SERVER

    done = subprocess.run([KVS_SERVER, *flag], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert f"argument {flag[0]}" in done.stderr and "Traceback" not in done.stderr
