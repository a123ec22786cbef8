"""A/B: two or more kvs-server builds under the same ``redis-benchmark`` load, in one run.

``bench_server.py`` compares kvs-server with redis-server; this script compares kvs-server
builds with each other, to measure a change to the server: each build runs on its own free
loopback port and temporary directory, and every case runs on each build in turn, round
after round, so slow drift of a shared machine hits all of them alike. A build is a
``kvs-server`` executable; one for an older commit is a small Python launcher that puts that
commit's ``src`` first on ``sys.path``::

    git worktree add /tmp/before <commit>
    printf '#!%s\\nimport sys; sys.path.insert(0, "/tmp/before/src")\\n%s\\n' \\
        "$PWD/.venv/bin/python" \\
        'from kvs.cli.server import main; sys.exit(main())' > /tmp/before/kvs-server
    chmod +x /tmp/before/kvs-server
    python bench/ab_server.py before=/tmp/before/kvs-server after=.venv/bin/kvs-server

Per build and case it prints the median requests/s and the server's CPU time per request
(``utime + stime`` from ``/proc/PID/stat`` around each run). A script, not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kvs.localservers import free_port

CASES = [("set", 1), ("get", 1), ("set", 16), ("get", 16)]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"a kvs-server exited with {process.returncode} before listening")
        ping = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True)
        if ping.stdout.strip() == b"PONG":
            return
        time.sleep(0.1)
    raise SystemExit(f"no kvs-server listening on port {port}")


def benchmark(port: int, test: str, pipeline: int, requests: int, keyspace: int) -> float:
    command = ["redis-benchmark", "-p", str(port), "-c", "50", "-r", str(keyspace)]
    command += ["-n", str(requests), "-P", str(pipeline), "-t", test, "--csv"]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return float(output.strip().splitlines()[-1].split(",")[1].strip('"'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("builds", nargs="+", metavar="NAME=KVS_SERVER", help="the builds")
    parser.add_argument("--rounds", type=int, default=4, help="rounds (default 4)")
    parser.add_argument("-n", "--requests", type=int, default=100_000, help="per run")
    parser.add_argument("-r", "--keyspace", type=int, default=100_000, help="random keys")
    args = parser.parse_args()
    if shutil.which("redis-benchmark") is None or shutil.which("redis-cli") is None:
        raise SystemExit("needs redis-benchmark and redis-cli (apt-get install redis-tools)")
    builds = dict(build.split("=", 1) for build in args.builds)
    scratch = tempfile.mkdtemp(prefix="kvs-ab-")
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for name, executable in builds.items():
            port = free_port()
            directory = os.path.join(scratch, name)
            command = [executable, "--addr", f"127.0.0.1:{port}", "--dir", directory]
            servers[name] = (subprocess.Popen(command, stderr=subprocess.DEVNULL), port)
        for process, port in servers.values():
            wait_listening(port, process)
            benchmark(port, "set", 16, 2 * args.keyspace, args.keyspace)  # fill the keyspace
        results: dict[tuple[str, int, str], list[tuple[float, float]]] = {}
        for _ in range(args.rounds):
            for test, pipeline in CASES:
                requests = args.requests * (4 if pipeline > 1 else 1)
                for name, (process, port) in servers.items():
                    before = cpu_seconds(process.pid)
                    rate = benchmark(port, test, pipeline, requests, args.keyspace)
                    used = cpu_seconds(process.pid) - before
                    results.setdefault((test, pipeline, name), []).append(
                        (rate, used / requests * 1e6)
                    )
        print(f"{'case':<12} {'build':<12} {'median req/s':>13} {'CPU µs/req':>11}  rounds req/s")
        for (test, pipeline, name), runs in results.items():
            rates = [rate for rate, _ in runs]
            cpu = statistics.mean(per_request for _, per_request in runs)
            case = f"{test.upper()} -P {pipeline}"
            shown = " ".join(f"{rate:,.0f}" for rate in rates)
            print(f"{case:<12} {name:<12} {statistics.median(rates):>13,.0f} {cpu:>11.2f}  {shown}")
    finally:
        for process, _ in servers.values():
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
