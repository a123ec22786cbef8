"""Threads against a model (RELIABILITY.md B4): a recorded history, checked key by key.

``THREADS`` threads (4; 16 under ``--soak``) share one store and run random gets, sets,
removes, atomic batches and prefix scans on a small key space, while compactions run
underneath: a thread calling ``compact()`` in a loop and, for the log engine, background
compactions with tiny thresholds and 4 KiB data files, so files rotate, merge and disappear
all the time. Every value written is distinct (``b"t<thread>-<n>"``), so a value read names
the one write that produced it.

Each operation is recorded with an invocation and a completion time from one global logical
clock (``itertools.count``: each ``next()`` is atomic under the GIL, so an operation that
completed before another was invoked has the smaller number) and its result. Per key, the
history is a single register starting absent: a set writes its value; a remove that succeeded
writes "absent" (it also read "present", which the register model drops: a weaker check, never
a false alarm); a remove that raised ``KeyNotFound`` reads "absent"; a batch is one write per
key it touches, all with the batch's times (a ``remove(missing_ok=True)`` in a batch writes
"absent" exactly). When the threads are done, a final read of every key closes the history.

:func:`check_history` then applies, per key:

* **phantom**: a read returned a value that no write to that key produced, or one whose write
  was invoked only after the read had completed;
* **stale**: a read returned the value of write ``w1`` although some write ``w2`` to that key
  was invoked after ``w1`` completed and completed before the read was invoked (``w1`` was
  overwritten before the read began); "absent" is stale the same way, when every remove (and
  the initial absence) was overwritten like that;
* **final state**: the final read is judged by the same rule, which for it says: its value is
  that of a write (or remove) that no other write was invoked after the completion of;
* **linearizability**: the whole per-key history against a register, with the complete search
  of the Jepsen-lite checker (``jepsen.checker.linearizable``, reused as is). A key whose search
  outgrows that checker's bound is counted as unchecked, and the test requires none.

The first three rules are implied by the fourth; they are checked on their own for the
messages they give (and would still hold for a key the search could not finish). The same
run goes against the ``sqlite`` and ``memory`` engines; the log engine and sqlite are then
reopened and must hold the final state. The last tests feed the checker hand-made bad
histories, so that a pass above means something.
"""

from __future__ import annotations

import bisect
import itertools
import random
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from jepsen.checker import Op, linearizable
from soakmode import soak_scale

from kvs import KeyNotFound, KvStore
from kvs.engines.memory import MemoryStore
from kvs.store import Key, Value, to_bytes

THREADS = soak_scale(4, 16)
OPS_PER_THREAD = soak_scale(30_000, 25_000)
KEYS = [f"k{i}" for i in range(6)]
# Log-engine options that make rotation and compaction constant: 4 KiB files hold ~100
# records, and a compaction starts whenever 2 KiB are dead.
LOG_OPTIONS: dict[str, Any] = {
    "sync": "no",
    "max_file_size": 4096,
    "compaction_min_stale_bytes": 2048,
    "compaction_stale_ratio": 0.5,
}
ENGINE_OPTIONS: dict[str, dict[str, Any]] = {
    "kvs": LOG_OPTIONS,
    "sqlite": {"sync": "no"},
    "memory": {},
}
# Small, so that the GIL passes between threads in the middle of operations often.
SWITCH_INTERVAL = 2e-5


# -- the checker ------------------------------------------------------------------------------


@dataclass
class Report:
    ops_checked: int = 0  # operations (final reads included) fed to the linearizability search
    keys_not_linearizable: int = 0
    keys_unchecked: int = 0  # search too large: left to the first three rules
    problems: list[str] = field(default_factory=list)


def check_history(history: list[Op], finals: list[Op]) -> Report:
    """Check ``history`` (every operation ``ok``; ``None`` is "absent") and one final read per
    key, taken after everything else, by the rules in the module docstring."""
    report = Report()
    by_key: dict[str, list[Op]] = {}
    for op in history:
        by_key.setdefault(op.key, []).append(op)
    for final in finals:
        ops = by_key.get(final.key, [])
        writes = Writes([op for op in ops if op.kind == "write"])
        for read in [op for op in ops if op.kind == "read"] + [final]:
            problem = writes.judge(read)
            if problem:
                which = "final read" if read is final else f"read by thread {read.process}"
                report.problems.append(f"{final.key}: {which} at {read.invoke}: {problem}")
        relevant = [*ops, final]
        report.ops_checked += len(relevant)
        verdict = linearizable(relevant)
        if verdict is None:
            report.keys_unchecked += 1
        elif not verdict:
            report.keys_not_linearizable += 1
            report.problems.append(f"{final.key}: history is not linearizable for a register")
    return report


class Writes:
    """The writes to one key, indexed so that each read is judged in O(log n)."""

    def __init__(self, writes: list[Op]) -> None:
        # For "superseded before the read began": the writes by completion time, with the
        # latest invocation among those completed so far.
        self.by_complete = sorted(writes, key=lambda op: op.complete)
        self.completes = [op.complete for op in self.by_complete]
        self.latest: list[Op] = []
        for op in self.by_complete:
            latest = self.latest[-1] if self.latest else op
            self.latest.append(op if op.invoke >= latest.invoke else latest)
        # The writes of each value ("absent" has many, plus the initial absence, which
        # completed before anything was invoked), by invocation, with the latest completion
        # among those invoked so far.
        self.sources: dict[bytes | None, tuple[list[float], list[Op]]] = {}
        initial = Op(-1, "write", "", None, -1, -1, "ok")
        grouped: dict[bytes | None, list[Op]] = {None: [initial]}
        for op in writes:
            grouped.setdefault(op.value, []).append(op)
        for value, ops in grouped.items():
            ops.sort(key=lambda op: op.invoke)
            best: list[Op] = []
            for op in ops:
                best.append(op if not best or op.complete >= best[-1].complete else best[-1])
            self.sources[value] = ([op.invoke for op in ops], best)

    def judge(self, read: Op) -> str | None:
        """Why ``read`` is a phantom or a stale read, or None if it is neither."""
        found = self.sources.get(read.value)
        if found is None:
            return f"{read.value!r} was never written (phantom)"
        invokes, best = found
        i = bisect.bisect_left(invokes, read.complete)  # the sources invoked before it ended
        if i == 0:
            return f"{read.value!r} was written only after the read completed (phantom)"
        source = best[i - 1]  # of those, the one that completed last: the hardest to supersede
        j = bisect.bisect_left(self.completes, read.invoke)  # writes done before it began
        if j == 0:
            return None
        newer = self.latest[j - 1]  # of those, the one invoked last
        if source.complete < newer.invoke:
            return (
                f"{read.value!r} had been overwritten (by {newer.value!r}, done at "
                f"{newer.complete}) before the read began (stale)"
            )
        return None


# -- the workload -----------------------------------------------------------------------------


@dataclass
class Worker:
    n: int
    store: KvStore
    clock: Iterator[int]
    rng: random.Random
    start: threading.Barrier
    ops: int
    history: list[Op] = field(default_factory=list)
    scans: int = 0
    crash: BaseException | None = None

    def run(self) -> None:
        try:
            self.start.wait()
            for i in range(self.ops):
                self.step(i)
        except BaseException as error:  # reported by the test
            self.crash = error

    def step(self, i: int) -> None:
        store, rng, clock = self.store, self.rng, self.clock
        key = rng.choice(KEYS)
        roll = rng.random()
        if roll < 0.40:
            invoke = next(clock)
            got = store.get(key)
            complete = next(clock)
            assert got is None or isinstance(got, bytes), got
            self.history.append(Op(self.n, "read", key, got, invoke, complete, "ok"))
        elif roll < 0.75:
            value = f"t{self.n}-{i}".encode()
            invoke = next(clock)
            store.set(key, value)
            complete = next(clock)
            self.history.append(Op(self.n, "write", key, value, invoke, complete, "ok"))
        elif roll < 0.85:
            invoke = next(clock)
            try:
                store.remove(key)
                kind = "write"  # took the key away (and saw it present: not modelled)
            except KeyNotFound:
                kind = "read"  # saw it absent, changed nothing
            complete = next(clock)
            self.history.append(Op(self.n, kind, key, None, invoke, complete, "ok"))
        elif roll < 0.97:
            members: list[tuple[str, bytes | None]] = []
            with store.batch() as batch:
                for j, member in enumerate(rng.sample(KEYS, rng.randint(2, 3))):
                    if rng.random() < 0.25:
                        batch.remove(member, missing_ok=True)  # exactly "absent afterwards"
                        members.append((member, None))
                    else:
                        value = f"t{self.n}-{i}.{j}".encode()
                        batch.set(member, value)
                        members.append((member, value))
                invoke = next(clock)  # the batch is written on leaving the block
            complete = next(clock)
            for member, value in members:
                self.history.append(Op(self.n, "write", member, value, invoke, complete, "ok"))
        else:
            found = list(store.scan("k"))
            assert found == sorted(found) and set(found) <= set(KEYS), found
            self.scans += 1


def run_history(
    store: KvStore, seed: int, threads: int = THREADS, ops: int = OPS_PER_THREAD
) -> tuple[list[Op], list[Op], int]:
    """Run the workload with a compactor; return the history, the final reads and how many
    explicit compactions completed meanwhile."""
    clock = itertools.count()
    rng = random.Random(seed)
    start = threading.Barrier(threads + 1)
    workers = [
        Worker(n, store, clock, random.Random(rng.random()), start, ops) for n in range(threads)
    ]
    done = threading.Event()
    compactions = 0
    compactor_crash: list[BaseException] = []

    def compactor() -> None:
        nonlocal compactions
        try:
            start.wait()
            while not done.wait(0.001):
                store.compact()
                compactions += 1
        except BaseException as error:  # reported by the test
            compactor_crash.append(error)

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        pool = [threading.Thread(target=w.run, name=f"history-{w.n}") for w in workers]
        pool.append(threading.Thread(target=compactor, name="history-compactor"))
        for thread in pool:
            thread.start()
        for thread in pool[:-1]:
            thread.join()
        done.set()
        pool[-1].join()
    finally:
        sys.setswitchinterval(old_interval)
    crashes = [w.crash for w in workers if w.crash is not None] + compactor_crash
    if crashes:
        raise AssertionError(f"a thread raised {crashes[0]!r}") from crashes[0]
    assert all(w.scans for w in workers)
    finals = []
    for key in KEYS:
        invoke = next(clock)
        got = store.get(key)
        finals.append(Op(-1, "read", key, got, invoke, next(clock), "ok"))
    return [op for w in workers for op in w.history], finals, compactions


@pytest.mark.parametrize("engine", ["kvs", "sqlite", "memory"])
def test_threads_with_compaction_match_a_register_per_key(tmp_path: Path, engine: str) -> None:
    path = str(tmp_path / "store")
    store = KvStore.open(path, engine=engine, **ENGINE_OPTIONS[engine])
    try:
        history, finals, compactions = run_history(store, seed=20261124)
        stats = store.stats()
    finally:
        store.close()
    report = check_history(history, finals)
    summary = {k: v for k, v in vars(report).items() if k != "problems"}
    assert report.problems == [], (summary, report.problems[:10])
    assert report.keys_not_linearizable == 0 and report.keys_unchecked == 0, summary
    # The run exercised what it claims: every operation judged, concurrent compactions.
    assert report.ops_checked == len(history) + len(KEYS)
    assert sum(op.kind == "read" for op in history) > THREADS * OPS_PER_THREAD // 4
    assert compactions >= 3, compactions
    if engine == "kvs":
        assert int(stats["active_file_id"]) > 50, stats  # many rotations and merges
    if engine != "memory":  # the final state is what a reopen finds
        with KvStore.open(path, engine=engine) as reopened:
            assert {op.key: reopened.get(op.key) for op in finals} == {
                op.key: op.value for op in finals
            }


# -- the checker catches what it must ----------------------------------------------------------


class StaleMemoryStore(MemoryStore):
    """A store with a bug: one get in twenty returns the value a key had before its last set."""

    def __init__(self) -> None:
        super().__init__()
        self.previous: dict[Key, Value | None] = {}
        self.gets = itertools.count()

    def set(self, key: Key, value: Value, ttl: float | None = None) -> None:
        with self._lock:  # not atomic with the set below: any earlier value will do
            old = self._data.get(to_bytes(key, "key"))
        self.previous[key] = None if old is None else old[0]
        super().set(key, value, ttl)

    def get(self, key: Key) -> Value | None:
        if next(self.gets) % 20 == 0 and key in self.previous:
            return self.previous[key]
        return super().get(key)


def test_the_run_catches_a_store_that_serves_stale_values() -> None:
    """The whole pipeline (threads, history, checker) on a store known to be wrong."""
    history, finals, _ = run_history(StaleMemoryStore(), seed=1, ops=2000)
    report = check_history(history, finals)
    assert report.keys_not_linearizable > 0, report
    assert any("(stale)" in problem for problem in report.problems), report.problems[:5]


def w(value: str | None, invoke: int, complete: int, process: int = 0) -> Op:
    raw = None if value is None else value.encode()
    return Op(process, "write", "k", raw, invoke, complete, "ok")


def r(value: str | None, invoke: int, complete: int, process: int = 1) -> Op:
    raw = None if value is None else value.encode()
    return Op(process, "read", "k", raw, invoke, complete, "ok")


def test_checker_accepts_concurrent_reads_of_either_value() -> None:
    # w2 overlaps the reads: each may see "a" or "b", in any order a register allows.
    history = [w("a", 0, 1), w("b", 2, 10), r("a", 3, 4), r("b", 5, 6), w(None, 11, 12)]
    report = check_history(history, [r(None, 13, 14, process=-1)])
    assert report.problems == [] and report.keys_unchecked == 0


def test_checker_catches_a_stale_read() -> None:
    # "a" was overwritten by "b" (invoked after "a" completed) before the read began.
    history = [w("a", 0, 1), w("b", 2, 3), r("a", 4, 5)]
    report = check_history(history, [r("b", 6, 7, process=-1)])
    assert report.keys_not_linearizable == 1
    assert any("(stale)" in problem for problem in report.problems), report.problems


def test_checker_catches_a_removed_key_read_back_and_absence_after_a_write() -> None:
    gone = check_history([w("a", 0, 1), w(None, 2, 3), r("a", 4, 5)], [r(None, 6, 7, -1)])
    assert gone.keys_not_linearizable == 1
    assert gone.problems[0].startswith("k: read by thread 1") and "(stale)" in gone.problems[0]
    gone_at_the_end = check_history([w("a", 0, 1), w(None, 2, 3)], [r("a", 4, 5, -1)])
    assert gone_at_the_end.keys_not_linearizable == 1
    assert "(stale)" in gone_at_the_end.problems[0]
    never_removed = check_history([w("a", 0, 1), r(None, 2, 3)], [r("a", 4, 5)])
    assert never_removed.keys_not_linearizable == 1
    assert "None had been overwritten" in never_removed.problems[0]


def test_checker_catches_phantoms() -> None:
    never_written = check_history([w("a", 0, 1), r("zzz", 2, 3)], [r("a", 4, 5)])
    assert "never written (phantom)" in never_written.problems[0]
    assert never_written.keys_not_linearizable == 1
    from_the_future = check_history([r("b", 0, 1), w("b", 2, 3)], [r("b", 4, 5, process=-1)])
    assert "only after the read completed (phantom)" in from_the_future.problems[0]
    assert from_the_future.keys_not_linearizable == 1


def test_checker_catches_a_lost_final_write() -> None:
    # "b" began after "a" was done, so "a" cannot be the last word.
    report = check_history([w("a", 0, 1), w("b", 2, 3)], [r("a", 4, 5)])
    assert report.problems[0].startswith("k: final read") and "(stale)" in report.problems[0]
    assert report.keys_not_linearizable == 1


def test_checker_catches_reads_that_go_back_in_time() -> None:
    """Each read alone could be right, but not both: only the register search sees it."""
    history = [w("a", 0, 1), w("b", 2, 20), r("b", 3, 4), r("a", 5, 6)]
    report = check_history(history, [r("b", 21, 22, process=-1)])
    assert report.keys_not_linearizable == 1
    assert report.problems == ["k: history is not linearizable for a register"]
