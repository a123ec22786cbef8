"""Odd sets of files at open (RELIABILITY A12): each opens as docs/format.md section 11 says,
and the store then accepts writes that survive another reopen.

Covered elsewhere, not repeated here: a data file with no hint (``test_hints.py``, deleted
hints), a hint with no data file (``test_hints.py``, orphan hint), a foreign ``notes.txt``
(``tests/test_store.py``), ``.tmp`` files left by a crash at each step of a compaction
(``test_compaction_crash.py``).
"""

from __future__ import annotations

import os
from itertools import pairwise
from pathlib import Path

import pytest

from kvs import CorruptionError, KvStore
from kvs.log import filenames

from .helpers import Expected, assert_contents, kvs_warnings, open_store, read, write

OPTIONS = {"max_file_size": 4096}


def build(path: Path, count: int = 12) -> Expected:
    """A few sealed files and an active one, closed cleanly."""
    expected: Expected = {}
    store = open_store(path, **OPTIONS)
    try:
        for i in range(count):
            store.set(f"k{i}", f"v{i}-" + "x" * 700)
            expected[f"k{i}".encode()] = f"v{i}-" + "x" * 700
    finally:
        store.close()
    return expected


def writes_survive(path: Path, expected: Expected) -> None:
    """The store opens with ``expected``, takes new writes, and keeps them across a reopen."""
    store = open_store(path, **OPTIONS)
    try:
        assert_contents(store, expected)
        store.set("after", "open")
        store.remove("k0")
    finally:
        store.close()
    expected = {**expected, b"after": "open"}
    expected.pop(b"k0", None)
    store = open_store(path, **OPTIONS)
    try:
        assert_contents(store, expected)
    finally:
        store.close()


def data_files(directory: Path) -> list[str]:
    """The store's data files, oldest first (look-alike names are not among them)."""
    found = []
    for name in os.listdir(directory):
        parsed = filenames.parse(name)
        if parsed is not None and parsed[0] is filenames.FileKind.DATA:
            found.append((parsed[1], os.path.join(directory, name)))
    return [p for _, p in sorted(found)]


def file_id(path: str) -> int:
    parsed = filenames.parse(os.path.basename(path))
    assert parsed is not None
    return parsed[1]


@pytest.mark.parametrize("length", [0, 1, 31, 32])
def test_newest_data_file_with_no_header_is_removed_with_a_warning(
    tmp_path: Path, length: int, kvs_log: pytest.LogCaptureFixture
) -> None:
    """Zero-length (or a header cut short, or all zeros): a crash while it was created."""
    path = tmp_path / "store"
    expected = build(path)
    newest = data_files(path)[-1]
    empty = os.path.join(path, f"kvs-{file_id(newest) + 1:010d}.data")
    write(empty, bytes(length))
    writes_survive(path, expected)
    assert any("removing" in r.getMessage() for r in kvs_warnings(kvs_log))
    assert not os.path.exists(empty)


def test_zero_length_data_file_that_is_not_the_newest_is_corruption(tmp_path: Path) -> None:
    """Only the newest file can be a crash mid-creation; an older empty file lost data."""
    path = tmp_path / "store"
    build(path)
    oldest = data_files(path)[0]
    write(oldest, b"")
    with pytest.raises(CorruptionError) as info:
        open_store(path, **OPTIONS)
    assert info.value.path == oldest and info.value.offset == 0
    assert os.path.getsize(oldest) == 0  # left alone


UNKNOWN = {
    "notes.txt": b"mine",
    "kvs-1.data": b"too few digits",
    "kvs-0000000099.data.bak": b"a backup",
    "kvs-0000000002.data.corrupt-1764001234": b"kvs check --fix backup",
    "KVS-0000000098.data": b"other case",
    "kvs-0000000097.log": b"unknown kind",
    "kvs.lock.old": b"123\n",
}


def test_unknown_files_are_left_alone_and_do_not_count(tmp_path: Path) -> None:
    path = tmp_path / "store"
    expected = build(path)
    for name, content in UNKNOWN.items():
        write(str(path / name), content)
    (path / "kvs-0000000096.data.d").mkdir()
    writes_survive(path, expected)
    for name, content in UNKNOWN.items():
        assert read(str(path / name)) == content, name
    assert (path / "kvs-0000000096.data.d").is_dir()
    # The next file numbers follow the store's own files, not the look-alikes (99, 98, 97).
    assert max(file_id(p) for p in data_files(path)) < 90


def test_temp_files_of_an_interrupted_merge_are_removed_and_their_numbers_skipped(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store"
    expected = build(path)
    top = max(file_id(p) for p in data_files(path))
    data_tmp = path / f"kvs-{top + 3:010d}.data.tmp"
    hint_tmp = path / f"kvs-{top + 3:010d}.hint.tmp"
    write(str(data_tmp), read(data_files(path)[0]))  # a plausible half-done output
    write(str(hint_tmp), b"KVSH partial")
    store = open_store(path, **OPTIONS)
    try:
        assert_contents(store, expected)
        for i in range(8):  # rotate into new files
            store.set(f"n{i}", "n" * 900)
            expected[f"n{i}".encode()] = "n" * 900
    finally:
        store.close()
    assert not data_tmp.exists() and not hint_tmp.exists()
    new_ids = [file_id(p) for p in data_files(path) if file_id(p) > top]
    assert new_ids and min(new_ids) > top + 3  # the temp file's number is not reused
    writes_survive(path, expected)


def test_file_numbers_with_gaps_open_in_order(tmp_path: Path) -> None:
    """Compactions leave gaps (unused reserved numbers); a later record still wins."""
    path = tmp_path / "store"
    expected = build(path)
    store = open_store(path, **OPTIONS)
    try:
        store.compact()
        for i in range(0, 12, 2):
            store.set(f"k{i}", f"second-{i}")
            expected[f"k{i}".encode()] = f"second-{i}"
        store.compact()
        store.set("k1", "third")
        expected[b"k1"] = "third"
    finally:
        store.close()
    ids = [file_id(p) for p in data_files(path)]
    assert any(b - a > 1 for a, b in pairwise(ids)), ids
    writes_survive(path, expected)


def test_gap_made_by_hand_between_files_opens(tmp_path: Path) -> None:
    """Files 1..n renumbered with gaps (the header names its number, so it is rewritten)."""
    from kvs.log import record

    path = tmp_path / "store"
    expected = build(path)
    for old in reversed(data_files(path)):  # newest first: no name clashes
        new_id = file_id(old) * 10
        data = bytearray(read(old))
        header = record.encode_file_header(new_id, int.from_bytes(data[16:24], "little"))
        data[:32] = header
        write(os.path.join(path, f"kvs-{new_id:010d}.data"), bytes(data))
        os.remove(old)
        hint = old[: -len(".data")] + ".hint"
        if os.path.exists(hint):
            os.remove(hint)  # it names the old number: it would be ignored anyway
    assert [file_id(p) for p in data_files(path)][:2] == [10, 20]
    writes_survive(path, expected)


def test_store_directory_holding_only_the_lock_file_opens_empty(tmp_path: Path) -> None:
    path = tmp_path / "store"
    path.mkdir()
    (path / "kvs.lock").write_text("99999\n")
    with KvStore.open(str(path), sync="no") as store:
        assert len(store) == 0
        store.set("a", "1")
    with KvStore.open(str(path), sync="no") as store:
        assert store.get("a") == "1"
