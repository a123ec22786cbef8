"""When replies reach the socket: after every connection's input of one event-loop turn has
been served, as Redis writes them in ``beforeSleep``.

Writing each connection's replies the moment its commands ran made the client (one process
reading 50 connections) wake up once per reply; writing them together right after the reads
let it find the next reply already there (``bench/ab_server.py``, ``-P 16``: 12-24% more
requests/s; kernel time per request down from 0.8-1.0 to 0.3-0.4 µs). These tests drive the
server's per-connection protocol object on a real event loop with a recording transport, so
they see each write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from kvs.server.app import KvsServer, _Connection
from kvs.store import KvStore


class RecordingTransport:
    """What the server calls on an asyncio transport, recording the writes."""

    def __init__(self, connection: _Connection) -> None:
        self.connection = connection
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.connection.connection_lost(None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self.closed

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


@contextlib.asynccontextmanager
async def serving(directory: Path, sync: str = "everysec") -> AsyncIterator[KvsServer]:
    """A started KvsServer on a store in ``directory``, shut down (store closed) on exit."""
    server = KvsServer(KvStore.open(directory, sync=sync), host="127.0.0.1", port=0, sync=sync)
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown()


def _connect(server: KvsServer) -> tuple[_Connection, RecordingTransport]:
    connection = _Connection(server)
    transport = RecordingTransport(connection)
    connection.connection_made(transport)  # type: ignore[arg-type]
    return connection, transport


@contextlib.contextmanager
def failing_fsync(server: KvsServer) -> Iterator[list[bool]]:
    """Every store.sync() fails with EIO meanwhile; yields the list of the calls made."""
    store = server.state.store
    real_sync = store.sync
    synced: list[bool] = []

    def failing_sync() -> None:
        synced.append(True)
        raise OSError(5, "Input/output error (injected)")

    store.sync = failing_sync  # type: ignore[method-assign]
    try:
        yield synced
    finally:
        store.sync = real_sync  # type: ignore[method-assign]


def test_replies_are_written_together_after_the_reads_of_one_loop_turn(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as server:
            first, first_out = _connect(server)
            second, second_out = _connect(server)
            first.data_received(b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n")
            first.data_received(b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n")
            second.data_received(b"PING\r\n*2\r\n$3\r\nGET\r\n$1\r\na\r\n")
            # The commands ran (the store has the write) but nothing is written yet.
            assert server.state.store.get(b"a") == b"1"
            assert first_out.writes == [] and second_out.writes == []
            await asyncio.sleep(0)  # one loop turn
            # Each connection's replies of the turn go out in one write, two reads' worth here.
            assert first_out.writes == [b"+OK\r\n$1\r\n1\r\n"]
            assert second_out.writes == [b"+PONG\r\n$1\r\n1\r\n"]

    asyncio.run(scenario())


def test_shutdown_writes_the_queued_replies_before_closing(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as server:
            connection, out = _connect(server)
            connection.data_received(b"*2\r\n$4\r\nECHO\r\n$3\r\nbye\r\n")
            await server.shutdown()  # before any loop turn could write the reply
            assert out.writes == [b"$3\r\nbye\r\n"]
            assert out.closed

    asyncio.run(scenario())


def test_a_protocol_error_reply_is_written_before_the_connection_closes(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as server:
            connection, out = _connect(server)
            connection.data_received(b"*1\r\n$-5\r\n")
            assert out.writes == [] and not out.closed
            await asyncio.sleep(0)
            assert out.writes == [b"-ERR Protocol error: invalid bulk length\r\n"]
            assert out.closed

    asyncio.run(scenario())


def test_two_reads_in_one_turn_keep_every_reply_and_their_order(tmp_path: Path) -> None:
    """The event loop may hand a connection several reads before the turn ends (found by
    tests/server/test_limits.py: a reply was lost). A read that completes no command, then
    one whose command ends the session, must still get that command's reply."""

    async def scenario() -> None:
        async with serving(tmp_path) as server:
            connection, out = _connect(server)
            connection.data_received(b"PING\r\nECH")  # PING, and half a command
            connection.data_received(b"O hi\r\nQUIT\r\n")
            assert out.writes == []
            await asyncio.sleep(0)
            assert out.writes == [b"+PONG\r\n$2\r\nhi\r\n+OK\r\n"]
            assert out.closed

            connection, out = _connect(server)
            connection.data_received(b"x" * 65536)  # an inline line at the limit: no reply yet
            connection.data_received(b"x")  # one past it
            await asyncio.sleep(0)
            assert out.writes == [b"-ERR Protocol error: too big inline request\r\n"]
            assert out.closed

    asyncio.run(scenario())


def test_a_failed_group_commit_fsync_turns_write_replies_into_errors(tmp_path: Path) -> None:
    """Under sync="always" the turn's replies wait for one fsync; if it fails, each
    connection's first reply to a write becomes an error and the connection closes, while
    a connection that only read gets its replies."""

    async def scenario() -> None:
        async with serving(tmp_path, sync="always") as server:
            with failing_fsync(server) as synced:
                writer, writer_out = _connect(server)
                reader, reader_out = _connect(server)
                writer.data_received(b"PING\r\n")
                writer.data_received(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\nPING\r\n")
                reader.data_received(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
                await asyncio.sleep(0)
            assert synced == [True]
            failed = b"-ERR fsync failed: the write is not durable; see the server log\r\n"
            assert writer_out.writes == [b"+PONG\r\n" + failed]
            assert writer_out.closed
            assert reader_out.writes == [b"$1\r\nv\r\n"] and not reader_out.closed

    asyncio.run(scenario())


def test_a_set_in_a_pipelines_fast_lane_waits_for_the_group_commit(tmp_path: Path) -> None:
    """A GET, then SETs, in one read: the GET goes through execute() (not a write), the SETs
    through the fast lane (commands.run_plain), which must still make the turn's replies
    wait for the fsync; when it fails, the client is told, not sent +OK."""

    async def scenario() -> None:
        async with serving(tmp_path, sync="always") as server:
            set_k = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"
            with failing_fsync(server) as synced:
                connection, out = _connect(server)
                connection.data_received(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n" + set_k * 3)
                await asyncio.sleep(0)
            assert synced == [True]
            assert b"+OK" not in b"".join(out.writes)
            assert out.writes[-1].startswith(b"-ERR fsync failed") and out.closed

            connection, out = _connect(server)  # and with a working fsync, every reply
            connection.data_received(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n" + set_k * 3)
            await asyncio.sleep(0)
            assert out.writes == [b"$1\r\nv\r\n" + b"+OK\r\n" * 3]

    asyncio.run(scenario())


def test_a_lone_set_answered_at_once_waits_for_the_group_commit(tmp_path: Path) -> None:
    """A read holding one plain SET is answered without _process() (the lone request's fast
    lane, commands.plain_reply); its +OK must still wait for the turn's fsync, and become an
    error when that fails. The PING first ends the handshake, which the lane waits for."""

    async def scenario() -> None:
        async with serving(tmp_path, sync="always") as server:
            set_k = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"
            connection, out = _connect(server)
            connection.data_received(b"PING\r\n")
            await asyncio.sleep(0)
            with failing_fsync(server) as synced:
                connection.data_received(set_k)
                await asyncio.sleep(0)
            assert synced == [True]
            assert out.writes[0] == b"+PONG\r\n"
            assert out.writes[1].startswith(b"-ERR fsync failed") and out.closed

            connection, out = _connect(server)  # and with a working fsync, +OK
            connection.data_received(b"PING\r\n")
            await asyncio.sleep(0)
            connection.data_received(set_k)
            await asyncio.sleep(0)
            assert out.writes == [b"+PONG\r\n", b"+OK\r\n"]

    asyncio.run(scenario())


def test_a_bug_in_a_command_is_answered_and_ends_only_its_connection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception that is not a store error (a bug) is logged with its traceback, answered
    with an error, and closes that connection; other clients go on being served. Both ways a
    SET can run: the lone request's fast lane (after a PING ends the handshake) and
    _process() (the first request of a connection)."""
    set_boom = b"*3\r\n$3\r\nSET\r\n$4\r\nboom\r\n$1\r\nv\r\n"

    async def scenario() -> None:
        async with serving(tmp_path) as server:
            store = server.state.store
            real_set = store.set

            def buggy_set(key: Any, value: Any) -> None:
                if key == b"boom":
                    raise RuntimeError("a bug")
                real_set(key, value)

            store.set = buggy_set  # type: ignore[method-assign]
            for first in (b"PING\r\n", None):
                connection, out = _connect(server)
                if first is not None:
                    connection.data_received(first)
                    await asyncio.sleep(0)
                connection.data_received(set_boom)
                await asyncio.sleep(0)
                assert out.writes[-1] == b"-ERR internal error (see the server log)\r\n"
                assert out.closed
            other, out = _connect(server)
            other.data_received(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n")
            await asyncio.sleep(0)
            assert out.writes == [b"+OK\r\n"] and not out.closed

    with caplog.at_level(logging.ERROR, logger="kvs.server"):
        asyncio.run(scenario())
    failures = [r for r in caplog.records if r.getMessage().startswith("error while serving")]
    assert len(failures) == 2 and all(r.exc_info for r in failures)
