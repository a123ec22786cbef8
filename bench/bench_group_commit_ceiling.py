"""How much group commit can gain on this machine: the ceiling of "8 writer threads against 1".

Issue 2 asks that 8 writer threads under ``sync="always"`` get at least 5x the durable
writes/s of one. That ratio is bounded by two costs of the machine, measured here in one run:

- ``F``: one ``fdatasync`` of a small append to a preallocated, memory-mapped file (what a
  kvs durable write waits for);
- ``w``: waking one blocked Python thread and having it block again (a leader thread opens the
  gates of 7 waiting threads, each takes the GIL, reports back and waits on a new gate: the
  hand-off a group commit needs per writer, with no store work at all).

One writer needs ``F`` per write. Eight writers that share every fsync need ``F`` per group
of 8 plus the hand-offs of the 7 woken writers, which the GIL serializes, so the ratio is at
most ``8F / (F + 7w)``. Overlapping the hand-offs with the next fsync instead (two groups of 4
taking turns: what a flusher thread that syncs as soon as anything waits settles into) is
bounded by 4x. The script prints the first bound next to what kvs itself does (1 vs 8
threads, as workload 7 of ``bench_embedded.py``).

Run from the repository root::

    python bench/bench_group_commit_ceiling.py

A script, not a test: nothing here is collected by pytest.
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import tempfile
import threading
import time
from _thread import LockType, allocate_lock

from kvs import KvStore

WRITERS = 8
RECORD = b"r" * 130  # about one workload-7 record (12-byte key, 100-byte value, framing)


def fsync_seconds(directory: str, count: int) -> float:
    """Median time of one fdatasync after a RECORD-sized write into a mapped file."""
    path = os.path.join(directory, "fsync-probe")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, 64 << 20)
        os.posix_fallocate(fd, 0, 4 << 20)
        with mmap.mmap(fd, 64 << 20) as view:
            samples = []
            for i in range(count):
                view[i * len(RECORD) : (i + 1) * len(RECORD)] = RECORD
                started = time.perf_counter()
                os.fdatasync(fd)
                samples.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        os.unlink(path)
    return statistics.median(samples)


def wake_seconds(rounds: int) -> float:
    """Time per woken thread of a leader waking WRITERS - 1 blocked threads, round after round."""
    waiting = WRITERS - 1
    lock = threading.Lock()
    gates: list[LockType] = []
    all_waiting = allocate_lock()
    all_waiting.acquire()

    def writer() -> None:
        for _ in range(rounds):
            gate = allocate_lock()
            gate.acquire()
            with lock:
                gates.append(gate)
                if len(gates) == waiting:
                    all_waiting.release()
            gate.acquire()

    threads = [threading.Thread(target=writer) for _ in range(waiting)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    for _ in range(rounds):
        all_waiting.acquire()
        with lock:
            woken = list(gates)
            gates.clear()
        for gate in woken:
            gate.release()
    for thread in threads:
        thread.join()
    return (time.perf_counter() - started) / rounds / waiting


def kvs_rate(directory: str, threads: int, total: int) -> float:
    """Durable writes/s of kvs with sync="always" and ``threads`` writers (distinct keys)."""
    store = KvStore.open(
        os.path.join(directory, f"store-{threads}-{time.monotonic_ns()}"), sync="always"
    )
    per_thread = total // threads
    value = b"v" * 100
    keys = [[b"t%02d-%08d" % (t, i) for i in range(per_thread)] for t in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def run(own: list[bytes]) -> None:
        barrier.wait()
        for key in own:
            store.set(key, value)

    workers = [threading.Thread(target=run, args=(own,)) for own in keys]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    store.close()
    return per_thread * threads / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds, medians kept (default 3)")
    parser.add_argument("--writes", type=int, default=2000, help="kvs writes per round")
    parser.add_argument("--tmp-dir", default=None, help="where files go (default: system temp)")
    args = parser.parse_args()
    fsyncs, wakes, ones, eights = [], [], [], []
    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as directory:
        for _ in range(args.rounds):  # interleaved, so that drift hits every measure alike
            fsyncs.append(fsync_seconds(directory, 500))
            wakes.append(wake_seconds(2000))
            ones.append(kvs_rate(directory, 1, args.writes))
            eights.append(kvs_rate(directory, WRITERS, args.writes))
    f, w = statistics.median(fsyncs), statistics.median(wakes)
    one, eight = statistics.median(ones), statistics.median(eights)
    serialized = WRITERS * f / (f + (WRITERS - 1) * w)
    print(f"fdatasync F:             {f * 1e6:8.1f} µs (median of {args.rounds} x 500)")
    print(f"thread hand-off w:       {w * 1e6:8.1f} µs per woken thread ({WRITERS - 1} per round)")
    print(f"ceiling 8F / (F + 7w):   {serialized:8.2f}x   (the issue's target: 5x)")
    print(f"kvs 1 writer thread:     {one:8,.0f} durable writes/s")
    print(f"kvs {WRITERS} writer threads:    {eight:8,.0f} durable writes/s: {eight / one:.2f}x")


if __name__ == "__main__":
    main()
