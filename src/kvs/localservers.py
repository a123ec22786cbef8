"""Throw-away server processes on loopback, for the tests and the benchmarks: a
``redis-server``, a ``kvs-server``, and a Redis Cluster (3 masters; or masters with replicas),
each on free ports in a directory of its own.

Not part of the store's API: ``tests/engines/`` (``redis_fixtures.py``,
``test_engine_commands.py``), ``tests/client/helpers.py``, ``tests/test_transfer.py`` and
``bench/bench_engines.py`` share it. Needs redis-py (to PING a server until it answers) and,
for ``RedisServer`` and ``Cluster``, ``redis-server`` and ``redis-cli`` on ``PATH``.

Every process is started by ``Popen`` in a session of its own (so a Ctrl-C in the terminal
reaches only the caller, whose ``finally`` stops it) and stopped with SIGKILL by ``stop``:
the data is thrown away, nothing needs saving (``terminate`` is the clean shutdown, SIGTERM).
``stop`` is idempotent; a failed ``start`` stops what it started. The caller removes the
directories.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import redis

START_TIMEOUT = 15.0
CLUSTER_TIMEOUT = 30.0
#: ``--cluster-node-timeout``: how long until a silent master counts as failed (ms).
NODE_TIMEOUT_MS = 2000


def script_command(script: str, module: str) -> list[str]:
    """How to run one of kvs's commands: the script ``script`` next to this interpreter (in
    the same virtualenv), else ``python -m module``."""
    path = Path(sys.executable).parent / script
    return [str(path)] if path.exists() else [sys.executable, "-m", module]


KVS_SERVER = script_command("kvs-server", "kvs.cli.server")


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` (a loopback address, IPv4 or IPv6) nothing listens on now; for a
    cluster node, ``port + 10000`` (its cluster bus) must be free too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while True:
        with socket.socket(family) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket(family) as bus:
            try:
                bus.bind((host, port + 10000))
            except OSError:
                continue
        return port


class Process:
    """A server process on ``host:port`` (``127.0.0.1`` unless told), logging to
    ``directory/server.log``."""

    def __init__(self, directory: Path, port: int, host: str = "127.0.0.1") -> None:
        self.directory = directory
        self.port = port
        self.host = host
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        self.log_path = directory / "server.log"

    @property
    def addr(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> Self:
        """Start the process and wait until it answers PING; ``RuntimeError`` (with the end
        of its log) if it exits or stays silent for ``START_TIMEOUT`` seconds."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.command()[0]} on {self.addr} exited:\n{self.log()}")
            try:
                with self.client(socket_timeout=1.0) as client:
                    if client.ping():
                        return self
            except redis.AuthenticationError:
                return self  # it answers, and wants a password first (``--requirepass``)
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"no PING reply from {self.addr}:\n{self.log()}")
            time.sleep(0.02)

    def client(self, **options: object) -> redis.Redis:
        """A plain client of this one process (no cluster redirections)."""
        return redis.Redis(host=self.host, port=self.port, **options)  # type: ignore[arg-type]

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown, nothing saved. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    stop = kill

    def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, a clean shutdown; SIGKILL if it has not exited after ``timeout`` seconds.
        The exit status (``None`` if it was not started). Idempotent."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"


class RedisServer(Process):
    """``redis-server`` without RDB snapshots. ``appendfsync`` (``"always"``, ``"everysec"``,
    ``"no"``) turns the append-only file on with that policy; ``None`` (the default) runs
    without persistence. ``extra`` adds arguments (cluster mode)."""

    def __init__(
        self,
        directory: Path,
        port: int,
        extra: Sequence[str] = (),
        appendfsync: str | None = None,
    ) -> None:
        super().__init__(directory, port)
        self.extra = list(extra)
        self.appendfsync = appendfsync

    def command(self) -> list[str]:
        if self.appendfsync is None:
            persistence = ["--appendonly", "no"]
        else:
            persistence = ["--appendonly", "yes", "--appendfsync", self.appendfsync]
        return [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            *persistence,
            "--dir", str(self.directory),
            *self.extra,
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"redis://{self.addr}/0"


class KvsServerProcess(Process):
    """``kvs-server --addr HOST:PORT --dir DIR/data``, plus ``extra`` arguments
    (``["--sync", "everysec"]``). ``data`` is the store directory ``DIR/data``."""

    def __init__(
        self, directory: Path, port: int, extra: Sequence[str] = (), host: str = "127.0.0.1"
    ) -> None:
        super().__init__(directory, port, host)
        self.extra = list(extra)
        self.data = directory / "data"

    def command(self) -> list[str]:
        return [*KVS_SERVER, "--addr", self.addr, "--dir", str(self.data), *self.extra]

    @property
    def url(self) -> str:
        return f"redis://{self.addr}/0"


class Cluster:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each, made with
    ``redis-cli --cluster create`` (which wants 3 masters at least; a single node instead
    takes all 16,384 slots with ``CLUSTER ADDSLOTSRANGE``); ``wait_ok`` polls ``CLUSTER INFO``.
    ``appendfsync`` is every node's (see ``RedisServer``)."""

    def __init__(
        self,
        directory: Path,
        masters: int = 3,
        replicas: int = 0,
        appendfsync: str | None = None,
    ) -> None:
        self.directory = directory
        self.replicas = replicas
        self.nodes: list[RedisServer] = []
        flags = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--repl-diskless-sync-delay", "0",  # replicas sync at once, not after 5 s
        ]  # fmt: skip
        ports: set[int] = set()
        while len(ports) < masters * (1 + replicas):
            ports.add(free_port())
        for index, port in enumerate(sorted(ports)):
            self.nodes.append(RedisServer(directory / f"node{index}", port, flags, appendfsync))

    @property
    def url(self) -> str:
        return f"redis+cluster://{self.nodes[0].addr}"

    def start(self) -> Cluster:
        try:
            for node in self.nodes:
                node.start()
            if len(self.nodes) == 1:
                with self.nodes[0].client(socket_timeout=CLUSTER_TIMEOUT) as client:
                    client.execute_command("CLUSTER ADDSLOTSRANGE", 0, 16383)
                self.wait_ok(self.nodes)
                return self
            create = [
                "redis-cli", "--cluster", "create",
                *(node.addr for node in self.nodes),
                "--cluster-replicas", str(self.replicas),
                "--cluster-yes",
            ]  # fmt: skip
            result = subprocess.run(
                create,
                capture_output=True,
                timeout=CLUSTER_TIMEOUT,
                check=False,
            )
            if result.returncode != 0:
                raise RuntimeError(
                    f"redis-cli --cluster create failed:\n{result.stdout.decode()}"
                    f"{result.stderr.decode()}"
                )
            self.wait_ok(self.nodes)
            if self.replicas:
                self.wait_replicas_synced()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def alive(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.proc is not None]

    def wait_ok(self, nodes: Sequence[RedisServer], timeout: float = CLUSTER_TIMEOUT) -> None:
        """Until every node in ``nodes`` reports ``cluster_state:ok`` and knows every slot."""
        deadline = time.monotonic() + timeout
        while True:
            states = [self._info(node) for node in nodes]
            if all(
                state.get("cluster_state") == "ok" and state.get("cluster_slots_ok") == "16384"
                for state in states
            ):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not ok after {timeout}s: {states}")
            time.sleep(0.05)

    @staticmethod
    def _info(node: RedisServer) -> dict[str, str]:
        try:
            with node.client(socket_timeout=2.0) as client:
                text = client.execute_command("CLUSTER INFO")
        except redis.RedisError:
            return {}
        if isinstance(text, dict):  # redis-py parses CLUSTER INFO
            return {str(key): str(value) for key, value in text.items()}
        if isinstance(text, bytes):
            text = text.decode()
        return dict(line.split(":", 1) for line in str(text).splitlines() if ":" in line)

    def roles(self) -> dict[int, str]:
        """Port -> "master"/"slave", as each live node sees itself."""
        roles: dict[int, str] = {}
        for node in self.alive():
            try:
                with node.client(socket_timeout=2.0) as client:
                    info = client.info("replication")
            except redis.RedisError:
                continue
            roles[node.port] = str(info.get("role"))
        return roles

    def masters(self) -> list[RedisServer]:
        roles = self.roles()
        return [node for node in self.alive() if roles.get(node.port) == "master"]

    def wait_replicas_synced(self, timeout: float = CLUSTER_TIMEOUT) -> None:
        """Until every master has its replicas connected and caught up with its offset."""
        deadline = time.monotonic() + timeout
        while True:
            lagging = []
            for master in self.masters():
                with master.client(socket_timeout=2.0) as client:
                    info = client.info("replication")
                offset = int(info.get("master_repl_offset", 0))
                replicas = [value for key, value in info.items() if key.startswith("slave")]
                replicas = [r for r in replicas if isinstance(r, dict)]
                if len(replicas) < self.replicas or any(
                    r.get("state") != "online" or int(r.get("offset", -1)) < offset
                    for r in replicas
                ):
                    lagging.append(master.addr)
            if not lagging:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"replicas of {lagging} not in sync after {timeout}s")
            time.sleep(0.05)
