"""The Jepsen-lite checker: a history of register operations, judged key by key.

Used by the Jepsen-lite round against kvs-server (``jepsen/harness.py``) and by the thread
history test (``test_concurrency_history.py``); it imports nothing from the server.

The checker (:func:`check`), per key, with exactly these rules:

* **phantom reads**: a read (the final one included) returned a value that no write to that
  key invoked before the read completed could have produced (``fail`` writes excluded: they
  were never sent). Must be 0.
* **lost acknowledged writes**: an ``ok`` write ``w2`` is lost if the final value is missing,
  or is that of a write ``w1`` that certainly took effect before ``w2`` was invoked (``w1``
  completed ``ok`` before, or ``w1``'s server process was dead before). Must be 0, under every
  ``--sync`` policy, since the nemesis only kills processes (the OS keeps what was written).
* **linearizability**: the key's history is checked against a single register with a
  complete search (Wing & Gong style, just-in-time linearization over the time-ordered
  events, the set of reachable configurations kept explicitly and deduplicated). ``ok``
  operations take effect between invocation and completion; an ``info`` write takes effect
  at most once, after its invocation and before its deadline, or never. Its deadline is the
  moment the server process that may have received it was seen dead (the first kill after
  its invocation); a process that is dead cannot apply anything later. ``info`` and ``fail``
  reads, and ``info`` writes whose value no read ever returned, constrain nothing and are
  left out (dropping an unobserved optional write is exact, not an approximation). A key
  whose search would exceed ``MAX_CONFIGURATIONS`` is reported as not checked (counted in
  ``keys_unchecked``) rather than guessed; the first two rules are still checked for it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

MAX_CONFIGURATIONS = 20_000
INF = float("inf")


@dataclass
class Op:
    process: int  # the client thread
    kind: str  # "write" or "read"
    key: str
    value: bytes | None  # the value written, or the value read (ok reads)
    invoke: float
    complete: float = INF
    status: str = "pending"  # ok / fail / info
    deadline: float = INF  # info writes: the latest moment they may have taken effect


@dataclass
class KeyResult:
    ops_checked: int = 0
    phantom_reads: int = 0
    lost_writes: int = 0
    linearizable: bool | None = None  # None: not checked (search too large)
    problems: list[str] = field(default_factory=list)


def assign_deadlines(history: list[Op], kills: list[float]) -> None:
    """An info write may take effect until its server process is seen dead: the first kill
    after its invocation (the process it was sent to was alive at most until then)."""
    for op in history:
        if op.kind == "write" and op.status == "info":
            i = bisect.bisect_right(kills, op.invoke)
            op.deadline = kills[i] if i < len(kills) else INF


def check_key(key: str, ops: list[Op], final: Op) -> KeyResult:
    result = KeyResult()
    writes = {op.value: op for op in ops if op.kind == "write"}
    reads = [op for op in ops if op.kind == "read" and op.status == "ok"] + [final]
    # Phantom reads: a value no write sent before the read completed could have produced.
    for read in reads:
        if read.value is None:
            continue
        source = writes.get(read.value)
        if source is None or source.status == "fail" or source.invoke > read.complete:
            result.phantom_reads += 1
            result.problems.append(f"{key}: read {read.value!r} that was never written")
    # Lost acknowledged writes, judged by the final read.
    acked = [op for op in ops if op.kind == "write" and op.status == "ok"]
    if acked:
        last_effect = INF
        if final.value is None:
            result.problems.append(f"{key}: final read found nothing after {len(acked)} ok writes")
            lost = acked
        else:
            source = writes.get(final.value)
            if source is not None:
                last_effect = source.complete if source.status == "ok" else source.deadline
            lost = [w for w in acked if w.invoke > last_effect]
        if lost:
            result.lost_writes += len(lost)
            result.problems.append(
                f"{key}: final value {final.value!r}, but ok writes that began after it took "
                f"effect are gone: {[w.value for w in lost][:5]}"
            )
    # Linearizability of the register.
    observed = {read.value for read in reads}
    relevant = [
        op
        for op in ops
        if op.status == "ok"
        or (op.kind == "write" and op.status == "info" and op.value in observed)
    ]
    relevant.append(final)
    result.ops_checked = len(relevant)
    result.linearizable = linearizable(relevant)
    if result.linearizable is False:
        result.problems.append(f"{key}: history is not linearizable for a register")
    return result


def linearizable(ops: list[Op]) -> bool | None:
    """Whether the operations on one register (initially None) have a linearization.

    Events in time order (invocations before completions at equal times, the permissive
    choice); a configuration is (operations invoked but not yet linearized, current value).
    At an ``ok`` completion every configuration must linearize that operation, after any
    chosen sequence of other pending ones; at an ``info`` write's deadline it is linearized
    or dropped. Returns None if the configurations outgrow ``MAX_CONFIGURATIONS``.
    """
    events: list[tuple[float, int, int]] = []
    for i, op in enumerate(ops):
        events.append((op.invoke, 0, i))
        end = op.complete if op.status == "ok" else op.deadline
        if end != INF:
            events.append((end, 1, i))
    events.sort()
    Config = tuple[frozenset[int], bytes | None]
    configs: set[Config] = {(frozenset(), None)}

    def step(config: Config, i: int) -> Config | None:
        pending, value = config
        op = ops[i]
        if op.kind == "write":
            return pending - {i}, op.value
        return (pending - {i}, value) if op.value == value else None

    for _, kind, i in events:
        if kind == 0:
            configs = {(pending | {i}, value) for pending, value in configs}
            continue
        optional = ops[i].status != "ok"
        done: set[Config] = set()
        frontier = [c for c in configs if i in c[0]]
        done.update(c for c in configs if i not in c[0])
        if optional:
            done.update((pending - {i}, value) for pending, value in frontier)
        seen: set[Config] = set(frontier)
        while frontier:
            config = frontier.pop()
            for j in config[0]:
                nxt = step(config, j)
                if nxt is None or nxt in seen:
                    continue
                seen.add(nxt)
                if j == i:
                    done.add(nxt)
                else:
                    frontier.append(nxt)
            if len(seen) > MAX_CONFIGURATIONS:
                return None
        configs = done
        if not configs:
            return False
        if len(configs) > MAX_CONFIGURATIONS:
            return None
    return bool(configs)


def check(history: list[Op], finals: list[Op], kills: list[float]) -> dict[str, Any]:
    assign_deadlines(history, kills)
    by_key: dict[str, list[Op]] = {}
    for op in history:
        by_key.setdefault(op.key, []).append(op)
    totals: dict[str, Any] = {
        "ops_checked": 0,
        "phantom_reads": 0,
        "acked_writes_lost": 0,
        "keys_not_linearizable": 0,
        "keys_unchecked": 0,
        "problems": [],
    }
    for final in finals:
        result = check_key(final.key, by_key.get(final.key, []), final)
        totals["ops_checked"] += result.ops_checked
        totals["phantom_reads"] += result.phantom_reads
        totals["acked_writes_lost"] += result.lost_writes
        totals["keys_not_linearizable"] += result.linearizable is False
        totals["keys_unchecked"] += result.linearizable is None
        totals["problems"].extend(result.problems)
    return totals


# -- a round ------------------------------------------------------------------------------
