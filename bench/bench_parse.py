"""Request parsing alone: kvs's ``RespParser`` against hiredis's C ``Reader``, in one run.

The input is what ``redis-benchmark -P 16`` sends: 16 pipelined GETs (or SETs of 3-byte
values) with ``key:%012d`` keys, fed in one piece and then pulled out command by command, as
kvs-server does per read. It prints nanoseconds per command for each parser and the ratio.
hiredis is a reply parser (``pip install hiredis``): it accepts things Redis rejects in a
request and does not tell where a request ended, so this is the cost of parsing only, not of
a replacement (see README, "The server"). A script, not a test.

    python bench/bench_parse.py
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

from kvs.protocol.resp import RespParser

PIPELINE = 16


def requests(command: bytes, rng: random.Random) -> bytes:
    keys = [b"key:%012d" % rng.randrange(100_000) for _ in range(PIPELINE)]
    if command == b"GET":
        return b"".join(b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n" % (len(k), k) for k in keys)
    return b"".join(b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$3\r\nxxx\r\n" % (len(k), k) for k in keys)


def kvs_parser(data: bytes, batches: int) -> float:
    parser = RespParser()
    started = time.perf_counter()
    for _ in range(batches):
        parser.feed(data)
        next_command = parser.next_command
        while next_command() is not None:
            pass
    return time.perf_counter() - started


def hiredis_reader(data: bytes, batches: int) -> float:
    import hiredis

    reader = hiredis.Reader()
    started = time.perf_counter()
    for _ in range(batches):
        reader.feed(data)
        gets = reader.gets
        while gets() is not False:
            pass
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=20_000, help="per round (default 20000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, median kept (default 5)")
    args = parser.parse_args()
    contenders: dict[str, Callable[[bytes, int], float]] = {"kvs RespParser": kvs_parser}
    try:
        import hiredis  # noqa: F401
    except ImportError:
        print("hiredis is not installed: measuring kvs's parser alone")
    else:
        contenders["hiredis Reader"] = hiredis_reader
    rng = random.Random(20261125)
    print(f"| requests ({PIPELINE} per read) | parser | ns per command | vs kvs |")
    print("|:--|:--|--:|--:|")
    for command in (b"GET", b"SET"):
        data = requests(command, rng)
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(args.rounds):
            for name, run in contenders.items():  # taking turns
                times[name].append(run(data, args.batches) / args.batches / PIPELINE * 1e9)
        ours = statistics.median(times["kvs RespParser"])
        for name, samples in times.items():
            median = statistics.median(samples)
            print(f"| {command.decode()} | {name} | {median:.0f} | {median / ours:.2f} |")


if __name__ == "__main__":
    main()
