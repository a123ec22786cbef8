"""Jepsen-lite (RELIABILITY.md D6): clients, a kill/pause nemesis and a checker against a real
kvs-server; and the checker itself on hand-made histories, so that a pass means something.

Default run: one short round per policy; ``--soak``: long rounds over several seeds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from soakmode import soak_scale

from .checker import INF, Op, check, linearizable
from .harness import run_jepsen_round

SECONDS = soak_scale(9, 90)
SEEDS = list(range(soak_scale(1, 3)))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("policy", ["always", "everysec"])
def test_no_acknowledged_write_lost_under_kill_and_pause(
    tmp_path: Path, policy: str, seed: int
) -> None:
    report = run_jepsen_round(seed, SECONDS, policy, tmp_path)
    summary = {k: v for k, v in report.items() if k != "problems"}
    assert report["problems"] == [], report["problems"][:10]
    assert report["acked_writes_lost"] == 0, summary
    assert report["phantom_reads"] == 0, summary
    assert report["keys_not_linearizable"] == 0, summary
    assert report["keys_unchecked"] == 0, summary
    assert report["server_errors"] == [], report["server_errors"][:10]
    assert report["clean_exit"], summary
    # The round really exercised something: faults happened, operations were judged.
    assert report["kills"] >= 2 and report["kills"] + report["pauses"] >= 4, summary
    assert report["ok"] >= 500 and report["ops_checked"] >= 500, summary
    assert report["info"] + report["fail"] > 0, summary


def test_the_round_catches_a_server_that_forgets_at_a_kill(tmp_path: Path) -> None:
    """The same round against the memory engine, which loses everything at each kill: the
    checker must say so (otherwise a clean report above would mean little)."""
    report = run_jepsen_round(7, 2.5, "always", tmp_path, engine="memory")
    assert report["kills"] >= 1
    assert report["acked_writes_lost"] > 0, report
    assert report["keys_not_linearizable"] > 0, report
    assert report["problems"]


# -- the checker on histories with known answers ----------------------------------------------


def w(process: int, value: str, invoke: float, complete: float = INF, status: str = "ok") -> Op:
    return Op(process, "write", "k", value.encode(), invoke, complete, status)


def r(process: int, value: str | None, invoke: float, complete: float) -> Op:
    return Op(
        process, "read", "k", None if value is None else value.encode(), invoke, complete, "ok"
    )


def final(value: str | None) -> Op:
    return r(-1, value, 1000, 1001)


def test_checker_accepts_concurrent_writes_in_either_order() -> None:
    history = [w(0, "a", 1, 5), w(1, "b", 2, 6), r(2, "b", 3, 4), r(2, "a", 7, 8)]
    report = check(history, [final("a")], kills=[])
    assert report["problems"] == [] and report["ops_checked"] == 5


def test_checker_finds_a_lost_acknowledged_write() -> None:
    history = [w(0, "a", 1, 2), w(0, "b", 3, 4)]
    report = check(history, [final("a")], kills=[])
    assert report["acked_writes_lost"] == 1
    assert report["keys_not_linearizable"] == 1
    assert check(history, [final(None)], kills=[])["acked_writes_lost"] == 2


def test_checker_finds_a_phantom_read() -> None:
    history = [w(0, "a", 1, 2), r(1, "zzz", 3, 4)]
    assert check(history, [final("a")], kills=[])["phantom_reads"] == 1
    history = [w(0, "a", 1, 2), w(2, "c", 5, 6, status="fail")]  # never sent
    assert check(history, [final("c")], kills=[])["phantom_reads"] == 1
    history = [r(1, "a", 1, 2), w(0, "a", 3, 4)]  # read before the write began
    assert check(history, [final("a")], kills=[])["phantom_reads"] == 1


def test_checker_finds_a_stale_read() -> None:
    history = [w(0, "a", 1, 2), w(0, "b", 3, 4), r(1, "a", 5, 6)]
    report = check(history, [final("b")], kills=[])
    assert report["acked_writes_lost"] == 0 and report["phantom_reads"] == 0
    assert report["keys_not_linearizable"] == 1


def test_checker_info_write_may_apply_until_its_process_died() -> None:
    # An info write sent before a kill at t=10 may appear (even after a later ok write that
    # overlapped it), or not at all...
    history = [w(0, "a", 1, status="info"), w(1, "b", 2, 3)]
    assert check(history, [final("a")], kills=[10])["problems"] == []
    assert check(history, [final("b")], kills=[10])["problems"] == []
    # ...but not on top of an ok write begun after that process was dead.
    history = [w(0, "a", 1, status="info"), w(1, "b", 12, 13)]
    report = check(history, [final("a")], kills=[10])
    assert report["acked_writes_lost"] == 1 and report["keys_not_linearizable"] == 1
    # Without a kill (a pause made it time out), it may apply at any later time.
    assert check(history, [final("a")], kills=[])["problems"] == []


def test_checker_reads_must_agree_on_one_order() -> None:
    # Two concurrent writes; one reader sees a then b, another b then a: no single order.
    history = [
        w(0, "a", 0, 10),
        w(1, "b", 0, 10),
        r(2, "a", 1, 2),
        r(2, "b", 3, 4),
        r(3, "b", 1, 2),
        r(3, "a", 3, 4),
    ]
    assert linearizable(history) is False
    assert linearizable(history[:4]) is True
