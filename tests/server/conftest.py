"""Fixtures for the kvs-server tests.

* ``spawn`` starts ``kvs-server`` as a subprocess on a free loopback port (data in a tmp dir
  unless told otherwise), waits until it accepts connections, and always terminates (then
  kills) it in teardown, even when the test fails.
* ``shared_server`` is one subprocess for the whole session, for the command tests; the ``r``
  fixture gives a redis-py client of it on a flushed database, parametrized RESP2 / RESP3.
* ``inproc`` runs a ``KvsServer`` on port 0 in a thread with its own event loop, with any
  ``Limits``: fast, and the way to test limits the CLI has no flags for.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from .helpers import InProcessServer, ServerProcess, free_port

Spawn = Callable[..., ServerProcess]
InProc = Callable[..., InProcessServer]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """``spawn(*extra_args, directory=None, port=None, wait=True)`` -> a ServerProcess.

    ``--addr 127.0.0.1:PORT`` and ``--dir`` are added unless ``extra_args`` have their own
    (or ``default_addr=True``: no ``--addr`` at all; pass the port it will use).
    """
    started: list[ServerProcess] = []

    def start(
        *extra: str,
        directory: Path | None = None,
        port: int | None = None,
        wait: bool = True,
        default_addr: bool = False,
    ) -> ServerProcess:
        directory = directory or tmp_path / "data"
        args = list(extra)
        port = port or free_port()
        if "--addr" not in args and not default_addr:
            args = ["--addr", f"127.0.0.1:{port}", *args]
        if "--dir" not in args:
            args = ["--dir", str(directory), *args]
        server = ServerProcess(directory, args, port, tmp_path)
        started.append(server)
        return server.wait_ready() if wait else server

    try:
        yield start
    finally:
        for server in started:
            server.close()


@pytest.fixture(scope="session")
def shared_server() -> Iterator[ServerProcess]:
    root = Path(tempfile.mkdtemp(prefix="kvs-server-tests-"))
    port = free_port()
    args = ["--addr", f"127.0.0.1:{port}", "--dir", str(root / "data")]
    server = ServerProcess(root / "data", args, port, root)
    try:
        server.wait_ready()
        yield server
    finally:
        server.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def protocol(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture
def r(shared_server: ServerProcess, protocol: int) -> Iterator[redis.Redis]:
    """A redis-py client of the shared server (RESP2 or RESP3) on an empty database."""
    assert shared_server.proc.poll() is None, "shared server is down:\n" + shared_server.log()
    client = shared_server.client(protocol)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()
    assert shared_server.proc.poll() is None, "the shared server died:\n" + shared_server.log()


@pytest.fixture
def inproc(tmp_path: Path) -> Iterator[InProc]:
    """``inproc(limits=Limits(...), password=b"...", sync=...)`` -> a running InProcessServer."""
    started: list[InProcessServer] = []

    def start(**kwargs: Any) -> InProcessServer:
        directory = tmp_path / f"inproc-{len(started)}"
        directory.mkdir()
        server = InProcessServer(directory, **kwargs)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
