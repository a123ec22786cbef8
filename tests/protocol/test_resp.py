"""Tests of kvs.protocol.resp: the request parser, its limits and error texts, the encoders.

Every parser test feeds its input three ways (whole, one byte at a time, random chunks) and
again followed by the start of another request, which must stay buffered (h11's style).
"""

from __future__ import annotations

import io
import math
import random
import re
from collections.abc import Iterator
from typing import Any

import pytest

from kvs.errors import KvsError
from kvs.protocol import (
    EMPTY_ARRAY,
    EMPTY_BULK,
    OK,
    PONG,
    QUEUED,
    RESP2,
    RESP3,
    UNAUTHENTICATED_MAX_ARGS,
    UNAUTHENTICATED_MAX_BULK_LEN,
    ProtocolError,
    ReplyEncoder,
    RespParser,
    encode_command,
)

Command = list[bytes]

INVALID_MBULK = "Protocol error: invalid multibulk length"
INVALID_BULK = "Protocol error: invalid bulk length"
TOO_BIG_INLINE = "Protocol error: too big inline request"
TOO_BIG_MBULK = "Protocol error: too big mbulk count string"
TOO_BIG_BULK = "Protocol error: too big bulk count string"
UNBALANCED = "Protocol error: unbalanced quotes in request"
UNAUTH_MBULK = "Protocol error: unauthenticated multibulk length"
UNAUTH_BULK = "Protocol error: unauthenticated bulk length"
BUFFER_LIMIT = "Protocol error: query buffer limit exceeded"

# The start of one more request, split so its first part alone is incomplete: after the input
# under test, the parser must hold the first part and complete it when the second arrives.
TRAILERS = [
    (b"*1\r\n$4\r\nPI", b"NG\r\n"),  # multibulk, cut inside a payload
    (b"*2\r\n$4\r\nECHO\r\n$", b"1\r\nx\r\n"),  # cut inside a length line
    (b"E", b"X\r\n"),  # inline (short, to fit the tests' small max_inline_len)
]
TRAILER_COMMANDS: list[Command] = [[b"PING"], [b"ECHO", b"x"], [b"EX"]]


def chunkings(data: bytes) -> Iterator[tuple[str, list[bytes]]]:
    """The three ways of feeding ``data``: whole, byte by byte, random chunks (3 seeds)."""
    yield "whole", [data]
    yield "bytewise", [data[i : i + 1] for i in range(len(data))]
    for seed in range(3):
        rng = random.Random(seed)
        chunks, pos = [], 0
        while pos < len(data):
            size = rng.randint(1, max(1, min(len(data) // 3, 4096)))
            chunks.append(data[pos : pos + size])
            pos += size
        yield f"random{seed}", chunks


def run(parser: RespParser, chunks: list[bytes]) -> tuple[list[Command], str | None]:
    """Feed the chunks, draining commands after each; the commands and the error text."""
    commands: list[Command] = []
    try:
        for chunk in chunks:
            parser.feed(chunk)
            while (command := parser.next_command()) is not None:
                commands.append(command)
    except ProtocolError as error:
        return commands, str(error)
    return commands, None


def check(
    data: bytes,
    expected: list[Command],
    error: str | None = None,
    **options: Any,
) -> None:
    """``data`` yields ``expected`` (then ``error``, if given) however it is fed; without an
    error, a following partial request stays buffered and completes."""
    for name, chunks in chunkings(data):
        parser = RespParser(**options)
        commands, got_error = run(parser, chunks)
        assert commands == expected, name
        assert got_error == error, name
        if error is not None:
            # Sticky: the parser does not resynchronise.
            with pytest.raises(ProtocolError, match=f"^{re.escape(error)}$"):
                parser.next_command()
            with pytest.raises(ProtocolError):
                parser.feed(b"*1\r\n$4\r\nPING\r\n")
    if error is not None:
        return
    for (head, tail), trailer_command in zip(TRAILERS, TRAILER_COMMANDS, strict=True):
        for name, chunks in chunkings(data + head):
            parser = RespParser(**options)
            commands, got_error = run(parser, chunks)
            assert (commands, got_error) == (expected, None), (name, head)
            assert parser.next_command() is None
            assert parser.buffered_bytes <= len(head)
            parser.feed(tail)
            assert parser.next_command() == trailer_command, (name, head)
            assert parser.next_command() is None
            assert parser.buffered_bytes == 0


# --- multibulk ---------------------------------------------------------------------------


def test_single_command() -> None:
    check(b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n", [[b"SET", b"key", b"value"]])


def test_one_argument_and_empty_argument() -> None:
    check(b"*1\r\n$4\r\nPING\r\n", [[b"PING"]])
    check(b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n", [[b"GET", b""]])


def test_binary_safe_payloads() -> None:
    values = [b"\r\n", b"a\r\nb", b"\x00", b"\x00\r\n\x00", bytes(range(256)), b"*1\r\n$1\r\n"]
    data = b"".join(encode_command([b"SET", b"k", value]) for value in values)
    check(data, [[b"SET", b"k", value] for value in values])


def test_pipeline_of_thousands() -> None:
    commands = [[b"SET", b"key:%d" % i, b"v" * (i % 37)] for i in range(3000)]
    data = b"".join(encode_command(command) for command in commands)
    # Bytewise feeding of ~100 KB is covered by smaller tests; here whole and random chunks.
    for chunks in ([data], [data[i : i + 1000] for i in range(0, len(data), 1000)]):
        parser = RespParser()
        assert run(parser, chunks) == (commands, None)


def test_pipeline_mixing_multibulk_and_inline() -> None:
    data = b"PING\r\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\nset a b\n*1\r\n$4\r\nQUIT\r\n"
    check(data, [[b"PING"], [b"ECHO", b"hi"], [b"set", b"a", b"b"], [b"QUIT"]])


def test_empty_multibulk_is_skipped() -> None:
    # Redis ignores "*0" and any negative count; the parser never returns an empty command.
    check(b"*0\r\n*-1\r\n*-42\r\n*1\r\n$4\r\nPING\r\n*0\r\n", [[b"PING"]])
    check(b"*-9223372036854775808\r\n*1\r\n$1\r\na\r\n", [[b"a"]])  # LLONG_MIN
    check(b"*-9223372036854775809\r\n", [], INVALID_MBULK)  # string2ll overflows
    check(b"*9223372036854775807\r\n", [], INVALID_MBULK)


def test_large_bulk_is_not_copied_until_complete() -> None:
    value = bytes(range(256)) * 1024  # 256 KiB: the memoryview path
    data = encode_command([b"SET", b"big", value])
    parser = RespParser()
    parser.feed(data[:-1])
    assert parser.next_command() is None
    # Held: the two arguments read ("SET", "big") and the raw partial payload, nothing else.
    assert parser.buffered_bytes == 3 + 3 + len(value) + 1
    parser.feed(data[-1:])
    assert parser.next_command() == [b"SET", b"big", value]
    assert parser.buffered_bytes == 0
    check(data, [[b"SET", b"big", value]])


def test_large_argument_count() -> None:
    command = [b"MSET"] + [b"%d" % i for i in range(5000)]
    parser = RespParser()
    data = encode_command(command)
    assert run(parser, [data[i : i + 7] for i in range(0, len(data), 7)]) == ([command], None)


def test_every_prefix_is_incomplete() -> None:
    data = b"*2\r\n$4\r\nECHO\r\n$3\r\na\r\n\r\n"
    for cut in range(len(data)):
        parser = RespParser()
        parser.feed(data[:cut])
        assert parser.next_command() is None, cut
    check(data, [[b"ECHO", b"a\r\n"]])


@pytest.mark.parametrize(
    "count",
    [b"", b"x", b"+1", b" 1", b"1 ", b"01", b"1_0", b"0x1", b"-", b"-0", b"--1", b"\xd9\xa1"],
)
def test_invalid_multibulk_length(count: bytes) -> None:
    check(b"*" + count + b"\r\n$4\r\nPING\r\n", [], INVALID_MBULK)


@pytest.mark.parametrize(
    "length",
    [b"", b"x", b"+1", b" 1", b"1 ", b"01", b"1_0", b"-1", b"-0", b"-", b"99999999999999999999"],
)
def test_invalid_bulk_length(length: bytes) -> None:
    check(b"*1\r\n$" + length + b"\r\nP\r\n", [], INVALID_BULK)


def test_count_line_needs_crlf() -> None:
    check(b"*1\rX$4\r\nPING\r\n", [], INVALID_MBULK)
    check(b"*1\r\n$4\rXPING\r\n", [], INVALID_BULK)


def test_payload_must_end_with_crlf() -> None:
    # Redis skips these two bytes unchecked; a wrong length is caught here instead.
    check(b"*1\r\n$4\r\nPINGXY*1\r\n$4\r\nPING\r\n", [], INVALID_BULK)
    check(b"*1\r\n$3\r\nPING\r\n", [], INVALID_BULK)
    check(b"*1\r\n$4\r\nPING\r\r", [], INVALID_BULK)


@pytest.mark.parametrize(
    ("byte", "shown"),
    [(b"x", "x"), (b"*", "*"), (b":", ":"), (b"\r", " "), (b"\n", " "), (b"\x01", "\x01")],
)
def test_expected_dollar(byte: bytes, shown: str) -> None:
    data = b"*2\r\n$4\r\nECHO\r\n" + byte + b"1\r\nx\r\n"
    check(data, [], f"Protocol error: expected '$', got '{shown}'")


def test_error_after_good_commands() -> None:
    good = b"*1\r\n$4\r\nPING\r\nPING\r\n"
    check(good + b"*1\r\n$-1\r\n", [[b"PING"], [b"PING"]], INVALID_BULK)


# --- limits, each at its boundary and one past ---------------------------------------------


def test_max_args() -> None:
    three = encode_command([b"a", b"b", b"c"])
    check(three, [[b"a", b"b", b"c"]], max_args=3)
    check(three + encode_command([b"a"] * 4), [[b"a", b"b", b"c"]], INVALID_MBULK, max_args=3)


def test_max_bulk_len() -> None:
    check(encode_command([b"12345"]), [[b"12345"]], max_bulk_len=5)
    check(encode_command([b"123456"]), [], INVALID_BULK, max_bulk_len=5)


def test_max_inline_len() -> None:
    line = b"ECHO 12345"  # 10 bytes
    for ending in (b"\r\n", b"\n"):
        check(line + ending, [[b"ECHO", b"12345"]], max_inline_len=10)
        check(line + b"6" + ending, [], TOO_BIG_INLINE, max_inline_len=10)


def test_max_inline_len_without_newline() -> None:
    # Raised as soon as the buffered bytes prove the line too long, like Redis.
    parser = RespParser(max_inline_len=10)
    parser.feed(b"ECHO 12345")
    assert parser.next_command() is None
    parser.feed(b"\r")  # may still be the "\r\n" of a 10-byte line
    assert parser.next_command() is None
    parser.feed(b"\n")
    assert parser.next_command() == [b"ECHO", b"12345"]

    parser = RespParser(max_inline_len=10)
    parser.feed(b"ECHO 123456")
    with pytest.raises(ProtocolError, match=f"^{TOO_BIG_INLINE}$"):
        parser.next_command()

    parser = RespParser(max_inline_len=10)
    parser.feed(b"ECHO 12345\rx")
    with pytest.raises(ProtocolError, match=f"^{TOO_BIG_INLINE}$"):
        parser.next_command()


def test_too_big_mbulk_count_string() -> None:
    # The count line's limit is max_inline_len, counted from "*" up to its "\r".
    ten_args = b"*10\r\n" + b"$1\r\na\r\n" * 10
    check(ten_args, [[b"a"] * 10], max_inline_len=3)
    check(b"*100\r\n", [], TOO_BIG_MBULK, max_inline_len=3)
    check(b"*-12\r\n*1\r\n$1\r\na\r\n", [[b"a"]], max_inline_len=4)
    check(b"*-123\r\n", [], TOO_BIG_MBULK, max_inline_len=4)


def test_too_big_mbulk_count_string_without_cr() -> None:
    parser = RespParser(max_inline_len=3)
    parser.feed(b"*12")
    assert parser.next_command() is None
    parser.feed(b"3")
    with pytest.raises(ProtocolError, match=f"^{TOO_BIG_MBULK}$"):
        parser.next_command()


def test_too_big_bulk_count_string() -> None:
    check(b"*1\r\n$10\r\n0123456789\r\n", [[b"0123456789"]], max_inline_len=3)
    check(b"*1\r\n$100\r\n", [], TOO_BIG_BULK, max_inline_len=3)
    # Judged before the "$": a long line of garbage is "too big", as in Redis.
    check(b"*1\r\nxxxx\r\n", [], TOO_BIG_BULK, max_inline_len=3)
    check(b"*1\r\nxxx\r\n", [], "Protocol error: expected '$', got 'x'", max_inline_len=3)


def test_default_line_limit_is_64k() -> None:
    parser = RespParser()
    parser.feed(b"*" + b"1" * (64 * 1024 - 1))
    assert parser.next_command() is None
    parser.feed(b"1")
    with pytest.raises(ProtocolError, match=f"^{TOO_BIG_MBULK}$"):
        parser.next_command()


def test_max_buffer() -> None:
    parser = RespParser(max_buffer=20)
    parser.feed(b"x" * 20)
    with pytest.raises(ProtocolError, match=f"^{BUFFER_LIMIT}$"):
        parser.feed(b"x")
    with pytest.raises(ProtocolError, match=f"^{BUFFER_LIMIT}$"):
        parser.next_command()


def test_max_buffer_counts_the_unfinished_command() -> None:
    head = b"*2\r\n$10\r\n0123456789\r\n"
    parser = RespParser(max_buffer=30)
    parser.feed(head)
    assert parser.next_command() is None
    assert parser.buffered_bytes == 10  # the argument read, not the framing
    parser.feed(b"$15\r\n" + b"x" * 15)  # 10 + 20 = 30: at the limit
    assert parser.buffered_bytes == 30
    assert parser.next_command() is None
    assert parser.buffered_bytes == 25  # the length line is parsed and dropped
    parser.feed(b"\r\n")
    assert parser.next_command() == [b"0123456789", b"x" * 15]

    parser = RespParser(max_buffer=30)
    parser.feed(head)
    assert parser.next_command() is None
    with pytest.raises(ProtocolError, match=f"^{BUFFER_LIMIT}$"):
        parser.feed(b"$15\r\n" + b"x" * 16)


def test_max_buffer_is_freed_by_parsing() -> None:
    command = encode_command([b"PING"])  # 14 bytes
    parser = RespParser(max_buffer=len(command))
    for _ in range(100):
        parser.feed(command)
        assert parser.next_command() == [b"PING"]
        assert parser.buffered_bytes == 0


def test_unauthenticated_limits() -> None:
    assert (UNAUTHENTICATED_MAX_ARGS, UNAUTHENTICATED_MAX_BULK_LEN) == (10, 16384)
    ten = encode_command([b"a"] * 10)
    check(ten, [[b"a"] * 10], unauthenticated=True)
    check(encode_command([b"a"] * 11), [], UNAUTH_MBULK, unauthenticated=True)
    big = b"x" * 16384
    check(encode_command([b"SET", big]), [[b"SET", big]], unauthenticated=True)
    check(encode_command([b"SET", big + b"x"]), [], UNAUTH_BULK, unauthenticated=True)
    # Redis checks the ordinary limits first.
    check(encode_command([b"a"] * 11), [], INVALID_MBULK, unauthenticated=True, max_args=10)
    check(encode_command([b"a"] * 6), [], INVALID_MBULK, unauthenticated=True, max_args=5)
    check(encode_command([big]), [], INVALID_BULK, unauthenticated=True, max_bulk_len=100)
    # Inline requests are bounded by max_inline_len only, as in Redis.
    words = b" ".join([b"a"] * 20)
    check(words + b"\r\n", [[b"a"] * 20], unauthenticated=True)


def test_authentication_lifts_the_limits() -> None:
    parser = RespParser()
    assert not parser.unauthenticated
    parser.set_unauthenticated(True)
    assert parser.unauthenticated
    big = encode_command([b"SET", b"k", b"x" * 20000])
    parser.feed(encode_command([b"AUTH", b"secret"]) + big)
    assert parser.next_command() == [b"AUTH", b"secret"]
    parser.set_unauthenticated(False)  # what the server does once AUTH succeeds
    assert parser.next_command() == [b"SET", b"k", b"x" * 20000]

    parser = RespParser(unauthenticated=True)
    parser.feed(encode_command([b"AUTH", b"wrong"]) + big)
    assert parser.next_command() == [b"AUTH", b"wrong"]
    with pytest.raises(ProtocolError, match=f"^{UNAUTH_BULK}$"):
        parser.next_command()


def test_bad_limits_are_refused() -> None:
    for name in ("max_bulk_len", "max_args", "max_inline_len", "max_buffer"):
        options: dict[str, Any] = {name: 0}
        with pytest.raises(ValueError, match=name):
            RespParser(**options)


def test_protocol_error() -> None:
    error = ProtocolError(INVALID_MBULK)
    assert isinstance(error, KvsError)
    assert str(error) == error.message == INVALID_MBULK
    assert error.reply == b"-ERR Protocol error: invalid multibulk length\r\n"
    assert ProtocolError("Protocol error: expected '$', got '\xff'").reply.endswith(b"'\xff'\r\n")


def test_feed_accepts_buffers_and_empty_data() -> None:
    parser = RespParser()
    parser.feed(b"")
    parser.feed(bytearray(b"PI"))
    parser.feed(memoryview(b"NG\r\n"))
    assert parser.next_command() == [b"PING"]
    assert parser.next_command() is None


# --- inline --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (b"PING", [b"PING"]),
        (b"set a b", [b"set", b"a", b"b"]),
        (b"  set \t a   b  ", [b"set", b"a", b"b"]),
        (b"set a\rb", [b"set", b"a", b"b"]),
        (b"PING\r", [b"PING"]),  # "PING\r\r\n": one \r is the ending, the other a blank
        (b'set "a b" c', [b"set", b"a b", b"c"]),
        (b"set \"\" ''", [b"set", b"", b""]),
        (b'"\\x41\\x4a\\x4A"', [b"AJJ"]),
        (b'"\\xZZ\\x4"', [b"xZZx4"]),  # not two hex digits: "\x" is just "x"
        (b'"\\n\\r\\t\\b\\a\\"\\\\\\q"', [b'\n\r\t\b\a"\\q']),
        (b"'it\\'s'", [b"it's"]),
        (b"'a\\nb\\x'", [b"a\\nb\\x"]),  # single quotes: only \' is an escape
        (b"'\"'  \"'\"", [b'"', b"'"]),
        (b'ab"cd"', [b"abcd"]),
        (b"ab'cd' e", [b"abcd", b"e"]),
        (b'"a"\tb', [b"a", b"b"]),
        (b'"a"\x0bb', [b"a", b"b"]),  # \v is a blank after a closing quote...
        (b"a\x0bb \x0cc", [b"a\x0bb", b"c"]),  # ...and between words, but inside a word not
        (b"GET a\x00b c", [b"GET", b"a"]),  # a C string: NUL ends the line
        (b"\xff\xfe \x80", [b"\xff\xfe", b"\x80"]),
        (b'"\\x00\\xff"', [b"\x00\xff"]),
    ],
)
def test_inline_words(line: bytes, words: Command) -> None:
    check(line + b"\r\n", [words])
    check(line + b"\n", [words])


@pytest.mark.parametrize(
    "line",
    [b'"abc', b"'abc", b'"a"b', b"'a'b", b'"abc\\"', b"'abc\\'", b'x "a\x00"', b'set "a\\', b'""x'],
)
def test_inline_unbalanced_quotes(line: bytes) -> None:
    check(b"PING\r\n" + line + b"\r\n", [[b"PING"]], UNBALANCED)


def test_empty_inline_lines_are_skipped() -> None:
    check(b"\r\n\n   \r\n\t\n\x00junk\nPING\r\n\r\n", [[b"PING"]])


def test_inline_line_with_only_a_carriage_return_chunked() -> None:
    parser = RespParser()
    parser.feed(b"PING\r")
    assert parser.next_command() is None
    parser.feed(b"\n")
    assert parser.next_command() == [b"PING"]


# --- requests encoded by redis-py ----------------------------------------------------------


def test_commands_packed_by_redis_py() -> None:
    connection = pytest.importorskip("redis.connection")
    packer = connection.Connection()
    commands: list[list[Any]] = [
        ["SET", "key", "value"],
        ["SET", b"bin\r\n\x00", bytes(range(256))],
        ["MSET", *[f"k{i}" for i in range(100)]],
        ["GET", "x" * 100_000],  # redis-py sends big values as separate chunks
        ["INCRBY", "n", 42],
    ]
    data = b"".join(bytes(chunk) for c in commands for chunk in packer.pack_command(*c))
    expected = [
        [a if isinstance(a, bytes) else str(a).encode() for a in command] for command in commands
    ]
    check(data, expected)


def test_encode_command() -> None:
    assert encode_command([b"GET", b"k"]) == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    assert encode_command([b""]) == b"*1\r\n$0\r\n\r\n"


# --- reply encoders ------------------------------------------------------------------------

R2 = ReplyEncoder(RESP2)
R3 = ReplyEncoder(RESP3)


def test_constants() -> None:
    assert (OK, PONG, QUEUED) == (b"+OK\r\n", b"+PONG\r\n", b"+QUEUED\r\n")
    assert (EMPTY_ARRAY, EMPTY_BULK) == (b"*0\r\n", b"$0\r\n\r\n")
    assert R2.null_bulk == R2.null == b"$-1\r\n" and R2.null_array == b"*-1\r\n"
    assert R3.null_bulk == R3.null == R3.null_array == b"_\r\n"
    assert ReplyEncoder().protocol == RESP2 and R3.protocol == RESP3


def test_bad_protocol_is_refused() -> None:
    for protocol in (0, 1, 4):
        with pytest.raises(ValueError, match="protocol"):
            ReplyEncoder(protocol)


@pytest.mark.parametrize("enc", [R2, R3])
def test_same_in_both_protocols(enc: ReplyEncoder) -> None:
    assert enc.simple("OK") == enc.simple(b"OK") == OK
    assert enc.simple("a\r\nb") == b"+a  b\r\n"  # one line, always
    assert enc.error("ERR unknown command 'x'") == b"-ERR unknown command 'x'\r\n"
    assert enc.error(b"WRONGTYPE Operation\nagainst") == b"-WRONGTYPE Operation against\r\n"
    assert enc.error("ERR é") == "-ERR é\r\n".encode()
    for n in (0, 1, 1023, 1024, -1, -(2**63), 2**63 - 1):
        assert enc.integer(n) == b":%d\r\n" % n
    assert enc.bulk(b"") == EMPTY_BULK
    assert enc.bulk(b"a\r\nb") == b"$4\r\na\r\nb\r\n"
    assert enc.array([]) == EMPTY_ARRAY
    assert enc.array([enc.integer(1), enc.bulk(b"x")]) == b"*2\r\n:1\r\n$1\r\nx\r\n"
    nested = enc.array([enc.array([enc.bulk(b"a")]), enc.bulk(None)])
    assert nested == b"*2\r\n*1\r\n$1\r\na\r\n" + enc.null_bulk
    assert enc.bulk_array([b"a", None, b""]) == b"*3\r\n$1\r\na\r\n" + enc.null_bulk + EMPTY_BULK


def test_resp2_encodings() -> None:
    assert R2.bulk(None) == b"$-1\r\n"
    assert R2.array(None) == R2.bulk_array(None) == b"*-1\r\n"
    pairs = [(R2.bulk(b"a"), R2.integer(1)), (R2.bulk(b"b"), R2.bulk(b"x"))]
    assert R2.map(pairs) == b"*4\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n$1\r\nx\r\n"
    assert R2.map([]) == EMPTY_ARRAY
    assert R2.set([R2.bulk(b"a")]) == b"*1\r\n$1\r\na\r\n"
    assert R2.push([R2.bulk(b"message")]) == b"*1\r\n$7\r\nmessage\r\n"
    assert R2.double(1.5) == b"$3\r\n1.5\r\n"
    assert R2.double(3.0) == b"$1\r\n3\r\n"
    assert R2.double(math.inf) == b"$3\r\ninf\r\n"
    assert R2.double(-math.inf) == b"$4\r\n-inf\r\n"
    assert R2.double(math.nan) == b"$3\r\nnan\r\n"
    assert R2.boolean(True) == b":1\r\n" and R2.boolean(False) == b":0\r\n"
    assert R2.big_number(2**70) == b"$22\r\n1180591620717411303424\r\n"
    assert R2.verbatim(b"# Server\r\n") == b"$10\r\n# Server\r\n\r\n"


def test_resp3_encodings() -> None:
    assert R3.bulk(None) == b"_\r\n"
    assert R3.array(None) == R3.bulk_array(None) == b"_\r\n"
    pairs = [(R3.bulk(b"a"), R3.integer(1)), (R3.bulk(b"b"), R3.bulk(b"x"))]
    assert R3.map(pairs) == b"%2\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n$1\r\nx\r\n"
    assert R3.map([]) == b"%0\r\n"
    assert R3.set([R3.bulk(b"a")]) == b"~1\r\n$1\r\na\r\n"
    assert R3.push([R3.bulk(b"message")]) == b">1\r\n$7\r\nmessage\r\n"
    assert R3.double(1.5) == b",1.5\r\n"
    assert R3.double(3.0) == b",3\r\n"
    assert R3.double(0.1) == b",0.1\r\n"
    assert R3.double(1e300) == b",1e+300\r\n"
    assert R3.double(math.inf) == b",inf\r\n"
    assert R3.double(-math.inf) == b",-inf\r\n"
    assert R3.double(math.nan) == b",nan\r\n"
    assert R3.boolean(True) == b"#t\r\n" and R3.boolean(False) == b"#f\r\n"
    assert R3.big_number(-(2**70)) == b"(-1180591620717411303424\r\n"
    assert R3.verbatim(b"# Server\r\n") == b"=14\r\ntxt:# Server\r\n\r\n"
    assert R3.verbatim(b"**x**", b"mkd") == b"=9\r\nmkd:**x**\r\n"
    with pytest.raises(ValueError, match="3 bytes"):
        R3.verbatim(b"x", b"text")


# --- replies read back by redis-py's own parser, when redis-py is installed -----------------


class _BytesSocketBuffer:
    """Just enough of redis-py's SocketBuffer for its parsers to read from bytes."""

    def __init__(self, data: bytes) -> None:
        self._io = io.BytesIO(data)
        self._size = len(data)

    def readline(self, timeout: object = None) -> bytes:
        line = self._io.readline()
        assert line.endswith(b"\r\n"), line
        return line[:-2]

    def read(self, length: int, timeout: object = None) -> bytes:
        data = self._io.read(length + 2)
        assert data.endswith(b"\r\n"), data
        return data[:-2]

    def get_pos(self) -> int:
        return self._io.tell()

    def rewind(self, pos: int) -> None:
        self._io.seek(pos)

    def purge(self) -> None:
        pass

    def close(self) -> None:
        pass

    def at_end(self) -> bool:
        return self._io.tell() == self._size


def redis_py_read(data: bytes, protocol: int) -> Any:
    """The value redis-py's pure-Python parser reads from ``data`` (which it must consume)."""
    parsers = pytest.importorskip("redis._parsers")
    cls = parsers._RESP3Parser if protocol == RESP3 else parsers._RESP2Parser
    parser = cls(socket_read_size=65536)
    buffer = _BytesSocketBuffer(data)
    parser._buffer = buffer
    try:
        if protocol == RESP3:
            value = parser._read_response(disable_decoding=True, push_request=True)
        else:
            value = parser._read_response(disable_decoding=True)
    finally:
        parser._buffer = None
    assert buffer.at_end()
    return value


def reply_cases(protocol: int, *, big_number: type) -> list[tuple[bytes, Any]]:
    """(encoded reply, the value a client library reads from it); a RESP3 big number reads
    back as ``big_number`` (redis-py: int, hiredis: bytes)."""
    enc = ReplyEncoder(protocol)
    resp3 = protocol == RESP3
    binary = bytes(range(256)) + b"\r\n"
    cases: list[tuple[bytes, Any]] = [
        (OK, b"OK"),
        (enc.simple("PONG"), b"PONG"),
        (enc.integer(-42), -42),
        (enc.integer(2**62), 2**62),
        (enc.bulk(b""), b""),
        (enc.bulk(binary), binary),
        (enc.bulk(None), None),
        (enc.array(None), None),
        (enc.array([]), []),
        (enc.bulk_array([b"a", None, binary]), [b"a", None, binary]),
        (enc.array([enc.integer(1), enc.array([enc.bulk(b"x")])]), [1, [b"x"]]),
        (enc.null, None),
        (enc.boolean(True), True if resp3 else 1),
        (enc.boolean(False), False if resp3 else 0),
        (enc.double(2.5), 2.5 if resp3 else b"2.5"),
        (enc.double(-0.1), -0.1 if resp3 else b"-0.1"),
        (enc.big_number(2**80), big_number(b"%d" % 2**80) if resp3 else b"%d" % 2**80),
        (enc.verbatim(b"line1\r\nline2"), b"line1\r\nline2"),
        (enc.set([enc.bulk(b"m1"), enc.bulk(b"m2")]), [b"m1", b"m2"]),
        (
            enc.map([(enc.bulk(b"f1"), enc.integer(1)), (enc.bulk(b"f2"), enc.bulk(b"v"))]),
            {b"f1": 1, b"f2": b"v"} if resp3 else [b"f1", 1, b"f2", b"v"],
        ),
    ]
    if resp3:
        message = [enc.bulk(b"message"), enc.bulk(b"chan"), enc.bulk(b"hi")]
        cases.append((enc.push(message), [b"message", b"chan", b"hi"]))
    return cases


@pytest.mark.parametrize("protocol", [RESP2, RESP3])
def test_replies_round_trip_through_redis_py(protocol: int) -> None:
    pytest.importorskip("redis")
    from redis.exceptions import ResponseError

    enc = ReplyEncoder(protocol)
    for data, expected in reply_cases(protocol, big_number=int):
        assert redis_py_read(data, protocol) == expected, data
    assert math.isinf(float(redis_py_read(enc.double(math.inf), protocol)))
    error = redis_py_read(enc.error("WRONGTYPE Operation against a key"), protocol)
    assert isinstance(error, ResponseError)
    assert str(error) == "WRONGTYPE Operation against a key"  # not a code redis-py maps
    error = redis_py_read(ProtocolError(INVALID_BULK).reply, protocol)
    assert isinstance(error, ResponseError)
    assert str(error) == INVALID_BULK


@pytest.mark.parametrize("protocol", [RESP2, RESP3])
def test_replies_round_trip_through_hiredis(protocol: int) -> None:
    hiredis = pytest.importorskip("hiredis")
    cases = reply_cases(protocol, big_number=bytes)
    enc = ReplyEncoder(protocol)
    # All replies in one stream, fed byte by byte: a pipeline's worth of responses.
    stream = b"".join(data for data, _ in cases) + enc.error("ERR boom")
    reader = hiredis.Reader()
    for i in range(len(stream)):
        reader.feed(stream[i : i + 1])
    for data, expected in cases:
        assert reader.gets() == expected, data
    error = reader.gets()
    assert isinstance(error, hiredis.ReplyError) and str(error) == "ERR boom"
    assert reader.gets() is False  # nothing left over: every reply was consumed exactly
