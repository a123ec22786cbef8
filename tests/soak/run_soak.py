"""The crash-testing soak: every fault loop of the suite, seeded, for as long as asked.

    .venv/bin/python tests/soak/run_soak.py --minutes 60 --seed 1 --report soak.json

Each cycle runs one round of every component, each with a seed drawn from ``--seed``:

==========  ===========================================================================
kill9       SIGKILL a writer subprocess at random moments, each sync policy in turn, and
            during compactions; every acknowledged operation must be in the reopened store.
power       simulated power cuts at every sync point of a workload on the fault-injecting
            file system, harsh variant included (``crash/power_loss_harness.py``).
io          the Nth file operation fails (EIO, ENOSPC; once and persistently), also during
            recovery (``crash/io_fault_harness.py``).
jepsen      redis-py clients against a kvs-server that is SIGKILLed and SIGSTOPped at random
            (``jepsen/harness.py``).
fuzz        the Hypothesis fuzz tests (RESP parser, file readers, live server) in their long
            form, with this cycle's seed.
==========  ===========================================================================

A round that fails is recorded with its component, seed and error, and the soak goes on; the
exit status is 1 if any round failed. The report (printed, and written as JSON with
``--report``) counts crashes injected, faults injected, operations checked and acknowledged
writes lost, which must be 0. Rerun one failing round with ``--only COMPONENT --seed SEED
--cycles 1``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))  # the harnesses live beside the tests that use them


@dataclass
class Counts:
    """What one round did. ``lost`` is acknowledged writes missing after recovery;
    ``wrong_reads`` is reads of values never written or out of any linearizable order."""

    rounds: int = 0
    crashes: int = 0
    faults: int = 0
    operations_checked: int = 0
    lost: int = 0
    wrong_reads: int = 0

    def add(self, other: Counts) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


@dataclass
class Failure:
    component: str
    seed: int
    error: str


@dataclass
class Report:
    seed: int
    seconds: float = 0.0
    cycles: int = 0
    totals: Counts = field(default_factory=Counts)
    per_component: dict[str, Counts] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)


Component = Callable[[int, Path], Counts]


def kill9_round(seed: int, workdir: Path) -> Counts:
    from crash.test_kill9 import OPTIONS_BASE, kill_rounds

    policy = ("always", "everysec", "no")[seed % 3]
    counts = Counts(rounds=1)
    for sub in ("kill", "kill-compaction"):
        (workdir / sub).mkdir()
    done = kill_rounds(workdir / "kill", {**OPTIONS_BASE, "sync": policy}, seed, rounds=5)
    compaction = kill_rounds(
        workdir / "kill-compaction",
        {
            "max_file_size": 16384,
            "sync": "no",
            "auto_compact": True,
            "compaction_min_stale_bytes": 32768,
            "compaction_stale_ratio": 0.5,
        },
        seed + 1,
        compact_weight=4,
        kill_in_compaction=True,
        rounds=3,
    )
    for result in (done, compaction):
        counts.crashes += result["kills"]
        counts.operations_checked += result["acknowledged_ops"]
    return counts


def power_round(seed: int, workdir: Path) -> Counts:
    from crash.power_loss_harness import run_power_loss_round

    policy = ("always", "everysec", "no")[seed % 3]
    # One ordinary round (power cuts at and between sync points, some harsh) and one whose
    # unsynced blocks reach the disk in any order.
    counts = Counts(rounds=1)
    for reorder in (False, True):
        result = run_power_loss_round(
            seed, policy, workdir / f"reorder-{reorder}", operations=300, reorder=reorder
        )
        counts.crashes += result["crash_states"]
        counts.operations_checked += result["operations_checked"]
        counts.lost += result["acknowledged_lost"]
    return counts


def io_round(seed: int, workdir: Path) -> Counts:
    from crash.io_fault_harness import run_io_fault_round

    result = run_io_fault_round(seed, workdir)
    return Counts(
        rounds=1,
        crashes=result["crashes"],
        faults=result["faults"],
        operations_checked=result["operations_checked"],
        lost=result["lost"],
    )


def jepsen_round(seed: int, workdir: Path) -> Counts:
    from jepsen.harness import run_jepsen_round

    policy = ("always", "everysec")[seed % 2]
    result = run_jepsen_round(seed, 60.0, policy, workdir)
    wrong = result["phantom_reads"] + result["keys_not_linearizable"]
    counts = Counts(
        rounds=1,
        crashes=result["kills"],
        faults=result["pauses"],
        operations_checked=result["operations"],
        lost=result["acked_writes_lost"],
        wrong_reads=wrong,
    )
    if counts.lost or wrong or result["server_errors"]:
        raise AssertionError(f"jepsen round seed={seed} {policy}: {result}")
    return counts


FUZZ_TESTS = [
    "tests/protocol/test_resp_fuzz.py",
    "tests/crash/test_reader_fuzz.py",
    "tests/server/test_fuzz_live.py",
]


def fuzz_round(seed: int, workdir: Path) -> Counts:
    """The Hypothesis fuzz tests in their long form (``--soak``) with this seed."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--soak",
        f"--hypothesis-seed={seed}",
        *[test for test in FUZZ_TESTS if (ROOT / test).exists()],
    ]
    env = {**os.environ, "KVS_SOAK": "1"}
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600
    )
    if result.returncode != 0:
        raise AssertionError(f"fuzz tests failed:\n{result.stdout[-4000:]}{result.stderr[-2000:]}")
    passed = sum(
        int(word)
        for line in result.stdout.splitlines()
        for word, after in zip(line.split(), line.split()[1:], strict=False)
        if after.startswith("passed") and word.isdigit()
    )
    return Counts(rounds=1, operations_checked=passed)


COMPONENTS: dict[str, Component] = {
    "kill9": kill9_round,
    "power": power_round,
    "io": io_round,
    "jepsen": jepsen_round,
    "fuzz": fuzz_round,
}


def run_soak(
    seconds: float,
    seed: int,
    only: list[str] | None = None,
    cycles: int | None = None,
    log: Callable[[str], None] = print,
) -> Report:
    """Run cycles of every component until ``seconds`` pass (or ``cycles`` are done)."""
    names = only or list(COMPONENTS)
    unknown = [name for name in names if name not in COMPONENTS]
    if unknown:
        raise SystemExit(f"unknown component(s) {unknown}; choose from {list(COMPONENTS)}")
    rng = random.Random(seed)
    report = Report(seed=seed, per_component={name: Counts() for name in names})
    started = time.monotonic()
    while (cycles is None or report.cycles < cycles) and (
        cycles is not None or time.monotonic() - started < seconds
    ):
        for name in names:
            round_seed = seed if cycles == 1 else rng.randrange(1 << 31)
            workdir = Path(tempfile.mkdtemp(prefix=f"kvs-soak-{name}-"))
            try:
                counts = COMPONENTS[name](round_seed, workdir)
            except Exception:
                error = traceback.format_exc()
                report.failures.append(Failure(name, round_seed, error[-4000:]))
                log(f"FAILED {name} seed={round_seed}\n{error}")
            else:
                report.per_component[name].add(counts)
                report.totals.add(counts)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            if cycles is None and time.monotonic() - started >= seconds:
                break
        report.cycles += 1
        report.seconds = time.monotonic() - started
        log(f"cycle {report.cycles} done at {report.seconds:.0f} s: {asdict(report.totals)}")
    report.seconds = time.monotonic() - started
    return report


def format_report(report: Report) -> str:
    lines = [
        f"soak: seed {report.seed}, {report.seconds / 60:.1f} min, {report.cycles} cycles",
        "| component | rounds | crashes injected | faults injected | operations checked "
        "| acknowledged writes lost | wrong reads |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [*report.per_component.items(), ("total", report.totals)]
    for name, c in rows:
        lines.append(
            f"| {name} | {c.rounds} | {c.crashes} | {c.faults} | {c.operations_checked} "
            f"| {c.lost} | {c.wrong_reads} |"
        )
    lines.append(f"failed rounds: {len(report.failures)}")
    for failure in report.failures:
        lines.append(f"  {failure.component} seed={failure.seed}: {failure.error.splitlines()[-1]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to run")
    parser.add_argument("--cycles", type=int, help="run this many cycles instead")
    parser.add_argument("--seed", type=int, default=1, help="the seed every round derives from")
    parser.add_argument("--only", action="append", help="run only this component (repeatable)")
    parser.add_argument("--report", type=Path, help="also write the report as JSON here")
    parser.add_argument("--verbose", action="store_true", help="show the store's warnings")
    args = parser.parse_args(argv)
    # Recovery warnings (torn tails cut after a kill) are expected by the thousand here.
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.ERROR)
    report = run_soak(args.minutes * 60, args.seed, args.only, args.cycles)
    print(format_report(report))
    if args.report:
        args.report.write_text(json.dumps(asdict(report), indent=2) + "\n")
    return 1 if report.failures or report.totals.lost or report.totals.wrong_reads else 0


if __name__ == "__main__":
    sys.exit(main())
