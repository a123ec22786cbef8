"""A parser of server replies, RESP2 and RESP3, sans-I/O.

The client side's counterpart of :mod:`kvs.protocol.resp` (which parses *requests*). Nothing
here touches a socket: hand received bytes to :meth:`ReplyParser.feed` and pull whole replies
out with :meth:`ReplyParser.next_reply`, which returns :data:`NEED_DATA` when the buffered bytes
do not yet hold a complete reply (``None`` cannot say that: it is the null reply)::

    parser.feed(data)
    while (reply := parser.next_reply()) is not NEED_DATA:
        handle(reply)

The result never depends on how the bytes were split into ``feed`` calls. An aggregate that
arrives over many reads is not re-parsed from its start on every call: the parser keeps a
stack of the unfinished aggregates and the elements already read.

Reply types and their Python values
===================================

=============================  ==============================================================
``+text``  simple string       ``str`` (UTF-8, ``surrogateescape``: no byte is lost)
``-ERR text``  error           :class:`ErrorReply` (a value, never raised here)
``:n``  integer                ``int``
``$n`` bulk string             ``bytes``; ``$-1`` is ``None``
``$?`` + ``;n`` chunks         streamed string: the chunks joined into one ``bytes``
``*n`` array                   ``list``; ``*-1`` is ``None``
``_``  null                    ``None``
``,x``  double                 ``float`` (``inf``, ``-inf``, ``nan`` too)
``#t`` / ``#f``  boolean       ``bool``
``(n``  big number             ``int``
``!n``  bulk error             :class:`ErrorReply`
``=n``  verbatim string        :class:`Verbatim` (``bytes`` with a ``format`` such as ``txt``)
``%n``  map                    ``dict`` (unhashable keys are frozen: list -> tuple, ...)
``~n``  set                    ``set`` (elements frozen the same way)
``>n``  push                   :class:`Push` (a ``list``): out-of-band data, e.g. pub/sub
``|n``  attribute              read and dropped; the reply that follows it is returned
``*?`` ``%?`` ``~?`` ``>?``    streamed aggregates, ended by ``.``
=============================  ==============================================================

Malformed input raises :class:`ReplyProtocolError`; after one the parser is unusable (every
call raises it again), because it cannot find the start of the next reply.
"""

from __future__ import annotations

import re
from typing import Any, Final, TypeAlias, cast

from kvs.errors import KvsError

__all__ = [
    "NEED_DATA",
    "ErrorReply",
    "NeedData",
    "Push",
    "Reply",
    "ReplyParser",
    "ReplyProtocolError",
    "Verbatim",
]


class ReplyProtocolError(KvsError):
    """The server sent bytes that are not a valid RESP reply."""


class NeedData:
    """The type of :data:`NEED_DATA`; there is only one instance."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by :meth:`ReplyParser.next_reply` when more bytes are needed.
NEED_DATA: Final = NeedData()


class ErrorReply:
    """An error reply (``-ERR ...`` or ``!n``): ``message`` is its whole text, code included."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message

    @property
    def code(self) -> str:
        """The first word, by convention the error's kind: ``ERR``, ``WRONGTYPE``, ``NOAUTH``."""
        return self.message.split(" ", 1)[0]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ErrorReply) and other.message == self.message

    def __hash__(self) -> int:
        return hash((ErrorReply, self.message))

    def __repr__(self) -> str:
        return f"ErrorReply({self.message!r})"


#: Any value :meth:`ReplyParser.next_reply` can return (``bool`` is an ``int``, a
#: :class:`Verbatim` is ``bytes`` and a :class:`Push` is a ``list``).
Reply: TypeAlias = (
    bytes | str | int | float | ErrorReply | list["Reply"] | dict[Any, "Reply"] | set[Any] | None
)


class Verbatim(bytes):
    """A RESP3 verbatim string: the text, plus its three-letter ``format`` (``txt``, ``mkd``)."""

    format: str

    def __new__(cls, text: bytes, format: str = "txt") -> Verbatim:
        self = super().__new__(cls, text)
        self.format = format
        return self

    def __repr__(self) -> str:
        return f"Verbatim({bytes(self)!r}, format={self.format!r})"


class Push(list[Reply]):
    """A RESP3 push (``>``): data the server sent on its own, not a reply to a command."""

    __slots__ = ()


# One byte per reply type (``buf[pos]`` is an int).
_SIMPLE: Final = ord("+")
_ERROR: Final = ord("-")
_INTEGER: Final = ord(":")
_BULK: Final = ord("$")
_ARRAY: Final = ord("*")
_NULL: Final = ord("_")
_DOUBLE: Final = ord(",")
_BOOLEAN: Final = ord("#")
_BIG_NUMBER: Final = ord("(")
_BULK_ERROR: Final = ord("!")
_VERBATIM: Final = ord("=")
_MAP: Final = ord("%")
_SET: Final = ord("~")
_PUSH: Final = ord(">")
_ATTRIBUTE: Final = ord("|")
_CHUNK: Final = ord(";")
_END: Final = ord(".")
# Not a wire byte: the frame of a streamed string (``$?``) collecting its ``;n`` chunks.
_STREAMED_STRING: Final = -1

_AGGREGATES: Final = frozenset((_ARRAY, _MAP, _SET, _PUSH, _ATTRIBUTE))
_BLOBS: Final = frozenset((_BULK, _BULK_ERROR, _VERBATIM))

# Strict decimal, as servers write them: what int() would also accept ("+1", " 1", "1_0") is
# refused, so that garbage is reported rather than read as a number.
_INTEGER_TEXT: Final = re.compile(rb"-?[0-9]+")
_BIG_NUMBER_TEXT: Final = re.compile(rb"[-+]?[0-9]+")
_LENGTH_TEXT: Final = re.compile(rb"-1|[0-9]+")
_DOUBLE_TEXT: Final = re.compile(rb"[-+]?(?:inf|nan|[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)")


class _Frame:
    """An aggregate (or streamed string) whose elements are still being read."""

    __slots__ = ("items", "kind", "remaining")

    def __init__(self, kind: int, remaining: int) -> None:
        self.kind = kind
        self.remaining = remaining  # elements still to read; -1: streamed, ends at "."
        self.items: list[Reply] = []


# What a finished attribute frame "returns": nothing to hand on.
_DROPPED: Final = object()


def _freeze(value: Reply) -> Any:
    """A hashable stand-in for a map key or set element (RESP3 allows aggregates there)."""
    if isinstance(value, list):
        return tuple(_freeze(item) for item in value)
    if isinstance(value, dict):
        return frozenset((key, _freeze(item)) for key, item in value.items())
    if isinstance(value, set):
        return frozenset(value)
    return value


def _finish(frame: _Frame) -> Reply | object:
    items = frame.items
    kind = frame.kind
    if kind == _ARRAY:
        return items
    if kind == _PUSH:
        return Push(items)
    if kind == _SET:
        return {_freeze(item) for item in items}
    if kind == _ATTRIBUTE:
        # Attributes are metadata about the reply that follows (e.g. key popularity); no kvs
        # command sends them, and a caller has no use for them in a plain client.
        return _DROPPED
    return {_freeze(items[i]): items[i + 1] for i in range(0, len(items), 2)}


def _decode(line: bytes) -> str:
    return line.decode("utf-8", "surrogateescape")


class ReplyParser:
    """Incremental parser of server replies; see the module docstring for the value types."""

    __slots__ = ("_buf", "_error", "_pos", "_stack")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # read offset into _buf; the bytes before it are consumed
        self._stack: list[_Frame] = []
        self._error: ReplyProtocolError | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes received and not yet consumed by a returned or partly read reply."""
        return len(self._buf) - self._pos

    @property
    def idle(self) -> bool:
        """True between replies: nothing buffered, no aggregate half read."""
        return not self._stack and self._pos == len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the server."""
        if self._error is not None:
            raise self._error
        if not data:
            return
        if self._pos:
            # Compact once per feed, not once per reply: what remains is one partial reply.
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def _fail(self, message: str) -> ReplyProtocolError:
        self._error = ReplyProtocolError(f"invalid reply from the server: {message}")
        return self._error

    def next_reply(self) -> Reply | NeedData:
        """The next complete reply, or :data:`NEED_DATA`. Raises :class:`ReplyProtocolError`."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        end = len(buf)
        pos = self._pos
        stack = self._stack
        while True:
            # Every reply and every element starts with a line: type byte, text, CRLF.
            if pos >= end:
                break
            newline = buf.find(b"\r\n", pos)
            if newline < 0:
                break
            marker = buf[pos]
            line = bytes(buf[pos + 1 : newline])
            if b"\r" in line or b"\n" in line:
                raise self._fail(f"bare CR or LF in {bytes(buf[pos:newline])!r}")
            after = newline + 2
            value: Reply | object
            if stack and stack[-1].kind == _STREAMED_STRING:
                # Inside "$?": only ";n" chunks, ended by ";0".
                if marker != _CHUNK:
                    raise self._fail(f"{chr(marker)!r} inside a streamed string, not a ';' chunk")
                size = self._length(line, nullable=False)
                if size == 0:
                    frame = stack.pop()
                    value = b"".join(cast("list[bytes]", frame.items))
                    pos = after
                else:
                    if after + size + 2 > end:
                        break
                    if buf[after + size : after + size + 2] != b"\r\n":
                        raise self._fail("a streamed-string chunk is not followed by CRLF")
                    stack[-1].items.append(bytes(buf[after : after + size]))
                    pos = after + size + 2
                    continue
            elif marker in _BLOBS:
                if marker == _BULK and line == b"?":
                    stack.append(_Frame(_STREAMED_STRING, -1))
                    pos = after
                    continue
                size = self._length(line, nullable=marker == _BULK)
                if size < 0:
                    value = None
                    pos = after
                else:
                    # The payload is binary (it may hold CRLF): taken by its length, and only
                    # copied out once all of it is here.
                    if after + size + 2 > end:
                        break
                    if buf[after + size : after + size + 2] != b"\r\n":
                        raise self._fail(f"a {size}-byte string is not followed by CRLF")
                    data = bytes(buf[after : after + size])
                    pos = after + size + 2
                    if marker == _BULK:
                        value = data
                    elif marker == _BULK_ERROR:
                        value = ErrorReply(data.decode("utf-8", "backslashreplace"))
                    else:
                        if size < 4 or data[3] != ord(":"):
                            raise self._fail("a verbatim string without its 'fmt:' prefix")
                        value = Verbatim(data[4:], data[:3].decode("ascii", "replace"))
            elif marker in _AGGREGATES:
                pos = after
                if line == b"?":
                    stack.append(_Frame(marker, -1))
                    continue
                count = self._length(line, nullable=marker == _ARRAY)
                if count > 0:
                    pairs = marker in (_MAP, _ATTRIBUTE)
                    stack.append(_Frame(marker, 2 * count if pairs else count))
                    continue
                value = None if count < 0 else _finish(_Frame(marker, 0))
            elif marker == _SIMPLE:
                value = _decode(line)
                pos = after
            elif marker == _ERROR:
                value = ErrorReply(line.decode("utf-8", "backslashreplace"))
                pos = after
            elif marker == _INTEGER:
                if _INTEGER_TEXT.fullmatch(line) is None:
                    raise self._fail(f"not an integer: {line!r}")
                value = int(line)
                pos = after
            elif marker == _NULL:
                if line:
                    raise self._fail(f"text after a null: {line!r}")
                value = None
                pos = after
            elif marker == _DOUBLE:
                if _DOUBLE_TEXT.fullmatch(line.lower()) is None:
                    raise self._fail(f"not a double: {line!r}")
                value = float(line)
                pos = after
            elif marker == _BOOLEAN:
                if line not in (b"t", b"f"):
                    raise self._fail(f"not a boolean: {line!r}")
                value = line == b"t"
                pos = after
            elif marker == _BIG_NUMBER:
                if _BIG_NUMBER_TEXT.fullmatch(line) is None:
                    raise self._fail(f"not a big number: {line!r}")
                value = int(line)
                pos = after
            elif marker == _END:
                if line or not stack or stack[-1].remaining != -1:
                    raise self._fail("'.' outside a streamed aggregate")
                frame = stack.pop()
                if frame.kind in (_MAP, _ATTRIBUTE) and len(frame.items) % 2:
                    raise self._fail("a streamed map ended after a key, before its value")
                value = _finish(frame)
                pos = after
            else:
                raise self._fail(f"unknown reply type {chr(marker)!r}")
            # A value is complete: hand it to the aggregate it belongs to, finishing every
            # aggregate it completes; at the top level, it is the reply.
            while True:
                if value is _DROPPED:
                    break  # an attribute: the value it describes comes next
                if not stack:
                    self._pos = pos
                    return value  # type: ignore[return-value]
                frame = stack[-1]
                frame.items.append(value)  # type: ignore[arg-type]
                if frame.remaining < 0:
                    break  # streamed: only "." ends it
                frame.remaining -= 1
                if frame.remaining:
                    break
                stack.pop()
                value = _finish(frame)
        self._pos = pos
        return NEED_DATA

    def _length(self, line: bytes, *, nullable: bool) -> int:
        if _LENGTH_TEXT.fullmatch(line) is None or (line == b"-1" and not nullable):
            raise self._fail(f"invalid length {line!r}")
        return int(line)
