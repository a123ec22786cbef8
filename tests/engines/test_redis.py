"""The redis engine against one real server: ``redis-server`` and ``kvs-server``.

The behaviour every engine shares (round trip, types, TTL, batches, scan, len, clear) runs
against both servers (``store``); then what is the redis engine's own: the on-server
encoding, the ``WATCH`` check of a batch's removes (and its weaker form on kvs-server, which
has no ``WATCH``), retries through a server restart, connection errors, ``wait_replicas``.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kvs import KeyNotFound, KvsError, KvStore, StoreClosedError, WriteBatch
from kvs.cli.transfer import export_store
from kvs.engines.redis import (
    RedisStore,
    RedisURLError,
    ReplicationError,
    ServerUnavailableError,
    decode_value,
    encode_value,
)

from .redis_fixtures import KvsServerProcess, Process, RedisServer, free_port, require_redis

# -- servers and stores ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    require_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis"), free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def kvs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KvsServerProcess]:
    server = KvsServerProcess(tmp_path_factory.mktemp("kvs-server"), free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["redis-server", "kvs-server"])
def server(request: pytest.FixtureRequest) -> Process:
    """Each server in turn, its database emptied first."""
    name = "redis_server" if request.param == "redis-server" else "kvs_server"
    process: Process = request.getfixturevalue(name)
    with process.client() as client:
        client.flushdb()
    return process


@pytest.fixture
def store(server: RedisServer | KvsServerProcess) -> Iterator[KvStore]:
    with KvStore.open(server.url, engine="redis") as opened:
        yield opened


def raw_get(server: Process, key: bytes) -> Any:
    with server.client() as client:
        return client.get(key)


# -- the shared behaviour, on both servers --------------------------------------------------


def test_round_trip_overwrite_remove(store: KvStore) -> None:
    assert store.get("k") is None
    store.set("k", "v1")
    assert store.get("k") == "v1"
    store["k"] = "v2"
    assert store["k"] == "v2"
    assert "k" in store and "other" not in store
    store.remove("k")
    assert store.get("k") is None
    with pytest.raises(KeyNotFound):
        store.remove("k")
    with pytest.raises(KeyError):
        del store["k"]
    with pytest.raises(KeyError):
        store["k"]


def test_types_and_binary(store: KvStore) -> None:
    binary = bytes(range(256)) + b"\r\n\x00"
    store[b"bin"] = binary
    store["text"] = "h\u00e9llo \u2603"
    store["empty-str"] = ""
    store[b"empty-bytes"] = b""
    store[b"\x00\xffkey\r\n"] = b"x"
    store["bytearray"] = bytearray(b"ba")  # type: ignore[assignment]
    assert store.get("bin") == binary
    assert store.get(b"text") == "h\u00e9llo \u2603"
    assert store.get("empty-str") == "" and isinstance(store.get("empty-str"), str)
    assert store.get("empty-bytes") == b"" and isinstance(store.get("empty-bytes"), bytes)
    assert store.get(b"\x00\xffkey\r\n") == b"x"
    assert store.get("bytearray") == b"ba"
    with pytest.raises(TypeError):
        store.set("k", 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.get(1)  # type: ignore[arg-type]


def test_str_and_bytes_name_the_same_key_of_the_last_type(store: KvStore) -> None:
    store["a"] = "1"
    store[b"a"] = b"2"
    assert len(store) == 1
    assert list(store.scan()) == [b"a"]
    assert store.get("a") == b"2"
    store["a"] = b"3"
    assert list(store.scan()) == ["a"]
    store.expire(b"a", 60)  # an expiry is not a set: the key keeps its type
    assert list(store.scan()) == ["a"]


def test_ttl_expire(store: KvStore) -> None:
    store.set("short", "v", ttl=0.2)
    store.set("long", "v", ttl=60)
    store.set("forever", "v")
    remaining = store.ttl("long")
    assert remaining is not None and 59 < remaining <= 60
    assert store.ttl("forever") is None
    with pytest.raises(KeyNotFound):
        store.ttl("absent")
    assert store.expire("forever", 30)
    remaining = store.ttl("forever")
    assert remaining is not None and 29 < remaining <= 30
    assert store.expire("forever", None)
    assert store.ttl("forever") is None
    assert not store.expire("absent", 10)
    assert not store.expire("absent", None)
    store.set("long", "v2")  # a set without ttl clears the expiry
    assert store.ttl("long") is None
    with pytest.raises(ValueError):
        store.set("k", "v", ttl=0)
    with pytest.raises(ValueError):
        store.expire("long", -1)
    time.sleep(0.3)
    assert store.get("short") is None
    assert "short" not in list(store.scan())
    with pytest.raises(KeyNotFound):
        store.ttl("short")
    with pytest.raises(KeyNotFound):
        store.remove("short")


def test_batch_applies_everything(store: KvStore) -> None:
    store["gone"] = "x"
    store["stays"] = "x"
    batch = WriteBatch()
    batch.set("a", "1")
    batch.set(b"b", b"2", ttl=60)
    batch.remove("gone")
    batch.remove("never-there", missing_ok=True)
    batch.set("c", "3")
    batch.remove("c")  # set then removed in the same batch
    store.write(batch)
    assert list(store.scan()) == ["a", b"b", "stays"]
    remaining = store.ttl("b")
    assert remaining is not None and remaining > 59
    with store.batch() as b:
        b.set("d", "4")
        b.remove("a")
    assert store.get("d") == "4" and store.get("a") is None
    store.write(WriteBatch())  # empty: nothing to do


@pytest.mark.parametrize(
    "ops",
    [
        [("set", "a"), ("remove", "absent")],
        [("remove", "absent"), ("set", "a")],
        [("set", "a"), ("remove", "x"), ("remove", "x")],  # x exists, but only once
        [("remove", "x", True), ("remove", "x")],
    ],
    ids=["absent", "absent-first", "removed-twice", "missing-ok-then-strict"],
)
def test_batch_with_a_failing_remove_applies_nothing(
    store: KvStore, ops: list[tuple[Any, ...]]
) -> None:
    store["x"] = "old"
    batch = WriteBatch()
    for op in ops:
        if op[0] == "set":
            batch.set(op[1], "new")
        else:
            batch.remove(op[1], missing_ok=len(op) > 2)
    with pytest.raises(KeyNotFound):
        store.write(batch)
    assert dict(store.items()) == {"x": "old"}


def test_with_batch_not_written_on_exception(store: KvStore) -> None:
    with pytest.raises(RuntimeError), store.batch() as b:
        b.set("a", "1")
        raise RuntimeError
    assert len(store) == 0


def test_scan_sorted_with_prefix(store: KvStore) -> None:
    keys = [b"b", b"a", b"ab", b"a\xff", b"a\x00", b"*[?]\\", b"*x", "\u00e9", "z"]
    store.update({key: "v" for key in keys})
    expected = sorted(key.encode() if isinstance(key, str) else key for key in keys)
    assert [k.encode() if isinstance(k, str) else k for k in store.scan()] == expected
    assert list(store.scan(b"a")) == [b"a", b"a\x00", b"ab", b"a\xff"]
    assert list(store.scan("*[")) == [b"*[?]\\"]  # glob characters are taken literally
    assert list(store.scan(b"*")) == [b"*[?]\\", b"*x"]
    assert list(store.scan("nothing")) == []
    assert list(store) == list(store.scan())
    assert [k for k, _ in store.items("a")] == [b"a", b"a\x00", b"ab", b"a\xff"]


def test_len_and_clear(store: KvStore) -> None:
    assert len(store) == 0
    store.update({f"k{i}": str(i) for i in range(250)})
    assert len(store) == 250
    assert len(list(store.scan())) == 250
    store.clear()
    assert len(store) == 0
    store.clear()  # already empty


def test_many_keys_scan(store: KvStore) -> None:
    store.update({f"key{i:05}".encode(): b"v" for i in range(3000)})
    store.update({f"str{i:05}": "v" for i in range(500)})
    found = list(store.scan())
    assert len(found) == 3500
    assert found[:1] == [b"key00000"] and found[-1] == "str00499"


def test_sync_compact_stats_close(store: KvStore) -> None:
    store["a"] = "1"
    store.sync()
    store.compact()
    stats = store.stats()
    assert stats["engine"] == "redis" and stats["keys"] == 1 and stats["mode"] == "single"
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreClosedError):
        store.get("a")
    with pytest.raises(StoreClosedError):
        store.set("a", "2")


def test_threads(store: KvStore) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(100):
                store.set(f"t{n}-{i}", str(i))
                assert store.get(f"t{n}-{i}") == str(i)
            with store.batch() as b:
                for i in range(0, 100, 2):
                    b.remove(f"t{n}-{i}")
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(store) == 8 * 50


# -- what is the redis engine's own ---------------------------------------------------------


def test_on_server_encoding(store: KvStore, server: Process) -> None:
    store["s"] = "hello"
    store[b"b"] = b"hello"
    store["sb"] = b"hello"
    store[b"bs"] = "hello"
    assert raw_get(server, b"s") == b"3hello"
    assert raw_get(server, b"b") == b"0hello"
    assert raw_get(server, b"sb") == b"2hello"
    assert raw_get(server, b"bs") == b"1hello"
    assert encode_value("k", "\u00e9") == b"3\xc3\xa9"
    assert decode_value(b"1\xc3\xa9", b"k") == "\u00e9"


def test_a_value_kvs_did_not_write_is_an_error(store: KvStore, server: Process) -> None:
    with server.client() as client:
        client.set(b"foreign", b"plain")
    with pytest.raises(KvsError, match="not written by kvs"):
        store.get("foreign")


@pytest.fixture
def redis_store(redis_server: RedisServer) -> Iterator[RedisStore]:
    with redis_server.client() as client:
        client.flushdb()
    store = RedisStore(redis_server.url)
    try:
        yield store
    finally:
        store.close()


def _check_catches_a_remove_before_exec(
    store: RedisStore, other_client: Callable[[], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another client removes a key after the batch checked it but before EXEC: WATCH makes
    the EXEC fail, the retry sees the key gone, and the batch raises, applying nothing."""
    store["victim"] = "v"
    original = RedisStore._plan
    calls = 0

    def plan_then_interfere(ops: Any, present: dict[bytes, bool]) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            with other_client() as other:
                other.delete(b"victim")
        return original(ops, present)

    monkeypatch.setattr(RedisStore, "_plan", staticmethod(plan_then_interfere))
    batch = WriteBatch()
    batch.set("new", "1")
    batch.remove("victim")
    with pytest.raises(KeyNotFound):
        store.write(batch)
    assert calls == 2
    assert store.get("new") is None
    assert store._has_watch is True


def test_batch_remove_check_is_retried_when_a_watched_key_changes(
    redis_store: RedisStore, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _check_catches_a_remove_before_exec(redis_store, redis_server.client, monkeypatch)


def test_kvs_server_watch_makes_the_remove_check_atomic(
    kvs_server: KvsServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kvs-server has WATCH (and GETRANGE): the same as on a real Redis."""
    with kvs_server.client() as client:
        client.flushdb()
    store = RedisStore(kvs_server.url)
    try:
        _check_catches_a_remove_before_exec(store, kvs_server.client, monkeypatch)
        store["kept"] = "1"
        assert list(store.scan()) == ["kept"]
        assert store._has_getrange is True
    finally:
        store.close()


def test_a_server_without_watch_gets_the_weaker_check(
    kvs_server: KvsServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented weaker guarantee for a server that has no WATCH (nor GETRANGE): the
    remove check runs, but a concurrent remove between the check and EXEC goes unnoticed;
    the batch is still applied as a whole. (Taken here as if kvs-server had neither.)"""
    with kvs_server.client() as client:
        client.flushdb()
    store = RedisStore(kvs_server.url)
    store._has_watch = store._has_getrange = False
    try:
        store["victim"] = "v"
        batch = WriteBatch()
        batch.remove("absent")
        with pytest.raises(KeyNotFound):  # the check itself works
            store.write(batch)

        original = RedisStore._plan

        def plan_then_interfere(ops: Any, present: dict[bytes, bool]) -> Any:
            with kvs_server.client() as other:
                other.delete(b"victim")
            return original(ops, present)

        monkeypatch.setattr(RedisStore, "_plan", staticmethod(plan_then_interfere))
        batch = WriteBatch()
        batch.set("new", "1")
        batch.remove("victim")
        store.write(batch)  # not detected
        assert store.get("new") == "1" and store.get("victim") is None
        assert list(store.scan()) == ["new"]  # read whole values instead of GETRANGE
    finally:
        store.close()


def test_retries_through_a_server_restart(tmp_path: Path) -> None:
    require_redis()
    server = RedisServer(tmp_path, free_port())
    server.start()
    try:
        store = RedisStore(server.url, retry_timeout=10)
        store["before"] = "1"
        server.kill()
        restarted = threading.Timer(0.5, server.start)
        restarted.start()
        started = time.monotonic()
        store["after"] = "2"  # waits for the server to come back
        assert 0.3 < time.monotonic() - started < 10
        restarted.join()
        assert store.get("after") == "2"
        assert store.get("before") is None  # --save '': the restart lost it
        store.close()
    finally:
        server.stop()


def test_server_down_is_a_kvs_error_naming_the_url(tmp_path: Path) -> None:
    require_redis()
    port = free_port()
    url = f"redis://user:secret@127.0.0.1:{port}/0"
    started = time.monotonic()
    with pytest.raises(ServerUnavailableError) as raised:
        KvStore.open(url, engine="redis")
    assert time.monotonic() - started < 5  # opening does not retry
    message = str(raised.value)
    assert f"127.0.0.1:{port}" in message and "secret" not in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert isinstance(raised.value, KvsError)

    server = RedisServer(tmp_path, port)
    server.start()
    store = RedisStore(server.url, retry_timeout=0.3)
    server.kill()
    started = time.monotonic()
    with pytest.raises(ServerUnavailableError, match=f"127.0.0.1:{port}"):
        store.get("k")
    assert time.monotonic() - started < 3
    store.close()


def test_bad_urls() -> None:
    for url in ("/some/dir", "http://host:1", "redis+cluster://127.0.0.1:1/3"):
        with pytest.raises(RedisURLError):
            RedisStore(url)


def test_wait_replicas_without_replicas(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, wait_replicas=1, wait_timeout=0.05)
    try:
        with pytest.raises(ReplicationError, match="0 of 1"):
            store["k"] = "v"
        assert store.get("k") == "v"  # applied on the primary all the same
        with pytest.raises(ReplicationError):
            store.update({"a": "1"})
        assert store.get("a") == "1"
    finally:
        store.close()


def test_options(redis_server: RedisServer, redis_store: RedisStore) -> None:
    with pytest.raises(TypeError):
        RedisStore(redis_server.url, no_such_option=1)
    with pytest.raises(ValueError):
        RedisStore(redis_server.url, retry_timeout=-1)
    with pytest.raises(ValueError):
        RedisStore(redis_server.url, wait_replicas=-1)
    # Anything else goes to redis-py: here a client name and RESP3 (from the URL).
    store = RedisStore(redis_server.url + "?protocol=3", client_name="kvs-test")
    try:
        store["k"] = "v"
        store.set(b"t", b"x", ttl=60)
        assert store.get("k") == "v" and list(store.scan()) == ["k", b"t"]
        assert store.expire("k", None) is True and store.ttl("t") is not None
        with store.batch() as batch:
            batch.remove("k")
        assert len(store) == 1 and store.stats()["redis_version"] == "7.0.15"
    finally:
        store.close()


def test_compact_reclaims_expired_keys(redis_store: RedisStore) -> None:
    store = redis_store
    store.update({f"k{i}": "v" for i in range(50)})
    for i in range(50):
        store.set(f"short{i}", "v", ttl=0.01)
    time.sleep(0.05)
    store.compact()  # SCAN meets every expired key, so Redis deletes it
    assert len(store) == 50


# -- export: values and ttls read in bulk ----------------------------------------------------


def count_round_trips(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each round trip the engine makes from now on (one write of commands, then their
    replies) appends its number of commands to the returned list."""
    trips: list[int] = []
    real = RedisStore._roundtrip

    def counting(conn: Any, commands: Any) -> list[Any]:
        trips.append(len(commands))
        return real(conn, commands)

    monkeypatch.setattr(RedisStore, "_roundtrip", staticmethod(counting))
    return trips


def test_items_with_ttl_matches_get_and_ttl(store: KvStore) -> None:
    assert isinstance(store, RedisStore)
    store.set("str", "value")
    store.set(b"bytes", b"\x00\xff")
    store.set("expiring", b"soon", ttl=600)
    for i in range(2500):
        store.set(f"k{i:05d}", f"v{i}")
    items = list(store.items_with_ttl(chunk=700))
    assert [key for key, _, _ in items] == list(store.scan())
    for key, value, ttl in items:
        assert store.get(key) == value
        assert (ttl is None) == (key != "expiring")
    assert dict((k, v) for k, v, _ in items)["expiring"] == b"soon"
    assert 590 < (dict((k, t) for k, _, t in items)["expiring"] or 0) <= 600
    assert [key for key, _, _ in store.items_with_ttl("k0249")] == [f"k0249{i}" for i in range(10)]
    with pytest.raises(ValueError):
        next(store.items_with_ttl(chunk=0))


def test_export_reads_values_in_chunks_not_per_key(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``kvs export`` from Redis: one SCAN per page, then GET + PTTL pipelined per chunk
    (INFO commandstats counts the commands; the engine's round trips are counted too)."""
    keys = 2500
    with redis_server.client() as client:
        client.flushdb()
    with KvStore.open(redis_server.url, engine="redis") as store:
        store.update({f"k{i:05d}": f"v{i}" for i in range(keys)})
        with redis_server.client() as client:
            client.config_resetstat()
        trips = count_round_trips(monkeypatch)
        out = io.BytesIO()
        assert export_store(store, out) == keys
    assert out.getvalue().splitlines()[7] == b'{"k": "k00007", "v": "v7"}'
    with redis_server.client() as client:
        stats = client.info("commandstats")
    assert stats["cmdstat_get"]["calls"] == keys
    assert stats["cmdstat_pttl"]["calls"] == keys
    assert "cmdstat_getrange" not in stats  # the key types come from the values read
    scans = stats["cmdstat_scan"]["calls"]
    assert len(trips) == scans + 3, trips  # 3 chunks of up to 1000 keys
    assert scans < 10
