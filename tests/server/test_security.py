"""Bind address, protected mode, passwords (--requirepass, --config), AUTH and HELLO AUTH."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import redis

from kvs.cli.server import build_parser

from .conftest import Spawn
from .helpers import free_port, recv_until, resp, run_server_to_exit


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the IPv4 sockets in LISTEN state on ``port`` (from /proc/net/tcp)."""
    found = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] == "0A" and int(port_hex, 16) == port:
                found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_default_address_is_loopback_4000() -> None:
    args = build_parser().parse_args([])
    assert args.addr == ("127.0.0.1", 4000)
    assert args.protected_mode == "yes"


def test_default_bind_is_127_0_0_1(spawn: Spawn, tmp_path: Path) -> None:
    if listening_addresses(4000) or not _port_free(4000):
        pytest.skip("port 4000 is in use")
    server = spawn(port=4000, default_addr=True, wait=False)
    try:
        server.wait_ready()
    except RuntimeError:
        if "already in use" in server.log():
            pytest.skip("port 4000 was taken meanwhile")
        raise
    assert listening_addresses(4000) == {"127.0.0.1"}
    assert "listening on 127.0.0.1:4000" in server.log()
    assert server.client(decode_responses=True).config_get("bind") == {"bind": "127.0.0.1"}


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("host", ["0.0.0.0", "[::]"])
def test_public_address_without_password_is_refused(tmp_path: Path, host: str) -> None:
    port = free_port()
    done = run_server_to_exit(
        "--addr", f"{host}:{port}", "--dir", str(tmp_path / "d"), cwd=tmp_path
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to listen" in lines[0] and "--requirepass" in lines[0]
    assert "--protected-mode no" in lines[0]
    assert not (tmp_path / "d").exists()  # refused before touching the data directory


def test_public_address_with_protected_mode_no(spawn: Spawn) -> None:
    port = free_port()
    server = spawn("--addr", f"0.0.0.0:{port}", "--protected-mode", "no", port=port)
    assert server.client().ping() is True
    assert listening_addresses(port) == {"0.0.0.0"}


def test_public_address_with_password(spawn: Spawn) -> None:
    port = free_port()
    server = spawn("--addr", f"0.0.0.0:{port}", "--requirepass", "s3cret", port=port)
    assert server.client(password="s3cret").ping() is True


def test_requirepass(spawn: Spawn) -> None:
    server = spawn("--requirepass", "s3cret")
    with server.connect() as sock:
        for command in (resp("GET", "k"), b"SET k v\r\n", resp("PING"), resp("HELLO")):
            sock.sendall(command)
            assert recv_until(sock).startswith(b"-NOAUTH")
        sock.sendall(resp("AUTH", "wrong"))
        assert recv_until(sock) == (
            b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
        )
        sock.sendall(resp("AUTH", "other-user", "s3cret"))
        assert recv_until(sock).startswith(b"-WRONGPASS")
        sock.sendall(resp("GET", "k"))
        assert recv_until(sock).startswith(b"-NOAUTH")
        sock.sendall(resp("AUTH", "s3cret") + resp("SET", "k", "v") + resp("GET", "k"))
        assert recv_until(sock, b"v\r\n") == b"+OK\r\n+OK\r\n$1\r\nv\r\n"
    with server.connect() as sock:
        sock.sendall(resp("AUTH", "default", "s3cret") + resp("GET", "k"))
        assert recv_until(sock, b"v\r\n") == b"+OK\r\n$1\r\nv\r\n"
    with server.connect() as sock:  # QUIT works before AUTH
        sock.sendall(b"QUIT\r\n")
        assert recv_until(sock) == b"+OK\r\n"


@pytest.mark.parametrize("protocol", [2, 3])
def test_requirepass_with_redis_py(spawn: Spawn, protocol: int) -> None:
    server = spawn("--requirepass", "s3cret")
    with pytest.raises(redis.AuthenticationError):  # NOAUTH
        server.client(protocol).get("k")
    with pytest.raises(redis.AuthenticationError):  # WRONGPASS
        server.client(protocol, password="nope").ping()
    # RESP3 authenticates with HELLO 3 AUTH default PASS.
    client = server.client(protocol, password="s3cret")
    assert client.set("k", "v") is True
    assert client.get("k") == b"v"
    assert list(client.config_get("requirepass").values()) in ([b"(set)"], ["(set)"])


def test_hello_auth(spawn: Spawn) -> None:
    server = spawn("--requirepass", "s3cret")
    with server.connect() as sock:
        sock.sendall(resp("HELLO", "3", "AUTH", "default", "wrong"))
        assert recv_until(sock).startswith(b"-WRONGPASS")
        sock.sendall(resp("HELLO", "3"))
        assert recv_until(sock).startswith(b"-NOAUTH HELLO must be called")
        sock.sendall(resp("HELLO", "3", "AUTH", "default", "s3cret", "SETNAME", "me"))
        reply = recv_until(sock, b"*0\r\n")
        assert reply.startswith(b"%7\r\n") and b"proto\r\n:3\r\n" in reply
        sock.sendall(resp("CLIENT", "GETNAME") + resp("GET", "missing"))
        assert recv_until(sock, b"_\r\n") == b"$2\r\nme\r\n_\r\n"


def test_password_from_config_file(spawn: Spawn, tmp_path: Path) -> None:
    config = tmp_path / "kvs.conf"
    config.write_text("# kvs-server settings\n\nrequirepass fromfile\n")
    server = spawn("--config", str(config))
    with pytest.raises(redis.AuthenticationError):
        server.client().get("k")
    assert server.client(password="fromfile").ping() is True
    port = free_port()
    public = spawn(
        "--addr", f"0.0.0.0:{port}", "--config", str(config), port=port,
        directory=tmp_path / "other",
    )  # fmt: skip
    assert public.client(password="fromfile").ping() is True


def test_config_lines_are_split_as_redis_does(spawn: Spawn, tmp_path: Path) -> None:
    config = tmp_path / "kvs.conf"
    config.write_text('REQUIREPASS "two words\\x21"\n')  # redis.conf: quotes, escapes, any case
    server = spawn("--config", str(config))
    with pytest.raises(redis.AuthenticationError):
        server.client(password="two").ping()
    assert server.client(password="two words!").ping() is True


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("requirepass two words\n", "requirepass takes one argument"),
        ('requirepass "open\n', "unbalanced quotes"),
        ("requirepass\n", "requirepass takes one argument"),
    ],
)
def test_config_line_errors_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    config = tmp_path / "kvs.conf"
    config.write_text("# settings\n" + line)
    done = run_server_to_exit("--config", str(config), "--addr", f"127.0.0.1:{free_port()}",
                              "--dir", str(tmp_path / "d"), cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1
    assert f"kvs.conf:2: {message}" in done.stderr and "Traceback" not in done.stderr


def test_bad_config_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "kvs.conf"
    config.write_text("maxmemory 1gb\n")
    done = run_server_to_exit("--config", str(config), "--addr", f"127.0.0.1:{free_port()}",
                              "--dir", str(tmp_path / "d"), cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1
    assert "unknown setting 'maxmemory'" in done.stderr
    done = run_server_to_exit("--config", str(tmp_path / "missing.conf"), cwd=tmp_path)
    assert done.returncode == 1
    assert "missing.conf" in done.stderr and "Traceback" not in done.stderr


def test_version_flag() -> None:
    import subprocess

    from .helpers import KVS_SERVER

    done = subprocess.run([KVS_SERVER, "-V"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    assert done.stdout.startswith("kvs-server ")
    import kvs

    assert done.stdout.split() == ["kvs-server", kvs.__version__]


def test_start_logs_version_engine_and_address_on_stderr(tmp_path: Path) -> None:
    """The issue's start log: the version, the engine and the address, on stderr (stdout
    stays empty, so a supervisor can tell output from logs)."""
    import subprocess

    import kvs

    from .helpers import KVS_SERVER, wait_port

    port = free_port()
    proc = subprocess.Popen(
        [KVS_SERVER, "--addr", f"127.0.0.1:{port}", "--dir", str(tmp_path / "d")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        wait_port(port, proc, 15)
    finally:
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert stdout == ""
    assert f"kvs-server {kvs.__version__}" in stderr
    assert "storage engine: kvs" in stderr
    assert f"listening on 127.0.0.1:{port}" in stderr


@pytest.mark.parametrize(
    "addr", ["localhost", "127.0.0.1:", "127.0.0.1:99999", "127.0.0.1:-1", "[::1", "300.1.1.1:80"]
)
def test_an_unusable_addr_is_one_clear_line_and_a_non_zero_exit(tmp_path: Path, addr: str) -> None:
    done = run_server_to_exit("--addr", addr, "--dir", str(tmp_path / "d"), cwd=tmp_path)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert done.stderr.strip() and addr in done.stderr, done.stderr
