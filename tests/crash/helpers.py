"""Helpers for the crash tests: store snapshots, file listings, an independent record parser."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from kvs import KvStore
from kvs.log.faultfs import FaultyFileSystem, SimulatedCrash

FILE_HEADER_SIZE = 32
RECORD_HEAD = struct.Struct("<BIIQ")  # flags, key_len, value_len, expires_ms
FRAMING = 21
BATCH_FLAG = 0x08

Value = str | bytes
Expected = dict[bytes, Value]


def raw(key: str | bytes) -> bytes:
    return key.encode() if isinstance(key, str) else key


def open_store(path: str | os.PathLike[str], **options: Any) -> KvStore:
    """Open with test-friendly defaults: no background compaction, no sync thread."""
    options.setdefault("auto_compact", False)
    options.setdefault("sync", "no")
    return KvStore.open(str(path), **options)


def contents(store: KvStore) -> Expected:
    """Every key (as bytes) and its value, read through ``scan`` and ``get``."""
    out: Expected = {}
    for key in store.scan():
        value = store.get(key)
        assert value is not None, f"scan lists {key!r} but get finds nothing"
        out[raw(key)] = value
    return out


def assert_contents(store: KvStore, expected: Expected) -> None:
    """The store holds exactly ``expected``: by scan, by get of every key, and by len."""
    actual = contents(store)
    missing = sorted(set(expected) - set(actual))[:5]
    phantom = sorted(set(actual) - set(expected))[:5]
    wrong = sorted(k for k in set(expected) & set(actual) if expected[k] != actual[k])[:5]
    assert not missing and not phantom and not wrong, (
        f"missing {missing}, phantom {phantom}, wrong values {wrong}"
    )
    for key, value in expected.items():
        assert store.get(key) == value
    assert len(store) == len(expected)


def data_files(directory: str | os.PathLike[str]) -> list[str]:
    return sorted(
        os.path.join(directory, name)
        for name in os.listdir(directory)
        if name.startswith("kvs-") and name.endswith(".data")
    )


def hint_files(directory: str | os.PathLike[str]) -> list[str]:
    return sorted(
        os.path.join(directory, name)
        for name in os.listdir(directory)
        if name.startswith("kvs-") and name.endswith(".hint")
    )


def temp_files(directory: str | os.PathLike[str]) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


def hint_of(data_path: str) -> str:
    return data_path[: -len(".data")] + ".hint"


@dataclass(frozen=True)
class Rec:
    offset: int
    size: int
    flags: int
    key_len: int
    value_len: int
    key: bytes  # empty for a batch

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def is_batch(self) -> bool:
        return bool(self.flags & BATCH_FLAG)


def parse_records(data: bytes) -> list[Rec]:
    """The top-level records of a cleanly closed data file (a batch is one record).

    Deliberately independent of ``kvs.log.record``: it trusts the lengths and stops at the
    first all-zero header (a preallocated tail).
    """
    out: list[Rec] = []
    offset = FILE_HEADER_SIZE
    while offset + FRAMING <= len(data):
        head = data[offset : offset + RECORD_HEAD.size]
        if head == bytes(RECORD_HEAD.size):
            break
        flags, key_len, value_len, _ = RECORD_HEAD.unpack(head)
        size = FRAMING + value_len if flags & BATCH_FLAG else FRAMING + key_len + value_len
        key = b"" if flags & BATCH_FLAG else data[offset + 17 : offset + 17 + key_len]
        out.append(Rec(offset, size, flags, key_len, value_len, key))
        offset += size
    assert offset <= len(data)
    return out


def find_record(path: str, key: bytes) -> Rec:
    """The last top-level record of ``key`` in the data file at ``path``."""
    found = [r for r in parse_records(read(path)) if r.key == key]
    assert found, f"no record of {key!r} in {path}"
    return found[-1]


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def flip_bit(path: str, offset: int, bit: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))


def copy_dir(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> str:
    """Copy a store directory, also one that is open: what a crash would leave of it.

    An open store's background thread may rename or remove a file while it is being copied
    (a hint's ``.tmp`` becoming the hint): a file that is gone by the time it is copied is
    left out, as a crash a moment later would have left it out.
    """

    def copy_if_present(source: str, target: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            shutil.copy2(source, target)

    shutil.copytree(src, dst, copy_function=copy_if_present)
    return str(dst)


def kvs_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "kvs" and r.levelno == logging.WARNING]


def apply(expected: Expected, ops: Iterable[tuple[str, bytes, Value | None]]) -> Expected:
    """``expected`` after ``("set", key, value)`` / ``("rm", key, None)`` operations."""
    out = dict(expected)
    for op, key, value in ops:
        if op == "set":
            assert value is not None
            out[key] = value
        else:
            out.pop(key, None)
    return out


def abandon(store: KvStore, fs: FaultyFileSystem) -> None:
    """After a simulated crash: the store object must do nothing more (not even in
    ``__del__``), and everything it held is released as process death would."""
    assert fs.crashed
    with contextlib.suppress(SimulatedCrash):
        store.close()  # marks it closed first; its first file operation then "crashes"
    fs.release_all()


@contextlib.contextmanager
def quiet_simulated_crashes() -> Iterator[None]:
    """Background threads of a "crashed" store die with ``SimulatedCrash``: expected."""
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is not None and issubclass(args.exc_type, SimulatedCrash):
            return
        previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous
