"""redis-cli and raw-socket (nc-style inline) sessions against kvs-server."""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest
import redis

from .helpers import REDIS_CLI, ServerProcess, needs_redis_cli, recv_until, resp


def cli(server: ServerProcess, *args: str, stdin: bytes | None = None) -> str:
    assert REDIS_CLI is not None
    done = subprocess.run(
        [REDIS_CLI, "-p", str(server.port), *args],
        input=stdin,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.decode()


@pytest.fixture
def srv(shared_server: ServerProcess) -> ServerProcess:
    shared_server.client().flushdb()
    return shared_server


@needs_redis_cli
def test_redis_cli_set_get(srv: ServerProcess) -> None:
    # Not on a terminal, redis-cli prints raw replies unless --no-raw.
    assert cli(srv, "set", "k", "v") == "OK\n"
    assert cli(srv, "get", "k") == "v\n"
    assert cli(srv, "--raw", "get", "k") == "v\n"
    assert cli(srv, "--no-raw", "get", "k") == '"v"\n'
    assert cli(srv, "--no-raw", "get", "missing") == "(nil)\n"
    assert cli(srv, "--no-raw", "incr", "n") == "(integer) 1\n"
    assert cli(srv, "ping") == "PONG\n"
    assert cli(srv, "--no-raw", "dbsize") == "(integer) 2\n"


@needs_redis_cli
def test_redis_cli_errors_and_binary(srv: ServerProcess) -> None:
    assert (
        cli(srv, "--no-raw", "get") == "(error) ERR wrong number of arguments for 'get' command\n"
    )
    assert cli(srv, "get").startswith("ERR wrong number of arguments for 'get' command\n")
    assert cli(srv, "--no-raw", "nosuch", "a").startswith("(error) ERR unknown command 'nosuch'")
    assert cli(srv, "set", "bin", "a\x01b") == "OK\n"
    assert cli(srv, "--no-raw", "get", "bin") == '"a\\x01b"\n'
    assert cli(srv, "get", "bin") == "a\x01b\n"


@needs_redis_cli
def test_redis_cli_resp3_and_info(srv: ServerProcess) -> None:
    assert cli(srv, "-3", "set", "k", "v") == "OK\n"
    assert cli(srv, "-3", "--no-raw", "get", "k") == '"v"\n'
    assert cli(srv, "-3", "--no-raw", "get", "nope") == "(nil)\n"
    assert "redis_version:7.0.0" in cli(srv, "info", "server")
    assert "redis_version:7.0.0" in cli(srv, "-3", "info")
    out = cli(srv, "-3", "hello", "3")
    assert "proto" in out


@needs_redis_cli
def test_redis_cli_inline_pipe(srv: ServerProcess) -> None:
    out = cli(srv, stdin=b"SET a 1\r\nGET a\r\nINCR a\r\nGET a\r\n")
    assert out.split() == ["OK", "1", "2", "2"]


@needs_redis_cli
def test_redis_cli_mass_insert_pipe(srv: ServerProcess) -> None:
    payload = b"".join(resp("SET", f"mass:{i}", f"value-{i}") for i in range(5000))
    assert REDIS_CLI is not None
    done = subprocess.run(
        [REDIS_CLI, "-p", str(srv.port), "--pipe"], input=payload, capture_output=True, timeout=60
    )
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()
    assert "errors: 0, replies: 5000" in out
    client = srv.client()
    assert client.dbsize() == 5000
    assert client.get("mass:4999") == b"value-4999"


@needs_redis_cli
def test_redis_cli_scan_and_keys(srv: ServerProcess) -> None:
    client = srv.client()
    client.mset({f"s:{i}": i for i in range(100)})
    assert sorted(cli(srv, "--scan", "--pattern", "s:*").split()) == sorted(
        f"s:{i}" for i in range(100)
    )
    assert len(cli(srv, "--raw", "keys", "s:1*").split()) == 11


def test_raw_inline_session(srv: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(b"PING\r\n")
        assert recv_until(sock) == b"+PONG\r\n"
        sock.sendall(b"PING hello\n")  # a bare \n ends a line too
        assert recv_until(sock) == b"$5\r\nhello\r\n"
        sock.sendall(b'SET "a key" "va\\x00lue"\r\nGET "a key"\r\n')
        assert recv_until(sock, b"lue\r\n") == b"+OK\r\n$6\r\nva\x00lue\r\n"
        sock.sendall(b"\r\n   \r\nEXISTS 'a key'\r\n")  # blank lines are skipped
        assert recv_until(sock) == b":1\r\n"
        sock.sendall(b"NOSUCH 1 2\r\n")
        assert recv_until(sock).startswith(b"-ERR unknown command 'NOSUCH'")
        sock.sendall(resp("ECHO", "multibulk") + b"ECHO inline\r\n")
        assert recv_until(sock, b"inline\r\n") == b"$9\r\nmultibulk\r\n$6\r\ninline\r\n"
        sock.sendall(b"QUIT\r\n")
        assert recv_until(sock) == b"+OK\r\n"
        assert sock.recv(10) == b""


def test_raw_session_resp3_switch(srv: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(b"GET nothing\r\n")
        assert recv_until(sock) == b"$-1\r\n"
        sock.sendall(b"HELLO 3\r\n")
        reply = recv_until(sock, b"*0\r\n")
        assert reply.startswith(b"%7\r\n")
        assert b"$5\r\nproto\r\n:3\r\n" in reply
        sock.sendall(b"GET nothing\r\n")
        assert recv_until(sock) == b"_\r\n"
        sock.sendall(b"HELLO 2\r\n")
        assert recv_until(sock, b"*0\r\n").startswith(b"*14\r\n")


@pytest.mark.skipif(shutil.which("nc") is None, reason="nc is not installed")
def test_nc_inline(srv: ServerProcess) -> None:
    done = subprocess.run(
        ["nc", "-q", "1", "127.0.0.1", str(srv.port)],
        input=b"PING\r\nSET x 5\r\nINCR x\r\nQUIT\r\n",
        capture_output=True,
        timeout=30,
    )
    assert done.stdout == b"+PONG\r\n+OK\r\n:6\r\n+OK\r\n"


def test_shared_server_still_serves(srv: ServerProcess) -> None:
    assert srv.client().ping() is True
    assert redis.Redis(port=srv.port, protocol=3).ping() is True
