"""SCAN: a full walk lists the key space once (linear work), and keeps Redis's guarantee when
keys come and go mid-walk (every key present for the whole walk is returned).

These call the command layer directly (``commands.execute``) over a store that counts the
keys it lists and looks up, so the work is counted, not timed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvs.server.commands import ServerState, Session, execute
from kvs.store import Key, KvStore


class CountingStore:
    """A store that counts the keys its ``scan()`` yields and its ``ttl()`` lookups."""

    def __init__(self, store: KvStore) -> None:
        self.store = store
        self.listed = 0
        self.lookups = 0

    def scan(self, prefix: Key = b"") -> Iterator[Key]:
        for key in self.store.scan(prefix):
            self.listed += 1
            yield key

    def ttl(self, key: Key) -> float | None:
        self.lookups += 1
        return self.store.ttl(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


@pytest.fixture(params=["kvs", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CountingStore]:
    opened = KvStore.open(str(tmp_path / "data"), engine=request.param)
    try:
        yield CountingStore(opened)
    finally:
        opened.close()


def scan(state: ServerState, session: Session, cursor: int, *options: bytes) -> tuple[int, list]:
    reply = execute(state, session, [b"SCAN", b"%d" % cursor, *options])
    # Parse the reply with a RESP parser of replies: *2 $<cursor> *<n> $<key>...
    lines = reply.split(b"\r\n")
    assert lines[0] == b"*2", reply
    next_cursor = int(lines[2])
    count = int(lines[3][1:])
    keys = [lines[5 + 2 * i] for i in range(count)]
    return next_cursor, keys


def walk(state: ServerState, session: Session, *options: bytes) -> tuple[list[bytes], int]:
    """A full SCAN walk: every key returned, and the number of calls."""
    seen: list[bytes] = []
    cursor, calls = 0, 0
    while True:
        cursor, keys = scan(state, session, cursor, *options)
        seen.extend(keys)
        calls += 1
        if cursor == 0:
            return seen, calls
        assert calls < 100_000


def new_state(store: CountingStore) -> tuple[ServerState, Session]:
    state = ServerState(store)  # type: ignore[arg-type]
    return state, state.new_session()


def test_a_full_walk_lists_the_key_space_once(store: CountingStore) -> None:
    n = 3000
    store.update((b"key:%d" % i, b"v") for i in range(n))
    state, session = new_state(store)
    for count in (1, 10, 97):
        store.listed = store.lookups = 0
        seen, calls = walk(state, session, b"COUNT", b"%d" % count)
        assert sorted(seen) == sorted(b"key:%d" % i for i in range(n))
        assert calls >= n // count
        # Linear: the key space is listed once per walk (the old SCAN listed it per call:
        # 3000 calls x 3000 keys at COUNT 1), and each key returned is looked up once.
        assert store.listed == n, count
        assert store.lookups == n, count


def test_concurrent_walks_share_one_listing(store: CountingStore) -> None:
    n = 2000
    store.update((b"k%d" % i, b"v") for i in range(n))
    state, session = new_state(store)
    store.listed = 0
    cursors = [0, 0, 0]
    seen: list[list[bytes]] = [[], [], []]
    done = [False, False, False]
    while not all(done):
        for w in range(3):
            if done[w]:
                continue
            cursors[w], keys = scan(state, session, cursors[w], b"COUNT", b"50")
            seen[w].extend(keys)
            done[w] = cursors[w] == 0
    for keys in seen:
        assert sorted(keys) == sorted(b"k%d" % i for i in range(n))
    # Each walk's SCAN 0 lists the keys; after the first walk ends and frees the listing,
    # each of the other two lists them at most once more.
    assert store.listed <= 5 * n


def test_keys_added_and_removed_mid_walk(store: CountingStore) -> None:
    rng = random.Random(7)
    stable = {b"stable:%d" % i for i in range(500)}
    doomed = [b"doomed:%d" % i for i in range(500)]
    store.update((key, b"v") for key in stable)
    store.update((key, b"v") for key in doomed)
    state, session = new_state(store)
    seen: list[bytes] = []
    removed: set[bytes] = set()
    added: set[bytes] = set()
    cursor, calls = 0, 0
    while True:
        cursor, keys = scan(state, session, cursor, b"COUNT", b"20")
        seen.extend(keys)
        calls += 1
        # Between calls: remove some keys, add others (some with the hashes already passed).
        for _ in range(5):
            if doomed:
                key = doomed.pop(rng.randrange(len(doomed)))
                store.remove(key)
                removed.add(key)
            new = b"new:%d:%d" % (calls, rng.randrange(1 << 30))
            store.set(new, b"v")
            added.add(new)
        if cursor == 0:
            break
    # Every key present for the whole walk, exactly once.
    assert stable <= set(seen)
    assert len([k for k in seen if k in stable]) == len(stable)
    # Nothing that was never there, and nothing twice.
    assert set(seen) <= stable | removed | added | set(doomed)
    assert len(seen) == len(set(seen))
    # A key removed before the walk reached it is skipped: most of the removed ones.
    assert len(removed & set(seen)) < len(removed)


def test_a_cursor_outlives_the_listing(store: CountingStore) -> None:
    """A cursor whose listing is gone (the walk of another client ended, the server restarted,
    a cursor made up by hand) still walks on from its position."""
    keys = {b"key:%d" % i for i in range(300)}
    store.update((key, b"v") for key in keys)
    state, session = new_state(store)
    cursor, first = scan(state, session, 0, b"COUNT", b"100")
    assert cursor != 0
    state.scan_snapshot = None  # as after another walk ended
    seen = list(first)
    while cursor:
        cursor, batch = scan(state, session, cursor, b"COUNT", b"100")
        seen.extend(batch)
    assert sorted(seen) == sorted(keys)
    # A fresh server (epochs start again) takes a cursor of the old one.
    state2, session2 = new_state(store)
    cursor, first = scan(state, session, 0, b"COUNT", b"150")
    seen = list(first)
    while cursor:
        cursor, batch = scan(state2, session2, cursor, b"COUNT", b"50")
        seen.extend(batch)
    assert sorted(seen) == sorted(keys)
