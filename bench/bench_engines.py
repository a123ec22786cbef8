"""Every engine through one interface: the same workload through ``KvStore``, in one run.

The targets:

- in process, each in a fresh temporary directory per round: ``kvs`` (the log engine),
  ``sqlite`` and ``memory``, with the default ``sync="everysec"`` where there is one;
- the ``redis`` engine (redis-py, one connection, one operation per round trip) against
  servers this script starts on free loopback ports:
  (a) ``redis-server --appendonly yes --appendfsync everysec``;
  (b) a Redis Cluster of 3 masters (``redis-server --cluster-enabled yes``, each with the same
  AOF settings, joined by ``redis-cli --cluster create``);
  (c) ``kvs-server --sync everysec``.

So every target that keeps data promises the same: nothing acknowledged is lost if the process
(or server) is killed, about a second of writes in a power cut.

The workload, on a fresh (or flushed) store, with ``--keys`` N keys (default 20,000) and
100-byte random values, all from ``random.Random(--seed)``:

1. ``set``: N sets of keys ``b"key%09d"``, one call each;
2. ``get``: N gets of those keys in random order;
3. ``batch set``: N more keys in batches of 100 (``store.update(chunk)``, atomic), the keys of
   a batch sharing a hash tag, ``b"{b%06d}:%03d"``, so that each batch is in one hash slot of
   the cluster (a batch across slots is refused there);
4. ``prefix scan``: ``--scans`` scans (default 20) of a random batch's prefix ``b"{b%06d}:"``,
   100 keys each (a scan is counted as one operation);
5. ``remove``: the N keys of step 1 removed, in another random order.

Each step is timed on its own (the cyclic GC collected before it and paused during it:
``bench_embedded.timed``) and reported as operations per second; results are checked outside
the timers. ``--rounds`` rounds (default 3) run, the targets taking turns in a rotating order;
the best round of each target and step is reported (noise on a shared machine only ever slows
a run down). Ratios: in-process engines against ``kvs`` in process, the networked targets
against redis-server (see the module's ``REFERENCES``).

Every process this script starts is stopped at the end, also after a failure, Ctrl-C or
SIGTERM, and the temporary directories are removed.

Run it from the repository root (needs ``redis-server`` and ``redis-cli`` on ``PATH`` for the
Redis targets: ``apt-get install redis-server redis-tools``)::

    python bench/bench_engines.py --quick         # smoke run: 2,000 keys, 2 rounds
    python bench/bench_engines.py                 # 20,000 keys, 3 rounds: a few minutes
    python bench/bench_engines.py --write-docs    # also rewrite the section of docs/benchmarks.md
    python bench/bench_engines.py --only kvs,redis-server,kvs-server

This is a script, not a test: nothing here is collected by pytest.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import platform
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_embedded  # this directory is sys.path[0] when the script runs
from _docs import DOCS_PATH, table, write_section
from bench_embedded import timed

from kvs import KvStore

VALUE_SIZE = 100
BATCH_SIZE = 100
KEY_FORMAT = b"key%09d"
BATCH_KEY_FORMAT = b"{b%06d}:%03d"  # the hash tag {b...} puts a batch in one slot
BATCH_PREFIX_FORMAT = b"{b%06d}:"
SEED = 20261124
VERIFY_SAMPLE = 200

DOCS_START = "<!-- engines-bench:start -->"
DOCS_END = "<!-- engines-bench:end -->"

OPS = ("set", "get", "batch set", "prefix scan", "remove")
OP_UNITS = {
    "set": "sets/s",
    "get": "gets/s",
    "batch set": f"keys/s (batches of {BATCH_SIZE})",
    "prefix scan": f"scans/s ({BATCH_SIZE} keys each)",
    "remove": "removes/s",
}

IN_PROCESS = "in process"
NETWORKED = "redis engine, over loopback"
#: The ratio reference of each group. In process, the question is what the other engines do
#: against kvs; over the network every target pays the same client and round trip per
#: operation, so the question is how a cluster and kvs-server compare with the server one
#: would otherwise run: redis-server.
REFERENCES = {IN_PROCESS: "kvs", NETWORKED: "redis-server"}


def rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if value >= 0.1 * base else f"{value / base:.2g}"


def log(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


# -- the data ----------------------------------------------------------------------------------


@dataclass
class Workload:
    pairs: list[tuple[bytes, bytes]]  # step 1, in key order
    get_order: list[bytes]  # step 2
    chunks: list[list[tuple[bytes, bytes]]]  # step 3
    scan_prefixes: list[bytes]  # step 4: each names one batch of step 3
    remove_order: list[bytes]  # step 5


def make_workload(count: int, scans: int, seed: int) -> Workload:
    rng = random.Random(seed)
    keys = [KEY_FORMAT % i for i in range(count)]
    pairs = [(key, rng.randbytes(VALUE_SIZE)) for key in keys]
    get_order = rng.sample(keys, len(keys))
    batch_pairs = [
        (BATCH_KEY_FORMAT % divmod(i, BATCH_SIZE), rng.randbytes(VALUE_SIZE)) for i in range(count)
    ]
    chunks = [batch_pairs[i : i + BATCH_SIZE] for i in range(0, count, BATCH_SIZE)]
    full = count // BATCH_SIZE  # batches of exactly BATCH_SIZE keys
    if full == 0:
        raise SystemExit(f"--keys must be at least {BATCH_SIZE}")
    scan_prefixes = [BATCH_PREFIX_FORMAT % rng.randrange(full) for _ in range(scans)]
    return Workload(pairs, get_order, chunks, scan_prefixes, rng.sample(keys, len(keys)))


# -- the targets -------------------------------------------------------------------------------


@dataclass
class Target:
    """One row of the report: an engine, and where each round's store lives."""

    name: str
    group: str
    label: str
    engine: str
    #: A fresh, empty store's location for a round (a new directory, or a flushed server).
    fresh: Callable[[], str]
    options: dict[str, Any] = field(default_factory=dict)
    #: Called after each round with the location (removes a directory).
    done: Callable[[str], None] = lambda location: None


def in_process_targets(root: Path) -> list[Target]:
    counter = iter(range(1_000_000))

    def fresh_dir(name: str) -> Callable[[], str]:
        return lambda: str(root / f"{name}-{next(counter)}")

    def remove_dir(location: str) -> None:
        shutil.rmtree(location, ignore_errors=True)

    return [
        Target("kvs", IN_PROCESS, "kvs (log engine), sync=everysec", "kvs",
               fresh_dir("kvs"), {"sync": "everysec"}, remove_dir),
        Target("sqlite", IN_PROCESS, "sqlite (WAL), sync=everysec", "sqlite",
               fresh_dir("sqlite"), {"sync": "everysec"}, remove_dir),
        Target("memory", IN_PROCESS, "memory (a dict)", "memory", fresh_dir("memory")),
    ]  # fmt: skip


def flusher(clients: Callable[[], Sequence[Any]], url: str) -> Callable[[], str]:
    """``fresh`` for a server: FLUSHALL on every node, then its URL."""

    def fresh() -> str:
        for client in clients():
            with client:
                client.flushall()
        return url

    return fresh


@contextlib.contextmanager
def networked_targets(root: Path, wanted: set[str], notes: list[str]) -> Iterator[list[Target]]:
    """Start the servers of the wanted networked targets; stop them all on the way out."""
    from kvs.localservers import Cluster, KvsServerProcess, RedisServer, free_port

    targets: list[Target] = []
    with contextlib.ExitStack() as stack:
        has_redis = all(shutil.which(tool) for tool in ("redis-server", "redis-cli"))
        if not has_redis and wanted & {"redis-server", "cluster"}:
            notes.append("redis-server / redis-cli not found: the Redis targets were skipped.")
        if has_redis and "redis-server" in wanted:
            server = RedisServer(root / "redis-server", free_port(), appendfsync="everysec")
            stack.callback(server.stop)
            log(f"starting redis-server on {server.addr}")
            server.start()
            targets.append(
                Target("redis-server", NETWORKED, "redis → redis-server (AOF everysec)", "redis",
                       flusher(lambda: [server.client()], server.url))
            )  # fmt: skip
        if has_redis and "cluster" in wanted:
            cluster = Cluster(root / "cluster", masters=3, appendfsync="everysec")
            stack.callback(cluster.stop)
            log(f"starting a 3-master cluster on {', '.join(n.addr for n in cluster.nodes)}")
            cluster.start()
            targets.append(
                Target("cluster", NETWORKED, "redis → Redis Cluster, 3 masters (AOF everysec)",
                       "redis", flusher(lambda: [n.client() for n in cluster.masters()],
                                        cluster.url))
            )  # fmt: skip
        if "kvs-server" in wanted:
            kvs_server = KvsServerProcess(root / "kvs-server", free_port(), ["--sync", "everysec"])
            stack.callback(kvs_server.stop)
            log(f"starting kvs-server on {kvs_server.addr}")
            kvs_server.start()
            targets.append(
                Target("kvs-server", NETWORKED, "redis → kvs-server (--sync everysec)", "redis",
                       flusher(lambda: [kvs_server.client()], kvs_server.url))
            )  # fmt: skip
        yield targets


# -- running -----------------------------------------------------------------------------------


def run_round(target: Target, work: Workload, rng: random.Random) -> dict[str, float]:
    """The five steps on a fresh store of ``target``; operations/s of each."""
    location = target.fresh()
    store = KvStore.open(location, engine=target.engine, **target.options)
    rates: dict[str, float] = {}
    try:
        set_, get, update, scan, remove = (
            store.set, store.get, store.update, store.scan, store.remove
        )  # fmt: skip

        def sets() -> None:
            for key, value in work.pairs:
                set_(key, value)

        def gets() -> None:
            for key in work.get_order:
                get(key)

        def batches() -> None:
            for chunk in work.chunks:
                update(chunk)

        found: list[int] = []

        def scans() -> None:
            for prefix in work.scan_prefixes:
                found.append(len(list(scan(prefix))))

        def removes() -> None:
            for key in work.remove_order:
                remove(key)

        rates["set"] = timed(len(work.pairs), sets)
        rates["get"] = timed(len(work.get_order), gets)
        for key, value in rng.sample(work.pairs, min(VERIFY_SAMPLE, len(work.pairs))):
            if store.get(key) != value:
                raise AssertionError(f"{target.name}: wrong value for {key!r}")
        rates["batch set"] = timed(sum(len(chunk) for chunk in work.chunks), batches)
        rates["prefix scan"] = timed(len(work.scan_prefixes), scans)
        if any(n != BATCH_SIZE for n in found):
            raise AssertionError(f"{target.name}: a prefix scan found {found} keys")
        rates["remove"] = timed(len(work.remove_order), removes)
        left = len(store)
        if left != sum(len(chunk) for chunk in work.chunks):
            raise AssertionError(f"{target.name}: {left} keys left after the removes")
    finally:
        store.close()
        target.done(location)
    return rates


@dataclass
class Results:
    rounds: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    def add(self, name: str, rates: dict[str, float]) -> None:
        self.rounds.setdefault(name, []).append(rates)

    def best(self, name: str, op: str) -> float:
        return max(rates[op] for rates in self.rounds[name])


# -- the report --------------------------------------------------------------------------------

NOTES = [
    "Notes: the networked targets run one client thread (redis-py, one round trip per "
    "operation, the pure-Python reply parser unless hiredis is installed), so for single "
    "operations the client and the loopback round trip are most of the cost, and the "
    "ratios between the servers are squeezed towards 1; the batches and scans show more "
    "of each server. A prefix scan through the redis engine walks the whole key space "
    "with `SCAN ... MATCH` (on the cluster, every master) and then reads each found key's "
    "type tag: its cost grows with the store, not with the 100 keys found.",
]


def ratio_row(results: Results, target: Target, reference: str) -> list[str]:
    return [
        target.label,
        reference,
        *(ratio(results.best(target.name, op), results.best(reference, op)) for op in OPS),
    ]


def report(results: Results, targets: Sequence[Target], meta: list[str], notes: list[str]) -> str:
    out = [*meta, ""]
    out.append(
        "Operations per second, best round of each target and step. **Only the ratios mean "
        "much**: the machine is small and shared (2 cores, other work running), so absolute "
        "numbers move from run to run; the targets took turns in every round, so drift hits "
        "all of them alike."
    )
    out += ["", "### Operations per second", ""]
    header = ["target", *(f"{op}" for op in OPS)]
    rows = [[t.label, *(rate(results.best(t.name, op)) for op in OPS)] for t in targets]
    out += table(header, rows)
    out += ["", "Units: " + "; ".join(f"{op}: {unit}" for op, unit in OP_UNITS.items()) + "."]
    out += ["", "### Ratios", ""]
    out.append(
        "Each target against its group's reference (the 1.00 row): the in-process engines "
        "against kvs in process; the networked targets against redis-server, since all three "
        "go through the same client, one round trip per operation, and the question is how a "
        "cluster and kvs-server compare with the server one would otherwise run. The last "
        "rows put each networked target against kvs in process: the price of a client, a "
        "round trip per operation and a server."
    )
    out.append("")
    ratio_rows = []
    for t in targets:
        reference = REFERENCES[t.group]
        if reference in results.rounds:
            ratio_rows.append(ratio_row(results, t, reference))
    if "kvs" in results.rounds:
        ratio_rows += [ratio_row(results, t, "kvs") for t in targets if t.group == NETWORKED]
    out += table(["target", "against", *OPS], ratio_rows, 2)
    detail = []
    for t in targets:
        for op in OPS:
            detail.append([t.name, op, " ".join(rate(r[op]) for r in results.rounds[t.name])])
    out += ["", "### Every round", "", *table(["target", "step", "ops/s per round"], detail, 2)]
    out += ["", *NOTES, *notes]
    return "\n".join(out) + "\n"


def metadata(args: argparse.Namespace) -> list[str]:
    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    redis_version = "redis-server not installed"
    if shutil.which("redis-server"):
        done = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=30
        )
        redis_version = done.stdout.strip()
    command = "python bench/bench_engines.py" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:])
    date_and_commit, machine = bench_embedded.machine_info()[:2]
    return [
        f"Command: `{command}`",
        "",
        date_and_commit,
        machine,
        f"- Python {platform.python_version()} ({platform.python_implementation()}); "
        f"redis-py {version('redis')}, hiredis {version('hiredis')}; {redis_version}",
        f"- workload: {args.keys:,} keys (12 B) with {VALUE_SIZE}-byte values, {args.keys:,} "
        f"more in batches of {BATCH_SIZE}, {args.scans} prefix scans; seed {args.seed}; best of "
        f"{args.rounds} round(s), targets alternating",
    ]


def write_docs(section: str) -> None:
    """Replace this script's marked section of docs/benchmarks.md (a missing file is started
    with bench_embedded's introduction, as that script would)."""
    write_section(DOCS_START, DOCS_END, section, new_file=bench_embedded.DOCS_INTRO)
    log(f"wrote {os.path.relpath(DOCS_PATH, os.getcwd())}")


# -- main --------------------------------------------------------------------------------------

ALL_TARGETS = ("kvs", "sqlite", "memory", "redis-server", "cluster", "kvs-server")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--keys", type=int, default=None, help="N (default 20000; quick 2000)")
    parser.add_argument("--scans", type=int, default=None, help="prefix scans (20; quick 10)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3; quick 2)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--quick", action="store_true", help="a small run: a smoke test")
    parser.add_argument(
        "--only", default=",".join(ALL_TARGETS), help=f"targets, of {','.join(ALL_TARGETS)}"
    )
    parser.add_argument("--tmp-dir", default=None, help="where the temporary directories go")
    parser.add_argument("--write-docs", action="store_true", help="rewrite docs/benchmarks.md")
    args = parser.parse_args(argv)
    args.keys = args.keys or (2_000 if args.quick else 20_000)
    args.scans = args.scans or (10 if args.quick else 20)
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.only = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = args.only - set(ALL_TARGETS)
    if unknown:
        parser.error(f"unknown target(s): {', '.join(sorted(unknown))}")
    return args


def stop_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the servers


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    work = make_workload(args.keys, args.scans, args.seed)
    notes: list[str] = []
    results = Results()
    with tempfile.TemporaryDirectory(prefix="bench-engines-", dir=args.tmp_dir) as tmp:
        root = Path(tmp)
        in_process = [t for t in in_process_targets(root) if t.name in args.only]
        try:
            with networked_targets(root, args.only, notes) as networked:
                targets = [*in_process, *networked]
                if not targets:
                    print("bench_engines: no target to run", file=sys.stderr)
                    return 2
                rng = random.Random(args.seed)
                for round_no in range(args.rounds):
                    turn = round_no % len(targets)
                    for target in [*targets[turn:], *targets[:turn]]:
                        started = time.monotonic()
                        rates = run_round(target, work, rng)
                        results.add(target.name, rates)
                        log(
                            f"round {round_no + 1}/{args.rounds} {target.name:<12} "
                            + " ".join(f"{op} {rate(rates[op])}" for op in OPS)
                            + f" ({time.monotonic() - started:.1f} s)"
                        )
        except RuntimeError as error:  # a server did not start
            print(f"bench_engines: {error}", file=sys.stderr)
            return 1
    section = report(results, targets, metadata(args), notes)
    print(section)
    if args.write_docs:
        write_docs(section)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the servers are stopped and the directories gone by now
        print("bench_engines: interrupted", file=sys.stderr)
        sys.exit(130)
