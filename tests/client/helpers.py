"""A real ``kvs-server`` in a subprocess, and ways to run the ``kvs-client`` command."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

_BIN = Path(sys.executable).parent
KVS_SERVER = (
    [str(_BIN / "kvs-server")]
    if (_BIN / "kvs-server").exists()
    else [sys.executable, "-m", "kvs.cli.server"]
)
KVS_CLIENT = (
    [str(_BIN / "kvs-client")]
    if (_BIN / "kvs-client").exists()
    else [sys.executable, "-m", "kvs.cli.client"]
)

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (another process may still take it: see start)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ipv6_loopback_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


class ServerProcess:
    """``kvs-server --dir DIRECTORY`` on a loopback port; start, SIGKILL, restart, stop.

    The port is found by binding port 0; if another process takes it before the server binds
    it, ``start`` retries with a new one (unless the port was fixed, as for a restart).
    """

    def __init__(self, directory: Path, *args: str, host: str = "127.0.0.1") -> None:
        self.directory = directory
        self.args = args
        self.host = host
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = directory.parent / f"{directory.name}-server.log"

    @property
    def addr(self) -> str:
        assert self.port is not None
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def start(self) -> ServerProcess:
        assert self.proc is None, "already running"
        fixed = self.port is not None
        for _ in range(1 if fixed else 5):
            if not fixed:
                self.port = free_port(self.host)
            if self._spawn_and_wait():
                return self
        raise RuntimeError(f"kvs-server did not start on {self.addr}:\n{self.log()}")

    def _spawn_and_wait(self) -> bool:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*KVS_SERVER, "--addr", self.addr, "--dir", str(self.directory), *self.args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None  # exited: most likely the port was taken meanwhile
                return False
            try:
                with socket.create_connection((self.host, self.port or 0), timeout=1):
                    return True
            except OSError:
                time.sleep(0.02)
        self.stop()
        return False

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final sync; what the store kept is what a crash keeps."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT)
            self.proc = None

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL if it takes too long. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def kvs_client(
    *args: str | bytes, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[bytes]:
    """Run ``kvs-client ARGS``; stdout and stderr as bytes (values may be any bytes)."""
    full_env = {k: v for k, v in os.environ.items() if k != "KVS_PASSWORD"}
    full_env.update(env or {})
    return subprocess.run(
        [*KVS_CLIENT, *args], capture_output=True, timeout=timeout, env=full_env, check=False
    )
