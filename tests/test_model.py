"""A Hypothesis state machine: random set/get/rm/batch/compact/close/reopen against a dict."""

from __future__ import annotations

import shutil
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from soakmode import soak_scale

from kvs import KeyNotFound, KvStore, WriteBatch

keys = st.one_of(
    st.sampled_from([b"a", b"b", b"c", b"", b"\x00\r\n"]),
    st.binary(max_size=12),
    st.text(max_size=6),
)
values = st.one_of(st.binary(max_size=300), st.text(max_size=50))


def raw(key: str | bytes) -> bytes:
    return key.encode() if isinstance(key, str) else key


class StoreModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="kvs-model-")
        self.options = {"max_file_size": 4096, "sync": "no", "auto_compact": False}
        self.store: KvStore | None = KvStore.open(self.dir, **self.options)
        self.model: dict[bytes, str | bytes] = {}

    @property
    def open_store(self) -> KvStore:
        assert self.store is not None
        return self.store

    @precondition(lambda self: self.store is not None)
    @rule(key=keys, value=values)
    def set(self, key: str | bytes, value: str | bytes) -> None:
        self.open_store.set(key, value)
        self.model[raw(key)] = value

    @precondition(lambda self: self.store is not None)
    @rule(key=keys)
    def get(self, key: str | bytes) -> None:
        assert self.open_store.get(key) == self.model.get(raw(key))

    @precondition(lambda self: self.store is not None)
    @rule(key=keys)
    def remove(self, key: str | bytes) -> None:
        if raw(key) in self.model:
            self.open_store.remove(key)
            del self.model[raw(key)]
        else:
            try:
                self.open_store.remove(key)
            except KeyNotFound:
                pass
            else:
                raise AssertionError("remove of an absent key did not raise")

    @precondition(lambda self: self.store is not None)
    @rule(
        ops=st.lists(st.tuples(st.booleans(), keys, values, st.booleans()), min_size=1, max_size=8)
    )
    def batch(self, ops: list[tuple[bool, str | bytes, str | bytes, bool]]) -> None:
        batch = WriteBatch()
        expected = dict(self.model)
        fails = False
        for is_set, key, value, missing_ok in ops:
            if is_set:
                batch.set(key, value)
                expected[raw(key)] = value
            else:
                batch.remove(key, missing_ok=missing_ok)
                if raw(key) in expected:
                    del expected[raw(key)]
                elif not missing_ok:
                    fails = True
        try:
            self.open_store.write(batch)
        except KeyNotFound:
            assert fails
        else:
            assert not fails
            self.model = expected

    @precondition(lambda self: self.store is not None)
    @rule(pairs=st.lists(st.tuples(st.binary(max_size=8), st.binary(max_size=64)), max_size=8))
    def update(self, pairs: list[tuple[bytes, bytes]]) -> None:
        self.open_store.update(pairs)
        self.model.update(pairs)

    @precondition(lambda self: self.store is not None)
    @rule()
    def compact(self) -> None:
        self.open_store.compact()

    @precondition(lambda self: self.store is not None)
    @rule()
    def close(self) -> None:
        self.open_store.close()
        self.store = None

    @rule()
    def reopen(self) -> None:
        if self.store is not None:
            self.store.close()
        self.store = KvStore.open(self.dir, **self.options)

    @invariant()
    def contents_match(self) -> None:
        if self.store is None:
            return
        assert len(self.store) == len(self.model)
        assert sorted(raw(k) for k in self.store.scan()) == sorted(self.model)

    def teardown(self) -> None:
        if self.store is not None:
            self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


StoreModel.TestCase.settings = settings(
    max_examples=soak_scale(60, 2000), stateful_step_count=40, deadline=None
)
TestStoreModel = StoreModel.TestCase
