"""The engine registry: every storage engine ``KvStore.open`` can choose, by name.

    KvStore.open("data")                        # the default log engine, "kvs"
    KvStore.open("data", engine="sqlite")       # any registered engine
    register("mine", factory)                   # factory(path, **options) -> KvStore

Built in: ``kvs`` (the log engine, ``kvs.log``), ``sqlite`` (``kvs.engines.sqlite``: Python's
sqlite3, one table in WAL mode) and ``memory`` (``kvs.engines.memory``: a dict, nothing on
disk). Engines are imported only when first opened, so an engine whose library is missing costs
nothing until someone asks for it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from kvs.errors import KvsError
from kvs.store import KvStore

EngineFactory = Callable[..., KvStore]

#: name -> "module:attribute" of a factory, imported on first use.
_BUILTIN: dict[str, str] = {
    "kvs": "kvs.log.engine:LogStore",
    "memory": "kvs.engines.memory:MemoryStore",
    "sqlite": "kvs.engines.sqlite:SqliteStore",
    "redis": "kvs.engines.redis:RedisStore",
}
_registry: dict[str, EngineFactory] = {}

DEFAULT_ENGINE = "kvs"


class UnknownEngineError(KvsError, ValueError):
    """No engine of that name is registered."""


def register(name: str, factory: EngineFactory | str) -> None:
    """Make ``factory(path, **options)`` openable as ``engine=name``. A string names it as
    ``"module:attribute"`` and defers the import to the first open."""
    if isinstance(factory, str):
        _BUILTIN[name] = factory
        _registry.pop(name, None)
    else:
        _registry[name] = factory


def available() -> list[str]:
    """Every engine name, registered or built in, sorted."""
    return sorted(set(_BUILTIN) | set(_registry))


def factory(name: str) -> EngineFactory:
    found = _registry.get(name)
    if found is not None:
        return found
    target = _BUILTIN.get(name)
    if target is None:
        raise UnknownEngineError(f"unknown engine {name!r}; available: {', '.join(available())}")
    module_name, _, attribute = target.partition(":")
    loaded: EngineFactory = getattr(importlib.import_module(module_name), attribute)
    _registry[name] = loaded
    return loaded


def open_engine(name: str, path: str, **options: Any) -> KvStore:
    return factory(name)(path, **options)
