"""Compaction stall (RELIABILITY.md C3): ``set`` latency with and without a compaction running.

What it measures: the latency of single ``set`` calls (one thread calling ``set`` back to
back for ``--seconds``; overwrites of random present keys, 100-byte values) on a store holding
plenty of stale data, in two modes:

* **idle**: nothing else runs;
* **compacting**: a background thread calls ``store.compact()`` in a loop for the whole
  measurement (the timed sets start once the first compaction has begun).

Each measurement gets a fresh store: ``--keys`` keys written, then overwritten ``--stale``
more times (so about ``--stale`` times as many dead bytes as live ones), with automatic
compaction off so that only the forced ones run. Reported: p50, p99 and max of the
latencies of every timed set (and sets per second), the median over ``--rounds`` rounds
(the targets and modes take turns in a rotating order, so slow moments of a shared machine
fall on all of them), and the ratios compacting/idle. The cyclic GC is collected before and
paused during every timed loop.

Targets: the kvs log engine (compaction copies the live records to new files in Python,
taking the store's lock only to swap files in), and, as the peer with a comparable background
operation, kvs's ``sqlite`` engine, whose ``compact()`` runs ``VACUUM`` and a WAL checkpoint
while holding its write lock. (plyvel's ``compact_range`` would be the other natural peer;
it is not part of this script.)

Run it from the repository root::

    python bench/bench_compaction_stall.py --quick          # smoke run, ~30 s
    python bench/bench_compaction_stall.py                  # full run, a few minutes
    python bench/bench_compaction_stall.py --write-docs     # also update docs/benchmarks.md

This is a script, not a test: nothing here is collected by pytest.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from _docs import (  # this directory is sys.path[0]
    DOCS_PATH,
    add_run_options,
    run_stamp,
    table,
    write_section,
)

VALUE_SIZE = 100
KEY_FORMAT = b"key%09d"
SEED = 20261124
DOCS_START = "<!-- stall-bench:start -->"
DOCS_END = "<!-- stall-bench:end -->"
DOCS_HEADING = "## Compaction stall: `set` latency while a compaction runs"
MODES = ("idle", "compacting")
TARGETS: dict[str, tuple[str, dict[str, Any]]] = {
    "kvs (log engine)": ("kvs", {"auto_compact": False}),
    "sqlite engine (VACUUM)": ("sqlite", {}),
}


@dataclass
class Config:
    keys: int
    stale: int
    seconds: float
    rounds: int
    write_docs: bool
    quick: bool
    tmp_dir: str | None


@dataclass
class Sample:
    sets: int  # timed sets done in the measurement's seconds
    p50: float  # microseconds
    p99: float
    max: float
    compactions: int  # completed while the sets ran (compacting mode)
    compaction_seconds: float  # mean duration of one compaction (compacting mode)


@dataclass
class Results:
    samples: dict[tuple[str, str], list[Sample]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def fill(store: Any, config: Config, rng: random.Random) -> None:
    """``config.keys`` keys, then ``config.stale`` overwrite passes, in batches of 1,000."""
    keys = [KEY_FORMAT % i for i in range(config.keys)]
    for _ in range(1 + config.stale):
        for start in range(0, len(keys), 1000):
            store.update([(key, rng.randbytes(VALUE_SIZE)) for key in keys[start : start + 1000]])


def measure(engine: str, options: dict[str, Any], mode: str, config: Config, root: str) -> Sample:
    from kvs import KvStore

    rng = random.Random(SEED)
    path = tempfile.mkdtemp(prefix=f"{engine}-{mode}-", dir=root)
    store = KvStore.open(path, engine=engine, **options)
    try:
        fill(store, config, rng)
        pool = 1 << 16  # (key, value) pairs to cycle through; pool is a power of two
        keys = [KEY_FORMAT % rng.randrange(config.keys) for _ in range(pool)]
        values = [rng.randbytes(VALUE_SIZE) for _ in range(pool)]
        done = threading.Event()
        started = threading.Event()
        durations: list[float] = []
        failure: list[BaseException] = []

        def compactor() -> None:
            try:
                while not done.is_set():
                    began = time.perf_counter()
                    started.set()
                    store.compact()
                    durations.append(time.perf_counter() - began)
            except BaseException as error:  # reported below
                failure.append(error)
                started.set()

        thread = None
        if mode == "compacting":
            thread = threading.Thread(target=compactor, name="bench-compactor", daemon=True)
            thread.start()
            started.wait()
        latencies: list[int] = []
        record = latencies.append
        set_ = store.set
        clock = time.perf_counter_ns
        gc.collect()
        gc.disable()
        try:
            finished_before = len(durations)
            deadline = clock() + int(config.seconds * 1e9)
            i = 0
            while True:
                begin = clock()
                set_(keys[i & (pool - 1)], values[i & (pool - 1)])
                end = clock()
                record(end - begin)
                i += 1
                if end >= deadline:
                    break
            finished = len(durations) - finished_before
        finally:
            gc.enable()
            done.set()
            if thread is not None:
                thread.join()
        if failure:
            raise RuntimeError(f"compaction failed: {failure[0]!r}") from failure[0]
        last = {keys[j & (pool - 1)]: values[j & (pool - 1)] for j in range(max(0, i - pool), i)}
        for key in rng.sample(sorted(last), min(200, len(last))):
            if store.get(key) != last[key]:
                raise RuntimeError(f"{engine}: wrong value for {key!r} after the run")
    finally:
        store.close()
        shutil.rmtree(path, ignore_errors=True)
    latencies.sort()
    return Sample(
        sets=len(latencies),
        p50=latencies[len(latencies) // 2] / 1000,
        p99=latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)] / 1000,
        max=latencies[-1] / 1000,
        compactions=finished,
        compaction_seconds=statistics.mean(durations) if durations else 0.0,
    )


def run(config: Config, root: str) -> Results:
    results = Results()
    cells = [(target, mode) for target in TARGETS for mode in MODES]
    for round_ in range(config.rounds):
        shift = round_ % len(cells)
        for target, mode in cells[shift:] + cells[:shift]:  # a rotating order
            engine, options = TARGETS[target]
            progress(f"round {round_ + 1}/{config.rounds}: {target}, {mode}")
            sample = measure(engine, options, mode, config, root)
            results.samples.setdefault((target, mode), []).append(sample)
    return results


# -- the report --------------------------------------------------------------------------------


def median(samples: list[Sample], what: str) -> float:
    return float(statistics.median(getattr(sample, what) for sample in samples))


def machine_info() -> list[str]:
    return [
        *run_stamp(),
        f"- Python {platform.python_version()} ({platform.python_implementation()}); "
        f"SQLite {sqlite3.sqlite_version}; "
        f"GIL switch interval {sys.getswitchinterval() * 1e3:g} ms",
    ]


def report(results: Results, config: Config, command: str) -> str:
    out: list[str] = [f"Command: `{command}`", ""]
    out.extend(machine_info())
    out.append(
        f'- workload: {config.keys:,} keys `b"key%09d"`, {VALUE_SIZE}-byte random values, '
        f"each key written {1 + config.stale} times (about {config.stale}x as many dead bytes "
        f"as live ones); then single `set` calls back to back for {config.seconds:g} s, each "
        "timed (overwrites of random keys, one thread); fresh store per measurement; "
        f"{config.rounds} rounds, targets and modes alternating; each figure is the median "
        "over the rounds"
    )
    if config.quick:
        out.append("- **quick smoke run**: counts are reduced")
    out.append("")
    out.append(
        "Latencies in microseconds. The machine is small and shared (and was busy with other "
        "work during this run), so absolute numbers move between runs; read the ratios "
        "compacting/idle of one target, which come from alternating rounds of one run."
    )
    for note in results.notes:
        out.append(f"- {note}")
    out.append("")
    rows = []
    for target in TARGETS:
        for mode in MODES:
            samples = results.samples.get((target, mode))
            if not samples:
                continue
            compactions = (
                f"{median(samples, 'compactions'):g} "
                f"({median(samples, 'compaction_seconds'):.2f} s each)"
                if mode == "compacting"
                else "-"
            )
            rows.append(
                [
                    target,
                    mode,
                    f"{median(samples, 'sets') / config.seconds:,.0f}",
                    f"{median(samples, 'p50'):,.1f}",
                    f"{median(samples, 'p99'):,.1f}",
                    f"{median(samples, 'max'):,.0f}",
                    compactions,
                ]
            )
    out.extend(
        table(
            ["target", "mode", "sets/s", "p50 µs", "p99 µs", "max µs", "compactions meanwhile"],
            rows,
            text_columns=2,
        )
    )
    out.append("")
    out.append("Ratios compacting/idle (1.00: no stall; per-round values in brackets):")
    out.append("")
    ratio_rows = []
    for target in TARGETS:
        idle = results.samples.get((target, "idle"))
        busy = results.samples.get((target, "compacting"))
        if not idle or not busy:
            continue
        row = [target]
        for what in ("p50", "p99", "max"):
            overall = median(busy, what) / median(idle, what)
            rounds = " ".join(
                f"{getattr(b, what) / getattr(i, what):.1f}"
                for i, b in zip(idle, busy, strict=True)
            )
            row.append(f"{overall:.2f} [{rounds}]")
        ratio_rows.append(row)
    out.extend(table(["target", "p50", "p99", "max"], ratio_rows, text_columns=1))
    out.append("")
    out.append(
        "How to read it: the kvs compaction is Python code on another thread, so a `set` that "
        "arrives while it runs waits for the GIL (up to the switch interval) and, for the "
        "file swap, for the store's lock, which the compaction takes in short spells; the "
        "sqlite engine's `compact()` holds the store's write lock for the whole `VACUUM`, so "
        "its worst `set` waits for a whole rewrite of the database."
    )
    return "\n".join(out) + "\n"


DOCS_SECTION_INTRO = """`bench/bench_compaction_stall.py` measures how much a running compaction
slows down writers (RELIABILITY.md C3): the p50, p99 and max latency of single `set` calls on a
store full of stale data, with nothing else running and with `compact()` looping in a
background thread, for the kvs log engine and for kvs's sqlite engine (whose `compact()` is a
`VACUUM`). The module docstring has the details.

    python bench/bench_compaction_stall.py --write-docs

"""


def parse_args(argv: Sequence[str]) -> Config:
    parser = argparse.ArgumentParser(
        description="set latency with and without a compaction running, as ratios.",
    )
    parser.add_argument("--keys", type=int, help="live keys in the store (default 50000)")
    parser.add_argument("--stale", type=int, help="overwrite passes before timing (default 3)")
    parser.add_argument(
        "--seconds", type=float, help="timed sets run this long per measurement (default 4)"
    )
    parser.add_argument("--rounds", type=int, help="rounds, median kept (default 5)")
    add_run_options(parser)
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    defaults = (20_000, 3, 1.5, 2) if quick else (100_000, 3, 4.0, 5)

    def pick(value: int | None, default: float, name: str, least: int = 1) -> int:
        chosen = int(default) if value is None else value
        if chosen < least:
            parser.error(f"--{name} must be at least {least}")
        return chosen

    seconds = float(defaults[2] if args.seconds is None else args.seconds)
    if not seconds > 0:
        parser.error("--seconds must be positive")
    return Config(
        keys=pick(args.keys, defaults[0], "keys"),
        stale=pick(args.stale, defaults[1], "stale", 0),
        seconds=seconds,
        rounds=pick(args.rounds, defaults[3], "rounds"),
        write_docs=bool(args.write_docs),
        quick=quick,
        tmp_dir=args.tmp_dir,
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    config = parse_args(argv)
    script = os.path.relpath(os.path.abspath(__file__), os.getcwd())
    command = " ".join(["python", script, *argv])
    root = tempfile.mkdtemp(prefix="kvs-stall-bench-", dir=config.tmp_dir)
    started = time.perf_counter()
    try:
        results = run(config, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    progress(f"done in {time.perf_counter() - started:.0f} s")
    section = report(results, config, command)
    print(section)
    if config.write_docs:
        write_section(DOCS_START, DOCS_END, DOCS_SECTION_INTRO + section, heading=DOCS_HEADING)
        print(f"wrote {os.path.relpath(DOCS_PATH, os.getcwd())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
