"""The parser's read-ahead fast path (RespParser._parse_ahead): it parses every complete
request with canonical framing in one go, and must give exactly what the request-at-a-time
path gives: the same commands, the same errors at the same point, the same buffered_bytes,
the same limits, however the input is split.
"""

from __future__ import annotations

import random

import pytest
from test_resp import run  # feed chunks, drain commands, return (commands, error)

from kvs.protocol import ProtocolError, RespParser, encode_command

UNAUTH_BULK = "Protocol error: unauthenticated bulk length"
INVALID_BULK = "Protocol error: invalid bulk length"


def splits(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    chunks, pos = [], 0
    while pos < len(data):
        size = rng.randint(1, 64)
        chunks.append(data[pos : pos + size])
        pos += size
    return chunks


MIXED = [
    [b"SET", b"k1", b"v" * 100],
    [b"GET", b"k1"],
    [b"SET", b"bin", b"a\r\nb\r\n"],  # a payload holding CRLF: the slow path takes it
    [b"PING"],
    [b"MSET", *[b"x%d" % i for i in range(40)]],
    [b"SET", b"big", b"z" * 5000],  # above the length-line table: formatted and checked
    [b"GET", b""],
    [b"ECHO", b"\r"],
    [b"ECHO", b"\r\r\n\n"],
]


@pytest.mark.parametrize("seed", [None, 1, 2, 3])
def test_mixed_pipeline(seed: int | None) -> None:
    data = b"".join(encode_command(c) for c in MIXED) + b"PING inline\r\n*0\r\n*1\r\n$4\r\nPING\r\n"
    chunks = [data] if seed is None else splits(data, seed)
    commands, error = run(RespParser(), chunks)
    assert error is None
    assert commands == [*MIXED, [b"PING", b"inline"], [b"PING"]]


def test_error_after_good_requests_comes_after_them() -> None:
    good = b"".join(encode_command([b"SET", b"k%d" % i, b"v"]) for i in range(20))
    bad = b"*2\r\n$3\r\nGET\r\n$01\r\nk\r\n"  # leading zero: Redis's invalid bulk length
    commands, error = run(RespParser(), [good + bad + good])
    assert len(commands) == 20
    assert error == INVALID_BULK


def test_tighter_limits_apply_to_requests_read_ahead() -> None:
    """set_unauthenticated(True) after the parser read ahead: the requests not returned yet
    are parsed again under the tighter limits, as if they had not been read."""
    big = encode_command([b"SET", b"k", b"x" * 20000])
    parser = RespParser()
    parser.feed(encode_command([b"PING"]) + big)
    assert parser.next_command() == [b"PING"]
    assert parser.buffered_bytes == len(big)  # read ahead, still counted
    parser.set_unauthenticated(True)
    assert parser.buffered_bytes == len(big)
    with pytest.raises(ProtocolError, match=f"^{UNAUTH_BULK}$"):
        parser.next_command()


def test_buffered_bytes_counts_requests_read_ahead() -> None:
    one = encode_command([b"SET", b"key", b"value"])
    parser = RespParser(max_buffer=3 * len(one))
    parser.feed(one * 3)
    for left in (2, 1, 0):
        assert parser.next_command() == [b"SET", b"key", b"value"]
        assert parser.buffered_bytes == left * len(one)
    assert parser.next_command() is None
    # The limit counts them too: with two still read ahead, one more does not fit.
    parser.feed(one * 3)
    assert parser.next_command() is not None
    with pytest.raises(ProtocolError):
        parser.feed(one * 2)


def test_small_limits_are_kept() -> None:
    commands, error = run(RespParser(max_bulk_len=10), [encode_command([b"SET", b"k", b"v" * 11])])
    assert (commands, error) == ([], INVALID_BULK)
    many = encode_command([b"a"] * 6)
    commands, error = run(RespParser(max_args=5), [many])
    assert (commands, error) == ([], "Protocol error: invalid multibulk length")
