"""Fixtures shared by the engine tests: one behaviour suite, run once per engine.

Fixtures
--------
``engine_name``
    The engine under test. A test that takes it, directly or through the fixtures below, runs
    once per engine in ``CONTRACT_ENGINES`` (ids ``[kvs]``, ``[sqlite]``, ...; select one with
    ``-k sqlite``).
``engine``
    Its ``EngineSpec``: what the engine promises beyond the common contract.
``open_store``
    ``open_store(path=None, **options) -> KvStore``: open (creating) a store of that engine.
    ``path`` defaults to one fresh path per test, so a second call reopens the first store;
    ``options`` are added to the spec's ``options``. ``open_store.reopen(store)`` closes a
    store and opens its path again (for an engine that keeps nothing, ``persistent=False``,
    it returns the same store untouched). Every store opened is closed at teardown.
``store``
    ``open_store()``.

Adding an engine to the suite (the hook)
----------------------------------------
Append an ``EngineSpec`` to ``CONTRACT_ENGINES``. The list is read when the test modules of
this directory are collected (``pytest_generate_tests`` below), not when this file is imported,
so an append anywhere that runs before that counts: in this file, or in any plugin or conftest
loaded earlier. Nothing depends on the environment. For an engine that needs a running service::

    CONTRACT_ENGINES.append(
        EngineSpec("redis", on_disk=False, opener_fixture="redis_contract_opener",
                   skips={"test_len_excludes_expired_keys": "DBSIZE counts expired keys"})
    )

``opener_fixture`` names a fixture (define it, or import it, into this module) that returns an
``Opener``: ``opener(path, options) -> KvStore``, which must give an *empty* store for a path
it has not seen in this test (map the path to a database or key prefix, or flush on first use).
``skips`` maps a test's name to the reason the engine is exempt from it; ``xfails`` to a known
bug of the engine that the test exposes (the test runs, and is reported as XFAIL/XPASS).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kvs import KvStore

Opener = Callable[[str, dict[str, Any]], KvStore]


@dataclass(frozen=True)
class EngineSpec:
    """An engine as the contract suite runs it.

    ``persistent``: a store reopened at the same path has the data (False: ``reopen`` is a
    no-op and the persistence tests are skipped). ``on_disk``: the path is a directory the
    engine owns (mode 0700, ``kvs.lock``, only ``kvs*`` files). ``options``: given to every
    open (``sync="no"`` keeps the suite fast; close still syncs). ``model_options``: added for
    the state-machine test only.
    """

    name: str
    persistent: bool = True
    on_disk: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)
    model_options: Mapping[str, Any] = field(default_factory=dict)
    opener_fixture: str | None = None
    skips: Mapping[str, str] = field(default_factory=dict)
    xfails: Mapping[str, str] = field(default_factory=dict)


#: Every engine the contract suite runs against; see "Adding an engine" above.
CONTRACT_ENGINES: list[EngineSpec] = [
    EngineSpec(
        "kvs",
        options={"sync": "no"},
        # Small files and no background compaction: rotation and merges happen in a few steps.
        model_options={"max_file_size": 4096, "auto_compact": False},
    ),
    EngineSpec("sqlite", options={"sync": "no"}),
    EngineSpec("memory", persistent=False, on_disk=False),
]


def add_contract_engine(spec: EngineSpec) -> None:
    """Append ``spec`` (replacing an engine of the same name) before collection."""
    CONTRACT_ENGINES[:] = [s for s in CONTRACT_ENGINES if s.name != spec.name] + [spec]


def spec_of(name: str) -> EngineSpec:
    for spec in CONTRACT_ENGINES:
        if spec.name == name:
            return spec
    raise LookupError(f"no engine {name!r} in CONTRACT_ENGINES")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine_name" in metafunc.fixturenames:
        names = [spec.name for spec in CONTRACT_ENGINES]
        metafunc.parametrize("engine_name", names, ids=names, indirect=True)


@pytest.fixture
def engine_name(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    spec = spec_of(name)
    test = getattr(request.node, "originalname", request.node.name)
    if test in spec.skips:
        pytest.skip(f"{name}: {spec.skips[test]}")
    if test in spec.xfails:
        # Not strict: a race may not show in every run.
        request.node.add_marker(pytest.mark.xfail(reason=f"{name}: {spec.xfails[test]}"))
    return name


@pytest.fixture
def engine(engine_name: str) -> EngineSpec:
    return spec_of(engine_name)


def _registry_opener(name: str) -> Opener:
    def open_(path: str, options: dict[str, Any]) -> KvStore:
        return KvStore.open(path, engine=name, **options)

    return open_


class StoreOpener:
    """The ``open_store`` fixture's value; see the module docstring."""

    def __init__(self, spec: EngineSpec, opener: Opener, default_path: Path) -> None:
        self.spec = spec
        self._opener = opener
        self.default_path = str(default_path)
        self._paths: dict[int, str] = {}
        self.opened: list[KvStore] = []

    def __call__(self, path: str | os.PathLike[str] | None = None, **options: Any) -> KvStore:
        where = self.default_path if path is None else os.fspath(path)
        store = self._opener(where, {**self.spec.options, **options})
        self._paths[id(store)] = where
        self.opened.append(store)
        return store

    def path_of(self, store: KvStore) -> str:
        return self._paths[id(store)]

    def reopen(self, store: KvStore, **options: Any) -> KvStore:
        if not self.spec.persistent:
            return store
        store.close()
        return self(self.path_of(store), **options)

    def close_all(self) -> None:
        for store in self.opened:
            with contextlib.suppress(Exception):
                store.close()
        self.opened.clear()


@pytest.fixture
def open_store(
    request: pytest.FixtureRequest, engine: EngineSpec, tmp_path: Path
) -> Iterator[StoreOpener]:
    if engine.opener_fixture is not None:
        opener: Opener = request.getfixturevalue(engine.opener_fixture)
    else:
        opener = _registry_opener(engine.name)
    stores = StoreOpener(engine, opener, tmp_path / "db")
    try:
        yield stores
    finally:
        stores.close_all()


@pytest.fixture
def store(open_store: StoreOpener) -> KvStore:
    return open_store()


# -- the redis engine (tests/engines/redis_fixtures.py): on a redis-server and a kvs-server;
# skipped where redis-server is not installed.
from .redis_fixtures import (  # noqa: E402
    REDIS_CONTRACT_ENGINES,
    contract_kvs_server,  # noqa: F401
    contract_redis_server,  # noqa: F401
    kvs_server_contract_opener,  # noqa: F401
    redis_contract_opener,  # noqa: F401
)

for _spec in REDIS_CONTRACT_ENGINES:
    add_contract_engine(EngineSpec(**_spec))
