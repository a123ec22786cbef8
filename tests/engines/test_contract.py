"""The ``KvStore`` contract, run against every engine in ``CONTRACT_ENGINES`` (see conftest).

The one place for what every engine, the log engine included, promises: round trips, types,
the dict protocol, scans, batches, TTLs, closing, reopening, sync policies, threads. What an
engine promises beyond the contract (limits, files, locks, rotation, compaction) is in its own
test module (the log engine's: ``tests/test_store.py`` and ``tests/crash/``).
"""

from __future__ import annotations

import gc
import os
import stat
import threading
import time
import traceback
from pathlib import Path

import pytest

from kvs import KeyNotFound, KvStore, StoreClosedError, WriteBatch

from .conftest import EngineSpec, StoreOpener


def raw(key: str | bytes) -> bytes:
    return key.encode() if isinstance(key, str) else key


# -- round trips -------------------------------------------------------------------------------


def test_set_get_overwrite_and_reopen(store: KvStore, open_store: StoreOpener) -> None:
    store.set("key1", "value1")
    store.set("key2", "value2")
    store.set("key1", "value1b")
    assert (store.get("key1"), store.get("key2")) == ("value1b", "value2")
    store = open_store.reopen(store)
    assert (store.get("key1"), store.get("key2")) == ("value1b", "value2")
    store.set("key1", "value1c")
    assert store.get("key1") == "value1c"


def test_missing_key_gets_none_and_remove_raises_key_not_found(store: KvStore) -> None:
    store.set("key1", "value1")
    assert store.get("key2") is None
    with pytest.raises(KeyNotFound) as caught:
        store.remove("key2")
    assert isinstance(caught.value, KeyError)
    assert str(caught.value) == "Key not found"


def test_remove_key(store: KvStore, open_store: StoreOpener) -> None:
    store.set("key1", "value1")
    store.set("key2", "value2")
    store.remove("key1")
    assert store.get("key1") is None
    with pytest.raises(KeyNotFound):
        store.remove("key1")
    store = open_store.reopen(store)
    assert store.get("key1") is None and store.get("key2") == "value2"
    with pytest.raises(KeyNotFound):
        store.remove("key1")


def test_values_keep_their_type_and_bytes_are_binary_safe(
    store: KvStore, open_store: StoreOpener
) -> None:
    binary = bytes(range(256)) + b"\r\n\x00"
    cases: dict[str | bytes, str | bytes] = {
        b"\x00\r\n": binary,
        "text": "héllo ✓ \x00 \U0001f600",
        "empty": "",
        b"empty bytes": b"",
        b"": b"empty key",
        b"\xff\xfe": b"\xff",
        "big": "x" * (1 << 20),
    }
    for key, value in cases.items():
        store.set(key, value)
    for reopened in (False, True):
        if reopened:
            store = open_store.reopen(store)
        for key, value in cases.items():
            got = store.get(key)
            assert got == value and type(got) is type(value), (key, reopened)


def test_str_and_bytes_name_the_same_key(store: KvStore, open_store: StoreOpener) -> None:
    store.set("k", "v")
    assert store.get(b"k") == "v"
    store.set(b"k", b"w")
    assert store.get("k") == b"w"
    assert list(store) == [b"k"]
    store.set("k", "x")
    assert list(store) == ["k"]
    assert len(store) == 1
    store = open_store.reopen(store)
    assert list(store) == ["k"] and store.get(b"k") == "x"


def test_other_types_are_refused(store: KvStore) -> None:
    for bad in (1, 1.5, None, True, ["x"]):
        with pytest.raises(TypeError, match="convert it first"):
            store.set(bad, "v")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            store.set("k", bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            store.get(bad)  # type: ignore[arg-type]
    assert store.get("k") is None
    assert len(store) == 0
    store.set(bytearray(b"ba"), memoryview(b"mv"))
    assert store.get(b"ba") == b"mv"
    assert store.get(bytearray(b"ba")) == b"mv"


def test_dict_style_access(store: KvStore) -> None:
    store["a"] = "1"
    store[b"b"] = b"2"
    assert store["a"] == "1"
    assert "a" in store and b"b" in store and bytearray(b"b") in store
    assert "zz" not in store and 5 not in store
    assert len(store) == 2
    assert list(store) == ["a", b"b"]
    del store["a"]
    assert "a" not in store
    with pytest.raises(KeyError):
        store["a"]
    with pytest.raises(KeyNotFound):
        del store["a"]
    assert len(store) == 1


# -- scans -------------------------------------------------------------------------------------


def test_prefix_scan_is_sorted_and_filtered(store: KvStore) -> None:
    for key in ["user:3", "user:1", "admin:1", "user:2", "user"]:
        store.set(key, key.upper())
    assert list(store.scan("user:")) == ["user:1", "user:2", "user:3"]
    assert list(store.scan(b"user:")) == ["user:1", "user:2", "user:3"]
    assert list(store.items(b"admin")) == [("admin:1", "ADMIN:1")]
    assert list(store.scan()) == ["admin:1", "user", "user:1", "user:2", "user:3"]
    assert list(store.scan("nobody")) == []


def test_scan_orders_by_bytes_and_handles_high_bytes(store: KvStore) -> None:
    keys: list[str | bytes] = [b"\xff\xff", b"\xff", b"\xff\x00", "é", "z", b"", b"\x00", "a\x00"]
    for key in keys:
        store.set(key, "v")
    assert [raw(k) for k in store.scan()] == sorted(raw(k) for k in keys)
    assert list(store.scan(b"\xff")) == [b"\xff", b"\xff\x00", b"\xff\xff"]
    assert list(store.scan(b"\xff\xff")) == [b"\xff\xff"]
    assert list(store.scan("é")) == ["é"]  # str keys come back as str
    assert list(store.scan(b"a")) == ["a\x00"]


def test_scan_tolerates_writes_while_it_is_consumed(store: KvStore) -> None:
    for i in range(100):
        store.set(b"k%03d" % i, b"v")
    seen = []
    for key in store.scan(b"k"):
        seen.append(key)
        store.set(b"k%03d-new" % len(seen), b"v")  # no "changed size during iteration"
        if len(seen) % 3 == 0:
            store.remove(key)
    assert seen == sorted(seen)
    assert {key for key in seen if not raw(key).endswith(b"-new")} == {
        b"k%03d" % i for i in range(100)
    }


def test_scan_is_a_snapshot_taken_at_the_call(store: KvStore) -> None:
    """kvs's scan used to copy its index at the first next(), so a key set between the call
    and the iteration showed up there and not in the other engines."""
    store.set("a", "1")
    keys = store.scan()
    store.set("b", "2")
    assert list(keys) == ["a"]


def test_ttls_of_millions_of_years_work_and_absurd_ones_are_refused(store: KvStore) -> None:
    """Every engine stores expiry times below 2**63 ms (the kvs engine's field goes to 2**64,
    which Redis's PXAT of INT64_MAX through kvs-server needs; export clamps what it writes to
    what import takes, see test_transfer.py)."""
    store.set("long", "v", ttl=2.0e15)  # ~63 million years
    assert (store.ttl("long") or 0) > 1.9e15
    with pytest.raises(ValueError, match="too large"):
        store.set("k", "v", ttl=1e17)
    with pytest.raises(ValueError, match="too large"):
        store.expire("long", 1e17)
    assert (store.ttl("long") or 0) > 1.9e15


def test_a_str_that_is_not_unicode_text_is_refused(store: KvStore) -> None:
    """A lone surrogate cannot be stored as UTF-8; the memory engine used to keep it."""
    with pytest.raises(UnicodeEncodeError):
        store.set("k", "\ud800")
    with pytest.raises(UnicodeEncodeError):
        store.set("\ud800", "v")
    assert store.get("k") is None


# -- batches -----------------------------------------------------------------------------------


def test_batch_applies_all_or_nothing(store: KvStore, open_store: StoreOpener) -> None:
    store.set("old", "1")
    with store.batch() as batch:
        batch.set("a", "1")
        batch.set(b"b", b"2")
        batch.remove("old")
    assert (store.get("a"), store.get("b"), store.get("old")) == ("1", b"2", None)
    failing = WriteBatch()
    failing.set("c", "3")
    failing.set("a", "changed")
    failing.remove("never-there")
    with pytest.raises(KeyNotFound):
        store.write(failing)
    assert store.get("c") is None and store.get("a") == "1"
    tolerant = WriteBatch()
    tolerant.set("c", "3")
    tolerant.remove("never-there", missing_ok=True)
    store.write(tolerant)
    assert store.get("c") == "3"
    store.write(WriteBatch())  # empty: nothing happens
    store = open_store.reopen(store)
    assert (store.get("a"), store.get("b"), store.get("c"), store.get("old")) == (
        "1",
        b"2",
        "3",
        None,
    )


def test_batch_context_exiting_with_an_error_writes_nothing(store: KvStore) -> None:
    with pytest.raises(RuntimeError), store.batch() as batch:
        batch.set("a", "1")
        raise RuntimeError("boom")
    assert store.get("a") is None


def test_batch_with_a_bad_type_writes_nothing(store: KvStore) -> None:
    batch = WriteBatch()
    batch.set("a", "1")
    batch.set("b", 2)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.write(batch)
    assert store.get("a") is None and len(store) == 0


def test_batch_sees_its_own_earlier_operations(store: KvStore) -> None:
    with store.batch() as batch:
        batch.set("k", "1")
        batch.remove("k")
        batch.set("j", "2")
        batch.remove("j")
        batch.set("j", "3")
    assert store.get("k") is None and store.get("j") == "3"
    twice = WriteBatch()
    twice.remove("j")
    twice.remove("j")  # already removed by this batch
    with pytest.raises(KeyNotFound):
        store.write(twice)
    assert store.get("j") == "3"


def test_batch_sets_and_clears_expiry(store: KvStore) -> None:
    store.set("kept", "v", ttl=3600)
    with store.batch() as batch:
        batch.set("ttl", "v", ttl=3600)
        batch.set("kept", "v2")  # a set without ttl clears the expiry
    assert 3500 < (store.ttl("ttl") or 0) <= 3600
    assert store.ttl("kept") is None


def test_update_sets_many_atomically(store: KvStore, open_store: StoreOpener) -> None:
    store.update({b"a": b"1", b"b": b"2"})
    store.update([(b"a", b"3"), (b"a", b"4")])  # the last one wins
    store.update([("s", "str value")])
    store.update([])
    assert store.get(b"a") == b"4" and store.get(b"b") == b"2" and store.get("s") == "str value"
    with pytest.raises(TypeError):
        store.update([(b"x", b"1"), (b"y", 2)])  # type: ignore[list-item]
    assert store.get(b"x") is None
    store = open_store.reopen(store)
    assert store.get(b"a") == b"4" and store.get("s") == "str value"
    assert len(store) == 3


# -- expiry ------------------------------------------------------------------------------------


def test_ttl_hides_the_key_after_expiry_and_across_reopen(
    store: KvStore, open_store: StoreOpener
) -> None:
    store.set("short", "v", ttl=0.2)
    store.set("long", "v", ttl=3600)
    store.set("none", "v")
    assert store.get("short") == "v"
    assert 3500 < (store.ttl("long") or 0) <= 3600
    assert store.ttl("none") is None
    with pytest.raises(KeyNotFound):
        store.ttl("absent")
    time.sleep(0.3)
    assert store.get("short") is None
    assert "short" not in store
    assert list(store.scan()) == ["long", "none"]
    assert list(store.items()) == [("long", "v"), ("none", "v")]
    with pytest.raises(KeyNotFound):
        store.remove("short")
    with pytest.raises(KeyNotFound):
        store.ttl("short")
    store = open_store.reopen(store)
    assert store.get("short") is None and store.get("long") == "v"
    assert 3500 < (store.ttl("long") or 0) <= 3600
    store.set("long", "v2")  # a set without ttl clears the expiry
    assert store.ttl("long") is None


def test_len_excludes_expired_keys(store: KvStore) -> None:
    store.set("short", "v", ttl=0.1)
    store.set("kept", "v")
    assert len(store) == 2
    time.sleep(0.2)
    assert len(store) == 1


def test_expired_key_can_be_set_again(store: KvStore) -> None:
    store.set("k", "old", ttl=0.05)
    time.sleep(0.1)
    assert store.expire("k", 10) is False
    store.set("k", b"new")
    assert store.get("k") == b"new" and store.ttl("k") is None
    batch = WriteBatch()
    batch.set("gone", "v", ttl=0.05)
    store.write(batch)
    time.sleep(0.1)
    again = WriteBatch()
    again.remove("gone", missing_ok=True)
    again.set("gone", "back")
    store.write(again)
    assert store.get("gone") == "back"


def test_expire_and_persist(store: KvStore, open_store: StoreOpener) -> None:
    store.set("k", "value")
    store.set(b"bin", b"\x00")
    assert store.expire("k", 3600) is True
    assert store.get("k") == "value" and 3500 < (store.ttl("k") or 0) <= 3600
    assert store.expire("k", None) is True
    assert store.ttl("k") is None and store.get("k") == "value"
    assert store.expire("absent", 10) is False and store.get("absent") is None
    assert store.expire(b"bin", 0.1) is True
    time.sleep(0.2)
    assert store.get(b"bin") is None
    assert store.expire(b"bin", 10) is False
    store = open_store.reopen(store)
    assert store.get("k") == "value" and store.ttl("k") is None
    assert list(store.scan()) == ["k"]


@pytest.mark.parametrize("ttl", [0, -1, -0.5])
def test_a_ttl_must_be_positive(store: KvStore, ttl: float) -> None:
    store.set("k", "v")
    with pytest.raises(ValueError, match="ttl"):
        store.set("j", "v", ttl=ttl)
    with pytest.raises(ValueError, match="ttl"):
        store.expire("k", ttl)
    assert store.get("j") is None and store.ttl("k") is None


def test_a_huge_or_infinite_ttl_is_a_value_error(store: KvStore) -> None:
    store.set("k", "v")
    for ttl in (1e20, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="ttl"):
            store.set("j", "v", ttl=ttl)
        with pytest.raises(ValueError, match="ttl"):
            store.expire("k", ttl)
    assert store.get("j") is None and store.ttl("k") is None
    store.set("j", "v", ttl=1e9)  # about 30 years: fine
    assert store.get("j") == "v"


def test_compact_keeps_values_and_drops_expired(store: KvStore, open_store: StoreOpener) -> None:
    store.set("gone", "x" * 1000, ttl=0.05)
    for i in range(50):
        store.set("kept", f"y{i}")
    store.set("other", b"z")
    store.remove("other")
    time.sleep(0.1)
    store.compact()
    assert store.get("gone") is None and store.get("kept") == "y49" and len(store) == 1
    store.sync()
    store = open_store.reopen(store)
    assert store.get("gone") is None and store.get("kept") == "y49"
    assert list(store.scan()) == ["kept"]


# -- clear, close, reopen ----------------------------------------------------------------------


def test_clear_removes_everything(store: KvStore, open_store: StoreOpener) -> None:
    store.update({b"a": b"1", b"b": b"2"})
    store.set("c", "3", ttl=60)
    store.clear()
    assert len(store) == 0 and list(store.scan()) == []
    store.clear()  # of an empty store
    store = open_store.reopen(store)
    assert len(store) == 0
    store.set("d", "4")
    assert list(store.scan()) == ["d"]


def test_close_is_idempotent_and_later_use_raises(open_store: StoreOpener) -> None:
    s = open_store()
    s.set("a", "1")
    s.close()
    s.close()
    batch = WriteBatch()
    batch.set("b", "2")
    uses = {
        "get": lambda: s.get("a"),
        "set": lambda: s.set("a", "2"),
        "remove": lambda: s.remove("a"),
        "len": lambda: len(s),
        "scan": lambda: list(s.scan()),
        "items": lambda: list(s.items()),
        "write": lambda: s.write(batch),
        "ttl": lambda: s.ttl("a"),
        "expire": lambda: s.expire("a", 10),
        "sync": s.sync,
        "compact": s.compact,
        "stats": s.stats,
        "clear": s.clear,
    }
    for name, use in uses.items():
        with pytest.raises(StoreClosedError):
            use()
            pytest.fail(f"{name} after close did not raise")


def test_context_manager_closes(open_store: StoreOpener) -> None:
    with open_store() as s:
        s.set("a", "1")
    with pytest.raises(StoreClosedError):
        s.get("a")


def test_data_survives_close_and_reopen(engine: EngineSpec, open_store: StoreOpener) -> None:
    if not engine.persistent:
        pytest.skip(f"{engine.name} keeps nothing across a reopen")
    expected: dict[str | bytes, str | bytes] = {}
    s = open_store()
    for i in range(300):
        key: str | bytes = f"s{i}" if i % 2 else b"b%d" % i
        value: str | bytes = f"v{i}" * (i % 7) if i % 3 else b"\x00%d" % i
        s.set(key, value)
        expected[key] = value
    for i in range(0, 300, 5):
        key = f"s{i}" if i % 2 else b"b%d" % i
        s.remove(key)
        del expected[key]
    s.set("ttl", "v", ttl=3600)
    s.close()
    for _ in range(2):
        s = open_store()
        assert len(s) == len(expected) + 1
        assert {k: s.get(k) for k in expected} == expected
        assert [raw(k) for k in s.scan()] == sorted([raw(k) for k in expected] + [b"ttl"])
        types = {raw(k): type(k) for k in expected}
        assert all(type(k) is types[raw(k)] for k in s.scan() if k != "ttl")
        assert 3500 < (s.ttl("ttl") or 0) <= 3600
        s.close()


def test_stats_describe_the_store(store: KvStore) -> None:
    store.set("a", "1")
    stats = store.stats()
    assert isinstance(stats, dict) and stats
    assert all(isinstance(k, str) and isinstance(v, int | float | str) for k, v in stats.items())


# -- on-disk engines ---------------------------------------------------------------------------


def test_directory_is_created_0700_and_holds_only_kvs_files(
    engine: EngineSpec, open_store: StoreOpener, tmp_path: Path
) -> None:
    if not engine.on_disk:
        pytest.skip(f"{engine.name} has no directory")
    path = tmp_path / "a" / "b"
    path.parent.mkdir()
    (path.parent / "unrelated").write_text("x")
    with open_store(path) as s:
        s.set("a", "1")
        (path / "notes.txt").write_text("mine")
        s.set("b", "2")
        s.compact()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    names = sorted(p.name for p in path.iterdir())
    assert names[-1] == "notes.txt", names
    assert all(n.startswith("kvs") for n in names[:-1]), names
    assert (path / "notes.txt").read_text() == "mine"


# -- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["always", "everysec", "no"])
def test_every_sync_policy_stores_and_reopens(open_store: StoreOpener, policy: str) -> None:
    s = open_store(sync=policy)
    s.set("k", policy)
    s.sync()
    s.set("j", policy)
    s = open_store.reopen(s, sync=policy)
    assert (s.get("k"), s.get("j")) == (policy, policy)


def test_bad_options_are_refused(open_store: StoreOpener, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sync"):
        open_store(tmp_path / "x", sync="sometimes")
    with pytest.raises(TypeError):
        open_store(tmp_path / "y", no_such_option=1)


# -- threads -----------------------------------------------------------------------------------


def test_threads_writing_distinct_keys(store: KvStore) -> None:
    threads_n, per_thread = 8, 150
    errors: list[str] = []
    start = threading.Barrier(threads_n + 2)  # the writers, the reader and this thread
    stop_reader = threading.Event()

    def writer(t: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                key = f"t{t}:{i:04d}"
                store.set(key, f"{t}-{i}")
                if i % 10 == 9:
                    store.remove(f"t{t}:{i - 1:04d}")
                if i % 25 == 0:
                    with store.batch() as batch:
                        batch.set(f"t{t}:batch{i}", "b")
                        batch.set(f"t{t}:batch{i}:2", b"b")
                assert store.get(key) == f"{t}-{i}"
        except BaseException:
            errors.append(traceback.format_exc())

    def reader() -> None:
        try:
            start.wait()
            while not stop_reader.is_set():
                store.get("t0:0000")
                len(store)
        except BaseException:
            errors.append(traceback.format_exc())

    writers = [threading.Thread(target=writer, args=(t,)) for t in range(threads_n)]
    others = [threading.Thread(target=reader)]
    for thread in writers + others:
        thread.start()
    start.wait()
    for thread in writers:
        thread.join(60)
    stop_reader.set()
    for thread in others:
        thread.join(60)
    assert not errors, "\n".join(errors[:3])
    expected: dict[str, str | bytes] = {}
    for t in range(threads_n):
        for i in range(per_thread):
            if i % 10 != 8:
                expected[f"t{t}:{i:04d}"] = f"{t}-{i}"
        for i in range(0, per_thread, 25):
            expected[f"t{t}:batch{i}"] = "b"
            expected[f"t{t}:batch{i}:2"] = b"b"
    assert len(store) == len(expected)
    assert dict(store.items()) == expected


def test_scan_while_other_threads_write(store: KvStore) -> None:
    """A scan is a snapshot however threads are scheduled. To make a thread switch happen
    in the middle of a scan rather than by luck, a gc callback pauses the scanning thread
    whenever one of its allocations starts a collection (a collection may run finalizers and
    weakref callbacks: Python code, during which the interpreter switches threads anyway)."""
    base = [b"base%05d" % i for i in range(3000)]
    store.update([(key, b"v") for key in base])
    stop = threading.Event()
    errors: list[str] = []
    scanner = threading.current_thread()

    def writer() -> None:
        try:
            i = 0
            while not stop.is_set():
                # A key comes and goes: the store changes all the time but does not grow.
                store.set(b"new%03d" % (i % 100), b"v")
                store.remove(b"new%03d" % (i % 100))
                i += 1
        except BaseException:
            errors.append(traceback.format_exc())

    def pause(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and threading.current_thread() is scanner:
            time.sleep(0.0005)

    thread = threading.Thread(target=writer)
    thread.start()
    gc.callbacks.append(pause)
    try:
        for _ in range(5):
            keys = [raw(k) for k in store.scan()]
            assert keys == sorted(keys)
            assert [k for k in keys if k.startswith(b"base")] == base
            assert len(store) >= len(base)
    finally:
        gc.callbacks.remove(pause)
        stop.set()
        thread.join(60)
    assert not errors, "\n".join(errors[:3])
