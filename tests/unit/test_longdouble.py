"""kvs.server.longdouble: INCRBYFLOAT's long double arithmetic, against replies that a real
redis-server 7.0 (x86-64) gave for the same inputs. tests/server/test_vs_redis.py compares
many more with a live redis-server; these run without one."""

from __future__ import annotations

from fractions import Fraction

import pytest

from kvs.server.longdouble import MAX_CHARS, add_and_format, parse

REDIS_SUMS = [
    ("10.5", "0.1", b"10.6"),  # a Python float would give 10.59999999999999964
    ("0.1", "0.2", b"0.3"),
    ("1.1", "2.2", b"3.3"),
    ("3", "-3", b"0"),
    ("2.675", "0", b"2.675"),
    ("0.000000000000000025", "0", b"0.00000000000000002"),  # %.17Lf's rounding
    ("0.000000000000000015", "0", b"0.00000000000000002"),
    ("1", "5e-18", b"1"),
    ("9007199254740993", "0", b"9007199254740993"),  # 2**53 + 1: fits 64 bits, not 53
    ("1e20", "0.5", b"100000000000000000000"),
    ("-0.0000000000000000001", "0", b"0"),  # "-0" is written "0"
    ("0x1p-3", "0", b"0.125"),
    ("123456789.123456789", "0", b"123456789.12345678899873747"),
]


@pytest.mark.parametrize(("start", "increment", "reply"), REDIS_SUMS)
def test_sums_are_redis_replies(start: str, increment: str, reply: bytes) -> None:
    current, step = parse(start.encode()), parse(increment.encode())
    assert current is not None and step is not None
    assert add_and_format(current, step) == reply


@pytest.mark.parametrize(
    "text",
    [b"", b" 1", b"1 ", b"1\x00", b"abc", b"nan", b"1e", b"--1", b"0x", b".", b"1e5000",
     b"1e-5000", b"1" * (MAX_CHARS + 1), b"1e" + b"9" * 5000],
)  # fmt: skip
def test_what_redis_calls_not_a_valid_float(text: bytes) -> None:
    assert parse(text) is None


def test_infinities_parse_but_never_sum() -> None:
    inf, one = parse(b"inf"), parse(b"1")
    assert inf == float("inf") and parse(b"-Infinity") == float("-inf")
    assert one is not None and inf is not None
    assert add_and_format(inf, one) is None
    biggest = parse(b"0x1.fffffffffffffffep16383")  # the largest finite long double
    assert biggest is not None and add_and_format(biggest, biggest) is None
    assert add_and_format(biggest, one) is not None  # 4933 digits, past str()'s own limit


def test_long_inputs_within_the_limit() -> None:
    digits = b"1" + b"0" * 4500  # more digits than int() takes from a str by default
    value = parse(digits)
    assert isinstance(value, Fraction)  # the long double nearest 10**4500: 64 bits of it
    assert abs(value / 10**4500 - 1) <= Fraction(1, 2**64)
    assert value.denominator == 1 and value.numerator.bit_length() == 14949
