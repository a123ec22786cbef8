"""The floor of a Python RESP server: the least work per request, as a yardstick for issue 3.

Not a server to use. It answers ``GET``, ``SET``, ``PING`` and ``DBSIZE`` from a plain dict,
with uvloop, and does nothing else a real server must: no log (nothing persists), no
validation of lengths, limits or arguments, no errors, no RESP3, no transactions, no expiry.
Everything else gets an empty array. Any Python server that does more per request than this is
slower than this, so a target this floor misses is out of reach of kvs-server on this machine.

Run it in kvs-server's place, in the same rounds as redis-server::

    python bench/bench_server.py --kvs-server bench/floor_server.py

(``bench_server.py`` runs a ``.py`` path with its own interpreter; the rows it labels "kvs"
are then the floor's.) It takes kvs-server's ``--addr`` and ignores ``--dir`` and ``--sync``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import uvloop

OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
NIL = b"$-1\r\n"
EMPTY = b"*0\r\n"


class FloorProtocol(asyncio.Protocol):
    def __init__(self, data: dict[bytes, bytes]) -> None:
        self.data = data
        self.pending = b""
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, chunk: bytes) -> None:
        # Every request is an array of bulk strings: "*N", then "$len" and the argument, N
        # times; one C-level split, then a walk over the lines.
        lines = (self.pending + chunk if self.pending else chunk).split(b"\r\n")
        complete = len(lines) - 1  # the last piece has no CRLF yet
        replies = []
        data = self.data
        at = 0
        while at < complete:
            end = at + 1 + 2 * int(lines[at][1:])
            if end > complete:
                break
            name = lines[at + 2]
            if name == b"GET":
                value = data.get(lines[at + 4])
                replies.append(NIL if value is None else b"$%d\r\n%b\r\n" % (len(value), value))
            elif name == b"SET":
                data[lines[at + 4]] = lines[at + 6]
                replies.append(OK)
            elif name.upper() == b"PING":
                replies.append(PONG)
            elif name.upper() == b"DBSIZE":
                replies.append(b":%d\r\n" % len(data))
            else:
                replies.append(EMPTY)
            at = end
        self.pending = b"\r\n".join(lines[at:]) if at < complete else lines[-1]
        if replies and self.transport is not None:
            self.transport.write(b"".join(replies))


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    data: dict[bytes, bytes] = {}
    server = await loop.create_server(lambda: FloorProtocol(data), host, port)
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set_result, None)
    await stop
    server.close()
    await server.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:4000")
    parser.add_argument("--dir", help="ignored (nothing is stored)")
    parser.add_argument("--sync", help="ignored (nothing is stored)")
    args = parser.parse_args()
    host, port = args.addr.rsplit(":", 1)
    uvloop.run(serve(host, int(port)))


if __name__ == "__main__":
    main()
