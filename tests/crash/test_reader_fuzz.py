"""Fuzzing the file readers (RELIABILITY D2's "file readers" side, SQLite's malformed files).

Hypothesis feeds arbitrary bytes, and mutations of real data and hint files, to

* the record decoder (``record.decode_file_header``, ``iter_records``, ``check_record``,
  ``find_valid_record``): it yields records inside the buffer, or says why not
  (``BadRecord``, a reason string, ``FormatError``), and raises nothing else;
* the hint reader (``hintfile.decode``): a ``Hint`` whose columns agree, or a reason string;
* recovery: a store directory holding the mutated file opens cleanly with a map in which
  every key has a value that was written for it at some point (a torn tail cut, or damage
  in a hint, which is then ignored), or fails with ``CorruptionError`` / ``FormatError``
  naming the file (and, for corruption, an offset inside it). Never another exception, never
  a value that was not written. A damaged hint must give exactly the clean map.

Default example counts are small (a few seconds in all); ``--soak`` runs many more. An
atheris harness over the same checks runs with
``PYTHONPATH=tests .venv/bin/python tests/crash/test_reader_fuzz.py [atheris options]`` (needs
``atheris``, which is not a dependency; never part of the test run).
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from soakmode import soak_scale

from kvs import CorruptionError, FormatError, KvStore
from kvs.log import hintfile, record

EXAMPLES = soak_scale(150, 5000)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

Value = str | bytes


def build_sample() -> tuple[dict[str, bytes], dict[bytes, set[Value]], dict[bytes, Value]]:
    """A small store's files (sealed files with hints, an active one; sets, overwrites, a
    remove, a batch, a TTL), every value ever written per key, and the clean map."""
    root = tempfile.mkdtemp(prefix="kvs-fuzz-sample-")
    history: dict[bytes, set[Value]] = {}

    def note(key: str | bytes, value: Value) -> None:
        raw = key.encode() if isinstance(key, str) else key
        history.setdefault(raw, set()).add(value)

    try:
        with KvStore.open(root, sync="no", max_file_size=4096, auto_compact=False) as store:
            for i in range(40):
                key, value = f"k{i % 9}", f"v{i}-" + "x" * (i * 37 % 700)
                store.set(key, value)
                note(key, value)
            store.remove("k3")
            with store.batch() as batch:
                batch.set("b1", "one")
                batch.set(b"b2", b"\x00two")
            note("b1", "one")
            note(b"b2", b"\x00two")
            store.set("t", "ttl", ttl=3600)
            note("t", "ttl")
            store.update({b"u1": b"1", b"u2": b"2"})
            note(b"u1", b"1")
            note(b"u2", b"2")
        with KvStore.open(root, sync="no", max_file_size=4096, auto_compact=False) as store:
            clean: dict[bytes, Value] = {}
            for key in store.scan():
                raw = key.encode() if isinstance(key, str) else key
                value = store.get(key)
                assert value is not None
                clean[raw] = value
        files = {
            name: Path(root, name).read_bytes() for name in os.listdir(root) if name != "kvs.lock"
        }
    finally:
        shutil.rmtree(root)
    assert any(n.endswith(".hint") for n in files) and sum(n.endswith(".data") for n in files) > 2
    return files, history, clean


FILES, HISTORY, CLEAN = build_sample()
DATA_NAMES = sorted(n for n in FILES if n.endswith(".data"))
HINT_NAMES = sorted(n for n in FILES if n.endswith(".hint"))


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` after one to four damaging edits."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        size = len(data)
        kind = draw(
            st.sampled_from(
                ["flip", "byte", "truncate", "insert", "overwrite", "zeros", "append", "delete"]
            )
        )
        at = draw(st.integers(0, max(0, size - 1)))
        if kind == "flip" and size:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte" and size:
            data[at] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=64))
            data[at : at + len(chunk)] = chunk
        elif kind == "zeros":
            data[at : at + draw(st.integers(1, 4096))] = bytes(draw(st.integers(1, 4096)))
        elif kind == "append":
            data += draw(st.binary(min_size=1, max_size=256))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 64))]
    return bytes(data)


def with_header_crc_fixed(data: bytes) -> bytes:
    """Give a damaged data-file header a matching CRC, so the checks behind it run too."""
    if len(data) < record.FILE_HEADER_SIZE:
        return data
    crc = record.CRC.pack(record.checksum(data[:24]))
    return data[:24] + crc + data[28:]


def with_hint_crc_fixed(data: bytes) -> bytes:
    if len(data) < 4:
        return data
    return data[:-4] + record.CRC.pack(record.checksum(data[:-4]))


# -- the decoders ------------------------------------------------------------------------------


def check_data_decoder(data: bytes) -> None:
    """The record decoder's whole contract on one buffer."""
    try:
        header = record.decode_file_header(data[: record.FILE_HEADER_SIZE])
    except FormatError:
        header = None
    assert header is None or isinstance(header, str | record.FileHeader)
    end = len(data)
    offset = record.FILE_HEADER_SIZE
    try:
        for entry in record.iter_records(data, offset, end):
            assert offset <= entry.offset and entry.offset + entry.size <= end
            assert entry.size >= record.FRAMING
            assert entry.flags & ~(record.TOMBSTONE | record.VALUE_STR | record.KEY_STR) == 0
            offset = entry.offset
    except record.BadRecord as bad:
        assert record.FILE_HEADER_SIZE <= bad.offset < end and bad.reason
        later = record.valid_record_after_damage(data, bad.offset, end)
        assert later is None or bad.offset < later < end
    found = record.find_valid_record(data, 0, end)
    if found is not None:
        record.check_record(data, found, end)  # really valid: raises nothing
        assert found + record.FRAMING <= end


def check_hint_decoder(data: bytes) -> None:
    hint = hintfile.decode(data)
    if isinstance(hint, str):
        assert hint
        return
    assert len(hint.keys) == len(hint.locations)
    assert all(0 <= index < len(hint.keys) for index in hint.expiries)
    assert sum(map(len, hint.keys)) <= len(data)


@FUZZ
@given(st.binary(max_size=2048))
def test_record_decoder_on_arbitrary_bytes(data: bytes) -> None:
    check_data_decoder(data)
    check_data_decoder(with_header_crc_fixed(record.encode_file_header(1, 7) + data))


@FUZZ
@given(st.data())
def test_record_decoder_on_mutated_data_files(data: st.DataObject) -> None:
    original = FILES[data.draw(st.sampled_from(DATA_NAMES))]
    damaged = data.draw(mutated(original))
    check_data_decoder(damaged)
    check_data_decoder(with_header_crc_fixed(damaged))


@FUZZ
@given(st.binary(max_size=1024))
def test_hint_decoder_on_arbitrary_bytes(data: bytes) -> None:
    check_hint_decoder(data)
    check_hint_decoder(with_hint_crc_fixed(hintfile.MAGIC + data))


@FUZZ
@given(st.data())
def test_hint_decoder_on_mutated_hint_files(data: st.DataObject) -> None:
    original = FILES[data.draw(st.sampled_from(HINT_NAMES))]
    damaged = data.draw(mutated(original))
    check_hint_decoder(damaged)
    # With its CRC made to match, the header and column checks behind it run too.
    check_hint_decoder(with_hint_crc_fixed(damaged))


# -- recovery ----------------------------------------------------------------------------------


def open_directory(files: dict[str, bytes]) -> dict[bytes, Value] | Exception:
    """Open a store directory holding ``files``: its map, or the KvsError the open raised.
    Anything else propagates (and fails the test)."""
    root = tempfile.mkdtemp(prefix="kvs-fuzz-")
    try:
        for name, content in files.items():
            Path(root, name).write_bytes(content)
        try:
            with KvStore.open(root, sync="no", max_file_size=4096, auto_compact=False) as store:
                found: dict[bytes, Value] = {}
                for key in store.scan():
                    raw = key.encode() if isinstance(key, str) else key
                    value = store.get(key)
                    assert value is not None, f"scan lists {key!r}, get finds nothing"
                    found[raw] = value
                store.set("after-fuzz", "ok")  # the store takes writes after recovery
                return found
        except (CorruptionError, FormatError) as error:
            return error
    finally:
        shutil.rmtree(root)


def check_recovery_outcome(outcome: dict[bytes, Value] | Exception, name: str, size: int) -> None:
    if isinstance(outcome, CorruptionError):
        assert outcome.path.endswith(name) and 0 <= outcome.offset <= size
        assert name in str(outcome)
        return
    if isinstance(outcome, FormatError):
        assert name in str(outcome)
        return
    for key, value in outcome.items():
        assert key in HISTORY, f"phantom key {key!r}"
        assert value in HISTORY[key], f"{key!r} = {value!r} was never written"


def test_unmutated_sample_opens_to_the_clean_map() -> None:
    assert open_directory(FILES) == CLEAN


@FUZZ
@given(st.data())
def test_recovery_of_a_mutated_data_file(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(DATA_NAMES))
    damaged = data.draw(mutated(FILES[name]))
    if data.draw(st.booleans()):
        damaged = with_header_crc_fixed(damaged)
    files = {**FILES, name: damaged}
    if data.draw(st.booleans()):  # without hints, every record of the file is read
        files = {n: c for n, c in files.items() if not n.endswith(".hint")}
    check_recovery_outcome(open_directory(files), name, len(damaged))


@FUZZ
@given(st.data())
def test_recovery_of_a_mutated_hint_file_gives_the_clean_map(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(HINT_NAMES))
    damaged = data.draw(mutated(FILES[name]))
    outcome = open_directory({**FILES, name: damaged})
    assert outcome == CLEAN


@FUZZ
@given(st.binary(max_size=600), st.sampled_from(DATA_NAMES + HINT_NAMES))
def test_recovery_with_a_file_replaced_by_arbitrary_bytes(data: bytes, name: str) -> None:
    files = {**FILES, name: data}
    outcome = open_directory(files)
    if name.endswith(".hint"):
        assert outcome == CLEAN
    else:
        check_recovery_outcome(outcome, name, len(data))


def test_header_of_another_version_is_a_format_error_naming_the_file() -> None:
    name = DATA_NAMES[0]
    data = bytearray(FILES[name])
    struct.pack_into("<H", data, 4, 2)
    outcome = open_directory({**FILES, name: with_header_crc_fixed(bytes(data))})
    assert isinstance(outcome, FormatError) and name in str(outcome)


# -- atheris (optional) ------------------------------------------------------------------------


def atheris_main() -> None:  # pragma: no cover - run by hand: python test_reader_fuzz.py
    """Coverage-guided fuzzing of the same checks with atheris, if it is installed."""
    try:
        import atheris  # type: ignore[import-not-found]
    except ImportError:
        raise SystemExit("atheris is not installed: .venv/bin/pip install atheris") from None

    def one_input(raw: bytes) -> None:
        provider = atheris.FuzzedDataProvider(raw)
        target = provider.ConsumeIntInRange(0, 3)
        body = provider.ConsumeBytes(provider.remaining_bytes())
        if target == 0:
            check_data_decoder(body)
        elif target == 1:
            check_hint_decoder(with_hint_crc_fixed(hintfile.MAGIC + body))
        elif target == 2:
            outcome = open_directory({**FILES, DATA_NAMES[-1]: body})
            check_recovery_outcome(outcome, DATA_NAMES[-1], len(body))
        else:
            assert open_directory({**FILES, HINT_NAMES[0]: body}) == CLEAN

    logging.disable(logging.WARNING)  # every damaged file logs a warning
    atheris.instrument_all()  # coverage feedback from the already imported readers
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":  # pragma: no cover
    atheris_main()
