"""INCRBYFLOAT's arithmetic, as Redis does it: in C's ``long double``, exactly.

Redis parses both numbers with ``strtold``, adds them in ``long double`` (on x86-64, the x87
80-bit format: a 64-bit significand) and writes the sum with ``"%.17Lf"``, then strips the
trailing zeros. The reply a client sees depends on every one of those roundings (``10.5``
plus ``0.1`` is ``10.6`` in Redis, not ``10.59999999999999964`` as with a Python float), so
this module reproduces them with exact rational arithmetic: a value is a ``Fraction`` that
the format can hold, or an infinity.

    value = significand * 2**(exponent - 63),  2**63 <= significand < 2**64
    exponent in [-16382, 16383]; below, subnormals with the exponent -16382

Sans-I/O and free of any store: ``commands`` calls ``parse`` and ``add_and_format``.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Final

#: strtold's longest input Redis accepts (MAX_LONG_DOUBLE_CHARS), minus its terminator.
MAX_CHARS: Final = 5 * 1024 - 1

_SIGNIFICAND_BITS: Final = 64
_MIN_EXPONENT: Final = -16382  # of the smallest normal value, 2**-16382
_OVERFLOW: Final = Fraction(2) ** 16384  # the first value past the largest finite one
_DECIMAL: Final = re.compile(rb"([+-]?)(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?")
_HEX: Final = re.compile(rb"([+-]?)0[xX]([0-9a-fA-F]*)(?:\.([0-9a-fA-F]*))?(?:[pP]([+-]?\d+))?")
_INFINITY: Final = re.compile(rb"([+-]?)(?:inf|infinity)", re.IGNORECASE)

Infinite = float  # +inf or -inf: what an overflowing sum gives, kept apart from Fractions
Number = Fraction | Infinite


def _round(exact: Fraction) -> Number:
    """``exact`` rounded to the nearest long double (ties to even), or an infinity."""
    if exact == 0:
        return Fraction(0)
    magnitude = abs(exact)
    # The exponent of magnitude's leading bit: 2**e <= magnitude < 2**(e + 1).
    e = magnitude.numerator.bit_length() - magnitude.denominator.bit_length()
    if Fraction(2) ** e > magnitude:
        e -= 1
    quantum = max(e, _MIN_EXPONENT) - (_SIGNIFICAND_BITS - 1)
    steps = magnitude / Fraction(2) ** quantum
    significand = round(steps)  # Fraction.__round__ rounds half to even
    rounded = significand * Fraction(2) ** quantum
    if rounded >= _OVERFLOW:
        return float("inf") if exact > 0 else float("-inf")
    return rounded if exact > 0 else -rounded


def parse(text: bytes) -> Number | None:
    """What Redis's string2ld makes of ``text``: a long double, an infinity (``inf``), or
    None where Redis says "value is not a valid float" (empty, too long, leading space,
    trailing characters, NaN, or a value that overflows or underflows to zero)."""
    if not text or len(text) > MAX_CHARS:
        return None
    if text[:1].isspace():  # (strtold would skip it; Redis refuses it, and any NUL)
        return None
    if _INFINITY.fullmatch(text):
        return float("-inf") if text[:1] == b"-" else float("inf")
    hex_match = _HEX.fullmatch(text)
    match = hex_match or _DECIMAL.fullmatch(text)
    if match is None:
        return None
    sign, whole, fraction, power = match.groups()
    fraction = fraction or b""
    if not whole and not fraction:
        return None
    exponent = _exponent(power)
    if hex_match:
        mantissa = int(whole + fraction, 16)  # (no digit limit for a power-of-two base)
        exponent -= 4 * len(fraction)  # a power of two
        # Beyond any long double either way: decide without building a huge power.
        magnitude = mantissa.bit_length() + exponent  # 2**(magnitude - 1) <= value
        exact = _scaled(mantissa, 2, exponent, magnitude, limit=16400)
    else:
        significant = (whole + fraction).lstrip(b"0")
        mantissa = _decimal_int(significant)
        exponent -= len(fraction)
        magnitude = len(significant) + exponent  # 10**(magnitude - 1) <= value
        exact = _scaled(mantissa, 10, exponent, magnitude, limit=4960)
    if sign == b"-":
        exact = -exact
    value = _round(exact)
    if isinstance(value, float) or (value == 0 and exact != 0):
        return None  # ERANGE: strtold's overflow to HUGE_VAL, or underflow to zero
    return value


def _scaled(mantissa: int, base: int, exponent: int, magnitude: int, limit: int) -> Fraction:
    """``mantissa * base**exponent``, exactly; past ``limit`` orders of magnitude either way
    (where every long double overflows, or rounds to zero) a stand-in that does the same,
    without building a huge power."""
    if mantissa and magnitude > limit:
        return Fraction(2) ** 16400
    if mantissa and magnitude < -limit:
        return Fraction(1, 2**16500)
    return mantissa * Fraction(base) ** exponent


def _exponent(text: bytes | None) -> int:
    """An exponent's digits; past 9 of them, a stand-in as far beyond every limit."""
    if not text:
        return 0
    digits = text.lstrip(b"+-").lstrip(b"0")
    value = int(digits or b"0") if len(digits) <= 9 else 10**9
    return -value if text[:1] == b"-" else value


def _decimal_int(digits: bytes) -> int:
    """``int(digits)`` for up to MAX_CHARS digits (int() alone refuses past 4300 of them)."""
    value = 0
    for start in range(0, len(digits), 4000):
        chunk = digits[start : start + 4000]
        value = value * 10 ** len(chunk) + int(chunk)
    return value


def _decimal_digits(value: int) -> str:
    """``str(value)`` for a non-negative int of any size (str() alone refuses past 4300
    digits; the largest long double has 4933)."""
    chunks = []
    while value >= 10**4000:
        value, low = divmod(value, 10**4000)
        chunks.append(str(low).rjust(4000, "0"))
    return str(value) + "".join(reversed(chunks))


def format_human(value: Fraction) -> bytes:
    """``"%.17Lf"`` of ``value`` (rounded half to even, as glibc's printf does), with the
    trailing zeros and a bare ``.`` removed, and ``-0`` written as ``0``: Redis's
    ld2string(LD_STR_HUMAN)."""
    scaled = abs(value) * 10**17
    units = round(scaled)  # half to even
    digits = _decimal_digits(units).rjust(18, "0")
    text = ("-" if value < 0 else "") + digits[:-17] + "." + digits[-17:]
    text = text.rstrip("0").rstrip(".")
    return b"0" if text == "-0" else text.encode()


def add_and_format(current: Number, increment: Number) -> bytes | None:
    """The sum as Redis's INCRBYFLOAT stores and replies it; None if it is NaN or infinite
    ("increment would produce NaN or Infinity")."""
    if isinstance(current, float) or isinstance(increment, float):
        return None  # inf + anything is inf or NaN
    total = _round(current + increment)
    if isinstance(total, float):
        return None
    return format_human(total)
