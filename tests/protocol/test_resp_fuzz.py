"""Property tests of the RESP request parser (Hypothesis).

- Any input, however chunked: the parser yields non-empty lists of bytes or raises
  ProtocolError, nothing else; the result does not depend on the chunking; the buffer never
  exceeds max_buffer.
- Valid streams (multibulk, plain and quoted inline, mixed) parse back to the commands that
  were encoded, under any chunking.
- Inline lines split exactly as a line-by-line port of Redis's sdssplitargs splits them.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from soakmode import soak_scale
from test_resp import run  # feed chunks, drain commands, return (commands, error)

from kvs.protocol import ProtocolError, RespParser, encode_command

Command = list[bytes]
Outcome = tuple[list[Command], str | None]

# Long form under --soak (tests/soakmode.py).
FUZZ = settings(
    max_examples=soak_scale(300, 20_000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length, in any order)."""
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def parse(chunks: list[bytes], **options: Any) -> Outcome:
    """Feed the chunks, pulling commands after each; check the invariants as it goes."""
    parser = RespParser(**options)
    max_buffer = options.get("max_buffer", 1024**3)
    commands: list[Command] = []
    try:
        for chunk in chunks:
            parser.feed(chunk)
            assert len(parser._buf) <= max_buffer
            while (command := parser.next_command()) is not None:
                assert isinstance(command, list) and command
                assert all(type(arg) is bytes for arg in command)
                commands.append(command)
            assert parser.buffered_bytes <= max_buffer
    except ProtocolError as error:
        assert str(error).startswith("Protocol error: ")
        return commands, str(error)
    return commands, None


def assert_chunking_independent(data: bytes, cuts: list[int], **options: Any) -> Outcome:
    whole = parse([data], **options)
    assert parse(split(data, cuts), **options) == whole
    return whole


# --- strategies ----------------------------------------------------------------------------

limits = st.fixed_dictionaries(
    {},
    optional={
        "max_bulk_len": st.integers(1, 20),
        "max_args": st.integers(1, 6),
        "max_inline_len": st.integers(1, 24),
        "unauthenticated": st.booleans(),
    },
)
# Pieces that build near-valid protocol much more often than uniform random bytes do.
PROTOCOL_PIECES = [bytes([c]) for c in b"*$\r\n01239-+ \t\"'\\xa\x00\x0b"] + [
    *(b"\r\n", b"4f", b"abc", b"PING\r\n"),
    *(b"*1\r\n", b"*2\r\n", b"$0\r\n", b"$1\r\n", b"$3\r\n"),
]
protocolish = st.lists(st.sampled_from(PROTOCOL_PIECES), max_size=60).map(b"".join)
cuts = st.lists(st.integers(0, 10_000), max_size=12)
commands = st.lists(st.lists(st.binary(max_size=30), min_size=1, max_size=6), max_size=8)
# Words that need no quoting in an inline request.
plain_words = st.binary(min_size=1, max_size=12).filter(
    lambda w: not any(c in w for c in b" \t\r\n\x0b\x0c\x00\"'")
)


def quote(arg: bytes) -> bytes:
    """``arg`` as a double-quoted inline word, the way redis-cli prints one (sdscatrepr)."""
    escapes = {0x5C: b"\\\\", 0x22: b'\\"', 10: b"\\n", 13: b"\\r", 9: b"\\t", 7: b"\\a", 8: b"\\b"}
    out = bytearray(b'"')
    for byte in arg:
        if byte in escapes:
            out += escapes[byte]
        elif 32 <= byte < 127:
            out.append(byte)
        else:
            out += b"\\x%02x" % byte
    return bytes(out + b'"')


@st.composite
def mixed_streams(draw: st.DrawFn) -> tuple[bytes, list[Command]]:
    """Commands, each encoded as multibulk, plain inline or quoted inline."""
    encoded: list[bytes] = []
    expected: list[Command] = []
    for _ in range(draw(st.integers(0, 8))):
        how = draw(st.sampled_from(["multibulk", "plain", "quoted"]))
        if how == "plain":
            words = draw(st.lists(plain_words, min_size=1, max_size=5))
            if words[0].startswith(b"*"):
                words[0] = b"x" + words[0]  # a leading "*" would make it multibulk
            sep = draw(st.sampled_from([b" ", b"  ", b"\t"]))
            encoded.append(sep.join(words) + draw(st.sampled_from([b"\r\n", b"\n"])))
        else:
            words = draw(st.lists(st.binary(max_size=12), min_size=1, max_size=5))
            if how == "multibulk":
                encoded.append(encode_command(words))
            else:
                encoded.append(b" ".join(quote(w) for w in words) + b"\r\n")
        expected.append(words)
    return b"".join(encoded), expected


# --- properties ----------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=200), cuts=cuts, options=limits)
def test_random_bytes(data: bytes, cuts: list[int], options: dict[str, Any]) -> None:
    assert_chunking_independent(data, cuts, **options)


@FUZZ
@given(data=protocolish, cuts=cuts, options=limits)
def test_protocol_like_bytes(data: bytes, cuts: list[int], options: dict[str, Any]) -> None:
    assert_chunking_independent(data, cuts, **options)


@FUZZ
@given(cmds=commands, cuts=cuts)
def test_multibulk_round_trip(cmds: list[Command], cuts: list[int]) -> None:
    data = b"".join(encode_command(c) for c in cmds)
    assert parse(split(data, cuts)) == (cmds, None)


@FUZZ
@given(stream=mixed_streams(), cuts=cuts)
def test_mixed_round_trip(stream: tuple[bytes, list[Command]], cuts: list[int]) -> None:
    data, expected = stream
    assert parse(split(data, cuts)) == (expected, None)
    assert parse([data[i : i + 1] for i in range(len(data))]) == (expected, None)


@st.composite
def mutated_streams(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(mixed_streams())[0])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["replace", "insert", "delete", "cut", "duplicate"]))
        at = draw(st.integers(0, len(data)))
        if kind == "insert" or (kind == "replace" and at < len(data)):
            byte = draw(st.sampled_from(b"*$\r\n-0123456789 \"'\\x\x00") | st.integers(0, 255))
            if kind == "insert":
                data.insert(at, byte)
            else:
                data[at] = byte
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "cut":
            del data[at:]
        else:
            size = draw(st.integers(1, 16))
            data[at:at] = data[at : at + size]
    return bytes(data)


@FUZZ
@given(data=mutated_streams(), cuts=cuts, options=limits)
def test_mutated_streams(data: bytes, cuts: list[int], options: dict[str, Any]) -> None:
    assert_chunking_independent(data, cuts, **options)


@FUZZ
@given(
    data=st.one_of(protocolish, mutated_streams(), st.binary(max_size=300)),
    cuts=cuts,
    max_buffer=st.integers(1, 64),
    options=limits,
)
def test_buffer_never_exceeds_max_buffer(
    data: bytes, cuts: list[int], max_buffer: int, options: dict[str, Any]
) -> None:
    # parse() checks len(buffer) <= max_buffer after every feed and every pull.
    parse(split(data, cuts), max_buffer=max_buffer, **options)


@FUZZ
@given(
    ops=st.lists(st.one_of(st.binary(max_size=40), st.none()), max_size=30),
    max_buffer=st.integers(1, 64),
)
def test_interleaved_feeds_and_pulls(ops: list[bytes | None], max_buffer: int) -> None:
    parser = RespParser(max_buffer=max_buffer, max_inline_len=16)
    for op in ops:
        try:
            if op is None:
                parser.next_command()
            else:
                parser.feed(op)
        except ProtocolError:
            pass
        assert len(parser._buf) <= max_buffer
        assert parser.buffered_bytes <= max_buffer


# --- feed_single_request: one whole request, taken without the buffer ------------------------


one_command = st.lists(st.binary(max_size=30), min_size=1, max_size=6)


@st.composite
def near_single_requests(draw: st.DrawFn) -> bytes:
    """One encoded request, then one of its lines retold (a length or count off by one, with a
    sign or a leading zero) or bytes added after it: what a shortcut would most easily get
    wrong."""
    lines = encode_command(draw(st.lists(st.binary(max_size=8), min_size=1, max_size=3)))
    lines = lines.split(b"\r\n")
    framing = [i for i, line in enumerate(lines) if line[:1] in b"*$" and line[1:].isdigit()]
    if draw(st.booleans()):
        at = draw(st.sampled_from(framing))
        number = int(lines[at][1:]) + draw(st.sampled_from([-1, 1]))
        fmt = draw(st.sampled_from([b"%d", b"+%d", b"0%d", b"%d "]))
        lines[at] = lines[at][:1] + fmt % number
    else:
        lines[-1] = draw(st.binary(min_size=1, max_size=6))
    return b"\r\n".join(lines)


def check_single(before: bytes, data: bytes, **options: Any) -> None:
    """After ``before`` (complete, partial, or an error), ``feed_single_request(data)``
    either takes ``data`` as exactly the one request that feeding it would give, leaving
    nothing else behind, or changes nothing: feeding ``data`` then gives what it gives to a
    parser that never saw the call."""
    fast, slow = RespParser(**options), RespParser(**options)
    assert run(fast, [before]) == run(slow, [before])
    taken = fast.feed_single_request(data)
    expected = run(slow, [data])
    if taken is None:
        assert run(fast, [data]) == expected
    else:
        assert expected == ([taken], None)
        assert slow.buffered_bytes == 0
        assert fast.buffered_bytes == len(data)  # counted against max_buffer while held
        assert fast.next_command() == taken
        assert fast.next_command() is None
    assert fast.buffered_bytes == slow.buffered_bytes


@FUZZ
@given(
    before=st.one_of(st.just(b""), one_command.map(encode_command), protocolish, mutated_streams()),
    data=st.one_of(
        one_command.map(encode_command),
        near_single_requests(),
        protocolish,
        mutated_streams(),
        st.binary(max_size=100),
    ),
    max_buffer=st.one_of(st.none(), st.integers(1, 120)),
    options=limits,
)
def test_feed_single_request_takes_only_what_feed_gives_as_one_request(
    before: bytes, data: bytes, max_buffer: int | None, options: dict[str, Any]
) -> None:
    if max_buffer is not None:
        options = {**options, "max_buffer": max_buffer}
    check_single(before, data, **options)


@FUZZ
@given(data=near_single_requests())
def test_feed_single_request_refuses_a_request_one_line_off(data: bytes) -> None:
    check_single(b"", data)


@FUZZ
@given(command=one_command)
def test_feed_single_request_takes_every_canonical_request(command: Command) -> None:
    """Every request as clients encode it is taken, unless a payload holds "\\r\\n" (then
    the count of lines is off, and the general path takes it)."""
    parser = RespParser()
    taken = parser.feed_single_request(encode_command(command))
    if any(b"\r\n" in arg for arg in command):
        assert taken is None
        parser.feed(encode_command(command))
    else:
        assert taken == command
    assert parser.next_command() == command
    assert parser.next_command() is None
    # Two requests in one read (a pipeline) and a partial one are left to feed().
    assert parser.feed_single_request(encode_command(command) * 2) is None
    assert parser.feed_single_request(encode_command(command)[:-1]) is None
    assert parser.buffered_bytes == 0


# --- inline splitting against a port of Redis's sdssplitargs --------------------------------


C_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}


def sdssplitargs(line: bytes) -> list[bytes] | None:
    """Line-by-line port of sdssplitargs (sds.c): the reference for inline requests."""
    s = line + b"\x00\x00\x00\x00"  # a C string, padded so p+3 is always readable
    hexdigits = b"0123456789abcdefABCDEF"
    isspace = b" \t\n\x0b\x0c\r"
    p = 0
    vector: list[bytes] = []
    while True:
        while s[p] and s[p] in isspace:
            p += 1
        if not s[p]:
            return vector
        inq = insq = done = False
        current = bytearray()
        while not done:
            c = s[p]
            if inq:
                if (
                    c == 0x5C
                    and s[p + 1] == ord("x")
                    and s[p + 2] in hexdigits
                    and s[p + 3] in hexdigits
                ):
                    current.append(int(s[p + 2 : p + 4], 16))
                    p += 3
                elif c == 0x5C and s[p + 1]:
                    p += 1
                    current.append(C_ESCAPES.get(s[p], s[p]))
                elif c == 0x22:
                    if s[p + 1] and s[p + 1] not in isspace:
                        return None
                    done = True
                elif not c:
                    return None
                else:
                    current.append(c)
            elif insq:
                if c == 0x5C and s[p + 1] == 0x27:
                    p += 1
                    current.append(0x27)
                elif c == 0x27:
                    if s[p + 1] and s[p + 1] not in isspace:
                        return None
                    done = True
                elif not c:
                    return None
                else:
                    current.append(c)
            elif c in b" \n\r\t\x00":
                done = True
            elif c == 0x22:
                inq = True
            elif c == 0x27:
                insq = True
            else:
                current.append(c)
            if s[p]:
                p += 1
        vector.append(bytes(current))


# Everything sdssplitargs treats specially, plus escapes; no "\n" (it ends the line).
INLINE_PIECES = [bytes([c]) for c in b"ab \t\r\x0b\x0c\"'\\x4Fgn\x00\xff"] + [
    *(b"\\x", b"\\'", b'\\"', b"\\\\"),
]
inline_lines = st.lists(st.sampled_from(INLINE_PIECES), max_size=30).map(b"".join)


@settings(max_examples=soak_scale(1000, 20_000), deadline=None)
@given(line=inline_lines, ending=st.sampled_from([b"\n", b"\r\n"]))
def test_inline_matches_sdssplitargs(line: bytes, ending: bytes) -> None:
    # Redis hands sdssplitargs the line without its "\n" or "\r\n".
    if ending == b"\n" and line.endswith(b"\r"):
        expected = sdssplitargs(line[:-1])
    else:
        expected = sdssplitargs(line)
    commands, error = parse([line + ending + b"PING\r\n"])
    if expected is None:
        assert (commands, error) == ([], "Protocol error: unbalanced quotes in request")
    elif not expected:
        assert (commands, error) == ([[b"PING"]], None)  # an empty line is skipped
    else:
        assert (commands, error) == ([expected, [b"PING"]], None)


@FUZZ
@given(words=st.lists(st.binary(max_size=20), min_size=1, max_size=6))
def test_quoted_inline_round_trip(words: list[bytes]) -> None:
    line = b" ".join(quote(w) for w in words)
    assert sdssplitargs(line) == words  # the reference agrees with the quoting
    assert parse([line + b"\r\n"]) == ([words], None)
