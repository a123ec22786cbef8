"""Micro-benchmark of the RESP request parser (not collected by pytest).

    .venv/bin/python tests/protocol/bench_resp.py

A pipeline of 10,000 ``SET key:NNNNNN <100-byte value>`` commands, fed in 16 KiB chunks and
drained after each chunk, the way a server's read loop would; best of 30 runs.
"""

from __future__ import annotations

import time

from kvs.protocol import RespParser, encode_command

COMMANDS = 10_000
CHUNK = 16 * 1024
RUNS = 30


def main() -> None:
    value = b"v" * 100
    stream = b"".join(encode_command([b"SET", b"key:%06d" % i, value]) for i in range(COMMANDS))
    chunks = [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]
    best = float("inf")
    for _ in range(RUNS):
        parser = RespParser()
        parsed = 0
        start = time.perf_counter()
        for chunk in chunks:
            parser.feed(chunk)
            while parser.next_command() is not None:
                parsed += 1
        best = min(best, time.perf_counter() - start)
        assert parsed == COMMANDS
    rate = COMMANDS / best
    mbps = len(stream) / best / 1e6
    print(
        f"{COMMANDS} commands, {len(stream)} bytes in {len(chunks)} chunks: "
        f"{best * 1e3:.1f} ms, {rate:,.0f} commands/s, {mbps:.0f} MB/s"
    )


if __name__ == "__main__":
    main()
