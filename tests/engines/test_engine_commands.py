"""``--engine`` in the commands: ``kvs --engine NAME`` and ``kvs-server --engine NAME``, and the
rule that a directory is only ever opened with the engine whose data it holds."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvs import KvStore
from kvs.engines.sqlite import DB_NAME, SqliteStore
from kvs.localservers import KVS_SERVER, KvsServerProcess, free_port, script_command

KVS = script_command("kvs", "kvs.cli.kvs")


def kvs(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KVS_DIR"}
    return subprocess.run(
        [*KVS, *args], cwd=cwd, capture_output=True, text=True, timeout=60, env=env
    )


# -- kvs ---------------------------------------------------------------------------------------


def test_kvs_engine_sqlite_set_get_rm_round_trip(tmp_path: Path) -> None:
    d = str(tmp_path / "d")
    done = kvs("--engine", "sqlite", "--dir", d, "set", "key1", "value1", cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert (tmp_path / "d" / DB_NAME).exists()
    assert not list((tmp_path / "d").glob("kvs-*.data"))
    done = kvs("--dir", d, "get", "key1", "--engine", "sqlite", cwd=tmp_path)  # either side
    assert (done.returncode, done.stdout) == (0, "value1\n"), done.stderr
    done = kvs("--dir", d, "get", "key1", cwd=tmp_path)  # the directory says sqlite
    assert (done.returncode, done.stdout) == (0, "value1\n"), done.stderr
    done = kvs("--dir", d, "compact", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("compacted: 1 keys"), done.stderr
    assert kvs("--dir", d, "rm", "key1", cwd=tmp_path).returncode == 0
    done = kvs("--dir", d, "rm", "key1", cwd=tmp_path)
    assert (done.returncode, done.stdout.strip()) == (1, "Key not found")
    with SqliteStore(d) as store:
        assert len(store) == 0


def test_kvs_refuses_another_engine_than_the_directory_holds(tmp_path: Path) -> None:
    assert kvs("--engine", "sqlite", "set", "k", "v", cwd=tmp_path).returncode == 0
    done = kvs("--engine", "kvs", "get", "k", cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "'sqlite' engine" in done.stderr and "--engine sqlite" in done.stderr
    assert not list(tmp_path.glob("kvs-*.data"))
    (tmp_path / "log").mkdir()
    assert kvs("set", "k", "v", cwd=tmp_path / "log").returncode == 0
    done = kvs("--engine", "sqlite", "get", "k", cwd=tmp_path / "log")
    assert done.returncode != 0 and "'kvs' engine" in done.stderr
    assert not (tmp_path / "log" / DB_NAME).exists()
    done = kvs("check", cwd=tmp_path)  # check reads log files only
    assert done.returncode == 2 and "sqlite" in done.stderr


def test_kvs_unknown_engine_is_a_usage_error(tmp_path: Path) -> None:
    done = kvs("--engine", "sled", "get", "k", cwd=tmp_path)
    assert done.returncode == 2
    assert "invalid choice: 'sled'" in done.stderr and "sqlite" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_kvs_reports_a_locked_sqlite_store(tmp_path: Path) -> None:
    with SqliteStore(str(tmp_path)):
        done = kvs("get", "k", cwd=tmp_path)
    assert done.returncode == 3
    assert f"locked by process {os.getpid()}" in done.stderr


# -- kvs-server --------------------------------------------------------------------------------


StartServer = Callable[..., KvsServerProcess]


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """``start_server(directory, *args)``: a started ``kvs-server --dir DIRECTORY/data ARGS``
    (its ``data``); the test stops it with ``terminate`` (SIGTERM, the exit status), and
    whatever still runs at teardown is killed."""
    started: list[KvsServerProcess] = []

    def start(directory: Path, *args: str) -> KvsServerProcess:
        server = KvsServerProcess(directory, free_port(), args)
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.kill()


def refused(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run kvs-server expecting it to refuse to start."""
    return subprocess.run(
        [*KVS_SERVER, "--addr", f"127.0.0.1:{free_port()}", "--dir", str(directory), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_server_serves_an_sqlite_store(tmp_path: Path, start_server: StartServer) -> None:
    server = start_server(tmp_path / "server", "--engine", "sqlite", "--sync", "always")
    directory = server.data
    client = server.client(socket_timeout=20, retry=None)
    assert client.set("k", "v") is True
    assert client.set("bin", b"\x00\xff") is True
    assert client.get("k") == b"v" and client.get("bin") == b"\x00\xff"
    assert client.delete("k") == 1 and client.get("k") is None
    assert client.info("server")["engine"] == "sqlite"
    client.close()
    assert server.terminate(timeout=20) == 0, server.log()
    assert (directory / "kvs.engine").read_text() == "sqlite\n"
    with KvStore.open(str(directory), engine="sqlite") as store:
        assert store.get(b"bin") == b"\x00\xff" and store.get("k") is None
    server = start_server(tmp_path / "server")  # the same directory, no --engine: its own
    client = server.client(socket_timeout=20, retry=None)
    assert client.get("bin") == b"\x00\xff"
    client.close()
    assert server.terminate(timeout=20) == 0, server.log()


def test_server_refuses_a_directory_of_another_engine(
    tmp_path: Path, start_server: StartServer
) -> None:
    server = start_server(tmp_path / "server")  # created with the default engine, kvs
    served = server.data
    with server.client(socket_timeout=20, retry=None) as client:
        client.set("k", "v")
    assert server.terminate(timeout=20) == 0, server.log()
    done = refused(served, "--engine", "sqlite")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "'kvs' engine" in lines[0] and "'sqlite'" in lines[0], lines
    assert (served / "kvs.engine").read_text() == "kvs\n"  # untouched
    assert not (served / DB_NAME).exists()

    made_by_cli = tmp_path / "cli"  # no kvs.engine: the files say kvs
    made_by_cli.mkdir()
    assert kvs("set", "k", "v", cwd=made_by_cli).returncode == 0
    done = refused(made_by_cli, "--engine", "sqlite")
    assert done.returncode != 0 and "'kvs' engine" in done.stderr
    assert not (made_by_cli / DB_NAME).exists()


def test_a_failed_start_claims_nothing(tmp_path: Path) -> None:
    with SqliteStore(str(tmp_path)):
        done = refused(tmp_path, "--engine", "sqlite")
    assert done.returncode == 3 and f"locked by process {os.getpid()}" in done.stderr
    assert not (tmp_path / "kvs.engine").exists()


def test_server_engine_choices_come_from_the_registry(tmp_path: Path) -> None:
    from kvs import engines
    from kvs.cli.server import ENGINES, NETWORK_ENGINES

    assert set(ENGINES) == set(engines.available()) - NETWORK_ENGINES
    assert {"kvs", "memory", "sqlite"} <= set(ENGINES)
    done = subprocess.run([*KVS_SERVER, "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    assert all(name in done.stdout for name in ENGINES)
    done = refused(tmp_path / "d", "--engine", "sled")
    assert done.returncode == 2 and "invalid choice: 'sled'" in done.stderr
