"""The Redis serialization protocol (RESP2 and RESP3), sans-I/O.

Nothing here touches a socket or an event loop: the server reads bytes however it likes, hands
them to :meth:`RespParser.feed`, pulls whole commands out with :meth:`RespParser.next_command`,
and writes whatever the :class:`ReplyEncoder` methods return. Everything is pure and testable
byte by byte, in the style of h11.

Requests
========

A request is a list of one or more byte strings (``[b"SET", b"k", b"v"]``). Two framings are
accepted, chosen by the first byte of each request, as in Redis's ``processInputBuffer``:

*Multibulk* (first byte ``*``), what every client library sends::

    *<n>\\r\\n  then n times:  $<len>\\r\\n<len bytes>\\r\\n

  The bulk payload is binary safe (it may hold ``\\r``, ``\\n``, NUL). Lengths are strict decimal
  as Redis's ``string2ll`` reads them: no sign but ``-``, no leading zeros, no spaces.
  ``*0`` and any negative count (``*-1``) are an empty request that Redis silently skips; so
  does this parser (it never returns an empty command). A negative bulk length is an error.
  Unlike Redis, which skips the two bytes after a bulk payload unchecked, the parser requires
  them to be ``\\r\\n`` (else ``invalid bulk length``), and requires ``\\n`` right after the
  ``\\r`` that ends a count line (else ``invalid multibulk length`` / ``invalid bulk length``).

*Inline* (any other first byte), what a person types into telnet or ``nc``: one
line ending in ``\\n`` or ``\\r\\n``, split into words as Redis's ``sdssplitargs`` does:

  - words are separated by blanks (space, ``\\t``, ``\\r``; ``\\v`` and ``\\f`` are skipped
    between words but do not end a word);
  - ``"double quotes"`` take the escapes ``\\xHH``, ``\\n``, ``\\r``, ``\\t``, ``\\b``, ``\\a``,
    and ``\\<any other byte>`` for that byte (so ``\\"`` and ``\\\\``);
  - ``'single quotes'`` take only ``\\'``; every other byte is literal;
  - a closing quote must be followed by a blank or the end of the line, and an unclosed
    quote is an error (both: ``unbalanced quotes in request``); ``""`` is an empty argument;
  - the line is read as a C string, so a NUL byte ends it (what follows is ignored);
  - an empty or all-blank line is skipped, not returned.

How: :meth:`RespParser.next_command` first tries a read-ahead fast path, which splits the
buffered bytes into CRLF-terminated lines once (in C) and takes every complete request whose
framing is canonical by comparing its length lines with the expected ones; anything else (an
error, a payload holding CRLF, an inline request, a partial request, a count above 1024) is
left to the request-at-a-time path, which reads each line as Redis does and gives the errors
below. The two agree byte for byte (tests/protocol/test_resp_readahead.py); the fast path
is what makes a pipeline of small commands cheap.

Limits (all constructor arguments; the defaults are Redis's)
============================================================

- ``max_args`` (1024*1024, Redis's bound before 7.0): a multibulk count above it ->
  ``invalid multibulk length``.
- ``max_bulk_len`` (512 MiB, Redis's ``proto-max-bulk-len``): a bulk length above it ->
  ``invalid bulk length``. Lengths are checked before anything is allocated, and a bulk of
  length N is not copied out of the buffer until all N+2 bytes are there.
- ``max_inline_len`` (64 KiB, Redis's ``PROTO_INLINE_MAX_SIZE``): an inline line longer than
  this, not counting its line ending -> ``too big inline request``. The same bound applies to
  a count line (``*<n>`` / ``$<len>``, counted up to its ``\\r``): ``too big mbulk count
  string`` / ``too big bulk count string``. Either error is raised as soon as the buffered
  bytes prove the line too long, without waiting for its end.
- ``max_buffer`` (1 GiB, Redis's ``client-query-buffer-limit``): :meth:`RespParser.feed` raises
  ``query buffer limit exceeded`` if the bytes it holds (unparsed input, the arguments
  already read of an unfinished command, and the requests read ahead but not yet returned)
  would exceed it. (Redis closes such a client
  without a reply; this text is for the log.)
- Unauthenticated clients (:meth:`RespParser.set_unauthenticated`, as Redis does when a
  password is set, CVE-2021-32675): a multibulk count above 10 -> ``unauthenticated
  multibulk length``; a bulk length above 16384 -> ``unauthenticated bulk length``. The
  ordinary limits are checked first, as in Redis.

Errors
======

The parser raises only :class:`ProtocolError`; any other exception is a bug. The error's
text is the one Redis sends (``str(err)``; ``err.reply`` is the ready ``-ERR ...\\r\\n``).
After a ProtocolError the connection should get that reply and be closed: the parser does not
resynchronise, and every later call raises the same error again. The decisions depend only on
the bytes, never on how they were split into ``feed`` calls (except ``max_buffer``, which by
its nature depends on how much the caller feeds before pulling commands).

Replies
=======

:class:`ReplyEncoder` turns values into RESP2 or RESP3 reply bytes. Aggregate methods
(``array``, ``map``, ``set``, ``push``) take already-encoded elements, so replies nest freely;
``bulk_array`` is the shortcut for the common array of bulk strings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from itertools import islice
from typing import Final

from kvs.errors import KvsError

__all__ = [
    "EMPTY_ARRAY",
    "EMPTY_BULK",
    "OK",
    "PONG",
    "QUEUED",
    "RESP2",
    "RESP3",
    "UNAUTHENTICATED_MAX_ARGS",
    "UNAUTHENTICATED_MAX_BULK_LEN",
    "ProtocolError",
    "ReplyEncoder",
    "RespParser",
    "encode_command",
]

RESP2: Final = 2
RESP3: Final = 3

# Redis's hard-coded limits for a client that still has to AUTH (networking.c).
UNAUTHENTICATED_MAX_ARGS: Final = 10
UNAUTHENTICATED_MAX_BULK_LEN: Final = 16384

# Redis's error texts (networking.c), sent as "-ERR <text>".
_INVALID_MBULK: Final = "Protocol error: invalid multibulk length"
_INVALID_BULK: Final = "Protocol error: invalid bulk length"
_TOO_BIG_INLINE: Final = "Protocol error: too big inline request"
_TOO_BIG_MBULK: Final = "Protocol error: too big mbulk count string"
_TOO_BIG_BULK: Final = "Protocol error: too big bulk count string"
_UNBALANCED: Final = "Protocol error: unbalanced quotes in request"
_UNAUTH_MBULK: Final = "Protocol error: unauthenticated multibulk length"
_UNAUTH_BULK: Final = "Protocol error: unauthenticated bulk length"
# Redis closes such a client without a reply; a text is still useful for the log.
_BUFFER_LIMIT: Final = "Protocol error: query buffer limit exceeded"

# An inline line needs the full sdssplitargs tokenizer only if it has a quote, a NUL, or a
# \v / \f (which bytes.split() would treat as separators but sdssplitargs keeps inside words).
_INLINE_NEEDS_TOKENIZER: Final = re.compile(b"[\"'\\x00\\x0b\\x0c]")
# One sdssplitargs word: blanks (C isspace) to skip, an unquoted part (which \v and \f do not
# end), then optionally one quoted part, which must end the word. Possessive quantifiers so a
# backtrack can never re-read an escape as a closing quote.
_INLINE_WORD: Final = re.compile(
    b"[ \\t\\n\\x0b\\x0c\\r]*+"
    b"(?P<plain>[^ \\t\\n\\r\"']*+)"
    b'(?:"(?P<dq>(?:\\\\x[0-9A-Fa-f]{2}|\\\\.|[^\\\\"])*+)"'
    b"|'(?P<sq>(?:\\\\'|[^'])*+)')?+",
    re.DOTALL,
)
_DQ_ESCAPE: Final = re.compile(b"\\\\(?:x([0-9A-Fa-f]{2})|(.))", re.DOTALL)
_DQ_ESCAPES: Final = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"a": b"\a"}
_BLANKS: Final = b" \t\n\x0b\x0c\r"
# Placeholder for "no partial request"; never appended to (a request starts a fresh list).
_NO_ARGS: Final[list[bytes]] = []
#: A buffer larger than this is freed as soon as all of it is parsed (see next_command).
_RELEASE_AT: Final = 1 << 20
# The read-ahead fast path (RespParser._parse_ahead) accepts only canonical framing, which it
# recognises by table lookup: "*<n>" for these counts, "$<len>" for lengths below the second.
_COUNT_LINES: Final = {b"*%d" % n: n for n in range(1, 1025)}
_BULK_LINES: Final = tuple(b"$%d" % n for n in range(4096))
# It looks at most this far ahead per call (one copy and one split of that many bytes), and
# only when the limits leave room for every line it accepts ("$" + 10 digits, "*1024").
_AHEAD: Final = 256 * 1024
_AHEAD_MIN_LINE: Final = 16
_QUOTES: Final = b"\"'"


class ProtocolError(KvsError):
    """The client broke the protocol; ``str(err)`` is Redis's text for it.

    Send :attr:`reply` and close the connection: the parser cannot resynchronise.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def reply(self) -> bytes:
        """The error as RESP bytes, ``-ERR <message>\\r\\n`` (the same in RESP2 and RESP3)."""
        # latin-1 so an offending byte quoted in the message goes out as that raw byte.
        return b"-ERR " + self.message.encode("latin-1", "replace") + b"\r\n"


def _expected_dollar(byte: int) -> str:
    # Redis formats the byte with %c, then turns CR/LF into spaces to keep the reply one line.
    shown = " " if byte in (10, 13) else chr(byte)
    return f"Protocol error: expected '$', got '{shown}'"


def _dq_unescape(match: re.Match[bytes]) -> bytes:
    hex_digits = match.group(1)
    if hex_digits is not None:
        return bytes((int(hex_digits, 16),))
    char = match.group(2)
    return _DQ_ESCAPES.get(char, char)


def split_args(line: bytes) -> list[bytes] | None:
    """Split a line into words the way Redis's sdssplitargs does (inline commands, and the
    lines of a config file); None if its quotes are unbalanced."""
    nul = line.find(b"\x00")
    if nul >= 0:
        line = line[:nul]  # sdssplitargs reads a C string
    if _INLINE_NEEDS_TOKENIZER.search(line) is None:
        return line.split()  # no quotes: plain whitespace split is exactly sdssplitargs
    words: list[bytes] = []
    end = len(line)
    pos = 0
    while True:
        match = _INLINE_WORD.match(line, pos)
        assert match is not None  # every part of the pattern is optional
        pos = match.end()
        plain, dq, sq = match.group("plain", "dq", "sq")
        if dq is not None:
            word = plain + (_DQ_ESCAPE.sub(_dq_unescape, dq) if b"\\" in dq else dq)
        elif sq is not None:
            word = plain + sq.replace(b"\\'", b"'")
        else:
            if pos < end and line[pos] in _QUOTES:
                return None  # a quote that the pattern could not close: unterminated
            if not plain:
                return words  # blanks skipped and nothing left: end of line
            words.append(plain)
            continue
        if pos < end and line[pos] not in _BLANKS:
            return None  # closing quote followed by something other than a blank
        words.append(word)


class RespParser:
    """Incremental parser of client requests (multibulk and inline); see the module docstring.

    Usage::

        parser.feed(data)
        while (command := parser.next_command()) is not None:
            handle(command)

    Raises only :class:`ProtocolError`; after one, every call raises it again.
    """

    __slots__ = (
        "_args",
        "_buf",
        "_bulk_limit",
        "_bulk_lines",
        "_bulklen",
        "_count_limit",
        "_error",
        "_held",
        "_max_args",
        "_max_buffer",
        "_max_bulk_len",
        "_max_inline_len",
        "_pos",
        "_ready",
        "_remaining",
        "_single_limit",
        "_slow_until",
        "_unauthenticated",
    )

    def __init__(
        self,
        *,
        max_bulk_len: int = 512 * 1024 * 1024,
        max_args: int = 1024 * 1024,
        max_inline_len: int = 64 * 1024,
        max_buffer: int = 1024 * 1024 * 1024,
        unauthenticated: bool = False,
    ) -> None:
        for name, value in (
            ("max_bulk_len", max_bulk_len),
            ("max_args", max_args),
            ("max_inline_len", max_inline_len),
            ("max_buffer", max_buffer),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        self._max_bulk_len = max_bulk_len
        self._max_args = max_args
        self._max_inline_len = max_inline_len
        self._max_buffer = max_buffer
        # feed_single_request() takes data up to this size; never when the inline limit
        # is below the longest line it accepts unchecked, or once the parser failed.
        self._single_limit = max_buffer if max_inline_len >= _AHEAD_MIN_LINE else -1
        self._buf = bytearray()
        self._pos = 0  # read offset into _buf; bytes before it are consumed
        # Requests parsed ahead by _parse_ahead and not returned yet, last one first; their
        # bytes are already consumed from _buf (so they count in buffered_bytes apart).
        self._ready: list[list[bytes]] = []
        # No read-ahead before this offset of _buf: the last attempt got that far, and the
        # slow path must take over there (so no byte is ever looked at twice by the fast path).
        self._slow_until = 0
        self._unauthenticated = False
        self.set_unauthenticated(unauthenticated)
        # State of a multibulk request that is only partly buffered, as in Redis's client
        # struct: bulks still to read (0 = between requests), the length of the bulk whose
        # header was read (-1 = none), the arguments read so far and their total size.
        self._remaining = 0
        self._bulklen = -1
        self._args = _NO_ARGS
        self._held = 0
        self._error: ProtocolError | None = None

    @property
    def unauthenticated(self) -> bool:
        """Whether the tighter pre-AUTH limits (10 arguments, 16 KiB bulks) are in force."""
        return self._unauthenticated

    def set_unauthenticated(self, unauthenticated: bool) -> None:
        """Apply (True) or lift (False) the pre-AUTH limits, for the requests not yet parsed."""
        if unauthenticated and not self._unauthenticated and self._ready:
            # Tighter limits: requests parsed ahead under the old ones go back to the buffer,
            # to be parsed again under the new. Read-ahead takes only canonical framing, so
            # re-encoding gives back the very bytes it consumed.
            data = b"".join(encode_command(args) for args in reversed(self._ready))
            self._ready.clear()
            self._buf[self._pos : self._pos] = data
            self._slow_until = 0
        self._unauthenticated = unauthenticated
        # One comparison per count or length on the hot path; which error, only on failure.
        if unauthenticated:
            self._count_limit = min(self._max_args, UNAUTHENTICATED_MAX_ARGS)
            self._bulk_limit = min(self._max_bulk_len, UNAUTHENTICATED_MAX_BULK_LEN)
        else:
            self._count_limit = self._max_args
            self._bulk_limit = self._max_bulk_len
        # The length lines read-ahead may accept by lookup alone: none above the limit.
        self._bulk_lines = _BULK_LINES[: self._bulk_limit + 1]

    @property
    def ready(self) -> list[list[bytes]]:
        """The requests parsed ahead and not returned yet, *last first*: a caller may take
        them in order by popping from the end, as ``next_command`` does (the server runs a
        pipeline's plain GETs and SETs that way, without a call per request)."""
        return self._ready

    @property
    def buffered_bytes(self) -> int:
        """Bytes held: unparsed input, the arguments read of an unfinished command, and the
        requests parsed ahead but not returned yet (counted as the bytes they came from)."""
        return len(self._buf) - self._pos + self._held + self._ready_bytes()

    def _ready_bytes(self) -> int:
        """The wire size of the requests parsed ahead and not returned yet."""
        if not self._ready:
            return 0
        return sum(
            len(b"*%d" % len(args)) + 2 + sum(len(b"$%d" % len(a)) + len(a) + 4 for a in args)
            for args in self._ready
        )

    def _fail(self, message: str) -> ProtocolError:
        self._error = ProtocolError(message)
        self._single_limit = -1
        return self._error

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the client. Raises ProtocolError past ``max_buffer``."""
        if self._error is not None:
            raise self._error
        size = len(data)
        if not size:
            return
        buf = self._buf
        pos = self._pos
        held = self._held + self._ready_bytes() if self._ready else self._held
        if len(buf) - pos + held + size > self._max_buffer:
            raise self._fail(_BUFFER_LIMIT)
        if pos:
            # Compact once per feed, not per command. Deleting a bytearray's head is cheap in
            # CPython (it moves the start pointer), and what remains is one partial request.
            del buf[:pos]
            self._pos = 0
            self._slow_until = max(0, self._slow_until - pos)
        buf += data

    def feed_single_request(self, data: bytes) -> list[bytes] | None:
        """Take ``data`` straight into ``ready`` when it is exactly one complete request with
        canonical framing within the limits and the parser holds nothing (the usual read of
        a client that waits for each reply), and return that request, still in ``ready``.
        Otherwise return None: nothing changed, and ``data`` is for ``feed``. Accepts only
        what ``feed`` and ``next_command`` would return as this one request (the checks of
        ``_parse_ahead``), without copying ``data`` into the buffer and out again."""
        if self._pos < len(self._buf) or self._ready or self._remaining:
            return None
        if len(data) > self._single_limit:
            return None  # over max_buffer (feed raises), or the parser failed
        count = _COUNT_LINES.get(data[: data.find(b"\r\n")])
        if count is None or count > self._count_limit:
            return None
        # Exactly 2 * count + 1 lines, each ended by "\r\n", and nothing after the last:
        # then no payload holds "\r\n" (it would add a line), and every line is where the
        # framing says. The split stops there, so a pipeline costs one request's split.
        lines = data.split(b"\r\n", 2 * count + 1)
        size = len(lines)
        if size != 2 * count + 2 or lines[-1]:
            return None
        heads = self._bulk_lines  # "$<len>" for each length within the limit
        try:
            if size == 8:  # SET: spelt out, as in _parse_ahead
                canonical = (
                    lines[1] == heads[len(lines[2])]
                    and lines[3] == heads[len(lines[4])]
                    and lines[5] == heads[len(lines[6])]
                )
            elif size == 6:  # GET
                canonical = lines[1] == heads[len(lines[2])] and lines[3] == heads[len(lines[4])]
            else:
                canonical = lines[1:-1:2] == [heads[len(arg)] for arg in lines[2:-1:2]]
        except IndexError:  # a long argument: the general path formats and checks its line
            return None
        if not canonical:
            return None
        args = lines[2:-1:2]
        self._ready.append(args)
        return args

    def next_command(self) -> list[bytes] | None:
        """The next complete request as a non-empty list of arguments, or None for "feed more".

        Raises ProtocolError if the input is not valid RESP.
        """
        if self._error is not None:
            raise self._error
        ready = self._ready
        if ready:
            return ready.pop()
        if self._pos >= len(self._buf):
            return None  # nothing buffered (the slow path would say so, a little later)
        if not self._remaining and self._pos >= self._slow_until:
            self._parse_ahead()
            ready = self._ready
            if ready:
                return ready.pop()
        buf = self._buf
        end = len(buf)
        pos = self._pos
        remaining = self._remaining
        bulklen = self._bulklen
        args = self._args  # the partial request, if remaining
        counted = len(args)  # arguments already included in self._held
        line_limit = self._max_inline_len
        bulk_limit = self._bulk_limit
        while True:
            if not remaining:
                # Between requests.
                if pos >= end:
                    self._pos = pos
                    return None
                if buf[pos] != 42:  # not "*": an inline request
                    inline = self._inline(pos, end)
                    if inline is None:
                        self._pos = pos
                        return None
                    pos, args = inline
                    if args:
                        self._pos = pos
                        return args
                    continue  # an empty line: skipped, like Redis
                # "*<count>\r\n". Search no further than the limit allows: bounded work.
                cr = buf.find(b"\r", pos, pos + line_limit + 1)
                if cr < 0:
                    if end - pos > line_limit:
                        raise self._fail(_TOO_BIG_MBULK)
                    self._pos = pos
                    return None
                if cr + 1 >= end:
                    self._pos = pos
                    return None  # the \n after the \r is not here yet
                digits = buf[pos + 1 : cr]
                # Strict string2ll: ASCII digits, no leading zero; int() alone would take
                # "+1", " 1", "1_0". 18 digits are far beyond any limit and safe for int().
                if digits.isdigit() and cr - pos < 20 and (digits[0] != 48 or cr == pos + 2):
                    count = int(digits)
                elif (
                    digits[:1] == b"-"
                    and digits[1:].isdigit()
                    and digits[1] != 48
                    and cr - pos < 22
                    and int(digits) >= -(2**63)  # a C long long, like string2ll
                ):
                    count = -1
                else:
                    raise self._fail(_INVALID_MBULK)
                if buf[cr + 1] != 10:
                    raise self._fail(_INVALID_MBULK)
                if count > self._count_limit:
                    raise self._fail(_INVALID_MBULK if count > self._max_args else _UNAUTH_MBULK)
                pos = cr + 2
                if count <= 0:
                    continue  # "*0" / "*-1": an empty request, which Redis skips
                remaining = count
                args = []
                counted = 0
            # Inside a multibulk request: read "$<len>\r\n<payload>\r\n" until complete.
            while remaining:
                if bulklen < 0:
                    cr = buf.find(b"\r", pos, pos + line_limit + 1)
                    if cr < 0:
                        if end - pos > line_limit:
                            raise self._fail(_TOO_BIG_BULK)
                        break
                    if cr + 1 >= end:
                        break
                    if buf[pos] != 36:  # "$"
                        raise self._fail(_expected_dollar(buf[pos]))
                    digits = buf[pos + 1 : cr]
                    if (
                        digits.isdigit()
                        and cr - pos < 20
                        and (digits[0] != 48 or cr == pos + 2)
                        and buf[cr + 1] == 10
                    ):
                        bulklen = int(digits)
                    else:
                        raise self._fail(_INVALID_BULK)  # also every negative length
                    if bulklen > bulk_limit:
                        raise self._fail(
                            _INVALID_BULK if bulklen > self._max_bulk_len else _UNAUTH_BULK
                        )
                    pos = cr + 2
                stop = pos + bulklen
                if stop + 2 > end:
                    break  # copy nothing until the whole payload and its CRLF are here
                if buf[stop] != 13 or buf[stop + 1] != 10:
                    raise self._fail(_INVALID_BULK)
                if bulklen < 65536:  # a literal: this is the hot path
                    args.append(bytes(buf[pos:stop]))
                else:
                    with memoryview(buf) as view:
                        args.append(view[pos:stop].tobytes())
                pos = stop + 2
                bulklen = -1
                remaining -= 1
            if remaining:
                # Incomplete: keep what was read; account its size against max_buffer.
                self._pos = pos
                self._remaining = remaining
                self._bulklen = bulklen
                self._args = args
                self._held += sum(map(len, islice(args, counted, None)))
                return None
            if pos == end and end > _RELEASE_AT:
                # All consumed: free a large buffer now rather than at the next feed(), so a
                # 500 MiB SET does not hold a second copy of its value while it is stored.
                del buf[:]
                pos = 0
                self._slow_until = 0
            self._pos = pos
            if self._remaining:
                # This call finished a request an earlier call had begun: back to "between
                # requests" (otherwise these fields are already there, and stay untouched).
                self._remaining = 0
                self._bulklen = -1
                self._args = _NO_ARGS  # the caller owns the list now
                self._held = 0
            return args

    def _parse_ahead(self) -> None:
        """The fast path: parse, in one go, the complete requests at the read position whose
        framing is canonical (``*<n>\\r\\n`` then ``$<len>\\r\\n<payload>\\r\\n`` with no sign,
        no leading zero, n and len within the limits), into ``_ready``.

        It never raises and never accepts anything the slow path would not: it stops at the
        first request it cannot vouch for (an error, a payload holding ``\\r\\n``, an inline
        request, one not complete yet...) and leaves it, and everything up to the end of the
        bytes it looked at, to the slow path (``_slow_until``), which gives the same result
        or Redis's error. One split of the buffer into lines does the work in C; each
        request's lines are then checked by comparing them with the expected ones.
        """
        buf = self._buf
        pos = self._pos
        end = len(buf)
        if pos >= end or buf[pos] != 42 or self._max_inline_len < _AHEAD_MIN_LINE:
            return  # nothing, an inline request, or count lines limited below "*1024"
        stop = min(end, pos + _AHEAD)
        if pos == 0 and stop == end:
            lines = bytes(buf).split(b"\r\n")  # the usual case: feed() compacted the buffer
        else:
            with memoryview(buf) as view:
                lines = view[pos:stop].tobytes().split(b"\r\n")
        self._slow_until = stop
        last = len(lines) - 1  # lines[last] is not terminated: never used
        count_limit = self._count_limit
        bulk_limit = self._bulk_limit
        counts = _COUNT_LINES.get
        expected_line = self._bulk_lines.__getitem__
        commands: list[list[bytes]] = []
        i = 0
        while i < last:
            count = counts(lines[i])
            if count is None or count > count_limit:
                break
            following = i + 2 * count + 1
            if following > last:
                break  # not complete (or not canonical): the slow path decides
            args = lines[i + 2 : following : 2]
            # Each length line must be exactly the one for its payload as split; a payload
            # holding "\r\n" was split short, so its line does not match either.
            try:
                if count == 3:  # SET: spelt out, the common cases cost half as much
                    canonical = (
                        lines[i + 1] == expected_line(len(args[0]))
                        and lines[i + 3] == expected_line(len(args[1]))
                        and lines[i + 5] == expected_line(len(args[2]))
                    )
                elif count == 2:  # GET
                    key_line = expected_line(len(args[1]))
                    canonical = (
                        lines[i + 1] == expected_line(len(args[0])) and lines[i + 3] == key_line
                    )
                else:
                    canonical = lines[i + 1 : following : 2] == list(
                        map(expected_line, map(len, args))
                    )
            except IndexError:  # a long argument: format its line, and check the limit
                heads = lines[i + 1 : following : 2]
                canonical = max(map(len, args)) <= bulk_limit and heads == [
                    b"$%d" % len(arg) for arg in args
                ]
            if not canonical:
                break
            commands.append(args)
            i = following
        if not commands:
            return
        # Consumed: the lines taken and the CRLF after each; when that is every terminated
        # line (the usual case), what is left is just the last, unterminated one.
        if i == last:
            self._pos = stop - len(lines[last])
        else:
            self._pos = pos + sum(map(len, lines[:i])) + 2 * i
        commands.reverse()
        self._ready = commands

    def _inline(self, pos: int, end: int) -> tuple[int, list[bytes]] | None:
        """Parse the inline line at ``pos``: (position after it, its words), or None if the
        line is not complete yet."""
        buf = self._buf
        limit = self._max_inline_len
        # The line may be limit bytes plus "\r\n": look that far for its "\n", no further.
        newline = buf.find(b"\n", pos, pos + limit + 2)
        if newline < 0:
            pending = end - pos
            # Too long for sure, unless the last byte is a "\r" that a "\n" may follow.
            if pending > limit + 1 or (pending == limit + 1 and buf[end - 1] != 13):
                raise self._fail(_TOO_BIG_INLINE)
            return None
        stop = newline - 1 if newline > pos and buf[newline - 1] == 13 else newline
        if stop - pos > limit:
            raise self._fail(_TOO_BIG_INLINE)
        words = split_args(bytes(buf[pos:stop]))
        if words is None:
            raise self._fail(_UNBALANCED)
        return newline + 1, words


def encode_command(args: Sequence[bytes]) -> bytes:
    """A request as multibulk bytes, the way client libraries send it."""
    parts = [b"*%d\r\n" % len(args)]
    parts.extend(b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in args)
    return b"".join(parts)


# Replies that a server sends over and over: built once.
OK: Final = b"+OK\r\n"
PONG: Final = b"+PONG\r\n"
QUEUED: Final = b"+QUEUED\r\n"
EMPTY_ARRAY: Final = b"*0\r\n"
EMPTY_BULK: Final = b"$0\r\n\r\n"
_NULL_BULK_RESP2: Final = b"$-1\r\n"
_NULL_ARRAY_RESP2: Final = b"*-1\r\n"
_NULL_RESP3: Final = b"_\r\n"
_SMALL_INTEGERS: Final = tuple(b":%d\r\n" % n for n in range(1024))
_BULK_HEADERS: Final = tuple(b"$%d\r\n" % n for n in range(4096))
# A status or error line must stay one line: Redis turns CR and LF into spaces too.
_ONE_LINE: Final = bytes.maketrans(b"\r\n", b"  ")


def _format_double(value: float) -> bytes:
    """Shortest text that reads back as ``value``, with "inf", "-inf", "nan" as in Redis."""
    if math.isnan(value):
        return b"nan"
    if math.isinf(value):
        return b"inf" if value > 0 else b"-inf"
    text = repr(value)
    if text.endswith(".0"):
        text = text[:-2]  # "3", not "3.0", like Redis
    return text.encode("ascii")


class ReplyEncoder:
    """Reply encoder for one protocol version: ``ReplyEncoder(2)`` or ``ReplyEncoder(3)``.

    Every method returns the complete reply as bytes. RESP3-only types degrade in RESP2 the way
    Redis degrades them: map -> flat array of 2n elements, set/push -> array, double and big
    number -> bulk string, boolean -> integer 1/0, null -> null bulk ``$-1``, verbatim -> bulk.
    """

    __slots__ = ("null", "null_array", "null_bulk", "protocol")

    def __init__(self, protocol: int = RESP2) -> None:
        if protocol not in (RESP2, RESP3):
            raise ValueError(f"protocol must be 2 or 3, not {protocol!r}")
        self.protocol = protocol
        resp3 = protocol == RESP3
        #: The reply for a missing string (GET of an absent key).
        self.null_bulk: bytes = _NULL_RESP3 if resp3 else _NULL_BULK_RESP2
        #: The reply for a missing aggregate (e.g. BLPOP timing out).
        self.null_array: bytes = _NULL_RESP3 if resp3 else _NULL_ARRAY_RESP2
        #: The RESP3 null; in RESP2, the null bulk string.
        self.null: bytes = self.null_bulk

    # Protocol-independent encodings.

    @staticmethod
    def simple(text: str | bytes) -> bytes:
        """Simple string ``+text``; CR and LF become spaces."""
        if isinstance(text, str):
            text = text.encode()
        return b"+%b\r\n" % text.translate(_ONE_LINE)

    @staticmethod
    def error(text: str | bytes) -> bytes:
        """Error ``-text``; ``text`` starts with its code (``ERR ...``, ``WRONGTYPE ...``)."""
        if isinstance(text, str):
            text = text.encode()
        return b"-%b\r\n" % text.translate(_ONE_LINE)

    @staticmethod
    def integer(value: int) -> bytes:
        """Integer ``:value``."""
        if 0 <= value < 1024:
            return _SMALL_INTEGERS[value]
        return b":%d\r\n" % value

    # Encodings whose null or type differs between RESP2 and RESP3.

    def bulk(self, value: bytes | None) -> bytes:
        """Bulk string; None is the null bulk (``$-1`` in RESP2, ``_`` in RESP3)."""
        if value is None:
            return self.null_bulk
        size = len(value)
        if size < 4096:
            return _BULK_HEADERS[size] + value + b"\r\n"
        return b"$%d\r\n%b\r\n" % (size, value)

    def array(self, items: Sequence[bytes] | None) -> bytes:
        """Array of already-encoded replies; None is the null array (``*-1`` / ``_``)."""
        if items is None:
            return self.null_array
        return b"*%d\r\n" % len(items) + b"".join(items)

    def bulk_array(self, values: Sequence[bytes | None] | None) -> bytes:
        """Array of bulk strings (None elements are null bulks); None is the null array."""
        if values is None:
            return self.null_array
        null = self.null_bulk
        parts = [b"*%d\r\n" % len(values)]
        parts.extend(null if v is None else b"$%d\r\n%b\r\n" % (len(v), v) for v in values)
        return b"".join(parts)

    def map(self, pairs: Sequence[tuple[bytes, bytes]]) -> bytes:
        """Map of already-encoded (key, value) replies: ``%n`` in RESP3, flat ``*2n`` in RESP2."""
        if self.protocol == RESP3:
            header = b"%%%d\r\n" % len(pairs)
        else:
            header = b"*%d\r\n" % (2 * len(pairs))
        return header + b"".join(part for pair in pairs for part in pair)

    def set(self, items: Sequence[bytes]) -> bytes:
        """Set of already-encoded replies: ``~n`` in RESP3, an array in RESP2."""
        marker = b"~" if self.protocol == RESP3 else b"*"
        return b"%b%d\r\n" % (marker, len(items)) + b"".join(items)

    def push(self, items: Sequence[bytes]) -> bytes:
        """Out-of-band push (pub/sub message): ``>n`` in RESP3, an array in RESP2."""
        marker = b">" if self.protocol == RESP3 else b"*"
        return b"%b%d\r\n" % (marker, len(items)) + b"".join(items)

    def double(self, value: float) -> bytes:
        """Double: ``,1.5`` in RESP3, the bulk string ``1.5`` in RESP2."""
        text = _format_double(value)
        if self.protocol == RESP3:
            return b",%b\r\n" % text
        return b"$%d\r\n%b\r\n" % (len(text), text)

    def boolean(self, value: bool) -> bytes:
        """Boolean: ``#t`` / ``#f`` in RESP3, the integer 1 / 0 in RESP2."""
        if self.protocol == RESP3:
            return b"#t\r\n" if value else b"#f\r\n"
        return b":1\r\n" if value else b":0\r\n"

    def big_number(self, value: int) -> bytes:
        """Big number: ``(digits`` in RESP3, a bulk string in RESP2."""
        text = b"%d" % value
        if self.protocol == RESP3:
            return b"(%b\r\n" % text
        return b"$%d\r\n%b\r\n" % (len(text), text)

    def verbatim(self, text: bytes, format: bytes = b"txt") -> bytes:
        """Verbatim string (INFO, LATENCY DOCTOR...): ``=`` with a 3-byte format in RESP3,
        a plain bulk string in RESP2."""
        if self.protocol == RESP3:
            if len(format) != 3:
                raise ValueError(f"verbatim format must be 3 bytes, not {format!r}")
            return b"=%d\r\n%b:%b\r\n" % (len(text) + 4, format, text)
        return b"$%d\r\n%b\r\n" % (len(text), text)
