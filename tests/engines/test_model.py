"""The Hypothesis state machine of ``tests/test_model.py``, run against every engine.

Random set/get/remove/batch/update/expire/clear/compact/close/reopen, compared with a dict that
also remembers the type each key was last set with and whether it has an expiry. Expiries are
long (an hour) so that nothing expires during a run: what is checked is their bookkeeping
through overwrites, batches, compactions and reopens. For an engine that keeps nothing across a
reopen (``persistent=False``: memory) ``reopen`` is a no-op and ``close`` is never chosen.
"""

from __future__ import annotations

import itertools

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from soakmode import soak_scale

from kvs import KeyNotFound, KvStore, WriteBatch

from .conftest import EngineSpec, StoreOpener

keys = st.one_of(
    st.sampled_from([b"a", b"b", b"c", b"", b"\x00\r\n", "a", "\xff"]),
    st.binary(max_size=12),
    st.text(max_size=6),
)
values = st.one_of(st.binary(max_size=300), st.text(max_size=50))
ttls = st.one_of(st.none(), st.just(3600.0))
HOUR = 3600

SETTINGS = settings(max_examples=soak_scale(100, 2000), stateful_step_count=50, deadline=None)


def raw(key: str | bytes) -> bytes:
    return key.encode() if isinstance(key, str) else key


class EngineModel(RuleBasedStateMachine):
    """Set ``spec`` and ``opener`` on a subclass (``machine_for``)."""

    spec: EngineSpec
    opener: StoreOpener
    _paths = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        # A fresh path per example: an opener gives an empty store for a path it has not seen.
        self.path = f"{self.opener.default_path}-{next(self._paths)}"
        self.options = dict(self.spec.model_options)
        self.store: KvStore | None = self.opener(self.path, **self.options)
        self.model: dict[bytes, str | bytes] = {}
        self.key_type: dict[bytes, type] = {}  # str or bytes: how the key was last set
        self.expiring: set[bytes] = set()

    @property
    def open_store(self) -> KvStore:
        assert self.store is not None
        return self.store

    def _set(self, key: str | bytes, value: str | bytes, ttl: float | None) -> None:
        self.model[raw(key)] = value
        self.key_type[raw(key)] = type(key)
        if ttl is None:
            self.expiring.discard(raw(key))
        else:
            self.expiring.add(raw(key))

    def _drop(self, key: bytes) -> None:
        del self.model[key]
        self.expiring.discard(key)

    @precondition(lambda self: self.store is not None)
    @rule(key=keys, value=values, ttl=ttls)
    def set(self, key: str | bytes, value: str | bytes, ttl: float | None) -> None:
        self.open_store.set(key, value, ttl=ttl)
        self._set(key, value, ttl)

    @precondition(lambda self: self.store is not None)
    @rule(key=keys)
    def get(self, key: str | bytes) -> None:
        got = self.open_store.get(key)
        expected = self.model.get(raw(key))
        assert got == expected and type(got) is type(expected)

    @precondition(lambda self: self.store is not None)
    @rule(key=keys)
    def ttl(self, key: str | bytes) -> None:
        if raw(key) not in self.model:
            try:
                self.open_store.ttl(key)
            except KeyNotFound:
                return
            raise AssertionError("ttl of an absent key did not raise")
        left = self.open_store.ttl(key)
        if raw(key) in self.expiring:
            assert left is not None and HOUR - 600 < left <= HOUR
        else:
            assert left is None

    @precondition(lambda self: self.store is not None)
    @rule(key=keys, ttl=ttls)
    def expire(self, key: str | bytes, ttl: float | None) -> None:
        present = raw(key) in self.model
        assert self.open_store.expire(key, ttl) is present
        if present and ttl is None:
            self.expiring.discard(raw(key))
        elif present:
            self.expiring.add(raw(key))

    @precondition(lambda self: self.store is not None)
    @rule(key=keys)
    def remove(self, key: str | bytes) -> None:
        if raw(key) in self.model:
            self.open_store.remove(key)
            self._drop(raw(key))
        else:
            try:
                self.open_store.remove(key)
            except KeyNotFound:
                pass
            else:
                raise AssertionError("remove of an absent key did not raise")

    @precondition(lambda self: self.store is not None)
    @rule(
        ops=st.lists(
            st.tuples(st.booleans(), keys, values, st.booleans(), ttls), min_size=1, max_size=8
        )
    )
    def batch(self, ops: list[tuple[bool, str | bytes, str | bytes, bool, float | None]]) -> None:
        batch = WriteBatch()
        before = (dict(self.model), dict(self.key_type), set(self.expiring))
        fails = False
        for is_set, key, value, missing_ok, ttl in ops:
            if is_set:
                batch.set(key, value, ttl=ttl)
                self._set(key, value, ttl)
            else:
                batch.remove(key, missing_ok=missing_ok)
                if raw(key) in self.model:
                    self._drop(raw(key))
                elif not missing_ok:
                    fails = True
        try:
            self.open_store.write(batch)
        except KeyNotFound:
            assert fails
            self.model, self.key_type, self.expiring = before  # nothing was applied
        else:
            assert not fails

    @precondition(lambda self: self.store is not None)
    @rule(pairs=st.lists(st.tuples(st.binary(max_size=8), st.binary(max_size=64)), max_size=8))
    def update(self, pairs: list[tuple[bytes, bytes]]) -> None:
        self.open_store.update(pairs)
        for key, value in pairs:
            self._set(key, value, None)

    # Not on a small store: every rule is about as likely, and a clear undoes the build-up.
    @precondition(lambda self: self.store is not None and len(self.model) >= 5)
    @rule()
    def clear(self) -> None:
        self.open_store.clear()
        self.model.clear()
        self.expiring.clear()

    @precondition(lambda self: self.store is not None)
    @rule()
    def compact(self) -> None:
        self.open_store.compact()

    @precondition(lambda self: self.store is not None and self.spec.persistent)
    @rule()
    def close(self) -> None:
        self.open_store.close()
        self.store = None

    @rule()
    def reopen(self) -> None:
        if not self.spec.persistent:
            return  # nothing would survive: the model would have to forget everything
        if self.store is not None:
            self.store.close()
        self.store = self.opener(self.path, **self.options)

    @invariant()
    def contents_match(self) -> None:
        if self.store is None:
            return
        assert len(self.store) == len(self.model)
        expected = [
            key.decode() if self.key_type[key] is str else key for key in sorted(self.model)
        ]
        assert list(self.store.scan()) == expected
        for key in self.model:  # which keys have an expiry: checked here, not by chance
            assert (self.store.ttl(key) is not None) == (key in self.expiring), key

    def teardown(self) -> None:
        if self.store is not None:
            self.store.close()


def test_model(engine: EngineSpec, open_store: StoreOpener) -> None:
    machine = type(
        f"EngineModel_{engine.name}", (EngineModel,), {"spec": engine, "opener": open_store}
    )
    run_state_machine_as_test(machine, settings=SETTINGS)
