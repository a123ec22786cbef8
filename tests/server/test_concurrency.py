"""Many clients at once: every command is atomic, every value lands where it belongs."""

from __future__ import annotations

import threading

import redis

from .conftest import Spawn
from .helpers import ServerProcess

THREADS = 20
OPS = 200


def run_clients(server: ServerProcess, protocol: int = 2) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def work(n: int) -> None:
        try:
            client = server.client(protocol)
            barrier.wait(10)
            for i in range(OPS):
                key, value = f"t{n}:k{i}", f"thread {n} value {i} ".encode() * (i % 5 + 1)
                assert client.set(key, value) is True
                assert client.get(key) == value
            assert client.incrby("total", OPS) > 0
            client.close()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    client = server.client()
    for n in range(THREADS):
        keys = [f"t{n}:k{i}" for i in range(OPS)]
        expected = [f"thread {n} value {i} ".encode() * (i % 5 + 1) for i in range(OPS)]
        assert client.mget(keys) == expected
    assert client.get("total") == str(THREADS * OPS).encode()  # INCRBY is atomic
    assert client.dbsize() == THREADS * OPS + 1


def test_20_threads_distinct_keys(shared_server: ServerProcess) -> None:
    shared_server.client().flushdb()
    run_clients(shared_server)


def test_20_threads_resp3_sync_always(spawn: Spawn) -> None:
    run_clients(spawn("--sync", "always"), protocol=3)


def test_concurrent_transactions_are_atomic(shared_server: ServerProcess) -> None:
    shared_server.client().flushdb()
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            client = shared_server.client()
            for _ in range(50):
                with client.pipeline(transaction=True) as pipe:
                    pipe.incr("a")
                    pipe.incr("b")
                    pipe.get("a")
                    pipe.get("b")
                    a, b, a_seen, b_seen = pipe.execute()
                assert a == b and a_seen == b_seen  # no other client interleaved
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert redis.Redis(port=shared_server.port).mget("a", "b") == [b"500", b"500"]
