"""Real ``redis-server`` processes for the redis engine's tests: one server, a kvs-server, and
clusters (3 masters; or 3 masters with a replica each), on free loopback ports in temp dirs.

The process classes live in ``kvs.localservers`` (the benchmarks start the same servers) and
are re-exported here. Every process is started by ``Popen`` and stopped (SIGKILL: nothing to
save) by ``stop``; the fixtures in the test modules call ``stop`` in a ``finally``. Without
``redis-server`` and ``redis-cli`` on PATH, ``require_redis()`` skips the test.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from kvs import KvStore

# The processes themselves, shared with bench/bench_engines.py; the test modules import them
# from here.
from kvs.localservers import (
    Cluster,  # noqa: F401  (for test_redis_cluster.py)
    KvsServerProcess,
    Process,
    RedisServer,
    free_port,
)


def require_redis() -> None:
    """Skip the calling test unless redis-server and redis-cli are installed."""
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install redis-server)")


def slow_enabled(config: pytest.Config) -> bool:
    """Slow tests run with ``KVS_SLOW=1`` in the environment, or when ``-m`` names them."""
    return os.environ.get("KVS_SLOW") == "1" or "slow" in (config.option.markexpr or "")


# -- the shared contract suite (tests/engines/test_contract.py, test_model.py) --------------
#
# conftest.py imports the fixtures below and appends ``EngineSpec(**spec)`` for each entry of
# ``REDIS_CONTRACT_ENGINES`` to ``CONTRACT_ENGINES`` (its documented hook).

_CONTRACT_SKIPS = {
    "test_every_sync_policy_stores_and_reopens": (
        "no sync option: durability is the server's (appendfsync)"
    ),
    "test_bad_options_are_refused": "no sync option to refuse (see test_redis.py)",
}
_REDIS_SKIPS = {
    **_CONTRACT_SKIPS,
    # kvs-server's DBSIZE is exact; Redis's counts expired keys until it reclaims them.
    "test_len_excludes_expired_keys": "len is DBSIZE, which counts expired keys for a while",
}

#: Keyword arguments of the ``EngineSpec``s of the redis engine: on a redis-server, and on a
#: kvs-server. A "path" names a database; the data outlives a close, so both are persistent.
REDIS_CONTRACT_ENGINES: list[dict[str, Any]] = [
    {
        "name": "redis",
        "on_disk": False,
        "opener_fixture": "redis_contract_opener",
        "skips": _REDIS_SKIPS,
    },
    {
        "name": "redis-kvs-server",
        "on_disk": False,
        "opener_fixture": "kvs_server_contract_opener",
        "skips": _CONTRACT_SKIPS,
    },
]


@pytest.fixture(scope="session")
def contract_redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    require_redis()
    server = RedisServer(tmp_path_factory.mktemp("contract-redis"), free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def contract_kvs_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[KvsServerProcess]:
    server = KvsServerProcess(tmp_path_factory.mktemp("contract-kvs-server"), free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()


class _DatabaseOpener:
    """``opener(path, options)`` for the contract suite: each path not seen before in this
    test takes the next of the server's ``databases`` (round robin) and empties it."""

    def __init__(self, server: Process, databases: int) -> None:
        self.server = server
        self.databases = databases
        self.assigned: dict[str, int] = {}
        self.opened = 0

    def __call__(self, path: str, options: dict[str, Any]) -> KvStore:
        db = self.assigned.get(path)
        if db is None:
            db = self.opened % self.databases
            self.opened += 1
            self.assigned = {p: d for p, d in self.assigned.items() if d != db}
            self.assigned[path] = db
            with self.server.client(db=db) as client:
                client.flushdb()
        return KvStore.open(f"redis://{self.server.addr}/{db}", engine="redis", **options)


@pytest.fixture
def redis_contract_opener(contract_redis_server: RedisServer) -> _DatabaseOpener:
    return _DatabaseOpener(contract_redis_server, databases=16)


@pytest.fixture
def kvs_server_contract_opener(contract_kvs_server: KvsServerProcess) -> _DatabaseOpener:
    """kvs-server has one database: a new path empties it (fine for the suite, which opens a
    second path only after it is done with the first)."""
    return _DatabaseOpener(contract_kvs_server, databases=1)
