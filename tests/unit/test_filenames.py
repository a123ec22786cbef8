"""File naming: the only place names are made and parsed."""

from __future__ import annotations

from kvs.log import filenames
from kvs.log.filenames import FileKind


def test_names_round_trip() -> None:
    data = filenames.data_file("/d", 12)
    hint = filenames.hint_file("/d", 12)
    assert data == "/d/kvs-0000000012.data"
    assert filenames.parse("kvs-0000000012.data") == (FileKind.DATA, 12)
    assert filenames.parse(hint.rsplit("/", 1)[1]) == (FileKind.HINT, 12)
    assert filenames.parse("kvs-0000000012.data.tmp") == (FileKind.TEMP, 12)


def test_foreign_files_are_not_ours() -> None:
    for name in (
        "kvs.lock",
        "notes.txt",
        "kvs-12.data",
        "kvs-0000000012.data.corrupt-17",
        "x.data",
    ):
        assert filenames.parse(name) is None
