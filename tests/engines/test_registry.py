"""The engine registry: names, lookup, errors, and ``KvStore.open(path, engine=...)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kvs import KvsError, KvStore, engines
from kvs.engines import UnknownEngineError
from kvs.engines.memory import MemoryStore
from kvs.engines.sqlite import SqliteStore
from kvs.log.engine import LogStore


def test_available_lists_the_built_in_engines_sorted() -> None:
    names = engines.available()
    assert {"kvs", "memory", "sqlite"} <= set(names)
    assert names == sorted(names)
    assert engines.DEFAULT_ENGINE == "kvs"


def test_an_unknown_engine_is_an_error_that_lists_the_names(tmp_path: Path) -> None:
    with pytest.raises(UnknownEngineError) as caught:
        KvStore.open(str(tmp_path), engine="sled")
    assert isinstance(caught.value, KvsError) and isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert "'sled'" in message
    assert all(name in message for name in ("kvs", "memory", "sqlite"))
    assert list(tmp_path.iterdir()) == []  # nothing was created


@pytest.mark.parametrize(
    ("name", "cls"), [("kvs", LogStore), ("sqlite", SqliteStore), ("memory", MemoryStore)]
)
def test_open_by_name_gives_that_engine(tmp_path: Path, name: str, cls: type) -> None:
    with KvStore.open(str(tmp_path / "db"), engine=name) as store:
        assert type(store) is cls
        store.set("k", "v")
        assert store.get("k") == "v"
        assert store.stats()["engine"] == name


def test_default_engine_is_the_log_engine(tmp_path: Path) -> None:
    with KvStore.open(str(tmp_path)) as store:
        assert isinstance(store, LogStore)


def test_memory_ignores_the_path_and_keeps_nothing(tmp_path: Path) -> None:
    first = KvStore.open(str(tmp_path), engine="memory")
    second = KvStore.open(str(tmp_path), engine="memory")  # no lock: nothing is shared
    first.set("k", "v")
    assert second.get("k") is None
    first.close()
    with KvStore.open(str(tmp_path), engine="memory") as again:
        assert len(again) == 0
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError, match="no option 'max_file_size'"):
        KvStore.open(str(tmp_path), engine="memory", max_file_size=1)


def test_register_a_factory_by_object_and_by_name(tmp_path: Path) -> None:
    made: list[str] = []

    def factory(path: str, **options: Any) -> KvStore:
        made.append(path)
        return MemoryStore(path, **options)

    try:
        engines.register("test-factory", factory)
        engines.register("test-by-name", "kvs.engines.memory:MemoryStore")
        assert {"test-factory", "test-by-name"} <= set(engines.available())
        with KvStore.open(str(tmp_path), engine="test-factory", sync="no") as store:
            assert isinstance(store, MemoryStore)
        assert made == [str(tmp_path)]
        with KvStore.open(str(tmp_path), engine="test-by-name") as store:
            assert isinstance(store, MemoryStore)
    finally:
        engines._registry.pop("test-factory", None)
        engines._registry.pop("test-by-name", None)
        engines._BUILTIN.pop("test-by-name", None)
    assert "test-factory" not in engines.available()
