"""kvs-server against redis-server, measured with ``redis-benchmark`` in one run.

Both servers are started by this script on loopback, on free ports, each in its own temporary
directory, and stopped (killed if need be) when it ends:

- ``kvs-server --sync everysec``: every write is appended to the store's log (handed to the OS)
  before the reply goes out, and fsynced once a second;
- ``redis-server --appendonly yes --appendfsync everysec --save ''``: the same durability (AOF
  written before the reply, fsynced once a second), no RDB snapshots.

The workload is ``redis-benchmark`` with ``-c 50`` clients, ``-r`` random keys (``--keyspace``,
default 100,000), ``--csv`` output, one test per invocation:

- SET and GET, value sizes ``-d 3`` and ``-d 100``;
- without pipelining (``-n``, default 100,000 requests) and with ``-P 16`` (``--n-pipelined``,
  default four times ``-n``: pipelined runs are several times faster, and the kernel counts CPU
  time in 10 ms ticks, so they need more requests for a precise CPU figure).

Before the rounds each server gets one unmeasured pipelined SET run over the whole keyspace
(warm-up; it also fills the keyspace, so that GETs mostly hit). Then ``--rounds`` rounds run;
within a round every case runs on kvs, then on redis, then the next case (kvs, redis, kvs,
redis, ...), so slow drift of a shared machine hits both servers alike.

Two numbers per server and case:

- **requests/s**: as ``redis-benchmark`` reports it; the table shows the *best* round (noise
  from other work on the machine only ever slows a run down) and the median;
- **server CPU per request**: the server process's ``utime + stime`` (``/proc/PID/stat``, all
  threads, plus its reaped children: redis's AOF rewrites) just before and just after each
  ``redis-benchmark`` run, summed over the rounds and divided by the requests of those rounds.
  This is the server's own cost, and it holds even when the client, not the server, is the
  bottleneck (``redis-benchmark`` is single-threaded).

A second table shows every round, the CPU per request split into user and kernel time, and how
busy each side was (CPU seconds / wall seconds of the best round): a server near 100 % is the
bottleneck; a client near 100 % means the client is. The key count (DBSIZE) of both servers at
the end is a sanity check that kvs stored what it acknowledged.

The targets (from the issue) are printed with PASS/FAIL: kvs >= 0.9x redis's requests/s without
pipelining, >= 0.6x with ``-P 16`` (every SET/GET x size case must meet it), and kvs's CPU per
request <= 2x redis's (every case).

Run it from the repository root (needs ``redis-server`` and ``redis-benchmark`` on ``PATH``:
``apt-get install redis-server redis-tools``)::

    python bench/bench_server.py --quick         # smoke run: -n 20000, 2 rounds, ~15 s
    python bench/bench_server.py                 # full run: 5 rounds, ~2-3 minutes
    python bench/bench_server.py --write-docs    # also rewrite the section of docs/benchmarks.md

``--kvs-loop asyncio`` runs kvs-server on asyncio's own event loop even when uvloop is
installed (to measure what uvloop brings: ``pip install -e '.[server]'`` installs it).

``--kvs-server bench/floor_server.py`` puts the floor of a Python RESP server in kvs-server's
place (see that file): the least work per request, which bounds what kvs-server can reach.

This is a script, not a test: nothing here is collected by pytest.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import io
import math
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from _docs import DOCS_PATH, REPO_ROOT, write_section  # this directory is sys.path[0]

DOCS_START = "<!-- server-bench:start -->"
DOCS_END = "<!-- server-bench:end -->"
DOCS_HEADING = "## kvs-server against redis-server"

CLIENTS = 50
PIPELINES = (1, 16)
SIZES = (3, 100)
TESTS = ("SET", "GET")
TARGET_PLAIN = 0.9
TARGET_PIPELINED = 0.6
TARGET_CPU = 2.0
START_TIMEOUT = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PING = b"*1\r\n$4\r\nPING\r\n"
DBSIZE = b"*1\r\n$6\r\nDBSIZE\r\n"
# Makes ``import uvloop`` fail inside kvs-server, so that it falls back to asyncio's loop.
NO_UVLOOP = (
    "import sys; sys.modules['uvloop'] = None; from kvs.cli.server import main; sys.exit(main())"
)
# Run by kvs-server's interpreter: its Python, kvs, uvloop and hiredis versions, and whether
# any module of the kvs package mentions hiredis at all.
PROBE = """
import importlib.metadata as m, pathlib, platform, kvs
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return "-"
uses = any("hiredis" in p.read_text("utf-8", "replace")
           for p in pathlib.Path(kvs.__file__).parent.rglob("*.py"))
print(platform.python_version(), platform.python_implementation(), version("kvs-store"),
      version("uvloop"), version("hiredis"), "yes" if uses else "no")
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# Cases and samples ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    test: str
    pipeline: int
    size: int

    @property
    def label(self) -> str:
        pipe = f"-P {self.pipeline}" if self.pipeline > 1 else "no pipelining"
        return f"{self.test} -d {self.size}, {pipe}"


@dataclass(frozen=True)
class Sample:
    rps: float
    requests: int
    wall: float
    server_cpu: float
    server_sys: float
    client_cpu: float


@dataclass
class Results:
    samples: dict[tuple[str, Case], list[Sample]] = field(default_factory=dict)

    def add(self, server: str, case: Case, sample: Sample) -> None:
        self.samples.setdefault((server, case), []).append(sample)

    def of(self, server: str, case: Case) -> list[Sample]:
        return self.samples[(server, case)]

    def best_rps(self, server: str, case: Case) -> float:
        return max(s.rps for s in self.of(server, case))

    def median_rps(self, server: str, case: Case) -> float:
        return statistics.median(s.rps for s in self.of(server, case))

    def best(self, server: str, case: Case) -> Sample:
        return max(self.of(server, case), key=lambda s: s.rps)

    def cpu_us(self, server: str, case: Case) -> float:
        samples = self.of(server, case)
        return 1e6 * sum(s.server_cpu for s in samples) / sum(s.requests for s in samples)

    def kernel_us(self, server: str, case: Case) -> float:
        """The part of :meth:`cpu_us` spent in the kernel (stime: syscalls, the TCP stack)."""
        samples = self.of(server, case)
        return 1e6 * sum(s.server_sys for s in samples) / sum(s.requests for s in samples)


def all_cases() -> list[Case]:
    return [Case(t, p, d) for p in PIPELINES for d in SIZES for t in TESTS]


# Servers ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ask(port: int, request: bytes, timeout: float = 2.0) -> bytes:
    """Send one RESP request to 127.0.0.1:port and return the first line of the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        return reply.strip()


def process_cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds ``pid`` has used so far (``/proc/PID/stat``): utime and
    stime of all its threads, plus cutime and cstime of the children it has waited for
    (redis-server's AOF rewrite runs in a forked child)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        stat = f.read()
    fields = [int(f) for f in stat[stat.rindex(")") + 2 :].split()[11:15]]
    # The list starts at field 3 of proc(5) (state); utime, stime, cutime, cstime: 14-17.
    utime, stime, cutime, cstime = fields
    return (utime + cutime) / CLK_TCK, (stime + cstime) / CLK_TCK


class Server:
    def __init__(self, name: str, argv: list[str], port: int, directory: str) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.directory = directory
        self.log_path = os.path.join(directory, f"{name}-stdout.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log(f"starting {self.name}: {shlex.join(self.argv)}")
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.output()}")
            with contextlib.suppress(OSError):
                if ask(self.port, PING) == b"+PONG":
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not answer PING:\n{self.output()}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> tuple[float, float]:
        return process_cpu_seconds(self.pid)

    def output(self) -> str:
        with contextlib.suppress(OSError), open(self.log_path, encoding="utf-8") as f:
            return "\n".join(f.read().splitlines()[-30:])
        return ""

    def error_lines(self) -> list[str]:
        """Lines of the server's output that report an error or a traceback."""
        with contextlib.suppress(OSError), open(self.log_path, encoding="utf-8") as f:
            return [line for line in f if "ERROR" in line or "Traceback" in line]
        return []

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def kvs_interpreter(kvs_server: str) -> str:
    """The Python that runs the kvs-server script (its shebang), else this one."""
    with contextlib.suppress(OSError, UnicodeDecodeError), open(kvs_server, encoding="utf-8") as f:
        first = f.readline()
        if first.startswith("#!"):
            words = first[2:].split()
            if words and os.path.exists(words[0]):
                return words[0]
    return sys.executable


def kvs_argv(kvs_server: str, loop: str, port: int, directory: str) -> list[str]:
    args = ["--addr", f"127.0.0.1:{port}", "--dir", directory, "--sync", "everysec"]
    if loop == "asyncio":
        return [kvs_interpreter(kvs_server), "-c", NO_UVLOOP, *args]
    if kvs_server.endswith(".py"):  # a script in kvs-server's place, e.g. floor_server.py
        return [sys.executable, kvs_server, *args]
    return [kvs_server, *args]


def redis_argv(redis_server: str, port: int, directory: str) -> list[str]:
    return [
        redis_server,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", directory,
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
        "--daemonize", "no",
    ]  # fmt: skip


# redis-benchmark --------------------------------------------------------------------------


def benchmark_argv(
    tool: str, port: int, test: str, requests: int, pipeline: int, size: int, keyspace: int
) -> list[str]:
    return [
        tool,
        "-h", "127.0.0.1",
        "-p", str(port),
        "-c", str(CLIENTS),
        "-n", str(requests),
        "-r", str(keyspace),
        "-d", str(size),
        "-P", str(pipeline),
        "-t", test.lower(),
        "--csv",
    ]  # fmt: skip


def parse_csv(text: str, test: str) -> float:
    """The ``rps`` of ``test`` from ``redis-benchmark --csv`` output."""
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("test", "").upper() == test:
            return float(row["rps"])
    raise RuntimeError(f"no {test} row in redis-benchmark output:\n{text}")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_benchmark(server: Server, argv: list[str], test: str, requests: int) -> Sample:
    client_before = children_cpu_seconds()
    server_before = server.cpu_seconds()
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    server_after = server.cpu_seconds()
    client_after = children_cpu_seconds()
    if done.returncode != 0 or server.proc is None or server.proc.poll() is not None:
        raise RuntimeError(
            f"{shlex.join(argv)} failed (exit {done.returncode}) against {server.name}:\n"
            f"{done.stdout}\n{done.stderr}\n{server.name} output:\n{server.output()}"
        )
    if "error" in done.stderr.lower():
        raise RuntimeError(f"{server.name} answered errors:\n{done.stderr[-2000:]}")
    return Sample(
        rps=parse_csv(done.stdout, test),
        requests=requests,
        wall=wall,
        server_cpu=sum(server_after) - sum(server_before),
        server_sys=server_after[1] - server_before[1],
        client_cpu=client_after - client_before,
    )


# Report ----------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    """A Markdown table; ``align`` holds one of 'l'/'r' per column."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        out = [
            c.ljust(w) if a == "l" else c.rjust(w)
            for c, w, a in zip(cells, widths, align, strict=True)
        ]
        return "| " + " | ".join(out) + " |"

    rule = (
        "|"
        + "|".join(
            ":" + "-" * (w + 1) if a == "l" else "-" * (w + 1) + ":"
            for w, a in zip(widths, align, strict=True)
        )
        + "|"
    )
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def fmt_int(value: float) -> str:
    return f"{value:,.0f}"


@dataclass(frozen=True)
class Verdict:
    name: str
    passed: bool
    measured: str


def verdicts(results: Results, cases: Sequence[Case]) -> list[Verdict]:
    out: list[Verdict] = []
    for pipeline, target in ((1, TARGET_PLAIN), (16, TARGET_PIPELINED)):
        chosen = [c for c in cases if c.pipeline == pipeline]
        ratios = {c: results.best_rps("kvs", c) / results.best_rps("redis", c) for c in chosen}
        worst = min(ratios, key=lambda c: ratios[c])
        pipe = "without pipelining" if pipeline == 1 else f"with -P {pipeline}"
        out.append(
            Verdict(
                f"kvs requests/s >= {target}x redis's {pipe} (every case)",
                all(r >= target for r in ratios.values()),
                f"worst: {worst.label} at {ratios[worst]:.2f}x; all: "
                + ", ".join(f"{ratios[c]:.2f}" for c in chosen),
            )
        )
    cpu = {c: results.cpu_us("kvs", c) / results.cpu_us("redis", c) for c in cases}
    worst = max(cpu, key=lambda c: cpu[c])
    out.append(
        Verdict(
            f"kvs server CPU per request <= {TARGET_CPU:g}x redis's (every case)",
            all(r <= TARGET_CPU for r in cpu.values()),
            f"worst: {worst.label} at {cpu[worst]:.2f}x "
            f"({results.cpu_us('kvs', worst):.2f} vs {results.cpu_us('redis', worst):.2f} µs)",
        )
    )
    return out


def render(
    results: Results, cases: Sequence[Case], meta: list[str], notes: list[str], rounds: int
) -> str:
    parts: list[str] = list(meta)
    parts.append("")
    parts.append(
        f"requests/s: best of {rounds} round(s) (median in the second table); CPU µs/request: "
        "the server process's utime+stime over all rounds of a case / their requests. "
        "kvs/redis > 1 means kvs did more requests/s, or used more CPU per request."
    )
    rows = []
    for case in cases:
        k, r = results.best_rps("kvs", case), results.best_rps("redis", case)
        kc, rc = results.cpu_us("kvs", case), results.cpu_us("redis", case)
        rows.append(
            [
                case.label,
                fmt_int(k),
                fmt_int(r),
                f"{k / r:.2f}",
                f"{kc:.2f}",
                f"{rc:.2f}",
                f"{kc / rc:.2f}",
            ]
        )
    parts += [
        "",
        "### Requests/s and server CPU per request",
        "",
        table(
            [
                "case (-c 50)",
                "kvs req/s",
                "redis req/s",
                "kvs/redis",
                "kvs CPU µs/req",
                "redis CPU µs/req",
                "CPU kvs/redis",
            ],
            rows,
            "lrrrrrr",
        ),
    ]
    detail = []
    for case in cases:
        for name in ("kvs", "redis"):
            best = results.best(name, case)
            cpu, kernel = results.cpu_us(name, case), results.kernel_us(name, case)
            detail.append(
                [
                    case.label,
                    name,
                    fmt_int(results.median_rps(name, case)),
                    " ".join(fmt_int(s.rps) for s in results.of(name, case)),
                    f"{cpu - kernel:.2f} + {kernel:.2f}",
                    f"{100 * best.server_cpu / best.wall:.0f} %",
                    f"{100 * best.client_cpu / best.wall:.0f} %",
                ]
            )
    parts += [
        "",
        "### Every round, and who was busy",
        "",
        "CPU µs/req split into user + kernel time (the kernel part is mostly the syscalls and "
        "the loopback TCP stack). busy = CPU seconds / wall seconds of the best round's "
        "redis-benchmark run (the wall time includes connecting 50 clients); a side near "
        "100 % is the bottleneck.",
        "",
        table(
            [
                "case",
                "server",
                "median req/s",
                "rounds req/s",
                "CPU µs/req user + kernel",
                "server busy",
                "client busy",
            ],
            detail,
            "llrrrrr",
        ),
        "",
        *notes,
    ]
    vs = verdicts(results, cases)
    parts += [
        "",
        "### Targets (from the issue)",
        "",
        table(
            ["target", "result", "measured"],
            [[v.name, "PASS" if v.passed else "FAIL", v.measured] for v in vs],
            "lll",
        ),
    ]
    return "\n".join(parts) + "\n"


def write_docs(section: str) -> None:
    write_section(DOCS_START, DOCS_END, section, heading=DOCS_HEADING)
    log(f"wrote {DOCS_PATH}")


def command_output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"? ({error})"
    return (done.stdout or done.stderr).strip()


def git_commit() -> str:
    commit = command_output(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"])
    status = command_output(["git", "-C", str(REPO_ROOT), "status", "--porcelain"])
    return commit + ("-dirty" if status else "")


def metadata(args: argparse.Namespace, kvs_server: str, redis_server: str, tool: str) -> list[str]:
    probe = command_output([kvs_interpreter(kvs_server), "-c", PROBE]).split()
    py, impl, kvs_version, uvloop, hiredis, uses_hiredis = (probe + ["?"] * 6)[:6]
    if args.kvs_loop == "asyncio":
        loop = "asyncio (uvloop blocked)"
    elif uvloop == "-":
        loop = "asyncio (uvloop not installed)"
    else:
        loop = f"uvloop {uvloop}"
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "python bench/bench_server.py" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:])
    return [
        f"Command: `{command}`",
        "",
        f"- date: {now}; kvs commit: {git_commit()}",
        f"- machine: nproc {os.cpu_count()}, {platform.machine()}, {platform.platform()}",
        f"- kvs-server {kvs_version} on Python {py} ({impl}), event loop: {loop}; "
        f"hiredis: {hiredis}" + (" (no kvs module refers to it)" if uses_hiredis == "no" else ""),
        f"- {command_output([redis_server, '--version'])}",
        f"- {command_output([tool, '--version'])}: -c {CLIENTS}, -r {args.keyspace}, "
        f"-n {args.requests} without pipelining, -n {args.n_pipelined} with -P 16, "
        f"{args.rounds} round(s), servers alternating",
        "- kvs-server --sync everysec; redis-server --appendonly yes --appendfsync everysec "
        "--save '' (both on 127.0.0.1, data in a fresh temporary directory)",
    ]


# Main -------------------------------------------------------------------------------------


def default_kvs_server() -> str:
    local = REPO_ROOT / ".venv" / "bin" / "kvs-server"
    if local.exists():
        return str(local)
    return shutil.which("kvs-server") or "kvs-server"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("-n", "--requests", type=int, default=None, help="requests per run")
    parser.add_argument(
        "--n-pipelined", type=int, default=None, help="requests per -P 16 run (default 4x -n)"
    )
    parser.add_argument("-r", "--keyspace", type=int, default=100_000, help="random keys")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 5; quick 2)")
    parser.add_argument("--quick", action="store_true", help="-n 20000, 2 rounds")
    parser.add_argument("--kvs-server", default=default_kvs_server(), help="kvs-server to run")
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    parser.add_argument(
        "--redis-benchmark", default=shutil.which("redis-benchmark") or "redis-benchmark"
    )
    parser.add_argument(
        "--kvs-loop",
        choices=("default", "asyncio"),
        default="default",
        help="default: run the kvs-server script as installed (uvloop if importable); asyncio: "
        "block uvloop in it (to measure what uvloop brings)",
    )
    parser.add_argument("--tmp-dir", default=None, help="where the data directories go")
    parser.add_argument(
        "--write-docs", action="store_true", help=f"replace the section in {DOCS_PATH.name}"
    )
    args = parser.parse_args(argv)
    if args.requests is None:
        args.requests = 20_000 if args.quick else 100_000
    if args.n_pipelined is None:
        args.n_pipelined = 4 * args.requests
    if args.rounds is None:
        args.rounds = 2 if args.quick else 5
    return args


@contextlib.contextmanager
def running(servers: Sequence[Server]) -> Iterator[None]:
    try:
        for server in servers:
            server.start()
        yield
    finally:
        for server in servers:
            try:
                server.stop()
            except Exception as error:  # keep stopping the others
                log(f"stopping {server.name}: {error}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return bench(args)
    except RuntimeError as error:  # a server or redis-benchmark failed: say so, no traceback
        log(f"bench_server: {error}")
        return 1


def bench(args: argparse.Namespace) -> int:
    for tool in (args.redis_server, args.redis_benchmark, args.kvs_server):
        if shutil.which(tool) is None and not (tool.endswith(".py") and os.path.isfile(tool)):
            log(f"not found: {tool} (apt-get install redis-server redis-tools; pip install -e .)")
            return 2
    cases = all_cases()
    results = Results()
    dbsize: dict[str, str] = {}
    notes: list[str] = []
    sets = args.keyspace + args.rounds * sum(
        args.requests if c.pipeline == 1 else args.n_pipelined for c in cases if c.test == "SET"
    )
    expected = args.keyspace * (1 - math.exp(-sets / args.keyspace))
    with tempfile.TemporaryDirectory(prefix="bench-server-", dir=args.tmp_dir) as tmp:
        kvs_dir, redis_dir = os.path.join(tmp, "kvs"), os.path.join(tmp, "redis")
        os.makedirs(kvs_dir)
        os.makedirs(redis_dir)
        kvs_port = free_port()
        redis_port = free_port()
        while redis_port == kvs_port:
            redis_port = free_port()
        servers = [
            Server("kvs", kvs_argv(args.kvs_server, args.kvs_loop, kvs_port, kvs_dir),
                   kvs_port, kvs_dir),
            Server("redis", redis_argv(args.redis_server, redis_port, redis_dir),
                   redis_port, redis_dir),
        ]  # fmt: skip
        with running(servers):
            for server in servers:
                log(f"warm-up: {server.name}, {args.keyspace} pipelined SETs")
                warm = benchmark_argv(
                    args.redis_benchmark, server.port, "SET", args.keyspace, 16, 3, args.keyspace
                )
                run_benchmark(server, warm, "SET", args.keyspace)
            for round_no in range(1, args.rounds + 1):
                for case in cases:
                    requests = args.requests if case.pipeline == 1 else args.n_pipelined
                    for server in servers:
                        bench = benchmark_argv(
                            args.redis_benchmark,
                            server.port,
                            case.test,
                            requests,
                            case.pipeline,
                            case.size,
                            args.keyspace,
                        )
                        sample = run_benchmark(server, bench, case.test, requests)
                        results.add(server.name, case, sample)
                        log(
                            f"round {round_no}/{args.rounds} {case.label:<26} {server.name:<5} "
                            f"{sample.rps:>12,.0f} req/s "
                            f"{1e6 * sample.server_cpu / requests:6.2f} CPU µs/req"
                        )
                log(
                    f"round {round_no} DBSIZE: "
                    + ", ".join(
                        f"{server.name} {ask(server.port, DBSIZE).decode().lstrip(':')}"
                        for server in servers
                    )
                )
            for server in servers:
                dbsize[server.name] = (
                    ask(server.port, DBSIZE).decode("ascii", "replace").lstrip(":")
                )
                errors = server.error_lines()
                if errors:
                    notes.append(
                        f"**{server.name} logged {len(errors)} error line(s)**, the first: "
                        f"`{errors[0].strip()}`"
                    )
    report = render(
        results,
        cases,
        metadata(args, args.kvs_server, args.redis_server, args.redis_benchmark),
        [
            "Keys at the end (DBSIZE): "
            + ", ".join(f"{name} {count}" for name, count in dbsize.items())
            + f"; {sets:,} SETs on {args.keyspace:,} independent random keys would leave "
            f"~{expected:,.0f}. (redis-benchmark now and then repeats the key sequence of an "
            "earlier run, so either server may end a little lower.)",
            *notes,
        ],
        args.rounds,
    )
    print(report)
    if args.write_docs:
        write_docs(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
