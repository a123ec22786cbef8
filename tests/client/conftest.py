"""Fixtures: ``kvs-server`` subprocesses, always stopped (SIGTERM, then SIGKILL) afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .helpers import ServerProcess

StartServer = Callable[..., ServerProcess]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start servers (``start_server("--requirepass", "pw")``); all are stopped at teardown."""
    servers: list[ServerProcess] = []

    def start(*args: str, host: str = "127.0.0.1") -> ServerProcess:
        server = ServerProcess(tmp_path / f"server{len(servers)}", *args, host=host)
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for a whole module (starting one costs ~0.3 s); tests use distinct keys."""
    server = ServerProcess(tmp_path_factory.mktemp("shared"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def server(start_server: StartServer) -> ServerProcess:
    """A fresh, empty server of the test's own."""
    return start_server()
