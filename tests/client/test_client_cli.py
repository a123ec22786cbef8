"""Every row of the ``kvs-client`` command's contract, against a real ``kvs-server``."""

from __future__ import annotations

import subprocess
import uuid

import pytest

import kvs

from .conftest import StartServer
from .helpers import ServerProcess, free_port, ipv6_loopback_available, kvs_client

EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_SERVER_ERROR = 4


def unique(prefix: str) -> str:
    # The module shares one server: every test works on keys of its own.
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def assert_ok(result: subprocess.CompletedProcess[bytes], stdout: bytes = b"") -> None:
    assert (result.returncode, result.stdout, result.stderr) == (0, stdout, b"")


def assert_one_line_error(result: subprocess.CompletedProcess[bytes], status: int) -> str:
    """A clean failure: the status, nothing on stdout, exactly one line on stderr."""
    assert result.returncode == status, result
    assert result.stdout == b""
    assert b"Traceback" not in result.stderr
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_set_prints_nothing_and_get_prints_the_value(shared_server: ServerProcess) -> None:
    key = unique("k")
    assert_ok(kvs_client("set", key, "value1", "--addr", shared_server.addr))
    assert_ok(kvs_client("get", key, "--addr", shared_server.addr), b"value1\n")


def test_get_of_an_absent_key_prints_key_not_found_and_exits_0(
    shared_server: ServerProcess,
) -> None:
    result = kvs_client("get", unique("absent"), "--addr", shared_server.addr)
    assert_ok(result, b"Key not found\n")


def test_rm_of_a_present_key_prints_nothing(shared_server: ServerProcess) -> None:
    key = unique("k")
    assert_ok(kvs_client("set", key, "v", "--addr", shared_server.addr))
    assert_ok(kvs_client("rm", key, "--addr", shared_server.addr))
    assert_ok(kvs_client("get", key, "--addr", shared_server.addr), b"Key not found\n")


def test_rm_of_an_absent_key_says_so_on_stderr_and_exits_1(shared_server: ServerProcess) -> None:
    result = kvs_client("rm", unique("absent"), "--addr", shared_server.addr)
    assert (result.returncode, result.stdout, result.stderr) == (1, b"", b"Key not found\n")


def test_an_unwritable_stdout_is_one_clear_line(shared_server: ServerProcess) -> None:
    """A full disk or a closed stdout gave a traceback and exit 1, the status of "Key not
    found"."""
    from .helpers import KVS_CLIENT

    key = unique("k")
    assert_ok(kvs_client("set", key, "value", "--addr", shared_server.addr))
    command = [*KVS_CLIENT, "get", key, "--addr", shared_server.addr]
    with open("/dev/full", "wb") as full:
        result = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, timeout=60)
    assert result.returncode == 5 and b"Traceback" not in result.stderr
    assert result.stderr.decode().count("\n") == 1 and "cannot write" in result.stderr.decode()
    closed = subprocess.run(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60, close_fds=True
    )
    assert closed.returncode == 0  # /dev/null takes it
    no_stdout = subprocess.run(
        ["sh", "-c", '"$@" >&-', "sh", *command], stderr=subprocess.PIPE, timeout=60
    )
    assert no_stdout.returncode == 5, no_stdout.stderr
    assert b"Traceback" not in no_stdout.stderr


def test_addr_is_taken_before_the_subcommand_too(shared_server: ServerProcess) -> None:
    key = unique("k")
    assert_ok(kvs_client("--addr", shared_server.addr, "set", key, "before"))
    assert_ok(kvs_client("--addr", shared_server.addr, "get", key), b"before\n")


def test_values_are_passed_as_the_bytes_the_shell_gave(shared_server: ServerProcess) -> None:
    key = unique("k").encode() + b"-\xc3\xa9"
    for value in (b"caf\xc3\xa9 \xe2\x98\x95", b"not utf-8: \xff\xfe", b"a b\tc", b""):
        assert_ok(kvs_client("set", key, value, "--addr", shared_server.addr))
        assert_ok(kvs_client("get", key, "--addr", shared_server.addr), value + b"\n")


def test_a_key_starting_with_a_dash_goes_after_double_dash(shared_server: ServerProcess) -> None:
    assert_ok(kvs_client("--addr", shared_server.addr, "set", "--", "-k", "-v"))
    assert_ok(kvs_client("--addr", shared_server.addr, "get", "--", "-k"), b"-v\n")


def test_the_pna_sequence_survives_a_sigkill(start_server: StartServer) -> None:
    server = start_server()
    addr = ("--addr", server.addr)
    assert_ok(kvs_client("set", "key1", "value1", *addr))
    assert_ok(kvs_client("get", "key1", *addr), b"value1\n")
    assert_ok(kvs_client("set", "key1", "value2", *addr))
    assert_ok(kvs_client("get", "key1", *addr), b"value2\n")
    assert_ok(kvs_client("get", "key2", *addr), b"Key not found\n")
    result = kvs_client("rm", "key2", *addr)
    assert result.returncode != 0
    assert b"Key not found" in result.stderr
    assert_ok(kvs_client("set", "key2", "value3", *addr))
    assert_ok(kvs_client("rm", "key1", *addr))

    server.kill()
    server.start()  # the same directory and port
    assert_ok(kvs_client("get", "key2", *addr), b"value3\n")
    assert_ok(kvs_client("get", "key1", *addr), b"Key not found\n")


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["set"],
        ["set", "key"],
        ["set", "key", "value", "extra"],
        ["get"],
        ["get", "key", "extra"],
        ["rm"],
        ["rm", "key", "extra"],
        ["frobnicate", "key"],
        ["get", "key", "--bogus"],
        ["--bogus", "get", "key"],
        ["get", "key", "--addr"],
    ],
    ids=lambda args: " ".join(args) or "no-args",
)
def test_bad_invocations_print_usage_and_exit_2(args: list[str]) -> None:
    # Nothing listens on the port: the usage error must come before any connection attempt.
    result = kvs_client(*args, "--addr", f"127.0.0.1:{free_port()}")
    assert result.returncode == EXIT_USAGE
    assert result.stdout == b""
    assert b"usage: kvs-client" in result.stderr
    assert b"Traceback" not in result.stderr


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(flag: str) -> None:
    result = kvs_client(flag)
    assert_ok(result, f"kvs-client {kvs.__version__}\n".encode())


@pytest.mark.parametrize(
    "addr",
    [
        "invalid-addr",
        "127.0.0.1",
        "127.0.0.1:",
        ":4000",
        "127.0.0.1:port",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "256.0.0.1:4000",
        "localhost:4000",
        "[127.0.0.1]:4000",
        "[::1:4000",
        "[::1]",
    ],
)
def test_an_unparsable_addr_is_one_clear_line(addr: str) -> None:
    for args in (["get", "key", "--addr", addr], ["--addr", addr, "set", "key", "value"]):
        line = assert_one_line_error(kvs_client(*args), EXIT_USAGE)
        assert "invalid address" in line
        assert repr(addr) in line


def test_no_server_listening_is_one_clear_line_naming_the_address() -> None:
    addr = f"127.0.0.1:{free_port()}"
    for command in (["get", "key"], ["set", "key", "value"], ["rm", "key"]):
        line = assert_one_line_error(kvs_client(*command, "--addr", addr), EXIT_UNAVAILABLE)
        assert f"cannot connect to {addr}" in line


def test_ipv6_addresses(start_server: StartServer) -> None:
    addr = f"[::1]:{free_port('::1') if ipv6_loopback_available() else 4000}"
    line = assert_one_line_error(kvs_client("get", "k", "--addr", addr), EXIT_UNAVAILABLE)
    assert f"cannot connect to {addr}" in line
    if not ipv6_loopback_available():
        pytest.skip("no IPv6 loopback here")
    server = start_server(host="::1")
    assert server.addr.startswith("[::1]:")
    assert_ok(kvs_client("set", "k6", "over v6", "--addr", server.addr))
    assert_ok(kvs_client("get", "k6", "--addr", server.addr), b"over v6\n")


def test_password_from_the_option_or_the_environment(start_server: StartServer) -> None:
    server = start_server("--requirepass", "s3cret")
    addr = ("--addr", server.addr)
    line = assert_one_line_error(kvs_client("set", "k", "v", *addr), EXIT_SERVER_ERROR)
    assert "NOAUTH" in line
    assert_ok(kvs_client("set", "k", "v", "--password", "s3cret", *addr))
    assert_ok(kvs_client("--password", "s3cret", "get", "k", *addr), b"v\n")
    assert_ok(kvs_client("get", "k", *addr, env={"KVS_PASSWORD": "s3cret"}), b"v\n")
    line = assert_one_line_error(
        kvs_client("get", "k", "--password", "wrong", *addr), EXIT_SERVER_ERROR
    )
    assert "WRONGPASS" in line


def test_a_server_out_of_step_is_a_broken_connection_not_a_server_error() -> None:
    """Exit 3 (the connection is unusable), as for garbage; it used to be 4, or even 0 for
    an rm answered with a stray reply."""
    import socket

    from .test_client_api import PING, fake_server, read_exactly

    def one_reply_too_many(conn: socket.socket) -> None:
        assert read_exactly(conn, len(PING)) == PING
        conn.sendall(b"+PONG\r\n+PONG\r\n")
        while conn.recv(65536):
            pass

    with fake_server(one_reply_too_many) as port:
        result = kvs_client("rm", "k", "--addr", f"127.0.0.1:{port}")
    line = assert_one_line_error(result, EXIT_UNAVAILABLE)
    assert "unexpected reply to DEL" in line
