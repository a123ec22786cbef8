"""Durability of kvs-server: kill -9, --sync always, engine marker, graceful SIGTERM/SIGINT."""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import redis

from .conftest import InProc, Spawn
from .helpers import call, kvs_check, recv_until, run_server_to_exit


class Writer(threading.Thread):
    """SETs key i -> value i one at a time; remembers which SETs were acknowledged."""

    def __init__(self, port: int, prefix: str = "k") -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis(port=port, socket_timeout=10, retry=None)  # type: ignore[arg-type]  # no retries
        self.prefix = prefix
        self.acked: list[int] = []
        self.attempted = 0
        self.error: Exception | None = None

    def run(self) -> None:
        i = 0
        try:
            while True:
                self.attempted = i + 1
                assert self.client.set(f"{self.prefix}:{i}", f"value-{i}" * (i % 7 + 1)) is True
                self.acked.append(i)
                i += 1
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            self.error = error


def value(i: int) -> bytes:
    return (f"value-{i}" * (i % 7 + 1)).encode()


def kill9_and_check(spawn: Spawn, *extra: str) -> None:
    server = spawn(*extra)
    writers = [Writer(server.port, f"w{n}") for n in range(3)]
    for w in writers:
        w.start()
    deadline = time.monotonic() + 10
    while min(len(w.acked) for w in writers) < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.kill9()
    for w in writers:
        w.join(10)
        assert not w.is_alive()
        assert len(w.acked) >= 200, w.error
    restarted = spawn(*extra, port=server.port)
    client = restarted.client()
    for w in writers:
        keys = [f"{w.prefix}:{i}" for i in w.acked]
        assert client.mget(keys) == [value(i) for i in w.acked], "an acknowledged SET was lost"
        # The one in flight at the kill may or may not be there, but never half-written.
        in_flight = client.get(f"{w.prefix}:{w.attempted - 1}")
        assert in_flight in (None, value(w.attempted - 1))
    assert client.dbsize() in range(
        sum(len(w.acked) for w in writers), sum(w.attempted for w in writers) + 1
    )


def test_kill9_keeps_every_acknowledged_set(spawn: Spawn) -> None:
    kill9_and_check(spawn)


def test_kill9_keeps_every_acknowledged_set_sync_always(spawn: Spawn) -> None:
    kill9_and_check(spawn, "--sync", "always")


def test_sync_always_group_commit_serves_many_clients(spawn: Spawn) -> None:
    server = spawn("--sync", "always")
    clients = [server.client() for _ in range(8)]
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            with clients[n].pipeline(transaction=False) as pipe:
                for i in range(200):
                    pipe.set(f"c{n}:{i}", i)
                    pipe.get(f"c{n}:{i}")
                result = pipe.execute()
            assert result == [x for i in range(200) for x in (True, str(i).encode())]
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert clients[0].config_get("appendfsync") in (
        {b"appendfsync": b"always"},
        {"appendfsync": "always"},
    )
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    check = kvs_check(server.directory)
    assert check.returncode == 0 and "0 problems" in check.stdout, check.stdout + check.stderr


def test_engine_marker_written_at_start_survives_kill9(spawn: Spawn, tmp_path: Path) -> None:
    directory = tmp_path / "fresh"
    server = spawn(directory=directory, wait=False)
    marker = directory / "kvs.engine"
    deadline = time.monotonic() + 15
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    server.kill9()  # a moment after start, maybe before it even listens
    assert marker.read_text() == "kvs\n"
    assert not (directory / "kvs.engine.tmp").exists()
    again = spawn(directory=directory)
    assert again.client().ping() is True


def test_engine_mismatch_refuses_to_start(spawn: Spawn, tmp_path: Path) -> None:
    server = spawn()
    server.client().set("k", "v")
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    marker = server.directory / "kvs.engine"
    assert marker.read_text() == "kvs\n"
    marker.write_text("sled\n")  # as if another engine had created this directory
    for extra in ([], ["--engine", "kvs"]):
        done = run_server_to_exit(
            "--addr", f"127.0.0.1:{server.port}", "--dir", str(server.directory), *extra,
            cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode != 0
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert "sled" in lines[0] and "engine" in lines[0], lines[0]
        assert "Traceback" not in done.stderr
    assert marker.read_text() == "sled\n"  # untouched


def test_unknown_engine_flag_is_a_usage_error(tmp_path: Path) -> None:
    done = run_server_to_exit("--engine", "sled", "--dir", str(tmp_path / "d"), cwd=tmp_path)
    assert done.returncode == 2
    assert "invalid choice: 'sled'" in done.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("sync", ["everysec", "always", "no"])
def test_graceful_stop_syncs_and_reopens_clean(spawn: Spawn, signum: int, sync: str) -> None:
    server = spawn("--sync", sync)
    client = server.client()
    with client.pipeline(transaction=False) as pipe:
        for i in range(2000):
            pipe.set(f"k{i}", value(i))
        pipe.execute()
    client.set("ttl", "v", ex=1000)
    client.delete("k0")
    server.signal(signum)
    assert server.wait() == 0, server.log()
    log = server.log()
    assert "data synced and closed" in log
    assert "Traceback" not in log
    check = kvs_check(server.directory)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "0 problems" in check.stdout
    restarted = spawn("--sync", sync, port=server.port)
    client = restarted.client()
    assert client.dbsize() == 2000
    assert client.get("k0") is None
    assert client.mget([f"k{i}" for i in range(1, 2000)]) == [value(i) for i in range(1, 2000)]
    assert 990 <= client.ttl("ttl") <= 1000
    restart_log = restarted.log()
    assert "WARNING" not in restart_log and "torn" not in restart_log.lower(), restart_log


def test_shutdown_command(spawn: Spawn) -> None:
    server = spawn()
    client = server.client()
    client.set("k", "v")
    started = time.monotonic()
    client.shutdown()  # redis-py expects the connection to close, no reply
    assert server.wait() == 0
    assert time.monotonic() - started < 5
    check = kvs_check(server.directory)
    assert check.returncode == 0 and "0 problems" in check.stdout
    assert spawn(port=server.port).client().get("k") == b"v"


def test_shutdown_needs_auth_and_rejects_bad_options(spawn: Spawn) -> None:
    server = spawn("--requirepass", "pw")
    with server.connect() as sock:
        sock.sendall(b"SHUTDOWN\r\n")
        assert sock.recv(100).startswith(b"-NOAUTH")
    client = server.client(password="pw")
    with pytest.raises(redis.ResponseError, match="syntax error"):
        call(client, "SHUTDOWN", "BOGUS")
    with pytest.raises(redis.ResponseError, match="No shutdown in progress"):
        call(client, "SHUTDOWN", "ABORT")
    assert client.ping() is True
    assert server.proc.poll() is None


def test_sigterm_with_a_client_that_does_not_read(spawn: Spawn) -> None:
    """Shutdown must not wait forever for replies a client never reads."""
    server = spawn()
    client = server.client()
    client.set("big", b"x" * 1_000_000)
    sock = server.connect()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(b"GET big\r\n" * 50)
    time.sleep(0.3)
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0, server.log()
    assert time.monotonic() - started < 15
    sock.close()
    check = kvs_check(server.directory)
    assert check.returncode == 0 and "0 problems" in check.stdout


def test_group_commit_fsyncs_before_acknowledging(inproc: InProc) -> None:
    """Under --sync always the store only writes to the OS; the server's fsync must come
    before the reply of every write, EXEC of a transaction included."""
    server = inproc(sync="always")
    store = server.store
    synced: list[int] = []
    real_sync = store.sync

    def counting_sync() -> None:
        real_sync()
        synced.append(1)

    store.sync = counting_sync  # type: ignore[method-assign,unused-ignore]
    client = server.client()
    assert client.get("k") is None
    assert synced == []  # a read is not held for an fsync
    before = len(synced)
    assert client.set("k", "v") is True
    assert len(synced) == before + 1
    before = len(synced)
    with client.pipeline(transaction=True) as pipe:
        pipe.set("a", "1")
        pipe.incr("n")
        assert pipe.execute() == [True, 1]
    assert len(synced) == before + 1
    # EXEC alone in its read (an interactive client): its reply must wait for the fsync too.
    with server.connect() as sock:
        for command, reply in ((b"MULTI", b"+OK\r\n"), (b"SET b 2", b"+QUEUED\r\n")):
            sock.sendall(command + b"\r\n")
            assert recv_until(sock) == reply
        time.sleep(0.1)
        before = len(synced)
        sock.sendall(b"EXEC\r\n")
        assert recv_until(sock) == b"*1\r\n+OK\r\n"
        assert len(synced) == before + 1, "EXEC was acknowledged before its writes were synced"


def test_second_server_on_the_same_directory_or_port(spawn: Spawn, tmp_path: Path) -> None:
    server = spawn()
    locked = run_server_to_exit(
        "--addr", "127.0.0.1:0", "--dir", str(server.directory), cwd=tmp_path
    )
    assert locked.returncode == 3
    assert "locked" in locked.stderr and "Traceback" not in locked.stderr
    busy = run_server_to_exit(
        "--addr", f"127.0.0.1:{server.port}", "--dir", str(tmp_path / "other"), cwd=tmp_path
    )
    assert busy.returncode == 1
    assert f"cannot listen on 127.0.0.1:{server.port}" in busy.stderr
    assert "Traceback" not in busy.stderr
    assert server.client().ping() is True


# -- graceful shutdown in the middle of work (RELIABILITY.md A11) ---------------------------
# test_graceful_stop_syncs_and_reopens_clean above signals an idle server. These signal it
# while pipelined writes are streaming in, and while a background compaction is running.


class PipelinedWriter(threading.Thread):
    """Streams ``SET p<i> v<i>`` on one raw connection, without end, while reading the
    replies: ``acked`` counts the +OK replies received (for the first ``acked`` commands, in
    order). The stream only stops when the server closes the connection (``cut_off``), or
    at a safety cap far beyond what any test waits for."""

    CHUNK = 5000
    CAP = 5_000_000

    def __init__(self, sock: socket.socket, prefix: str) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.prefix = prefix
        self.acked = 0
        self.unexpected = b""
        self.cut_off = False  # the server closed the connection while we were still sending

    def run(self) -> None:
        sender = threading.Thread(target=self._send, daemon=True)
        sender.start()
        tail = b""
        try:
            while True:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    break
                data = tail + chunk
                self.acked += data.count(b"+OK\r\n")
                tail = data[data.rfind(b"\r\n") + 2 :] if b"\r\n" in data else data
                if data.replace(b"+OK\r\n", b"") not in (b"", tail):
                    self.unexpected += data
        except OSError:
            pass
        sender.join(10)

    def _send(self) -> None:
        for start in range(0, self.CAP, self.CHUNK):
            payload = b"".join(
                b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(v), v)
                for k, v in (
                    (f"{self.prefix}{i}".encode(), f"v{i}".encode() * 8)
                    for i in range(start, start + self.CHUNK)
                )
            )
            try:
                self.sock.sendall(payload)
            except OSError:  # the server stopped reading and closed: expected
                self.cut_off = True
                return


def _reopens_clean_with(spawn: Spawn, port: int, sync: str) -> redis.Redis:
    restarted = spawn("--sync", sync, port=port)  # the lock was released, or this fails
    log = restarted.log()
    assert "WARNING" not in log and "torn" not in log.lower(), log
    return restarted.client()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("sync", ["always", "everysec"])
def test_signal_during_a_burst_of_pipelined_writes(spawn: Spawn, signum: int, sync: str) -> None:
    server = spawn("--sync", sync)
    writers = [PipelinedWriter(server.connect(timeout=30), f"c{n}:") for n in range(3)]
    for writer in writers:
        writer.start()
    deadline = time.monotonic() + 20
    while min(w.acked for w in writers) < 2000 and time.monotonic() < deadline:
        time.sleep(0.005)
    server.signal(signum)
    assert server.wait(30) == 0, server.log()
    for writer in writers:
        writer.join(30)
        assert not writer.is_alive()
        writer.sock.close()
        assert writer.unexpected == b""
    acked = [w.acked for w in writers]
    assert min(acked) >= 2000, acked
    assert all(w.cut_off for w in writers), "the signal came after a burst had ended"
    log = server.log()
    assert "data synced and closed" in log and "Traceback" not in log, log
    check = kvs_check(server.directory)
    assert check.returncode == 0 and "0 problems" in check.stdout, check.stdout + check.stderr
    client = _reopens_clean_with(spawn, server.port, sync)
    present = 0
    for writer in writers:
        # Every acknowledged write is there. A few more may be too: the server answers every
        # command it ran before closing, but closing a socket whose client is still sending
        # resets it, and a reset can discard replies the client had not read yet (Redis
        # alike). Those writes count as "maybe"; what is there must still be a prefix of
        # the stream, each with its own value.
        count = sum(1 for _ in client.scan_iter(match=f"{writer.prefix}*", count=1000))
        assert count >= writer.acked, f"{writer.acked - count} acknowledged writes lost"
        keys = [f"{writer.prefix}{i}" for i in range(count)]
        for start in range(0, count, 10_000):
            values = client.mget(keys[start : start + 10_000])
            expected = [f"v{i}".encode() * 8 for i in range(start, start + len(values))]
            assert values == expected, f"{writer.prefix}: not a prefix of the stream near {start}"
        present += count
    assert client.dbsize() == present


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_a_compaction(spawn: Spawn, signum: int) -> None:
    """Overwrite 1 MiB values until a background compaction is writing its output (its
    ``.tmp`` files exist), then signal: the server exits 0, and every key holds its last
    acknowledged value (or the one in flight) after a clean reopen."""
    server = spawn()
    directory = server.directory
    client = server.client(socket_timeout=30)
    keys = [f"big{i}" for i in range(24)]
    last: dict[str, int] = {}
    in_flight: dict[str, int] = {}
    stop = threading.Event()
    errors: list[BaseException] = []

    def big(key: str, n: int) -> bytes:
        return f"{key}={n};".encode().ljust(1 << 20, b".")

    def overwrite() -> None:
        n = 0
        try:
            while not stop.is_set():
                for key in keys:
                    n += 1
                    in_flight[key] = n
                    client.set(key, big(key, n))
                    last[key] = n
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            pass  # the server went away: expected
        except BaseException as error:
            errors.append(error)

    writer = threading.Thread(target=overwrite, daemon=True)
    writer.start()
    deadline = time.monotonic() + 60
    while not list(directory.glob("*.tmp")):
        assert time.monotonic() < deadline, "no compaction started"
        assert writer.is_alive(), errors
        time.sleep(0.0005)
    server.signal(signum)
    assert server.wait(60) == 0, server.log()
    stop.set()
    writer.join(30)
    assert not errors, errors
    log = server.log()
    assert "data synced and closed" in log and "Traceback" not in log, log
    check = kvs_check(directory)
    problems = check.stdout.splitlines()[:-1]
    assert problems == [] and "checked" in check.stdout, check.stdout + check.stderr
    client = _reopens_clean_with(spawn, server.port, "everysec")
    assert len(last) == len(keys)
    for key in keys:
        got = client.get(key)
        assert got in (big(key, last[key]), big(key, in_flight[key])), (key, (got or b"")[:20])


def test_store_errors_become_redis_error_replies(inproc: InProc) -> None:
    """A store that turned read-only (a failed fsync) answers writes with -READONLY, as a Redis
    replica does, and keeps serving reads; other store errors are -ERR."""
    server = inproc()
    client = server.client()
    client.set("k", "v")
    too_long = b"k" * (1024 * 1024 + 1)  # over the store's key limit (a LimitError)
    with server.connect() as sock:
        sock.sendall(b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$1\r\nv\r\n" % (len(too_long), too_long))
        assert recv_until(sock) == (b"-ERR key of 1048577 bytes is over the limit of 1048576\r\n")
    store = server.store

    def fail_fsyncs() -> None:
        store._failure = "fsync failed: injected"  # type: ignore[attr-defined]

    server.call(fail_fsyncs)
    with pytest.raises(redis.ReadOnlyError, match="read-only: fsync failed: injected"):
        client.set("k", "w")
    assert client.get("k") == b"v"
