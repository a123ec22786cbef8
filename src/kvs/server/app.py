"""The network side of ``kvs-server``: asyncio, one ``Protocol`` per connection.

Per connection: bytes in -> ``RespParser`` -> ``commands.execute`` -> replies out, all on the
event loop's thread (so every command is atomic with respect to other clients). The server
adds what a socket needs and the pure layers do not know about:

* **Replies are written once per loop turn**, after every connection's input of that turn
  has been served, each connection's in one write (as Redis writes them in ``beforeSleep``;
  the loop may hand a connection several reads in one turn): a client reading many
  connections then finds its next reply already there instead of being woken for each one
  (``bench/ab_server.py``, ``-P 16``: 12-24% more requests/s, 14-21% less CPU per request).
* **Group commit** under ``sync="always"``: the store only hands writes to the OS; the server
  holds back the replies of every connection served in one turn of the event loop, makes one
  ``fsync`` for all of them, then sends them, replies to reads of that turn included
  (Redis's ``appendfsync always`` does the same, in ``beforeSleep``).
* **Pipelines**: after a read's first command, the plain ``GET``/``SET`` requests the parser
  read ahead run in ``commands.run_plain``, without a dispatch per request.
* **Lone requests**: a read that holds exactly one plain ``GET``/``SET`` (a client waiting
  for each reply) is answered by ``commands.plain_reply`` straight from ``data_received``.
* **Back-pressure**: when a connection's unsent replies pass the transport's high-water mark,
  the server stops reading from it, so a client that sends and never reads cannot make the
  server buffer without bound (what it holds for such a client is about the high-water mark
  plus the one reply being written); if the replies piled up behind the one being written
  pass ``max_output_buffer``, the connection is closed. One reply may be larger than that
  limit (a GET of a value up to the 512 MiB bulk limit) and is still delivered.
* **Limits**: ``maxclients``; the parser's (bulk, arguments, inline, query buffer); a client
  must send a complete first command within ``handshake_timeout`` seconds (against
  slow-loris connections that would otherwise hold a slot forever).
* **Shutdown** (``SHUTDOWN``, ``SIGTERM``/``SIGINT``, or ``KvsServer.shutdown()``): stop
  accepting, flush replies, sync and close the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from kvs.protocol.resp import ProtocolError, RespParser
from kvs.server.commands import (
    ServerState,
    Session,
    Shutdown,
    execute,
    lookup,
    plain_reply,
    run_plain,
)
from kvs.store import KvStore

log = logging.getLogger("kvs.server")

_MAX_CLIENTS_REPLY = b"-ERR max number of clients reached\r\n"
_INTERNAL_ERROR_REPLY = b"-ERR internal error (see the server log)\r\n"
_FSYNC_FAILED_REPLY = b"-ERR fsync failed: the write is not durable; see the server log\r\n"
# Replies of one read are handed to the transport in pieces of about this size; when the
# transport then says the client is not reading (pause_writing), the rest of the commands
# already read wait in the parser instead of being answered into memory all at once.
_REPLY_CHUNK = 64 * 1024
# How long shutdown waits for the replies owed to clients to drain before dropping them.
_SHUTDOWN_GRACE = 2.0


@dataclass
class Limits:
    """Defaults are Redis's, except the output limit (Redis leaves normal clients unbounded)."""

    max_clients: int = 10_000
    max_bulk_len: int = 512 * 1024 * 1024
    max_query_buffer: int = 1024 * 1024 * 1024
    max_inline_len: int = 64 * 1024
    max_args: int = 1024 * 1024
    max_output_buffer: int = 256 * 1024 * 1024
    handshake_timeout: float = 10.0


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


class _Connection(asyncio.Protocol):
    def __init__(self, server: KvsServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.parser: RespParser | None = None
        self.handshake: asyncio.TimerHandle | None = None
        self.paused = False  # the client is not reading its replies (pause_writing)
        self.writing = 0  # size of the payload being handed to transport.write()
        self.backlog = False  # commands read but not run yet (reading is paused meanwhile)
        # Replies made in this loop turn, written at its end: (reply, whether its commands
        # wrote, so under group commit it waits for the fsync).
        self.unsent: list[tuple[bytes, bool]] = []

    # asyncio callbacks --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass, but behaves as one.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        server = self.server
        state = server.state
        if len(state.clients) >= server.limits.max_clients:
            transport.write(_MAX_CLIENTS_REPLY)
            transport.close()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        limits = server.limits
        self.parser = RespParser(
            max_bulk_len=limits.max_bulk_len,
            max_args=limits.max_args,
            max_inline_len=limits.max_inline_len,
            max_buffer=limits.max_query_buffer,
        )
        self.session = state.new_session()
        if not self.session.authenticated:
            self.parser.set_unauthenticated(True)
        transport.set_write_buffer_limits(high=1 << 20)
        server.connections.add(self)
        if limits.handshake_timeout > 0:
            self.handshake = asyncio.get_running_loop().call_later(
                limits.handshake_timeout, self._handshake_expired
            )

    def connection_lost(self, exc: Exception | None) -> None:
        if self.handshake is not None:
            self.handshake.cancel()
        if self.session is not None:
            self.server.state.end_session(self.session)
        self.server.connections.discard(self)

    def pause_writing(self) -> None:
        # The client is not reading its replies: stop reading its commands until it does.
        assert self.transport is not None
        self.paused = True
        self.transport.pause_reading()
        # The limit is on what piles up behind the reply being written, not on that reply:
        # a GET of a value up to the bulk limit (512 MiB) is larger than the output limit
        # (256 MiB) and must still be deliverable. Back-pressure stops further replies.
        backlog = self.transport.get_write_buffer_size() - self.writing
        if backlog > self.server.limits.max_output_buffer:
            log.warning("closing client %s: output buffer limit reached", self._peer())
            self.transport.abort()

    def resume_writing(self) -> None:
        assert self.transport is not None
        self.paused = False
        if self.transport.is_closing():
            return
        if self.backlog:
            self._process()
        else:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        parser, session = self.parser, self.session
        if parser is None or session is None:
            return
        if (
            not self.backlog
            and not self.paused
            and self.handshake is None
            and session.authenticated
            and session.transaction is None
            and not session.closing
        ):
            argv = parser.feed_single_request(data)
            if argv is not None:
                # One whole request, as a client waiting for each reply sends: a plain GET or
                # SET is answered here, without a pass through the parser's buffer,
                # _process() and a dispatch (bench/ab_server.py, no pipelining: 24-25% less
                # CPU per request); any other request is left in parser.ready for _process().
                if self._answer_plain(session, argv):
                    return
                self._process()
                return
        try:
            parser.feed(data)
        except ProtocolError as error:
            session.closing = True
            self._send(error.reply, False)
            return
        if not self.backlog:
            self._process()

    def _answer_plain(self, session: Session, argv: list[bytes]) -> bool:
        """Answer ``argv``, the request at the end of ``parser.ready``, if it is a plain GET
        or SET (see ``commands.plain_reply``), and take it from there; False if it is not."""
        parser, transport, server = self.parser, self.transport, self.server
        assert parser is not None and transport is not None
        if transport.is_closing():
            return True  # as in _process(): a closing connection is served nothing more
        try:
            reply = plain_reply(server.state, session, argv)
        except Exception:
            reply = self._internal_error()
        if reply is None:
            return False
        parser.ready.pop()
        self._send(reply, len(argv) == 3 or not server.group_commit)
        return True

    def _process(self) -> None:
        """Run the complete commands the parser holds and send their replies. Stops early,
        leaving the rest in the parser, when the client does not read what it is sent."""
        parser, session, transport = self.parser, self.session, self.transport
        if parser is None or session is None or transport is None or transport.is_closing():
            return
        if self.paused:
            return  # resume_writing() calls again
        server = self.server
        state = server.state
        next_command = parser.next_command
        # Whether a reply must wait for the fsync (group commit): only asked under it.
        wrote = not server.group_commit
        replies: list[bytes] = []
        append = replies.append
        size = 0
        unauthenticated = parser.unauthenticated
        try:
            while True:
                if size >= _REPLY_CHUNK:
                    # Send this piece, then go on in a later loop turn: after the group
                    # commit's fsync if it was held, and only once the client reads, if the
                    # transport paused us (pause_writing).
                    self._send(b"".join(replies), wrote)
                    self.backlog = True
                    transport.pause_reading()
                    if not self.paused:
                        asyncio.get_running_loop().call_soon(self._process)
                    return
                argv = next_command()
                if argv is None:
                    break
                if self.handshake is not None:
                    self.handshake.cancel()
                    self.handshake = None
                if not wrote:
                    cmd = lookup(argv[0])
                    # EXEC writes its queued commands: its reply waits for the fsync too.
                    wrote = cmd is not None and (cmd.write or cmd.name == "exec")
                reply = execute(state, session, argv)
                append(reply)
                size += len(reply)
                if unauthenticated and session.authenticated:
                    parser.set_unauthenticated(False)
                    unauthenticated = False
                if session.closing:
                    break
                if parser.ready and session.authenticated and session.transaction is None:
                    # The rest of a pipeline read at once: its plain GETs and SETs without a
                    # dispatch per request (bench/ab_server.py, -P 16: 9-11% less CPU per
                    # request, 6-11% more requests/s).
                    added, ran_set = run_plain(
                        state, session, parser.ready, replies, _REPLY_CHUNK - size
                    )
                    size += added
                    wrote = wrote or ran_set
        except ProtocolError as error:
            replies.append(error.reply)
            session.closing = True
        except Shutdown:
            self._send(b"".join(replies), wrote)
            server.request_shutdown()
            return
        except Exception:
            replies.append(self._internal_error())
        self._send(replies[0] if len(replies) == 1 else b"".join(replies), wrote)
        if self.backlog:
            self.backlog = False
            if not self.paused and not transport.is_closing():
                transport.resume_reading()

    # helpers --------------------------------------------------------------------------------

    def _send(self, payload: bytes, wrote: bool) -> None:
        """Write ``payload`` at the end of this loop turn, after the replies made before it."""
        session = self.session
        if payload or (session is not None and session.closing):
            if not self.unsent:
                self.server.send_after_turn(self)
            self.unsent.append((payload, wrote))
            if wrote:
                self.server.turn_wrote = True

    def write_unsent(self, fsync_failed: bool = False) -> None:
        """Write this turn's replies in one piece; if the turn's fsync failed, the first reply
        of a write becomes an error and ends the connection."""
        unsent, self.unsent = self.unsent, []
        if fsync_failed:
            for i, (_, wrote) in enumerate(unsent):
                if wrote:
                    if self.session is not None:
                        self.session.closing = True
                    unsent[i:] = [(_FSYNC_FAILED_REPLY, True)]
                    break
        self.deliver(unsent[0][0] if len(unsent) == 1 else b"".join(p for p, _ in unsent))

    def deliver(self, payload: bytes) -> None:
        transport, session = self.transport, self.session
        if transport is None or transport.is_closing():
            return
        if payload:
            self.writing = len(payload)  # pause_writing() runs inside write()
            try:
                transport.write(payload)
            finally:
                self.writing = 0
        if session is not None and session.closing:
            transport.close()

    def _internal_error(self) -> bytes:
        """A bug: log it, answer with an error and close this connection, and keep serving
        everyone else."""
        log.exception("error while serving client %s", self._peer())
        if self.session is not None:
            self.session.closing = True
        return _INTERNAL_ERROR_REPLY

    def _handshake_expired(self) -> None:
        self.handshake = None
        if self.transport is not None and not self.transport.is_closing():
            log.info("closing client %s: no complete command in time", self._peer())
            self.transport.abort()

    def _peer(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        return str(peer)


class KvsServer:
    """A kvs-server inside this process (the CLI runs one; tests and benchmarks may too)."""

    def __init__(
        self,
        store: KvStore,
        *,
        host: str = "127.0.0.1",
        port: int = 4000,
        engine: str = "kvs",
        sync: str = "everysec",
        directory: str = ".",
        password: bytes | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.state = ServerState(
            store,
            password=password,
            engine=engine,
            sync=sync,
            directory=directory,
            bind=f"{host}:{port}",
            max_clients=self.limits.max_clients,
            max_bulk_len=self.limits.max_bulk_len,
            max_query_buffer=self.limits.max_query_buffer,
        )
        self.host = host
        self.port = port
        self.group_commit = sync == "always"
        self.connections: set[_Connection] = set()
        # The connections with replies to write at the end of this loop turn, and whether
        # any of those replies waits for an fsync (group commit).
        self._replying: list[_Connection] = []
        self.turn_wrote = False
        self._server: asyncio.Server | None = None
        self._stopped: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The address actually bound (the port is chosen by the OS when 0 was asked for)."""
        assert self._server is not None and self._server.sockets
        name = self._server.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._server = await self._loop.create_server(
            lambda: _Connection(self), self.host.strip("[]"), self.port, reuse_address=True
        )

    async def serve_until_shutdown(self) -> None:
        assert self._stopped is not None
        await self._stopped.wait()

    def send_after_turn(self, connection: _Connection) -> None:
        """Write ``connection``'s replies once this loop turn's reads are served (see the
        module doc)."""
        if not self._replying:
            assert self._loop is not None
            self._loop.call_soon(self._write_replies)
        self._replying.append(connection)

    def _write_replies(self) -> None:
        replying, self._replying = self._replying, []
        fsync_failed = False
        if self.turn_wrote and self.group_commit:
            # One fsync for every write of the turn, then every reply goes out, replies to
            # reads too (Redis's beforeSleep also syncs the AOF before writing replies).
            try:
                self.state.store.sync()
            except Exception as error:
                log.error("fsync failed: %s; write replies become errors", error)
                fsync_failed = True
        self.turn_wrote = False
        for connection in replying:
            connection.write_unsent(fsync_failed)

    def request_shutdown(self) -> None:
        if self._stopped is not None:
            self._stopped.set()

    async def shutdown(self) -> None:
        """Stop accepting, send what is owed, close every connection, close the store."""
        if self._server is not None:
            self._server.close()
        if self._replying:
            self._write_replies()
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
        # close() sends what is owed first; a client that does not read would keep its
        # connection (and, on Python >= 3.12, wait_closed()) open forever: drop it after a grace.
        deadline = asyncio.get_running_loop().time() + _SHUTDOWN_GRACE
        while self.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
        self.state.store.close()
        self.request_shutdown()


def install_signal_handlers(server: KvsServer, loop: asyncio.AbstractEventLoop) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.request_shutdown)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed (faster), else asyncio's."""
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


async def run(server: KvsServer, on_ready: Callable[[KvsServer], Any] | None = None) -> None:
    await server.start()
    install_signal_handlers(server, asyncio.get_running_loop())
    if on_ready is not None:
        on_ready(server)
    try:
        await server.serve_until_shutdown()
    finally:
        await server.shutdown()
