"""A real ``kvs-server`` in a subprocess, and ways to run the ``kvs-client`` command."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Self

from kvs.localservers import KvsServerProcess, free_port, script_command

KVS_CLIENT = script_command("kvs-client", "kvs.cli.client")

STOP_TIMEOUT = 10.0


def ipv6_loopback_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


class ServerProcess(KvsServerProcess):
    """``kvs-server`` with the store in ``DIRECTORY/data`` on a free loopback port of ``host``
    (``kvs.localservers``); ``start`` again after ``kill`` (SIGKILL) restarts it on the same
    port, and ``stop`` here is a clean shutdown: SIGTERM, then SIGKILL if it takes too long.

    If another process takes the port before the server binds it, the first ``start`` tries
    again on a new port.
    """

    def __init__(self, directory: Path, *args: str, host: str = "127.0.0.1") -> None:
        super().__init__(directory, free_port(host), args, host=host)
        self.started = False

    def start(self) -> Self:
        attempts = 1 if self.started else 5
        for attempt in range(attempts):
            try:
                super().start()
            except RuntimeError:
                self.kill()
                if attempt == attempts - 1:
                    raise
                self.port = free_port(self.host)
            else:
                break
        self.started = True
        return self

    def stop(self) -> None:
        self.terminate(STOP_TIMEOUT)


def kvs_client(
    *args: str | bytes, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[bytes]:
    """Run ``kvs-client ARGS``; stdout and stderr as bytes (values may be any bytes)."""
    full_env = {k: v for k, v in os.environ.items() if k != "KVS_PASSWORD"}
    full_env.update(env or {})
    return subprocess.run(
        [*KVS_CLIENT, *args], capture_output=True, timeout=timeout, env=full_env, check=False
    )
