"""The library API of the log engine: what a user of ``KvStore`` can count on."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from kvs import KeyNotFound, KvStore, LimitError, StoreClosedError, WriteBatch


@pytest.fixture
def store(tmp_path: Path) -> KvStore:
    s = KvStore.open(str(tmp_path / "db"), sync="no")
    yield s
    s.close()


def reopen(s: KvStore, **options: object) -> KvStore:
    path = s.path  # type: ignore[attr-defined]
    s.close()
    return KvStore.open(path, sync="no", **options)


def test_get_stored_value_survives_reopen(store: KvStore) -> None:
    store.set("key1", "value1")
    store.set("key2", "value2")
    assert store.get("key1") == "value1"
    store = reopen(store)
    assert store.get("key1") == "value1"
    assert store.get("key2") == "value2"
    store.close()


def test_overwrite_value(store: KvStore) -> None:
    store.set("key1", "value1")
    store.set("key1", "value2")
    assert store.get("key1") == "value2"
    store = reopen(store)
    assert store.get("key1") == "value2"
    store.set("key1", "value3")
    assert store.get("key1") == "value3"
    store.close()


def test_missing_key_gets_none_and_remove_raises_key_not_found(store: KvStore) -> None:
    store.set("key1", "value1")
    assert store.get("key2") is None
    with pytest.raises(KeyNotFound) as caught:
        store.remove("key2")
    assert isinstance(caught.value, KeyError)
    assert str(caught.value) == "Key not found"


def test_remove_key(store: KvStore) -> None:
    store.set("key1", "value1")
    store.remove("key1")
    assert store.get("key1") is None
    store = reopen(store)
    assert store.get("key1") is None
    with pytest.raises(KeyNotFound):
        store.remove("key1")
    store.close()


def test_open_creates_directory_with_mode_0700(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b"
    with KvStore.open(str(path)):
        pass
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700


def test_values_keep_their_type_and_bytes_are_binary_safe(store: KvStore) -> None:
    binary = bytes(range(256)) + b"\r\n\x00"
    store.set(b"\x00\r\n", binary)
    store.set("text", "héllo ✓")
    store.set("empty", "")
    store.set(b"", b"empty key")
    assert store.get(b"\x00\r\n") == binary
    assert store.get("text") == "héllo ✓"
    assert store.get("empty") == ""
    assert store.get(b"") == b"empty key"
    store = reopen(store)
    assert store.get(b"\x00\r\n") == binary
    assert store.get("text") == "héllo ✓"
    assert store.get("empty") == ""
    store.close()


def test_str_and_bytes_name_the_same_key(store: KvStore) -> None:
    store.set("k", "v")
    assert store.get(b"k") == "v"
    store.set(b"k", b"w")
    assert store.get("k") == b"w"
    assert list(store) == [b"k"]
    store.set("k", "x")
    assert list(store) == ["k"]


def test_other_types_are_refused(store: KvStore) -> None:
    for bad in (1, 1.5, None, True, ["x"]):
        with pytest.raises(TypeError, match="convert it first"):
            store.set(bad, "v")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            store.set("k", bad)  # type: ignore[arg-type]
    assert store.get("k") is None
    store.set(bytearray(b"ba"), memoryview(b"mv"))
    assert store.get(b"ba") == b"mv"


def test_dict_style_access(store: KvStore) -> None:
    store["a"] = "1"
    store[b"b"] = b"2"
    assert store["a"] == "1"
    assert "a" in store and b"b" in store and "zz" not in store and 5 not in store
    assert len(store) == 2
    assert sorted(store, key=lambda k: k if isinstance(k, bytes) else k.encode()) == ["a", b"b"]
    del store["a"]
    assert "a" not in store
    with pytest.raises(KeyError):
        store["a"]
    with pytest.raises(KeyNotFound):
        del store["a"]
    assert len(store) == 1


def test_prefix_scan_is_sorted_and_filtered(store: KvStore) -> None:
    for key in ["user:3", "user:1", "admin:1", "user:2", "user"]:
        store.set(key, key.upper())
    assert list(store.scan("user:")) == ["user:1", "user:2", "user:3"]
    assert list(store.items(b"admin")) == [("admin:1", "ADMIN:1")]
    assert list(store.scan()) == ["admin:1", "user", "user:1", "user:2", "user:3"]


def test_batch_applies_all_or_nothing(store: KvStore) -> None:
    store.set("old", "1")
    with store.batch() as batch:
        batch.set("a", "1")
        batch.set("b", "2")
        batch.remove("old")
    assert (store.get("a"), store.get("b"), store.get("old")) == ("1", "2", None)
    failing = WriteBatch()
    failing.set("c", "3")
    failing.remove("never-there")
    with pytest.raises(KeyNotFound):
        store.write(failing)
    assert store.get("c") is None
    tolerant = WriteBatch()
    tolerant.set("c", "3")
    tolerant.remove("never-there", missing_ok=True)
    store.write(tolerant)
    assert store.get("c") == "3"
    store = reopen(store)
    assert (store.get("a"), store.get("b"), store.get("c"), store.get("old")) == (
        "1",
        "2",
        "3",
        None,
    )
    store.close()


def test_batch_context_exiting_with_an_error_writes_nothing(store: KvStore) -> None:
    with pytest.raises(RuntimeError), store.batch() as batch:
        batch.set("a", "1")
        raise RuntimeError("boom")
    assert store.get("a") is None


def test_batch_sees_its_own_earlier_operations(store: KvStore) -> None:
    with store.batch() as batch:
        batch.set("k", "1")
        batch.remove("k")
        batch.set("j", "2")
    assert store.get("k") is None and store.get("j") == "2"


def test_update_sets_many_atomically(store: KvStore) -> None:
    store.update({b"a": b"1", b"b": b"2"})
    store.update([(b"a", b"3"), (b"a", b"4")])  # the last one wins
    store.update([("s", "str value")])
    assert store.get(b"a") == b"4" and store.get(b"b") == b"2" and store.get("s") == "str value"
    store = reopen(store)
    assert store.get(b"a") == b"4" and store.get("s") == "str value"
    assert store.stats()["stale_bytes"] > 0
    store.close()


def test_ttl_hides_the_key_after_expiry_and_across_reopen(store: KvStore) -> None:
    store.set("short", "v", ttl=0.2)
    store.set("long", "v", ttl=3600)
    store.set("none", "v")
    assert store.get("short") == "v"
    assert 3500 < (store.ttl("long") or 0) <= 3600  # type: ignore[attr-defined]
    assert store.ttl("none") is None  # type: ignore[attr-defined]
    time.sleep(0.3)
    assert store.get("short") is None
    assert "short" not in store
    assert len(store) == 2
    assert list(store.scan()) == ["long", "none"]
    with pytest.raises(KeyNotFound):
        store.remove("short")
    store = reopen(store)
    assert store.get("short") is None and store.get("long") == "v"
    store.set("long", "v2")  # a set without ttl clears the expiry
    assert store.ttl("long") is None  # type: ignore[attr-defined]
    store.close()


def test_compaction_drops_expired_records(store: KvStore) -> None:
    store.set("gone", "x" * 1000, ttl=0.05)
    store.set("kept", "y")
    time.sleep(0.1)
    store.compact()
    assert store.stats()["live_bytes"] < 1000
    store = reopen(store)
    assert store.get("gone") is None and store.get("kept") == "y"
    store.close()


def test_limits_are_enforced_at_and_past_the_boundary(tmp_path: Path) -> None:
    with KvStore.open(str(tmp_path), max_key_size=10, max_value_size=100) as s:
        s.set(b"k" * 10, b"v" * 100)
        with pytest.raises(LimitError, match="limit of 10"):
            s.set(b"k" * 11, b"v")
        with pytest.raises(LimitError, match="limit of 100"):
            s.set(b"k", b"v" * 101)
        with pytest.raises(LimitError):
            s.update([(b"a", b"v"), (b"b", b"v" * 101)])
        assert s.get(b"a") is None and s.get(b"k" * 10) == b"v" * 100
        assert len(s) == 1


def test_value_larger_than_a_data_file_gets_a_file_of_its_own(tmp_path: Path) -> None:
    with KvStore.open(str(tmp_path), max_file_size=4096) as s:
        s.set("small", "1")
        s.set("big", "x" * 100_000)
        s.set("after", "2")
        assert s.get("big") == "x" * 100_000
    with KvStore.open(str(tmp_path), max_file_size=4096) as s:
        assert (s.get("small"), s.get("after")) == ("1", "2")
        assert s.get("big") == "x" * 100_000


def test_rotation_and_compaction_keep_every_value(tmp_path: Path) -> None:
    path = str(tmp_path)
    expected: dict[bytes, bytes] = {}
    with KvStore.open(path, max_file_size=8192, sync="no") as s:
        for i in range(3000):
            key = b"k%d" % (i % 250)
            expected[key] = b"v%d" % i
            s.set(key, expected[key])
        for i in range(0, 250, 7):
            s.remove(b"k%d" % i)
            del expected[b"k%d" % i]
        files_before = s.stats()["data_files"]
        s.compact()
        assert s.stats()["data_files"] < files_before
        assert s.stats()["stale_bytes"] == 0
        assert {k: s.get(k) for k in expected} == expected
    with KvStore.open(path, max_file_size=8192) as s:
        assert dict(s.items()) == expected
        assert len(s) == len(expected)


def test_automatic_compaction_reclaims_space(tmp_path: Path) -> None:
    """The course's compaction test: overwriting the same keys must not grow the store."""
    path = str(tmp_path)
    with KvStore.open(
        path, max_file_size=64 << 10, compaction_min_stale_bytes=256 << 10, sync="no"
    ) as s:
        for round_ in range(200):
            for key_id in range(100):
                s.set(f"key{key_id}", f"{round_}")
        deadline = time.monotonic() + 30
        while s.stats()["stale_bytes"] > 1 << 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.stats()["stale_bytes"] <= 1 << 20
    total = sum(f.stat().st_size for f in tmp_path.iterdir())
    assert total < 2 << 20  # 20,000 writes of ~30 bytes: without compaction ~600 KiB live
    with KvStore.open(path) as s:
        assert all(s.get(f"key{key_id}") == "199" for key_id in range(100))


def test_close_is_idempotent_and_later_use_raises(tmp_path: Path) -> None:
    s = KvStore.open(str(tmp_path))
    s.set("a", "1")
    s.close()
    s.close()
    with pytest.raises(StoreClosedError):
        s.get("a")
    with pytest.raises(StoreClosedError):
        s.set("a", "2")
    with pytest.raises(StoreClosedError):
        len(s)


def test_only_kvs_files_are_created_and_foreign_files_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with KvStore.open(str(tmp_path)) as s:
        s.set("a", "1")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[-1] == "notes.txt"
    assert all(n.startswith("kvs") for n in names[:-1])
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_reopen_does_not_create_a_file_per_open(tmp_path: Path) -> None:
    for i in range(20):
        with KvStore.open(str(tmp_path)) as s:
            s.set(f"k{i}", "v")
    assert len(list(tmp_path.glob("kvs-*.data"))) == 1


def test_all_sync_policies_store_and_reopen(tmp_path: Path) -> None:
    for policy in ("always", "everysec", "no"):
        path = str(tmp_path / policy)
        with KvStore.open(path, sync=policy) as s:
            s.set("k", policy)
        with KvStore.open(path, sync=policy) as s:
            assert s.get("k") == policy
    with pytest.raises(ValueError, match="sync"):
        KvStore.open(str(tmp_path / "x"), sync="sometimes")


def test_expire_and_persist_rewrite_only_the_expiry(store: KvStore) -> None:
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
    store = reopen(store)
    assert store.get("k") == "value" and store.ttl("k") is None
    assert list(store.scan()) == ["k"]
    store.close()


def test_clear_removes_everything_atomically(store: KvStore) -> None:
    store.update({b"a": b"1", b"b": b"2"})
    store.set("c", "3", ttl=60)
    store.clear()
    assert len(store) == 0 and list(store.scan()) == []
    store = reopen(store)
    assert len(store) == 0
    store.set("d", "4")
    assert list(store.scan()) == ["d"]
    store.close()
