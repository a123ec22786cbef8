"""The hint-file format."""

from __future__ import annotations

from kvs.log import hintfile


def test_hint_round_trips_with_tombstones_and_expiries() -> None:
    keys = [b"a", b"bb", b"", b"gone"]
    locations = [
        hintfile.pack_location(32, 40),
        hintfile.pack_location(72, 41),
        hintfile.pack_location(113, 21),
        0,
    ]
    data = hintfile.encode(3, 99, 500, keys, locations, {1: 123456})
    hint = hintfile.decode(data)
    assert isinstance(hint, hintfile.Hint)
    assert (hint.data_file_id, hint.data_nonce, hint.covered_len) == (3, 99, 500)
    assert hint.keys == keys
    assert hint.locations == locations
    assert hint.expiries == {1: 123456}
    assert hint.has_tombstones


def test_hint_without_tombstones_says_so() -> None:
    data = hintfile.encode(1, 2, 3, [b"k"], [hintfile.pack_location(32, 30)], {})
    hint = hintfile.decode(data)
    assert isinstance(hint, hintfile.Hint)
    assert not hint.has_tombstones


def test_every_truncation_and_flip_is_detected() -> None:
    data = hintfile.encode(1, 2, 300, [b"key1", b"key2"], [1 << 33 | 60, 2 << 33 | 62], {0: 5})
    for cut in range(len(data)):
        assert isinstance(hintfile.decode(data[:cut]), str)
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 0x01
        assert isinstance(hintfile.decode(bytes(flipped)), str)


def test_hint_of_many_keys_round_trips() -> None:
    """Past the slice encode() works in (32,768 keys): every slice lands in order, and a
    tombstone only in the last slice still sets the flag."""
    count = 100_003
    keys = [b"k%d" % i for i in range(count)]
    locations = [hintfile.pack_location(32 + 20 * i, 20) for i in range(count)]
    for with_tombstone in (False, True):
        if with_tombstone:
            locations[-1] = 0
        hint = hintfile.decode(hintfile.encode(7, 8, 32 + 20 * count, keys, locations, {}))
        assert isinstance(hint, hintfile.Hint)
        assert hint.keys == keys
        assert hint.locations == locations
        assert hint.has_tombstones is with_tombstone
