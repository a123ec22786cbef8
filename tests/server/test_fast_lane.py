"""The fast lanes for plain GETs and SETs, which must answer exactly as ``execute`` does:

- a pipeline's (``commands.run_plain``): the plain requests the parser read ahead from one
  read run without a dispatch per request;
- a lone request's (``RespParser.feed_single_request`` then ``commands.plain_reply``): a read
  holding one whole request, as a client waiting for each reply sends, is answered without
  the parser's buffer, ``_process()`` or a dispatch.

The property test sends the same commands to three servers: as a single pipeline (the first
lane), one command per read (the second), and one byte per read, so that each request is
completed by its last byte in the parser's buffer and goes through ``execute``, and compares
every byte the three connections were sent.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from kvs.protocol.resp import encode_command
from kvs.server.app import KvsServer
from kvs.server.commands import ServerState, Session, run_plain
from kvs.store import KvStore

from .test_reply_writing import _connect

KEYS = [b"a", b"b", b"c", b"k" * 40]  # the last is over the stores' 32-byte key limit

_key = st.sampled_from(KEYS)
_value = st.sampled_from([b"", b"1", b"10", b"x" * 50, "é".encode(), b"\x00\xff"])
_command = st.one_of(
    st.tuples(st.sampled_from([b"GET", b"get", b"Get"]), _key),
    st.tuples(st.sampled_from([b"SET", b"set", b"sEt"]), _key, _value),
    st.tuples(st.just(b"GET")),  # wrong number of arguments
    st.tuples(st.just(b"GET"), _key, _key),
    st.tuples(st.just(b"SET"), _key, _value, st.sampled_from([b"NX", b"XX", b"GET", b"bad"])),
    st.tuples(st.sampled_from([b"DEL", b"INCR", b"STRLEN", b"EXISTS"]), _key),
    st.tuples(st.just(b"APPEND"), _key, _value),
    st.tuples(st.sampled_from([b"MULTI", b"EXEC", b"DISCARD", b"PING", b"DBSIZE"])),
    st.tuples(st.just(b"WATCH"), _key),
    st.tuples(st.just(b"NOSUCH"), _key),
)


async def _replies(directory: Path, commands: list[tuple[bytes, ...]], reads: str) -> bytes:
    store = KvStore.open(directory, max_key_size=32)
    server = KvsServer(store, host="127.0.0.1", port=0)
    await server.start()
    try:
        connection, transport = _connect(server)
        wire = [encode_command(list(command)) for command in commands]
        for request in [b"".join(wire)] if reads == "pipeline" else wire:
            if reads == "bytes":
                for at in range(len(request)):
                    connection.data_received(request[at : at + 1])
            else:
                connection.data_received(request)
            await asyncio.sleep(0)  # the end of the loop turn: replies are written
        await asyncio.sleep(0)
        return b"".join(transport.writes)
    finally:
        await server.shutdown()


@settings(max_examples=150, deadline=None)
@given(st.lists(_command, min_size=1, max_size=40))
def test_the_fast_lanes_give_the_replies_of_execute(commands: list[tuple[bytes, ...]]) -> None:
    with tempfile.TemporaryDirectory() as root:
        replies = {
            reads: asyncio.run(_replies(Path(root) / reads, commands, reads))
            for reads in ("bytes", "requests", "pipeline")
        }
    assert replies["requests"] == replies["bytes"]
    assert replies["pipeline"] == replies["bytes"]


def test_run_plain_stops_at_other_commands_and_at_the_budget(tmp_path: Path) -> None:
    with KvStore.open(tmp_path) as store:
        state, session = ServerState(store), Session(1)
        # The parser's order: last first.
        ready = [[b"GET", b"a"], [b"DEL", b"a"], [b"get", b"a"], [b"SET", b"a", b"v" * 10]]
        replies: list[bytes] = []
        added, wrote = run_plain(state, session, ready, replies, budget=1 << 16)
        assert replies == [b"+OK\r\n", b"$10\r\n" + b"v" * 10 + b"\r\n"]
        assert (added, wrote) == (5 + 17, True)
        assert ready == [[b"GET", b"a"], [b"DEL", b"a"]]  # DEL is execute()'s to run
        assert state.commands_processed == 2

        ready = [[b"GET", b"a"]] * 5
        replies = []
        added, wrote = run_plain(state, session, ready, replies, budget=20)
        assert len(replies) == 2 and added == 34 and not wrote  # stopped past 20 bytes
        assert len(ready) == 3
