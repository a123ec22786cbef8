"""A request's cost inside kvs-server's connection object, with no sockets, for A/B of builds.

Feeds ``redis-benchmark``-like requests (``SET``/``GET`` of random keys among 2,000, one or
16 per read) to a ``_Connection`` with a transport that only counts bytes, ending each read's
loop turn by hand. Two measures:

* time per request (the default): as noisy as any timing on a shared machine;
* ``--callgrind``: instructions per request, counted by valgrind's callgrind, which gives the
  same count run after run whatever else the machine is doing. Each case runs twice under
  callgrind, with and without the requests, and the difference is divided by their number,
  so start-up and filling the store cancel out. Slow (a minute or two per build).

Instructions are not seconds (a cache miss costs far more than an add), and the kernel and the
event loop's own work are left out, so this says which build does less Python work per
request, not how many requests per second a server makes: ``ab_server.py`` says that.

Builds are ``NAME=SRC``: a ``src`` directory to put first on ``sys.path``, e.g. ::

    git worktree add /tmp/before <commit>
    python bench/bench_connection.py --callgrind before=/tmp/before/src after=src
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CASES = [("set", 1), ("get", 1), ("set", 16), ("get", 16)]
KEYS = 2_000


class CountingTransport:
    """What the server calls on a transport; keeps only the number of bytes written."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


def worker(test: str, pipeline: int, reads: int, rounds: int) -> None:
    """Run in the build's interpreter: feed ``reads`` reads ``rounds`` times, print ns/request."""
    from kvs.server.app import KvsServer, Limits, _Connection
    from kvs.store import KvStore

    with tempfile.TemporaryDirectory() as directory:
        store = KvStore.open(directory, sync="no")
        keys = [b"key:%012d" % i for i in range(KEYS)]
        for key in keys:
            store.set(key, b"xxx")
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        server = KvsServer(store, port=0, limits=Limits(handshake_timeout=0))
        server._loop = loop
        connection = _Connection(server)
        connection.connection_made(CountingTransport())  # type: ignore[arg-type]
        rng = random.Random(1)
        chunks = []
        for _ in range(reads):
            requests = []
            for _ in range(pipeline):
                key = rng.choice(keys)
                head = b"*2\r\n$3\r\nGET" if test == "get" else b"*3\r\n$3\r\nSET"
                tail = b"" if test == "get" else b"$3\r\nabc\r\n"
                requests.append(b"%b\r\n$%d\r\n%b\r\n%b" % (head, len(key), key, tail))
            chunks.append(b"".join(requests))
        best = float("inf")
        for _ in range(rounds):
            started = time.perf_counter()
            for chunk in chunks:
                connection.data_received(chunk)
                server._write_replies()  # the end of the loop turn
            best = min(best, time.perf_counter() - started)
            loop._ready.clear()  # type: ignore[attr-defined]  # the call_soon()s never run
        loop.close()
        store.close()
    if reads:
        print(f"{best / (reads * pipeline) * 1e9:.0f}")


def run_worker(src: str, args: list[str], callgrind: bool) -> float:
    command = [sys.executable, __file__, "--worker", *args]
    if callgrind:
        command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command]
    # A fixed hash seed: the same dict layouts, so the same instruction count, every run.
    env = {**os.environ, "PYTHONPATH": os.path.abspath(src), "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    if not callgrind:
        return float(done.stdout)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"no instruction count from callgrind:\n{done.stderr[-2000:]}")
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("builds", nargs="*", metavar="NAME=SRC", help="default: this checkout")
    parser.add_argument("--callgrind", action="store_true", help="count instructions")
    parser.add_argument("--reads", type=int, default=0, help="default 2000 (callgrind: 400)")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        test, pipeline, reads, rounds = args.worker
        worker(test, int(pipeline), int(reads), int(rounds))
        return
    default_src = str(Path(__file__).resolve().parent.parent / "src")
    builds = dict(b.split("=", 1) for b in args.builds) or {"this": default_src}
    reads = args.reads or (400 if args.callgrind else 2000)
    unit = "instructions/request" if args.callgrind else "ns/request (best of 5)"
    print(f"{'case':<10} " + " ".join(f"{name:>14}" for name in builds) + f"   ({unit})")
    for test, pipeline in CASES:
        row = []
        for src in builds.values():
            shape = [test, str(pipeline)]
            if args.callgrind:
                total = run_worker(src, [*shape, str(reads), "1"], callgrind=True)
                empty = run_worker(src, [*shape, "0", "1"], callgrind=True)
                row.append((total - empty) / (reads * pipeline))
            else:
                row.append(run_worker(src, [*shape, str(reads), "5"], callgrind=False))
        first = row[0]
        cells = " ".join(f"{value:>14,.0f}" for value in row)
        ratios = "  ".join(f"{value / first:.3f}x" for value in row[1:])
        print(f"{test.upper()} -P {pipeline:<3} {cells}   {ratios}")


if __name__ == "__main__":
    main()
