"""``KvsClient`` and ``Pipeline`` against a real ``kvs-server``."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from kvs import KeyNotFound, KvsError
from kvs.client import (
    ConnectionFailed,
    ConnectionLost,
    ErrorReply,
    InvalidAddress,
    KvsClient,
    ReplyProtocolError,
    ServerError,
    parse_addr,
)

from .conftest import StartServer
from .helpers import ServerProcess, free_port

BINARY_VALUES = [
    b"",
    b"\r\n",
    b"\x00",
    b"a\r\nb\x00c\r\n",
    b"$5\r\nfake\r\n*1\r\n",  # RESP inside a value must stay data
    bytes(range(256)),
    b"\xff" * 70_000,  # more than one recv
]


@pytest.fixture
def client(shared_server: ServerProcess) -> Iterator[KvsClient]:
    host, port = parse_addr(shared_server.addr)
    with KvsClient(host, port) as c:
        yield c


def unique(prefix: str = "k") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def test_set_get_remove(client: KvsClient) -> None:
    key = unique()
    assert client.get(key) is None
    client.set(key, "value")
    assert client.get(key) == b"value"
    client.set(key.encode(), b"other")  # str and bytes name the same key
    assert client.get(key) == b"other"
    client.remove(key)
    assert client.get(key) is None
    with pytest.raises(KeyNotFound):
        client.remove(key)
    client.ping()


@pytest.mark.parametrize("value", BINARY_VALUES, ids=lambda v: repr(v[:12]))
def test_binary_values_round_trip(client: KvsClient, value: bytes) -> None:
    key = unique().encode() + b"\r\n\x00"
    client.set(key, value)
    assert client.get(key) == value


def test_a_large_value(client: KvsClient) -> None:
    value = bytes(range(256)) * (8 * 4096)  # 8 MiB
    client.set("large", value)
    assert client.get("large") == value


def test_execute_returns_any_reply(client: KvsClient) -> None:
    key = unique()
    assert client.execute("INCR", key) == 1
    assert client.execute("INCRBY", key, 41) == 42
    assert client.execute("GET", key) == b"42"
    assert client.execute("ECHO", b"\x00\r\n") == b"\x00\r\n"
    assert client.execute("PING") == "PONG"
    assert client.execute("MGET", key, unique()) == [b"42", None]
    assert client.execute("SET", key, "v", "EX", 100) == "OK"
    ttl = client.execute("TTL", key)
    assert isinstance(ttl, int) and 0 < ttl <= 100


def test_a_server_error_raises_and_the_connection_stays_usable(client: KvsClient) -> None:
    with pytest.raises(ServerError) as caught:
        client.execute("NOSUCHCOMMAND", "x")
    assert caught.value.code == "ERR"
    assert "unknown command" in str(caught.value)
    assert isinstance(caught.value, KvsError)
    key = unique()
    client.set(key, "still works")
    assert client.get(key) == b"still works"


def test_errors_inside_an_aggregate_are_values(client: KvsClient) -> None:
    key = unique()
    client.set(key, "not a number")
    assert client.execute("MULTI") == "OK"
    assert client.execute("INCR", key) == "QUEUED"
    assert client.execute("ECHO", "after") == "QUEUED"
    result = client.execute("EXEC")
    assert isinstance(result, list)
    assert isinstance(result[0], ErrorReply) and result[0].code == "ERR"
    assert result[1] == b"after"


def test_pipeline_of_10000_commands(client: KvsClient) -> None:
    prefix = unique()
    with client.pipeline() as p:
        for i in range(5000):
            p.set(f"{prefix}:{i}", f"value {i}\r\n\x00")
        for i in range(5000):
            p.get(f"{prefix}:{i}")
        assert len(p) == 10_000
        results = p.execute()
    assert results[:5000] == [None] * 5000
    assert results[5000:] == [f"value {i}\r\n\x00".encode() for i in range(5000)]
    assert client.execute("DBSIZE") >= 5000  # type: ignore[operator]


def test_pipeline_results_match_the_client_methods(client: KvsClient) -> None:
    key, absent = unique(), unique()
    results = (
        client.pipeline()
        .set(key, "1")
        .get(key)
        .get(absent)
        .execute_command("INCR", key)
        .remove(key)
        .ping()
        .execute()
    )
    assert results == [None, b"1", None, 2, None, None]


def test_pipeline_errors_come_after_every_reply_is_read(client: KvsClient) -> None:
    key, absent = unique(), unique()
    with client.pipeline() as p:
        p.set(key, "x").execute_command("INCR", key).remove(absent).get(key)
        with pytest.raises(ServerError, match="not an integer"):
            p.execute()
    # Every reply was consumed: the next command gets its own reply.
    assert client.get(key) == b"x"

    with client.pipeline() as p:
        p.set(key, "x").execute_command("INCR", key).remove(absent).get(key)
        results = p.execute(raise_on_error=False)
    assert results[0] is None
    assert isinstance(results[1], ServerError)
    assert isinstance(results[2], KeyNotFound)
    assert results[3] == b"x"


def test_an_empty_pipeline_sends_nothing(client: KvsClient) -> None:
    assert client.pipeline().execute() == []


def test_leaving_a_pipeline_block_discards_unsent_commands(client: KvsClient) -> None:
    key = unique()
    with client.pipeline() as p:
        p.set(key, "never sent")
    assert len(p) == 0
    assert client.get(key) is None


def test_a_pipeline_with_large_requests_and_replies_does_not_deadlock(
    client: KvsClient,
) -> None:
    # Sent with one blocking sendall, this would deadlock: the server stops reading once its
    # unsent replies pass 1 MiB, while the client is still writing and not yet reading.
    value = b"v" * (256 * 1024)
    prefix = unique()
    with client.pipeline() as p:
        for i in range(100):
            p.set(f"{prefix}:{i}", value).get(f"{prefix}:{i}")
        results = p.execute()
    assert results[0::2] == [None] * 100
    assert all(r == value for r in results[1::2])


def test_resp3(shared_server: ServerProcess) -> None:
    host, port = parse_addr(shared_server.addr)
    with KvsClient(host, port, protocol=3) as client:
        key = unique()
        assert client.get(key) is None  # "_" in RESP3
        client.set(key, "v")
        assert client.get(key) == b"v"
        hello = client.execute("HELLO", "3")
        assert isinstance(hello, dict) and hello[b"proto"] == 3
        config = client.execute("CONFIG", "GET", "maxclients")
        assert config == {b"maxclients": b"10000"}


def test_from_addr_and_invalid_addresses(shared_server: ServerProcess) -> None:
    with KvsClient.from_addr(shared_server.addr) as client:
        client.ping()
        assert client.address == shared_server.addr
    for bad in ("invalid-addr", "127.0.0.1", "localhost:4000", "1.2.3.4:0", "[1.2.3.4]:1"):
        with pytest.raises(InvalidAddress):
            KvsClient.from_addr(bad)
    assert parse_addr("[::1]:4000") == ("::1", 4000)
    assert parse_addr("::1:4000") == ("::1", 4000)
    assert parse_addr("10.0.0.1:65535") == ("10.0.0.1", 65535)


def test_nothing_listening_raises_connection_failed_naming_the_address() -> None:
    port = free_port()
    with pytest.raises(ConnectionFailed) as caught:
        KvsClient("127.0.0.1", port)
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert caught.value.address == f"127.0.0.1:{port}"
    assert isinstance(caught.value, ConnectionError)  # also a plain OSError for callers
    assert not isinstance(caught.value, ConnectionLost)


def test_a_closed_client_raises_connection_lost(shared_server: ServerProcess) -> None:
    with KvsClient.from_addr(shared_server.addr) as client:
        pass
    assert client.closed
    with pytest.raises(ConnectionLost, match="closed"):
        client.get("k")
    client.close()  # idempotent


def test_the_server_closing_the_connection_raises_connection_lost(
    shared_server: ServerProcess,
) -> None:
    client = KvsClient.from_addr(shared_server.addr)
    assert client.execute("QUIT") == "OK"
    with pytest.raises(ConnectionLost, match="lost"):
        client.get("k")
    assert client.closed


PING = b"*1\r\n$4\r\nPING\r\n"


@contextlib.contextmanager
def fake_server(script: Callable[[socket.socket], None]) -> Iterator[int]:
    """A one-connection server on a thread, playing ``script``; yields its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                script(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(5)


def read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size and (chunk := conn.recv(size - len(data))):
        data += chunk
    return data


def pong_then_silence(conn: socket.socket) -> None:
    assert read_exactly(conn, len(PING)) == PING
    conn.sendall(b"+PONG\r\n")
    while conn.recv(65536):  # read what comes, answer nothing, until the client hangs up
        pass


def test_connecting_sends_a_ping() -> None:
    # kvs-server drops a connection whose first command takes more than 10 s to arrive; the
    # PING at connect time keeps a client that is idle for a while after connecting alive.
    with fake_server(pong_then_silence) as port:
        KvsClient("127.0.0.1", port).close()


def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # connections complete in the backlog, and nobody answers
        port = listener.getsockname()[1]
        with pytest.raises(ConnectionLost, match=r"no reply within 0\.2 s"):
            KvsClient("127.0.0.1", port, timeout=0.2)
    with fake_server(pong_then_silence) as port:
        client = KvsClient("127.0.0.1", port, timeout=0.2)
        with pytest.raises(ConnectionLost, match=r"no reply within 0\.2 s"):
            client.get("k")
        assert client.closed
    with fake_server(pong_then_silence) as port:
        client = KvsClient("127.0.0.1", port, timeout=0.2)
        with pytest.raises(ConnectionLost), client.pipeline() as p:
            p.get("a").get("b").execute()
        assert client.closed


def test_a_server_sending_garbage_is_a_protocol_error() -> None:
    def garbage(conn: socket.socket) -> None:
        read_exactly(conn, len(PING))
        conn.sendall(b"?garbage\r\n")

    with fake_server(garbage) as port, pytest.raises(ReplyProtocolError, match="invalid reply"):
        KvsClient("127.0.0.1", port, timeout=5)


def test_a_reply_of_the_wrong_type_closes_the_connection() -> None:
    """A server (or proxy) that sends one reply too many puts every later reply one command
    late. The client used to go on, answering each command with the previous reply, and
    counted any non-zero reply to DEL as a removal."""

    def one_reply_too_many(conn: socket.socket) -> None:
        assert read_exactly(conn, len(PING)) == PING
        conn.sendall(b"+PONG\r\n+PONG\r\n")  # the second one answers nothing
        while conn.recv(65536):
            pass

    for call in (
        lambda c: c.get("k"),
        lambda c: c.set("k", "v"),
        lambda c: c.remove("k"),
        lambda c: c.pipeline().set("k", "v").execute(),
    ):
        with fake_server(one_reply_too_many) as port:
            client = KvsClient("127.0.0.1", port, timeout=5)
            with pytest.raises(ReplyProtocolError, match="unexpected reply to"):
                call(client)
            assert client.closed
            with pytest.raises(ConnectionLost):
                client.get("k")


def test_a_refusal_at_connect_time_is_raised_by_the_constructor(
    start_server: StartServer,
) -> None:
    server = start_server("--maxclients", "1")
    # The fixture's readiness probe may still count as a client for a moment.
    deadline = time.monotonic() + 5
    while True:
        try:
            first = KvsClient.from_addr(server.addr)
            break
        except ServerError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    with first:
        # The server writes its error and closes; the client sees the error, or the close.
        with pytest.raises((ServerError, ConnectionLost), match=r"max number of clients|lost"):
            KvsClient.from_addr(server.addr)
        first.ping()


def test_password(start_server: StartServer) -> None:
    server = start_server("--requirepass", "pw")
    host, port = parse_addr(server.addr)
    with KvsClient(host, port) as anonymous, pytest.raises(ServerError) as caught:
        anonymous.set("k", "v")
    assert caught.value.code == "NOAUTH"
    with pytest.raises(ServerError) as caught:
        KvsClient(host, port, password="wrong")
    assert caught.value.code == "WRONGPASS"
    with KvsClient(host, port, password="pw") as client:
        client.set("k", "v")
        assert client.get("k") == b"v"
    with KvsClient(host, port, password=b"pw", protocol=3) as client:
        assert client.get("k") == b"v"


def test_arguments_are_str_bytes_or_numbers(client: KvsClient) -> None:
    key = unique()
    client.execute("SET", bytearray(key.encode()), memoryview(b"mv"))
    assert client.get(key) == b"mv"
    client.execute("SET", key, 1.5)
    assert client.get(key) == b"1.5"
    assert client.execute("SET", key, 7) == "OK"
    assert client.get(key) == b"7"
    with pytest.raises(TypeError):
        client.execute("SET", key, True)
    with pytest.raises(TypeError):
        client.execute("SET", key, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        client.execute()
    client.ping()  # nothing half-sent by the refused calls
