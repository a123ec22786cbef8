"""``KvsClient``: a small blocking client of ``kvs-server`` (any RESP server, in fact).

One TCP connection per client, one command at a time; not thread-safe (give each thread its
own client). Commands are encoded with :func:`kvs.protocol.resp.encode_command` and replies
read by the sans-I/O :class:`~kvs.client.replies.ReplyParser`.

Failure model: an error *reply* raises :class:`~kvs.client.errors.ServerError` and leaves the
connection usable. A broken or timed-out connection raises
:class:`~kvs.client.errors.ConnectionLost` and closes the client, because the replies still in
flight would otherwise be read as answers to later commands; nothing is retried (a retried
write could be applied twice). Make a new client to go on.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from kvs.client.address import format_addr, parse_addr
from kvs.client.errors import ConnectionFailed, ConnectionLost, ServerError
from kvs.client.replies import ErrorReply, NeedData, Push, Reply, ReplyParser, ReplyProtocolError
from kvs.errors import KeyNotFound
from kvs.protocol.resp import encode_command

__all__ = ["Arg", "KvsClient", "Pipeline"]

#: What a command argument may be: bytes as they are, ``str`` as UTF-8, numbers as decimal text.
Arg = str | bytes | bytearray | memoryview | int | float

_RECV_SIZE: Final = 256 * 1024
_SEND_CHUNK: Final = 1024 * 1024
# Out-of-band pushes kept for the caller (RESP3 client tracking, pub/sub); the oldest go first.
_MAX_PUSHES: Final = 1024


def _encode_arg(arg: Arg) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode("utf-8")
    if isinstance(arg, bytearray | memoryview):
        return bytes(arg)
    if isinstance(arg, bool):
        # True would be sent as "True": almost certainly not what was meant.
        raise TypeError("a command argument cannot be a bool; pass b'1' / b'0' or a string")
    if isinstance(arg, int):
        return b"%d" % arg
    if isinstance(arg, float):
        return repr(arg).encode("ascii")
    raise TypeError(f"a command argument must be str, bytes or a number, not {type(arg).__name__}")


def _encode(args: tuple[Arg, ...]) -> bytes:
    if not args:
        raise ValueError("a command needs at least its name")
    return encode_command([_encode_arg(arg) for arg in args])


def _raise_errors(reply: Reply) -> Reply:
    if isinstance(reply, ErrorReply):
        raise ServerError.from_reply(reply)
    return reply


_T = TypeVar("_T")


def _expect_bulk(reply: Reply) -> bytes | None:
    if reply is None or isinstance(reply, bytes):
        return reply
    raise ReplyProtocolError(f"unexpected reply to GET: {reply!r:.200}")


def _expect_ok(reply: Reply) -> None:
    if reply != "OK":
        raise ReplyProtocolError(f"unexpected reply to SET: {reply!r:.200}")


def _expect_count(reply: Reply) -> int:
    if type(reply) is not int or reply < 0:
        raise ReplyProtocolError(f"unexpected reply to DEL: {reply!r:.200}")
    return reply


class KvsClient:
    """A connection to a kvs-server.

    ::

        with KvsClient.from_addr("127.0.0.1:4000") as client:
            client.set("greeting", "hello")
            client.get("greeting")          # b'hello'
            client.remove("greeting")       # kvs.KeyNotFound if absent
            client.execute("INCR", "hits")  # any command: 1

    Keys and values are ``str`` (sent as UTF-8) or ``bytes``; values come back as ``bytes``.
    ``timeout`` (seconds, or None for none) bounds the connect and every wait for the server.
    ``protocol=3`` switches the connection to RESP3 (``HELLO 3``): replies then carry doubles,
    maps, sets and booleans as such. Connecting happens here, with a first command (``AUTH``
    if there is a password, ``HELLO 3`` for RESP3, else ``PING``): an unreachable server
    raises :class:`~kvs.client.errors.ConnectionFailed`, a wrong password or a server that
    refuses the connection (too many clients) :class:`~kvs.client.errors.ServerError`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 4000,
        *,
        password: str | bytes | None = None,
        timeout: float | None = 10.0,
        protocol: int = 2,
    ) -> None:
        if protocol not in (2, 3):
            raise ValueError(f"protocol must be 2 or 3, not {protocol!r}")
        self.host = host
        self.port = port
        self.timeout = timeout
        self.protocol = protocol
        #: ``host:port`` (``[v6]:port``), as error messages show it.
        self.address = format_addr(host, port)
        #: RESP3 pushes received while waiting for replies, oldest first (bounded).
        self.pushes: deque[Push] = deque(maxlen=_MAX_PUSHES)
        self._parser = ReplyParser()
        self._sock: socket.socket | None = self._connect()
        try:
            if protocol == 3:
                hello: list[Arg] = ["HELLO", "3"]
                if password is not None:
                    hello += ["AUTH", "default", password]
                self.execute(*hello)
            elif password is not None:
                self.execute("AUTH", password)
            else:
                # kvs-server drops a connection whose first command does not arrive within
                # 10 s (against slow-loris clients), and a program may connect long before
                # its first command. PING also brings a refusal ("max number of clients
                # reached") to light here rather than at the first command.
                reply = self._roundtrip(encode_command([b"PING"]), 1)[0]
                if isinstance(reply, ErrorReply) and reply.code != "NOAUTH":
                    # NOAUTH is left for the first command to report: an AUTH may come first.
                    raise ServerError.from_reply(reply)
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_addr(
        cls,
        addr: str,
        *,
        password: str | bytes | None = None,
        timeout: float | None = 10.0,
        protocol: int = 2,
    ) -> KvsClient:
        """Connect to ``"IP:PORT"`` (``"[::1]:4000"`` for IPv6); ``InvalidAddress`` if bad."""
        host, port = parse_addr(addr)
        return cls(host, port, password=password, timeout=timeout, protocol=protocol)

    def _connect(self) -> socket.socket:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except TimeoutError:
            raise ConnectionFailed(self.address, f"timed out after {self.timeout} s") from None
        except OSError as error:
            raise ConnectionFailed(self.address, error.strerror or str(error)) from None
        # One small request, then a wait for its reply: Nagle's algorithm would only add delay.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    # -- the commands ---------------------------------------------------------------------------

    def set(self, key: str | bytes, value: str | bytes) -> None:
        """Store ``value`` under ``key``."""
        self._checked(_expect_ok, "SET", key, value)

    def get(self, key: str | bytes) -> bytes | None:
        """The value of ``key``, or None if there is none."""
        return self._checked(_expect_bulk, "GET", key)

    def remove(self, key: str | bytes) -> None:
        """Remove ``key``; :class:`kvs.KeyNotFound` if it is not there."""
        if self._checked(_expect_count, "DEL", key) == 0:
            raise KeyNotFound(key)

    def _checked(self, expect: Callable[[Reply], _T], *args: Arg) -> _T:
        """``execute(*args)``, its reply checked by ``expect``. A reply of the wrong type
        means that replies and commands are out of step (a buggy server or proxy): every
        later reply would answer an earlier command, so the connection is closed."""
        reply = self.execute(*args)
        try:
            return expect(reply)
        except ReplyProtocolError:
            self.close()
            raise

    def ping(self) -> None:
        """Check that the server answers; raises if it does not."""
        self.execute("PING")

    def execute(self, *args: Arg) -> Reply:
        """Send one command (``execute("SET", "k", "v", "EX", 10)``) and return its reply.

        An error reply raises :class:`~kvs.client.errors.ServerError`; errors nested in an
        aggregate reply (``EXEC``) are returned as :class:`~kvs.client.replies.ErrorReply`.
        """
        return _raise_errors(self._roundtrip(_encode(args), 1)[0])

    def pipeline(self) -> Pipeline:
        """A :class:`Pipeline`: queue commands, then send them all in one go."""
        return Pipeline(self)

    # -- the connection -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._sock is None

    def close(self) -> None:
        """Close the connection (idempotent). Later commands raise ``ConnectionLost``."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else "connected"
        return f"<KvsClient {self.address} {state}>"

    def _roundtrip(self, payload: bytes, count: int) -> list[Reply]:
        """Send ``payload`` (``count`` commands) and read ``count`` replies."""
        sock = self._sock
        if sock is None:
            raise ConnectionLost(self.address, "the client is closed")
        try:
            if count == 1 and len(payload) <= _SEND_CHUNK:
                # The common case, kept cheap. (sendall's timeout covers the whole payload,
                # which is why large ones go the other way: its timeout is per wait.)
                sock.sendall(payload)
                return [self._read_reply(sock)]
            return self._send_while_reading(sock, payload, count)
        except TimeoutError:
            self.close()
            raise ConnectionLost(self.address, f"no reply within {self.timeout} s") from None
        except OSError as error:
            self.close()
            raise ConnectionLost(self.address, error.strerror or str(error)) from None
        except BaseException:
            # Interrupted (Ctrl-C) or bad bytes from the server: replies may still be in
            # flight, and reading them as answers to later commands would be wrong.
            self.close()
            raise

    def _next(self) -> Reply | NeedData:
        while True:
            reply = self._parser.next_reply()
            if not isinstance(reply, Push):
                return reply
            self.pushes.append(reply)

    def _read_reply(self, sock: socket.socket) -> Reply:
        while True:
            reply = self._next()
            if not isinstance(reply, NeedData):
                return reply
            data = sock.recv(_RECV_SIZE)
            if not data:
                raise ConnectionResetError(0, "the server closed the connection")
            self._parser.feed(data)

    def _send_while_reading(self, sock: socket.socket, payload: bytes, count: int) -> list[Reply]:
        """Write ``payload`` while reading replies as they come.

        Writing everything first and only then reading can deadlock: once the server's unsent
        replies pass its limit it stops reading (back-pressure), and a client still blocked in
        ``sendall`` never gets to read them.
        """
        replies: list[Reply] = []
        view = memoryview(payload)
        sent = 0
        sock.setblocking(False)
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
                while len(replies) < count:
                    events = selector.select(self.timeout)
                    if not events:
                        raise TimeoutError
                    mask = events[0][1]
                    if mask & selectors.EVENT_WRITE and sent < len(view):
                        with contextlib.suppress(BlockingIOError):  # a spurious wakeup
                            sent += sock.send(view[sent : sent + _SEND_CHUNK])
                        if sent == len(view):
                            selector.modify(sock, selectors.EVENT_READ)
                    if mask & selectors.EVENT_READ:
                        try:
                            data = sock.recv(_RECV_SIZE)
                        except BlockingIOError:
                            continue
                        if not data:
                            raise ConnectionResetError(0, "the server closed the connection")
                        self._parser.feed(data)
                        while len(replies) < count:
                            reply = self._next()
                            if isinstance(reply, NeedData):
                                break
                            replies.append(reply)
        finally:
            if self._sock is not None:
                sock.settimeout(self.timeout)
        return replies


class Pipeline:
    """Commands queued on a client, sent in one write, answered in order.

    ::

        with client.pipeline() as p:
            p.set("a", "1")
            p.get("a")
            p.execute_command("INCR", "n")
            results = p.execute()   # [None, b'1', 1]

    Each result is what the client method of the same name returns (``set`` -> None, ``get`` ->
    bytes or None, ``remove`` -> None, ``execute_command`` -> the reply). All replies are read
    before anything is raised, so the connection stays in step: by default the first failure
    (a :class:`~kvs.client.errors.ServerError`, or ``KeyNotFound`` from ``remove``) is then
    raised; with ``execute(raise_on_error=False)`` failures are returned in place as exception
    instances. Leaving the ``with`` block discards commands never executed.
    """

    def __init__(self, client: KvsClient) -> None:
        self._client = client
        self._requests: list[bytes] = []
        self._handlers: list[Callable[[Reply], Any]] = []

    def execute_command(self, *args: Arg) -> Self:
        """Queue any command; its result is its reply."""
        return self._queue(args, _raise_errors)

    def set(self, key: str | bytes, value: str | bytes) -> Self:
        return self._queue(("SET", key, value), _expect_ok)

    def get(self, key: str | bytes) -> Self:
        return self._queue(("GET", key), _expect_bulk)

    def remove(self, key: str | bytes) -> Self:
        def removed(reply: Reply) -> None:
            if _expect_count(reply) == 0:
                raise KeyNotFound(key)

        return self._queue(("DEL", key), removed)

    def ping(self) -> Self:
        return self._queue(("PING",), lambda reply: None)

    def _queue(self, args: tuple[Arg, ...], handler: Callable[[Reply], Any]) -> Self:
        self._requests.append(_encode(args))
        self._handlers.append(handler)
        return self

    def __len__(self) -> int:
        return len(self._requests)

    def reset(self) -> None:
        """Drop the queued commands."""
        self._requests.clear()
        self._handlers.clear()

    def execute(self, *, raise_on_error: bool = True) -> list[Any]:
        """Send every queued command, read every reply, and return the results in order."""
        requests, handlers = self._requests, self._handlers
        self._requests, self._handlers = [], []
        if not requests:
            return []
        replies = self._client._roundtrip(b"".join(requests), len(requests))
        results: list[Any] = []
        first_error: Exception | None = None
        for handler, reply in zip(handlers, replies, strict=True):
            try:
                if isinstance(reply, ErrorReply):
                    raise ServerError.from_reply(reply)
                results.append(handler(reply))
            except (ServerError, KeyNotFound) as error:
                results.append(error)
                first_error = first_error or error
            except ReplyProtocolError:
                self._client.close()  # out of step: see KvsClient._checked
                raise
        if first_error is not None and raise_on_error:
            raise first_error
        return results

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.reset()
