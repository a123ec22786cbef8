"""Jepsen-lite for kvs-server (RELIABILITY.md D6): clients, a nemesis, a history, a checker.

One round (:func:`run_jepsen_round`):

* a ``kvs-server`` subprocess on a free 127.0.0.1 port with a fresh ``--dir``;
* ``CLIENTS`` client threads, each with one redis-py ``Connection`` (short socket timeouts, no
  retries), doing reads and writes on a small key space. Every value written is distinct
  (``w<client>-<n>``), so a value read names the one write that produced it. Each operation is
  recorded as an invocation and a completion: ``ok``; ``fail`` when it is known not to have
  happened (the connection could not even be opened, so nothing was sent); ``info`` when it
  may or may not have happened (a timeout, a reset or closed connection, an error reply to a
  write). A client whose operation ended ``info`` drops its connection and opens a new one;
* a nemesis thread that, at seeded random moments, either SIGKILLs the server and restarts it
  on the same port and directory, or SIGSTOPs it for a while and SIGCONTs it;
* the end: clients stop, the server is killed one last time and restarted, and a final read
  of every key (a normal ``ok`` read that follows everything else) closes the history.

The checker is :func:`jepsen.checker.check` (its rules are in that module).
"""

from __future__ import annotations

import contextlib
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from server.helpers import ServerProcess, free_port

from .checker import Op, check

CLIENTS = 4
KEYS = 5
SOCKET_TIMEOUT = 0.5


@dataclass
class Node:
    """The server under test: restarted on the same port and directory after each kill."""

    directory: Path
    logs: Path
    policy: str
    engine: str = "kvs"
    port: int = field(default_factory=free_port)
    process: ServerProcess | None = None
    kills: list[float] = field(default_factory=list)  # when each killed process was seen dead
    stopped: bool = False
    errors: list[str] = field(default_factory=list)  # log lines that must not be there

    def start(self) -> None:
        args = ["--addr", f"127.0.0.1:{self.port}", "--dir", str(self.directory)]
        args += ["--engine", self.engine]
        for _ in range(50):  # the port may be in TIME_WAIT users' way for a moment
            self.process = ServerProcess(
                self.directory, [*args, "--sync", self.policy], self.port, self.logs
            )
            try:
                self.process.wait_ready(30)
                return
            except RuntimeError:
                self._collect(self.process)
                self.process.close()
                time.sleep(0.1)
        raise RuntimeError(f"kvs-server did not restart on port {self.port}")

    def kill(self) -> None:
        assert self.process is not None
        if self.stopped:
            self.cont()
        self.process.kill9()
        self.kills.append(time.monotonic())
        self._collect(self.process)
        self.process.close()
        self.process = None

    def pause(self) -> None:
        assert self.process is not None
        self.process.signal(signal.SIGSTOP)
        self.stopped = True

    def cont(self) -> None:
        assert self.process is not None
        self.process.signal(signal.SIGCONT)
        self.stopped = False

    def close(self) -> int | None:
        """Stop the server gracefully (SIGTERM); its exit status (None if it had to be killed)."""
        if self.process is None:
            return None
        process, self.process = self.process, None
        if self.stopped:
            with contextlib.suppress(ProcessLookupError):
                process.signal(signal.SIGCONT)
        code: int | None = None
        if process.proc.poll() is None:
            process.signal(signal.SIGTERM)
            try:
                code = process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill9()
        else:
            code = process.proc.returncode
        self._collect(process)
        process.close()
        return code

    def _collect(self, process: ServerProcess) -> None:
        for line in process.log().splitlines():
            if "Traceback" in line or "ERROR" in line:
                self.errors.append(line)


class Client(threading.Thread):
    """One logically single-threaded Jepsen process: one connection, one operation at a time."""

    def __init__(
        self, n: int, node: Node, rng: random.Random, stop: threading.Event, keys: list[str]
    ) -> None:
        super().__init__(name=f"jepsen-client-{n}", daemon=True)
        self.n = n
        self.node = node
        self.rng = rng
        self.stop = stop
        self.keys = keys
        self.history: list[Op] = []
        self.connection: redis.Connection | None = None
        self.crash: BaseException | None = None

    def _connect(self) -> redis.Connection:
        if self.connection is None:
            connection = redis.Connection(
                host="127.0.0.1",
                port=self.node.port,
                socket_timeout=SOCKET_TIMEOUT,
                socket_connect_timeout=SOCKET_TIMEOUT,
                retry=Retry(NoBackoff(), 0),
            )
            connection.connect()
            self.connection = connection
        return self.connection

    def _drop(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(Exception):
                self.connection.disconnect()
            self.connection = None

    def run(self) -> None:
        try:
            written = 0
            while not self.stop.is_set():
                key = self.rng.choice(self.keys)
                if self.rng.random() < 0.5:
                    written += 1
                    self.operate("write", key, f"w{self.n}-{written}".encode())
                else:
                    self.operate("read", key, None)
                time.sleep(self.rng.uniform(0, 0.004))
        except BaseException as error:  # a harness bug: reported by the round
            self.crash = error
        finally:
            self._drop()

    def operate(self, kind: str, key: str, value: bytes | None) -> None:
        op = Op(self.n, kind, key, value, time.monotonic())
        self.history.append(op)
        try:
            connection = self._connect()
        except (redis.RedisError, OSError):
            # Nothing was sent: the operation certainly did not happen.
            op.status, op.complete = "fail", time.monotonic()
            self._drop()
            time.sleep(0.02)
            return
        try:
            if kind == "write":
                connection.send_command("SET", key, value)
                reply = connection.read_response()
                assert reply == b"OK", reply
            else:
                connection.send_command("GET", key)
                reply = connection.read_response()
                assert reply is None or isinstance(reply, bytes), reply
                op.value = reply
            op.status, op.complete = "ok", time.monotonic()
        except (redis.RedisError, OSError):
            # Sent, or partly: it may or may not have happened. Never a false failure.
            op.status = "info"
            self._drop()


class Nemesis(threading.Thread):
    """SIGKILL-and-restart or SIGSTOP-then-SIGCONT at seeded random moments."""

    def __init__(self, node: Node, rng: random.Random, stop: threading.Event) -> None:
        super().__init__(name="jepsen-nemesis", daemon=True)
        self.node = node
        self.rng = rng
        self.stop = stop
        self.kills = 0
        self.pauses = 0
        self.crash: BaseException | None = None

    def run(self) -> None:
        rng, node = self.rng, self.node
        try:
            while not self.stop.wait(rng.uniform(0.4, 1.5)):
                if rng.random() < 0.5:
                    node.kill()
                    self.kills += 1
                    time.sleep(rng.uniform(0, 0.3))
                    node.start()
                else:
                    node.pause()
                    self.pauses += 1
                    time.sleep(rng.uniform(0.1, 1.2))  # often past the clients' timeouts
                    node.cont()
        except BaseException as error:  # reported by the round
            self.crash = error


def final_read(node: Node, keys: list[str]) -> list[Op]:
    """One ``ok`` read per key, after everything else (with a patient client)."""
    client = redis.Redis(port=node.port, socket_timeout=30, retry=Retry(NoBackoff(), 0))
    reads = []
    try:
        for key in keys:
            op = Op(-1, "read", key, None, time.monotonic())
            op.value = client.get(key)
            op.status, op.complete = "ok", time.monotonic()
            reads.append(op)
    finally:
        client.close()
    return reads


# -- checker ------------------------------------------------------------------------------


def run_jepsen_round(
    seed: int, seconds: float, policy: str, workdir: Path, *, engine: str = "kvs"
) -> dict[str, Any]:
    """One seeded round against a fresh server directory under ``workdir`` (``engine`` is
    kvs-server's ``--engine``: the ``memory`` engine loses everything at a kill, which shows
    the checker catching lost writes).

    Returns counts: ``kills``, ``pauses`` (nemesis actions), ``operations`` (recorded),
    ``ok`` / ``info`` / ``fail`` (completions), ``ops_checked`` (by the linearizability
    search), ``acked_writes_lost`` and ``phantom_reads`` (both must be 0),
    ``keys_not_linearizable`` (must be 0), ``keys_unchecked``, ``server_errors`` (log lines
    with a traceback or ERROR), ``clean_exit`` (the last server stopped by SIGTERM with
    status 0) and ``problems`` (descriptions of whatever failed).
    """
    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    node = Node(workdir / "data", workdir, policy, engine)
    keys = [f"k{i}" for i in range(KEYS)]
    stop = threading.Event()
    clients = [Client(n, node, random.Random(rng.random()), stop, keys) for n in range(CLIENTS)]
    nemesis = Nemesis(node, random.Random(rng.random()), stop)
    clean_exit = False
    try:
        node.start()
        for client in clients:
            client.start()
        nemesis.start()
        time.sleep(seconds)
        stop.set()
        nemesis.join(60)
        for client in clients:
            client.join(30)
        if node.stopped:
            node.cont()
        if node.process is None:
            node.start()
        node.kill()  # one last kill: everything acknowledged must survive it
        nemesis.kills += 1
        node.start()
        finals = final_read(node, keys)
        clean_exit = node.close() == 0
    finally:
        stop.set()
        # The nemesis first: it may be restarting the server, which must not outlive us.
        for thread in [nemesis, *clients]:
            if thread.ident is not None:
                thread.join(60)
        with contextlib.suppress(Exception):
            node.close()
    if nemesis.is_alive() or any(c.is_alive() for c in clients):
        raise RuntimeError("a client or the nemesis did not stop")
    crashes = [t.crash for t in [*clients, nemesis] if t.crash is not None]
    if crashes:
        raise RuntimeError(f"a harness thread crashed: {crashes[0]!r}") from crashes[0]
    history = [op for client in clients for op in client.history]
    for op in history:  # an operation cut short by the end of the round: unknown
        if op.status == "pending":
            op.status = "info"
    totals = check(history, finals, node.kills)
    statuses = [op.status for op in history]
    return {
        "seed": seed,
        "policy": policy,
        "kills": nemesis.kills,
        "pauses": nemesis.pauses,
        "operations": len(history),
        "ok": statuses.count("ok"),
        "info": statuses.count("info"),
        "fail": statuses.count("fail"),
        "server_errors": list(node.errors),
        "clean_exit": clean_exit,
        **totals,
    }


if __name__ == "__main__":  # by hand, from tests/: python -m jepsen.harness SEED SECONDS POLICY
    import json
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        report = run_jepsen_round(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], Path(tmp))
    print(json.dumps(report, indent=2))
