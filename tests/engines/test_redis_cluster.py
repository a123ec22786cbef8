"""The redis engine against a real Redis Cluster (``redis+cluster://``): keys spread over
every master, ``scan`` and ``len`` over all of them, batches atomic within one hash slot and
refused (writing nothing) across slots, ``WAIT`` for replicas; and (slow: ``KVS_SLOW=1`` or
``-m slow``) a master killed with SIGKILL while the client keeps working through the
failover."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.crc import key_slot

from kvs import KeyNotFound, KvsError, KvStore, NotSupportedError, WriteBatch
from kvs.cli.transfer import export_store, import_store
from kvs.engines.redis import RedisStore

from .redis_fixtures import Cluster, RedisServer, require_redis, slow_enabled


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_redis()
    made = Cluster(tmp_path_factory.mktemp("cluster"), masters=3)
    try:
        yield made.start()
    finally:
        made.stop()


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_redis()
    made = Cluster(tmp_path_factory.mktemp("replicated"), masters=3, replicas=1)
    try:
        yield made.start()
    finally:
        made.stop()


def flush(cluster: Cluster) -> None:
    for node in cluster.masters():
        with node.client() as client:
            client.flushall()


@pytest.fixture
def store(cluster: Cluster) -> Iterator[RedisStore]:
    flush(cluster)
    opened = KvStore.open(cluster.url, engine="redis")
    assert isinstance(opened, RedisStore)
    try:
        yield opened
    finally:
        opened.close()


def node_sizes(cluster: Cluster) -> dict[int, int]:
    sizes: dict[int, int] = {}
    for node in cluster.masters():
        with node.client() as client:
            sizes[node.port] = int(client.dbsize())
    return sizes


def test_keys_spread_over_every_master(store: RedisStore, cluster: Cluster) -> None:
    items: dict[str | bytes, str | bytes] = {f"key{i:03}": f"value{i}" for i in range(150)}
    items.update({f"bin{i:03}".encode(): bytes([i]) * i for i in range(50)})
    for key, value in items.items():
        store[key] = value
    sizes = node_sizes(cluster)
    assert len(sizes) == 3 and all(size > 0 for size in sizes.values()), sizes
    assert sum(sizes.values()) == 200
    for key, value in items.items():
        assert store[key] == value
    assert len(store) == 200  # DBSIZE summed over the masters
    assert list(store.scan()) == sorted(
        items, key=lambda k: k.encode() if isinstance(k, str) else k
    )
    assert list(store.scan("key1")) == [f"key{i}" for i in range(100, 150)]
    assert store.stats()["primaries"] == 3 and store.stats()["mode"] == "cluster"
    for i in range(0, 150, 3):
        store.remove(f"key{i:03}")
    with pytest.raises(KeyNotFound):
        store.remove("key000")
    assert len(store) == 150


def test_ttl_and_types(store: RedisStore) -> None:
    store.set("t", "v", ttl=60)
    remaining = store.ttl("t")
    assert remaining is not None and remaining > 59
    assert store.expire("t", None) and store.ttl("t") is None
    store["k"] = b"bytes"
    store[b"k"] = "str"
    assert store.get("k") == "str" and list(store.scan("k")) == [b"k"]


def test_single_slot_batch_is_atomic(store: RedisStore) -> None:
    store["{user:1}:old"] = "x"
    with store.batch() as batch:
        batch.set("{user:1}:name", "Ada")
        batch.set(b"{user:1}:mail", b"ada@example.com", ttl=60)
        batch.remove("{user:1}:old")
    assert dict(store.items("{user:1}")) == {
        "{user:1}:name": "Ada",
        b"{user:1}:mail": b"ada@example.com",
    }
    batch = WriteBatch()
    batch.set("{user:1}:name", "Bob")
    batch.remove("{user:1}:absent")
    with pytest.raises(KeyNotFound):
        store.write(batch)
    assert store.get("{user:1}:name") == "Ada"


def test_single_slot_batch_retries_when_a_watched_key_changes(
    store: RedisStore, cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    store["{t}victim"] = "v"
    other = RedisStore(cluster.url)
    original = RedisStore._plan
    calls = 0

    def plan_then_interfere(ops: Any, present: dict[bytes, bool]) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            other.remove("{t}victim")
        return original(ops, present)

    monkeypatch.setattr(RedisStore, "_plan", staticmethod(plan_then_interfere))
    batch = WriteBatch()
    batch.set("{t}new", "1")
    batch.remove("{t}victim")
    try:
        with pytest.raises(KeyNotFound):
            store.write(batch)
    finally:
        other.close()
    assert calls == 2 and store.get("{t}new") is None


def test_cross_slot_batch_is_refused_and_writes_nothing(store: RedisStore) -> None:
    store["b"] = "old"
    assert key_slot(b"a") != key_slot(b"b")
    batch = WriteBatch()
    batch.set("a", "1")
    batch.remove("b")
    batch.set("c", "3")
    with pytest.raises(NotSupportedError) as raised:
        store.write(batch)
    message = str(raised.value)
    assert str(key_slot(b"a")) in message and str(key_slot(b"b")) in message
    assert "{hashtag}" in message and "nothing was written" in message
    assert list(store.items()) == [("b", "old")]
    with pytest.raises(NotSupportedError):
        store.update({"x": "1", "y": "2", "z": "3"})
    assert list(store.scan()) == ["b"]


def test_clear_covers_every_slot(store: RedisStore, cluster: Cluster) -> None:
    store.update({f"{{tag}}{i}": "v" for i in range(20)})
    for i in range(100):
        store[f"spread{i}"] = "v"
    store.clear()
    assert len(store) == 0 and sum(node_sizes(cluster).values()) == 0


def test_wait_for_a_replica(replicated: Cluster) -> None:
    flush(replicated)
    store = RedisStore(replicated.url, wait_replicas=1, wait_timeout=2)
    try:
        for i in range(30):
            store[f"k{i}"] = str(i)
        with store.batch() as batch:
            batch.set("{b}1", "1")
            batch.set("{b}2", "2")
        assert len(store) == 32
        spread = WriteBatch()
        for i in range(30):
            spread.set(f"s{i}", str(i))
        assert store.write_by_slot(spread) == len({key_slot(f"s{i}".encode()) for i in range(30)})
        assert len(store) == 62
    finally:
        store.close()


# -- bulk transfer: import one transaction per slot, export in chunks ----------------------


def test_write_by_slot_writes_each_slot_atomically(store: RedisStore, cluster: Cluster) -> None:
    store.update({"{a}gone": "x", "{a}kept": "x"})
    batch = WriteBatch()
    for i in range(200):
        batch.set(f"k{i}", str(i))
    batch.set("k0", "again", ttl=60)  # a key twice: the later operation wins
    batch.remove("{a}gone")  # a checked remove, in the slot of {a}
    batch.remove("never-there", missing_ok=True)
    slots = {key_slot(f"k{i}".encode()) for i in range(200)} | {key_slot(b"{a}")}
    slots.add(key_slot(b"never-there"))
    assert store.write_by_slot(batch) == len(slots)
    assert store.get("k0") == "again" and 59 < (store.ttl("k0") or 0) <= 60
    assert store.get("k199") == "199" and store.get("{a}gone") is None
    assert len(store) == 201 and all(node_sizes(cluster).values())

    failing = WriteBatch()
    failing.set("{a}kept", "changed")
    failing.remove("{a}absent")  # KeyNotFound: nothing of slot {a} is written
    with pytest.raises(KeyNotFound):
        store.write_by_slot(failing)
    assert store.get("{a}kept") == "x"
    assert store.write_by_slot(WriteBatch()) == 0


def test_import_into_a_cluster_with_the_default_batch(
    store: RedisStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Export from the log engine, import into the cluster with the default batch size (one
    transaction per hash slot), export again: the same lines (up to the remaining ttl)."""
    items: dict[str | bytes, str | bytes] = {f"user:{i:04d}": f"name {i}" for i in range(2500)}
    items.update({f"bin{i}".encode(): bytes([i]) * 3 for i in range(100)})
    items.update({f"{{order:7}}:{i}": "line" for i in range(10)})
    with KvStore.open(str(tmp_path / "old")) as old:
        old.update(items)
        old.set("session", "token", ttl=600)
        dump = io.BytesIO()
        export_store(old, dump)
    written: list[int] = []
    real_write_by_slot = RedisStore.write_by_slot

    def spy(self: RedisStore, batch: WriteBatch) -> int:
        written.append(len(batch))
        return real_write_by_slot(self, batch)

    monkeypatch.setattr(RedisStore, "write_by_slot", spy)
    dump.seek(0)
    result = import_store(store, dump)
    assert (result.keys, result.batches) == (2611, 3)
    assert written == [1000, 1000, 611]
    assert dict(store.items()) == {**items, "session": "token"}
    assert 590 < (store.ttl("session") or 0) <= 600
    again = io.BytesIO()
    export_store(store, again)

    def without_ttl(text: bytes) -> list[Any]:
        return [
            {k: v for k, v in json.loads(line).items() if k != "ttl_ms"}
            for line in text.splitlines()
        ]

    assert without_ttl(again.getvalue()) == without_ttl(dump.getvalue())


def test_export_from_a_cluster_reads_in_chunks_per_primary(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.update({f"{{t}}{i}": "v" for i in range(10)})
    for i in range(1500):
        store[f"key{i:05d}"] = f"value{i}"
    trips: list[int] = []
    real = RedisStore._roundtrip

    def counting(conn: Any, commands: Any) -> list[Any]:
        trips.append(len(commands))
        return real(conn, commands)

    monkeypatch.setattr(RedisStore, "_roundtrip", staticmethod(counting))
    out = io.BytesIO()
    assert export_store(store, out) == 1510
    reads = [n for n in trips if n > 1]  # GET + PTTL pipelines; SCANs are single commands
    assert len(reads) <= 2 * 3  # 2 chunks of up to 1000 keys, each on at most 3 primaries
    assert sum(reads) == 2 * 1510
    assert len(trips) - len(reads) < 20  # the SCAN pages


# -- failover -------------------------------------------------------------------------------


def replica_of(cluster: Cluster, master: RedisServer) -> RedisServer:
    with master.client() as client:
        info = client.info("replication")
    for key, value in info.items():
        if key.startswith("slave") and isinstance(value, dict):
            port = int(value["port"])
            return next(node for node in cluster.nodes if node.port == port)
    raise AssertionError(f"{master.addr} has no replica: {info}")


@pytest.mark.slow
def test_failover_keeps_every_replicated_key(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if not slow_enabled(request.config):
        pytest.skip("slow: run with KVS_SLOW=1 or -m slow")
    require_redis()
    cluster = Cluster(tmp_path, masters=3, replicas=1)
    cluster.start()
    try:
        # Every write waits for one replica (WAIT 1 1000), so every key below is on a
        # replica when its write returns.
        store = RedisStore(cluster.url, wait_replicas=1, wait_timeout=1.0, retry_timeout=30)
        expected: dict[str, str] = {}
        for i in range(300):
            store[f"key{i}"] = f"value{i}"
            expected[f"key{i}"] = f"value{i}"
        for group in range(20):
            with store.batch() as batch:
                for i in range(10):
                    batch.set(f"{{group{group}}}:{i}", f"{group}.{i}")
                    expected[f"{{group{group}}}:{i}"] = f"{group}.{i}"

        victim = cluster.masters()[0]
        heir = replica_of(cluster, victim)
        with victim.client() as client:
            on_victim = sorted(key.decode() for key in client.scan_iter(count=1000))
        assert on_victim and set(on_victim) < set(expected)

        victim.kill()
        killed = time.monotonic()
        # The client rides the failover out: this read retries until the replica is master.
        assert store.get(on_victim[0]) == expected[on_victim[0]]
        recovered = time.monotonic() - killed

        deadline = time.monotonic() + 30
        while cluster.roles().get(heir.port) != "master":
            assert time.monotonic() < deadline, "the replica was not promoted"
            time.sleep(0.1)
        cluster.wait_ok(cluster.alive())

        for key, value in expected.items():
            assert store.get(key) == value, key
        assert list(store.scan()) == sorted(expected)
        assert len(store) == len(expected)
        assert 0.5 < recovered < 30, recovered  # it did wait for the promotion

        # Writing works again too (the promoted master has no replica left: do not wait).
        after = RedisStore(f"redis+cluster://{heir.addr}")  # the seed may be the victim
        for key in on_victim[:20]:
            after[key] = "new"
            assert store.get(key) == "new"
        after.close()
        store.close()
    finally:
        cluster.stop()


def test_unknown_options_are_refused(cluster: Cluster) -> None:
    with pytest.raises(TypeError, match="no_such_option"):
        RedisStore(cluster.url, no_such_option=1)
    store = RedisStore(cluster.url, socket_timeout=5, require_full_coverage=True)
    store.close()


def test_a_cluster_node_opened_as_one_server_says_so(store: RedisStore, cluster: Cluster) -> None:
    single = RedisStore(cluster.nodes[0].url)
    try:
        found = False
        for i in range(20):  # some of these keys live on another node: MOVED
            try:
                single.get(f"probe{i}")
            except KvsError as error:
                assert "redis+cluster://" in str(error)
                found = True
        assert found
    finally:
        single.close()
