"""Real ``redis-server`` processes for the redis engine's tests: one server, a kvs-server, and
clusters (3 masters; or 3 masters with a replica each), on free loopback ports in temp dirs.

Every process is started by ``Popen`` and stopped (SIGKILL: nothing to save) by ``stop``;
the fixtures in the test modules call ``stop`` in a ``finally``. Without ``redis-server`` and
``redis-cli`` on PATH, ``require_redis()`` skips the test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from kvs import KvStore

START_TIMEOUT = 15.0
CLUSTER_TIMEOUT = 30.0
#: ``--cluster-node-timeout``: how long until a silent master counts as failed (ms).
NODE_TIMEOUT_MS = 2000

_BIN = Path(sys.executable).parent
KVS_SERVER = (
    [str(_BIN / "kvs-server")]
    if (_BIN / "kvs-server").exists()
    else [sys.executable, "-m", "kvs.cli.server"]
)


def require_redis() -> None:
    """Skip the calling test unless redis-server and redis-cli are installed."""
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install redis-server)")


def slow_enabled(config: pytest.Config) -> bool:
    """Slow tests run with ``KVS_SLOW=1`` in the environment, or when ``-m`` names them."""
    return os.environ.get("KVS_SLOW") == "1" or "slow" in (config.option.markexpr or "")


def free_port() -> int:
    """A loopback port nothing listens on now; for a cluster node, ``port + 10000`` (its
    cluster bus) must be free too."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class Process:
    """A server process on ``127.0.0.1:port``, logging to ``directory/server.log``."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        self.log_path = directory / "server.log"

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> Process:
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
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"no PING reply from {self.addr}:\n{self.log()}")
            time.sleep(0.02)

    def client(self, **options: object) -> redis.Redis:
        """A plain client of this one process (no cluster redirections)."""
        return redis.Redis(host="127.0.0.1", port=self.port, **options)  # type: ignore[arg-type]

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown, nothing saved. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    stop = kill

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"


class RedisServer(Process):
    """``redis-server`` without persistence; ``extra`` adds arguments (cluster mode)."""

    def __init__(self, directory: Path, port: int, extra: Sequence[str] = ()) -> None:
        super().__init__(directory, port)
        self.extra = list(extra)

    def command(self) -> list[str]:
        return [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            *self.extra,
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"redis://{self.addr}/0"


class KvsServerProcess(Process):
    """``kvs-server --addr 127.0.0.1:PORT --dir DIR``."""

    def command(self) -> list[str]:
        return [*KVS_SERVER, "--addr", self.addr, "--dir", str(self.directory / "data")]

    @property
    def url(self) -> str:
        return f"redis://{self.addr}/0"


class Cluster:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each, made with
    ``redis-cli --cluster create``; ``wait_ok`` polls ``CLUSTER INFO``."""

    def __init__(self, directory: Path, masters: int = 3, replicas: int = 0) -> None:
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
            self.nodes.append(RedisServer(directory / f"node{index}", port, flags))

    @property
    def url(self) -> str:
        return f"redis+cluster://{self.nodes[0].addr}"

    def start(self) -> Cluster:
        try:
            for node in self.nodes:
                node.start()
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


# -- the shared contract suite (tests/engines/test_contract.py, test_model.py) --------------
#
# conftest.py imports the fixtures below and appends ``EngineSpec(**spec)`` for each entry of
# ``REDIS_CONTRACT_ENGINES`` to ``CONTRACT_ENGINES`` (its documented hook).

_CONTRACT_SKIPS = {
    "test_every_sync_policy_stores_and_reopens": (
        "no sync option: durability is the server's (appendfsync)"
    ),
    "test_bad_options_are_refused": "no sync option to refuse (see test_redis.py)",
}
_REDIS_SKIPS = {
    **_CONTRACT_SKIPS,
    # kvs-server's DBSIZE is exact; Redis's counts expired keys until it reclaims them.
    "test_len_excludes_expired_keys": "len is DBSIZE, which counts expired keys for a while",
}

#: Keyword arguments of the ``EngineSpec``s of the redis engine: on a redis-server, and on a
#: kvs-server. A "path" names a database; the data outlives a close, so both are persistent.
REDIS_CONTRACT_ENGINES: list[dict[str, Any]] = [
    {
        "name": "redis",
        "on_disk": False,
        "opener_fixture": "redis_contract_opener",
        "skips": _REDIS_SKIPS,
    },
    {
        "name": "redis-kvs-server",
        "on_disk": False,
        "opener_fixture": "kvs_server_contract_opener",
        "skips": _CONTRACT_SKIPS,
    },
]


@pytest.fixture(scope="session")
def contract_redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    require_redis()
    server = RedisServer(tmp_path_factory.mktemp("contract-redis"), free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def contract_kvs_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[KvsServerProcess]:
    server = KvsServerProcess(tmp_path_factory.mktemp("contract-kvs-server"), free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()


class _DatabaseOpener:
    """``opener(path, options)`` for the contract suite: each path not seen before in this
    test takes the next of the server's ``databases`` (round robin) and empties it."""

    def __init__(self, server: Process, databases: int) -> None:
        self.server = server
        self.databases = databases
        self.assigned: dict[str, int] = {}
        self.opened = 0

    def __call__(self, path: str, options: dict[str, Any]) -> KvStore:
        db = self.assigned.get(path)
        if db is None:
            db = self.opened % self.databases
            self.opened += 1
            self.assigned = {p: d for p, d in self.assigned.items() if d != db}
            self.assigned[path] = db
            with self.server.client(db=db) as client:
                client.flushdb()
        return KvStore.open(f"redis://{self.server.addr}/{db}", engine="redis", **options)


@pytest.fixture
def redis_contract_opener(contract_redis_server: RedisServer) -> _DatabaseOpener:
    return _DatabaseOpener(contract_redis_server, databases=16)


@pytest.fixture
def kvs_server_contract_opener(contract_kvs_server: KvsServerProcess) -> _DatabaseOpener:
    """kvs-server has one database: a new path empties it (fine for the suite, which opens a
    second path only after it is done with the first)."""
    return _DatabaseOpener(contract_kvs_server, databases=1)
