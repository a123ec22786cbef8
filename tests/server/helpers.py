"""Helpers shared by the kvs-server tests: processes, in-process servers, raw sockets.

``free_port`` is ``kvs.localservers.free_port``, re-exported for the tests that import it
from here."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from kvs.localservers import free_port as free_port  # re-exported
from kvs.server.app import KvsServer
from kvs.store import KvStore

BIN_DIR = Path(sys.executable).parent
KVS_SERVER = str(BIN_DIR / "kvs-server")
KVS = str(BIN_DIR / "kvs")
REDIS_CLI = shutil.which("redis-cli")

needs_redis_cli = pytest.mark.skipif(REDIS_CLI is None, reason="redis-cli is not installed")


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"kvs-server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class ServerProcess:
    """One ``kvs-server`` subprocess; its stderr goes to a file (``.log()``)."""

    def __init__(self, directory: Path, args: list[str], port: int, cwd: Path) -> None:
        self.directory = directory
        self.port = port
        self.args = args
        self.log_path = cwd / f"kvs-server-{port}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [KVS_SERVER, *args],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 15) -> ServerProcess:
        try:
            wait_port(self.port, self.proc, timeout)
        except Exception as error:
            raise RuntimeError(f"{error}\n--- server log ---\n{self.log()}") from error
        return self

    def client(self, protocol: int = 2, **kwargs: Any) -> redis.Redis:
        kwargs.setdefault("socket_timeout", 20)
        kwargs.setdefault("retry", None)  # no silent reconnect-and-retry
        return redis.Redis(port=self.port, protocol=protocol, **kwargs)

    def connect(self, timeout: float = 10) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 20) -> int:
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def run_server_to_exit(
    *args: str, cwd: Path, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    """Run kvs-server expecting it to refuse to start; fail (and kill it) if it keeps running."""
    try:
        return subprocess.run(
            [KVS_SERVER, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"kvs-server {args} did not exit: {error.stderr!r}") from error


class InProcessServer:
    """A KvsServer on port 0 in a thread with its own event loop (no signal handlers)."""

    def __init__(self, directory: Path, store_sync: str = "no", **kwargs: Any) -> None:
        self.directory = directory
        self.store = KvStore.open(str(directory), sync=store_sync)
        self.server = KvsServer(
            self.store, host="127.0.0.1", port=0, directory=str(directory), **kwargs
        )
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="kvs-inproc", daemon=True)
        self.thread.start()
        if not self._ready.wait(15):
            raise TimeoutError("in-process server did not start")
        if self._error is not None:
            raise self._error
        self.port = self.server.address[1]

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.start())
        except BaseException as error:
            self._error = error
            self._ready.set()
            self.store.close()
            return
        self._ready.set()
        try:
            self.loop.run_until_complete(self.server.serve_until_shutdown())
        finally:
            self.loop.run_until_complete(self.server.shutdown())
            self.loop.close()

    def client(self, protocol: int = 2, **kwargs: Any) -> redis.Redis:
        kwargs.setdefault("socket_timeout", 20)
        kwargs.setdefault("retry", None)  # no silent reconnect-and-retry
        return redis.Redis(port=self.port, protocol=protocol, **kwargs)

    def connect(self, timeout: float = 10) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the server's loop thread and return its result."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        if self.thread.is_alive():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.server.request_shutdown)
            self.thread.join(20)
            assert not self.thread.is_alive(), "in-process server did not stop"


def call(client: redis.Redis, *args: Any) -> Any:
    """``client.execute_command(*args)`` (untyped in redis-py)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def send(connection: Any, *args: Any) -> None:
    """``connection.send_command(*args)``: a command without redis-py's reply callbacks."""
    connection.send_command(*args)


# -- raw sockets ----------------------------------------------------------------------------


def resp(*args: bytes | str) -> bytes:
    """A command in multibulk framing."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%b\r\n" % (len(raw), raw))
    return b"".join(parts)


def recv_until(sock: socket.socket, suffix: bytes = b"\r\n", limit: int = 1 << 26) -> bytes:
    """Read until the data ends with ``suffix`` or the peer closes."""
    data = b""
    while not data.endswith(suffix) and len(data) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def recv_all(sock: socket.socket, timeout: float = 10) -> bytes:
    """Everything until the peer closes (or resets) the connection; raises on timeout."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def is_closed(sock: socket.socket, timeout: float = 10) -> bool:
    """True if the peer closes the connection within ``timeout`` (discarding what it sends)."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            sock.settimeout(left)
            if not sock.recv(1 << 20):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def kvs_check(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KVS, "--dir", str(directory), "check"], capture_output=True, text=True, timeout=60
    )
