"""The sans-I/O reply parser: every RESP2/RESP3 type, whole, byte by byte and in chunks.

Pure unit tests: no server, no socket.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvs.client.replies import (
    NEED_DATA,
    ErrorReply,
    Push,
    Reply,
    ReplyParser,
    ReplyProtocolError,
    Verbatim,
)
from kvs.protocol.resp import RESP2, RESP3, ReplyEncoder

# (wire bytes, the value the parser must return)
SAMPLES: list[tuple[bytes, Any]] = [
    (b"+OK\r\n", "OK"),
    (b"+\r\n", ""),
    (b"+caf\xc3\xa9\r\n", "café"),
    (b"-ERR unknown command 'x'\r\n", ErrorReply("ERR unknown command 'x'")),
    (b"-WRONGTYPE Operation against a key\r\n", ErrorReply("WRONGTYPE Operation against a key")),
    (b":0\r\n", 0),
    (b":-42\r\n", -42),
    (b":9223372036854775807\r\n", 2**63 - 1),
    (b"$5\r\nhello\r\n", b"hello"),
    (b"$0\r\n\r\n", b""),
    (b"$-1\r\n", None),
    (b"$8\r\na\r\nb\x00c\r\n\r\n", b"a\r\nb\x00c\r\n"),  # CRLF and NUL inside a bulk
    (b"*0\r\n", []),
    (b"*-1\r\n", None),
    (b"*3\r\n:1\r\n$1\r\na\r\n$-1\r\n", [1, b"a", None]),
    (b"*2\r\n*1\r\n*0\r\n+x\r\n", [[[]], "x"]),
    (b"*2\r\n-ERR inner\r\n:1\r\n", [ErrorReply("ERR inner"), 1]),  # errors are values
    (b"_\r\n", None),
    (b",1.5\r\n", 1.5),
    (b",-3\r\n", -3.0),
    (b",1e10\r\n", 1e10),
    (b",inf\r\n", math.inf),
    (b",-inf\r\n", -math.inf),
    (b"#t\r\n", True),
    (b"#f\r\n", False),
    (
        b"(3492890328409238509324850943850943825024385\r\n",
        3492890328409238509324850943850943825024385,
    ),
    (b"(-1\r\n", -1),
    (b"!21\r\nSYNTAX invalid syntax\r\n", ErrorReply("SYNTAX invalid syntax")),
    (b"=15\r\ntxt:Some string\r\n", Verbatim(b"Some string", "txt")),
    (b"%2\r\n+first\r\n:1\r\n$6\r\nsecond\r\n:2\r\n", {"first": 1, b"second": 2}),
    (b"%0\r\n", {}),
    (b"%1\r\n*2\r\n:1\r\n:2\r\n+v\r\n", {(1, 2): "v"}),  # an aggregate key, frozen
    (b"~3\r\n+a\r\n:1\r\n+a\r\n", {"a", 1}),
    (b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n", Push([b"message", b"ch", b"hi"])),
    (b"$?\r\n;4\r\nHell\r\n;5\r\no wor\r\n;1\r\nd\r\n;0\r\n", b"Hello word"),
    (b"$?\r\n;0\r\n", b""),
    (b"*?\r\n:1\r\n:2\r\n.\r\n", [1, 2]),
    (b"*?\r\n.\r\n", []),
    (b"%?\r\n+a\r\n:1\r\n.\r\n", {"a": 1}),
    (b"~?\r\n+a\r\n.\r\n", {"a"}),
    (b"*2\r\n$?\r\n;2\r\nab\r\n;0\r\n*?\r\n_\r\n.\r\n", [b"ab", [None]]),
    # An attribute is dropped; the reply it describes is returned.
    (b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*1\r\n:7\r\n", [7]),
    (b"*2\r\n|1\r\n+ttl\r\n:3\r\n:1\r\n:2\r\n", [1, 2]),
]

WIRE = b"".join(wire for wire, _ in SAMPLES)
EXPECTED = [value for _, value in SAMPLES]


def drain(parser: ReplyParser) -> list[Reply]:
    replies: list[Reply] = []
    while (reply := parser.next_reply()) is not NEED_DATA:
        replies.append(reply)  # type: ignore[arg-type]
    return replies


def parse_in_chunks(data: bytes, sizes: list[int]) -> list[Reply]:
    parser = ReplyParser()
    replies: list[Reply] = []
    pos = 0
    for size in sizes:
        parser.feed(data[pos : pos + size])
        pos += size
        replies += drain(parser)
    parser.feed(data[pos:])
    replies += drain(parser)
    assert parser.idle
    return replies


def assert_same(actual: list[Reply], expected: list[Any]) -> None:
    assert actual == expected
    # == does not see these differences: type (True == 1, Push == list), and attributes.
    for a, e in zip(actual, expected, strict=True):
        assert type(a) is type(e)
        if isinstance(e, Verbatim):
            assert isinstance(a, Verbatim) and a.format == e.format


@pytest.mark.parametrize(("wire", "expected"), SAMPLES, ids=[repr(w[:20]) for w, _ in SAMPLES])
def test_each_type_whole(wire: bytes, expected: Any) -> None:
    parser = ReplyParser()
    parser.feed(wire)
    assert_same(drain(parser), [expected])
    assert parser.idle


def test_every_reply_whole() -> None:
    assert_same(parse_in_chunks(WIRE, []), EXPECTED)


def test_every_reply_byte_by_byte() -> None:
    assert_same(parse_in_chunks(WIRE, [1] * len(WIRE)), EXPECTED)


@pytest.mark.parametrize("seed", range(20))
def test_every_reply_in_random_chunks(seed: int) -> None:
    rng = random.Random(seed)
    sizes = [rng.randint(1, 40) for _ in range(len(WIRE) // 10)]
    assert_same(parse_in_chunks(WIRE, sizes), EXPECTED)


def test_need_data_until_the_last_byte() -> None:
    for wire, expected in SAMPLES:
        parser = ReplyParser()
        for byte in wire[:-1]:
            parser.feed(bytes((byte,)))
            assert parser.next_reply() is NEED_DATA
        parser.feed(wire[-1:])
        assert_same([parser.next_reply()], [expected])  # type: ignore[list-item]
        assert parser.next_reply() is NEED_DATA


def test_a_nan_double() -> None:
    parser = ReplyParser()
    parser.feed(b",nan\r\n")
    reply = parser.next_reply()
    assert isinstance(reply, float) and math.isnan(reply)


def test_error_reply_code_and_message() -> None:
    error = ErrorReply("WRONGPASS invalid username-password pair")
    assert error.code == "WRONGPASS"
    assert error.message == "WRONGPASS invalid username-password pair"
    assert ErrorReply("ERR").code == "ERR"


def test_a_large_array_arriving_in_pieces_is_read_once() -> None:
    # The stack of unfinished aggregates keeps what was read: elements already parsed are
    # consumed from the buffer, so feeding more does not re-parse them.
    parser = ReplyParser()
    parser.feed(b"*100000\r\n")
    for i in range(99_999):
        parser.feed(b":%d\r\n" % i)
        if i % 10_000 == 0:
            assert parser.next_reply() is NEED_DATA
            assert parser.buffered_bytes == 0
    parser.feed(b":99999\r\n")
    assert parser.next_reply() == list(range(100_000))


@pytest.mark.parametrize(
    "wire",
    [
        b"?\r\n",  # unknown type
        b"@x\r\n",
        b":12a\r\n",
        b":+1\r\n",
        b": 1\r\n",
        b":\r\n",
        b"$abc\r\n",
        b"$-2\r\n",
        b"$ 3\r\nabc\r\n",
        b"$3\r\nabcXY",  # no CRLF after the payload
        b"*-2\r\n",
        b"*x\r\n",
        b"!-1\r\n",  # only $ and * have a null length
        b"%-1\r\n",
        b"_x\r\n",
        b",abc\r\n",
        b",1_0\r\n",
        b"#x\r\n",
        b"#\r\n",
        b"(1.5\r\n",
        b"=3\r\ntxt\r\n",  # verbatim shorter than its "fmt:" prefix
        b"=5\r\ntxt-x\r\n",
        b".\r\n",  # end of a streamed aggregate, outside one
        b"*1\r\n.\r\n",  # "." ends only a streamed aggregate
        b";3\r\nabc\r\n",  # a chunk outside a streamed string
        b"$?\r\n+x\r\n",  # something else inside a streamed string
        b"%?\r\n+key\r\n.\r\n",  # a streamed map ending after a key
        b"+a\rb\r\n",  # bare CR in a line
        b"+a\nb\r\n",
    ],
)
def test_malformed_replies_raise_and_stay_failed(wire: bytes) -> None:
    parser = ReplyParser()
    parser.feed(wire + b"+OK\r\n")
    with pytest.raises(ReplyProtocolError, match="invalid reply"):
        drain(parser)
    with pytest.raises(ReplyProtocolError):
        parser.next_reply()  # sticky: no attempt to resynchronise
    with pytest.raises(ReplyProtocolError):
        parser.feed(b"+OK\r\n")


# -- property tests: any reply tree, encoded, parses back to itself -------------------------

# What a simple string or error line may hold: no CR or LF, no lone surrogates (not UTF-8).
_LINE_CHARS = st.characters(exclude_characters="\r\n", exclude_categories=["Cs"])
scalars = st.one_of(
    st.binary(max_size=40),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.none(),
    st.text(alphabet=_LINE_CHARS, max_size=20).map(lambda s: ("simple", s)),
    st.text(alphabet=_LINE_CHARS, max_size=20).map(lambda s: ErrorReply("ERR " + s)),
)
trees = st.recursive(scalars, lambda children: st.lists(children, max_size=5), max_leaves=25)


def encode(tree: Any, enc: ReplyEncoder) -> bytes:
    """Encode with the server's own encoder: what kvs-server would send."""
    if isinstance(tree, list):
        return enc.array([encode(item, enc) for item in tree])
    if isinstance(tree, tuple):
        return enc.simple(tree[1])
    if isinstance(tree, ErrorReply):
        return enc.error(tree.message)
    if isinstance(tree, int):
        return enc.integer(tree)
    return enc.bulk(tree)


def expected_value(tree: Any) -> Any:
    if isinstance(tree, list):
        return [expected_value(item) for item in tree]
    if isinstance(tree, tuple):
        return tree[1]
    return tree


@settings(max_examples=200, deadline=None)
@given(
    st.lists(trees, min_size=1, max_size=5),
    st.sampled_from([RESP2, RESP3]),
    st.lists(st.integers(min_value=1, max_value=16), max_size=200),
)
def test_encoded_trees_parse_back_however_split(
    replies: list[Any], protocol: int, sizes: list[int]
) -> None:
    enc = ReplyEncoder(protocol)
    wire = b"".join(encode(tree, enc) for tree in replies)
    assert parse_in_chunks(wire, sizes) == [expected_value(tree) for tree in replies]


@pytest.mark.parametrize("protocol", [RESP2, RESP3])
def test_the_servers_resp3_only_types_degrade_as_expected(protocol: int) -> None:
    enc = ReplyEncoder(protocol)
    resp3 = protocol == RESP3
    cases: list[tuple[bytes, Any]] = [
        (enc.double(2.5), 2.5 if resp3 else b"2.5"),
        (enc.boolean(True), True if resp3 else 1),
        (enc.big_number(10**30), 10**30 if resp3 else b"%d" % 10**30),
        (enc.null, None),
        (enc.null_array, None),
        (enc.verbatim(b"info"), Verbatim(b"info", "txt") if resp3 else b"info"),
        (
            enc.map([(enc.bulk(b"k"), enc.integer(1))]),
            {b"k": 1} if resp3 else [b"k", 1],
        ),
        (enc.set([enc.bulk(b"m")]), {b"m"} if resp3 else [b"m"]),
        (enc.push([enc.bulk(b"p")]), Push([b"p"]) if resp3 else [b"p"]),
    ]
    parser = ReplyParser()
    parser.feed(b"".join(wire for wire, _ in cases))
    assert_same(drain(parser), [value for _, value in cases])
