"""``kvs export`` / ``kvs import`` (``kvs.cli.transfer``): the JSON-lines format, round trips
through the library and the command line, streaming, and every kind of bad input."""

from __future__ import annotations

import io
import json
import os
import pty
import shutil
import stat
import subprocess
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvs import KvStore, engines
from kvs.cli import transfer
from kvs.cli.kvs import build_parser
from kvs.cli.transfer import (
    Progress,
    TransferError,
    decode_line,
    encode_item,
    export_store,
    import_store,
)
from kvs.localservers import Cluster, RedisServer, free_port, script_command
from kvs.store import Key, Value, WriteBatch

KVS = script_command("kvs", "kvs.cli.kvs")

#: Keys and values of every shape: str and bytes, empty, binary, non-ASCII, JSON specials.
SAMPLE: dict[Key, Value] = {
    "user:1": "Ada",
    "user:2": b"\x00binary\xff",
    b'\x00\xff\n"\\': b"",
    'ünïcödé \u2028 "quoted" \\ \n\t': "",
    "": b"\x00\x00\x00",
    b"bytes key": "str value",
    "emoji 🗝": "🔒" * 10,
    "all bytes": bytes(range(256)),
    "control \x00\x1f\x7f": "json \u0000 escapes",
}


def fill(store: KvStore, items: dict[Key, Value]) -> None:
    for key, value in items.items():
        store.set(key, value)


def contents(store: KvStore) -> dict[Key, Value]:
    """Every key and value, with their types (``"a" != b"a"`` as dict keys here)."""
    return dict(store.items())


def export_bytes(store: KvStore) -> bytes:
    out = io.BytesIO()
    export_store(store, out)
    return out.getvalue()


def lines_of(*items: dict[str, object] | str) -> list[bytes]:
    return [
        (item if isinstance(item, str) else json.dumps(item)).encode() + b"\n" for item in items
    ]


def decoded(dump: bytes) -> list[tuple[Key, Value, int | None]]:
    items = [decode_line(line, n) for n, line in enumerate(dump.splitlines(), 1)]
    return [item for item in items if item is not None]


def batch_sizes(store: KvStore) -> list[int]:
    """The size of every batch written to ``store`` from now on, as it is written."""
    sizes: list[int] = []
    real_write = store.write

    def write(batch: WriteBatch) -> None:
        sizes.append(len(batch))
        real_write(batch)

    store.write = write  # type: ignore[method-assign]
    return sizes


def good_line(index: int) -> dict[str, object]:
    return {"k": f"key{index:04d}", "v": f"value{index}"}


def run(*args: str, cwd: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "KVS_DIR"}
    return subprocess.run(
        [*KVS, *args], cwd=cwd, input=stdin, capture_output=True, timeout=120, env=env
    )


def assert_one_line_error(result: subprocess.CompletedProcess[bytes], *fragments: str) -> str:
    stderr = result.stderr.decode()
    assert result.returncode != 0
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    for fragment in fragments:
        assert fragment in stderr
    return stderr


def engine_available(name: str) -> bool:
    try:
        engines.factory(name)
    except (engines.UnknownEngineError, ImportError, AttributeError):
        return False
    return True


def cli_has_engine_option() -> bool:
    try:
        build_parser().parse_args(["--engine", "kvs", "export"])
    except SystemExit:
        return False
    return True


@pytest.fixture
def store(tmp_path: Path) -> Iterator[KvStore]:
    with KvStore.open(str(tmp_path / "source")) as opened:
        yield opened


@pytest.fixture
def target(tmp_path: Path) -> Iterator[KvStore]:
    with KvStore.open(str(tmp_path / "target")) as opened:
        yield opened


# -- the format ------------------------------------------------------------------------------


def test_a_line_is_exactly_the_documented_format() -> None:
    assert encode_item("k", "v") == b'{"k": "k", "v": "v"}\n'
    assert encode_item(b"\x00\xff", b"", 5000) == (
        b'{"k": {"b64": "AP8="}, "v": {"b64": ""}, "ttl_ms": 5000}\n'
    )
    assert encode_item("clé", "\n") == '{"k": "clé", "v": "\\n"}\n'.encode()


@given(
    key=st.one_of(st.text(), st.binary()),
    value=st.one_of(st.text(), st.binary()),
    ttl_ms=st.one_of(st.none(), st.integers(1, transfer.MAX_TTL_MS)),
)
def test_every_key_value_and_ttl_survives_a_line(
    key: Key, value: Value, ttl_ms: int | None
) -> None:
    line = encode_item(key, value, ttl_ms)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    decoded = decode_line(line, 1)
    assert decoded is not None
    assert decoded == (key, value, ttl_ms)
    assert type(decoded[0]) is type(key) and type(decoded[1]) is type(value)


@pytest.mark.parametrize(
    "line",
    [
        b'{"k":"a","v":"b"}',  # no line end (the last line of a file)
        b'{"k":"a","v":"b"}\r\n',
        b'  { "v" : "b" ,\t"k": "a" }  \n',
        b'{"k": "a", "v": "b", "ttl_ms": null}\n',
    ],
)
def test_import_accepts_any_json_spacing_and_line_end(line: bytes) -> None:
    assert decode_line(line, 1) == ("a", "b", None)


@pytest.mark.parametrize("line", [b"", b"\n", b"   \r\n"])
def test_blank_lines_are_skipped(line: bytes) -> None:
    assert decode_line(line, 1) is None


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (b'{"k": "a", "v": "b"', "not valid JSON"),
        (b"{'k': 'a', 'v': 'b'}", "not valid JSON"),
        (b'{"k": "a", "v": "b"} {"k": "c", "v": "d"}', "not valid JSON"),
        (b'["a", "b"]', "not an array"),
        (b'"a"', "expected an object"),
        (b'{"k": "a"}', 'missing field "v"'),
        (b'{"v": "a"}', 'missing field "k"'),
        (b'{"k": "a", "v": "b", "ttl": 5}', 'unknown field "ttl"'),
        (b'{"k": "a", "v": "b", "k": "c"}', 'field "k" appears twice'),
        (b'{"k": "a", "v": 5}', '"v" must be a JSON string or {"b64": "..."}, not a number'),
        (b'{"k": null, "v": "b"}', "not null"),
        (b'{"k": {"b64": "YQ==", "x": 1}, "v": "b"}', "with fields b64, x"),
        (b'{"k": {"b64": 5}, "v": "b"}', '"b64" must be a string'),
        (b'{"k": "a", "v": {"b64": "YQ"}}', '"v": bad base64'),
        (b'{"k": "a", "v": {"b64": "Y Q=="}}', '"v": bad base64'),
        (b'{"k": "a", "v": {"b64": "YQ==!"}}', '"v": bad base64'),
        ('{"k": "a", "v": {"b64": "YÿQ="}}'.encode(), '"v": bad base64'),
        (b'{"k": "\\ud800", "v": "b"}', '"k" holds a lone surrogate (\\ud800)'),
        (b'{"k": "a", "v": "b", "ttl_ms": 0}', '"ttl_ms" must be a whole number'),
        (b'{"k": "a", "v": "b", "ttl_ms": -5}', '"ttl_ms" must be a whole number'),
        (b'{"k": "a", "v": "b", "ttl_ms": 1.5}', "not 1.5"),
        (b'{"k": "a", "v": "b", "ttl_ms": "5"}', '"ttl_ms" must be a whole number'),
        (b'{"k": "a", "v": "b", "ttl_ms": true}', "not true"),
        (b'{"k": "a", "v": "b", "ttl_ms": 1e400}', '"ttl_ms" must be a whole number'),
        (b'{"k": "a", "v": "b", "ttl_ms": NaN}', '"ttl_ms" must be a whole number'),
        (b'{"k": "a", "v": "b", "ttl_ms": 9007199254740992}', '"ttl_ms" must be a whole number'),
        (b'{"k": "\xff", "v": "b"}', "not UTF-8 (at byte 8)"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"k": "a", "v": "b", "ttl_ms": ' + b"9" * 5000 + b"}", "4300"),
    ],
)
def test_a_malformed_line_is_an_error_naming_its_line(line: bytes, fragment: str) -> None:
    with pytest.raises(TransferError) as caught:
        decode_line(line, 7)
    message = str(caught.value)
    assert message.startswith("line 7: ")
    assert fragment in message
    assert "\n" not in message


# -- round trips through the library ---------------------------------------------------------


def test_round_trip_keeps_str_and_bytes_binary_and_empty(store: KvStore, target: KvStore) -> None:
    fill(store, SAMPLE)
    exported = export_bytes(store)
    assert len(exported.splitlines()) == len(SAMPLE)
    result = import_store(target, io.BytesIO(exported))
    assert (result.keys, result.batches, result.lines) == (len(SAMPLE), 1, len(SAMPLE))
    # dict equality also compares types: "a" != b"a", so every key and value kept its type
    assert contents(target) == contents(store) == SAMPLE


def test_keys_are_exported_in_byte_order(store: KvStore) -> None:
    keys: list[Key] = ["b", b"a", "\u00e9", "A", b"\x00", "ab", "", b"\xff"]
    fill(store, {key: "x" for key in keys})
    exported = [item[0] for item in decoded(export_bytes(store))]
    raw = [key if isinstance(key, bytes) else key.encode() for key in exported]
    assert raw == sorted(k if isinstance(k, bytes) else k.encode() for k in keys)


def test_ttls_are_exported_as_remaining_milliseconds_and_restored(
    store: KvStore, target: KvStore
) -> None:
    store.set("short", "s", ttl=120)
    store.set("long", b"l", ttl=86_400)
    store.set("forever", "f")
    lines = {item[0]: item[2] for item in decoded(export_bytes(store))}
    assert lines["forever"] is None
    assert 115_000 <= (lines["short"] or 0) <= 120_000
    assert 86_395_000 <= (lines["long"] or 0) <= 86_400_000
    import_store(target, io.BytesIO(export_bytes(store)))
    assert target.ttl("forever") is None
    assert 110 <= (target.ttl("short") or 0) <= 120
    assert 86_390 <= (target.ttl("long") or 0) <= 86_400
    assert contents(target) == {"short": "s", "long": b"l", "forever": "f"}


def test_expired_keys_are_left_out(store: KvStore) -> None:
    store.set("gone", "x", ttl=0.001)
    store.set("kept", "y")
    time.sleep(0.01)
    assert export_bytes(store) == b'{"k": "kept", "v": "y"}\n'


def test_import_overwrites_present_keys_and_keeps_the_others(target: KvStore) -> None:
    target.update({"a": "old", "other": "kept"})
    target.set("b", "had a ttl", ttl=60)
    import_store(target, lines_of({"k": "a", "v": "new"}, {"k": "b", "v": "now forever"}))
    assert contents(target) == {"a": "new", "b": "now forever", "other": "kept"}
    assert target.ttl("b") is None


def test_a_key_twice_in_the_input_keeps_the_later_line(target: KvStore) -> None:
    import_store(
        target,
        lines_of(
            {"k": "a", "v": "first"},
            {"k": {"b64": "YQ=="}, "v": "second, same key as bytes"},
            {"k": "c", "v": "x"},
            {"k": "c", "v": {"b64": "eQ=="}},
        ),
        batch_size=3,
    )
    assert contents(target) == {b"a": "second, same key as bytes", "c": b"y"}


def test_import_writes_batches_of_the_given_size(target: KvStore) -> None:
    written = batch_sizes(target)
    result = import_store(target, lines_of(*(good_line(i) for i in range(25))), batch_size=10)
    assert written == [10, 10, 5]
    assert (result.keys, result.batches) == (25, 3)
    assert len(target) == 25


def test_a_batch_is_also_cut_by_its_size_in_bytes(target: KvStore) -> None:
    written = batch_sizes(target)
    big = {"k": "k", "v": "x" * 1000}
    items = [{**big, "k": f"k{i}"} for i in range(10)]
    import_store(target, lines_of(*items), batch_size=100, batch_bytes=3000)
    assert written == [3, 3, 3, 1]


def test_an_empty_input_imports_nothing(target: KvStore) -> None:
    assert import_store(target, io.BytesIO(b"")) == transfer.ImportResult(0, 0, 0)
    assert import_store(target, io.BytesIO(b"\n\n")) == transfer.ImportResult(0, 0, 2)
    assert len(target) == 0


# -- streaming -------------------------------------------------------------------------------


def test_export_writes_each_line_before_reading_the_next_value(store: KvStore) -> None:
    fill(store, {f"k{i:03d}": f"v{i}" for i in range(100)})
    gets = 0
    real_get = store.get

    def counting_get(key: Key) -> Value | None:
        nonlocal gets
        gets += 1
        return real_get(key)

    store.get = counting_get  # type: ignore[method-assign]
    gets_at_write: list[int] = []

    class Sink:
        def write(self, data: bytes) -> int:
            gets_at_write.append(gets)
            return len(data)

    assert export_store(store, Sink()) == 100
    assert gets_at_write == list(range(1, 101))


def test_import_writes_while_it_reads(target: KvStore) -> None:
    seen: list[int] = []

    def source() -> Iterator[bytes]:
        for i in range(2000):
            seen.append(len(target))
            yield json.dumps(good_line(i)).encode() + b"\n"

    import_store(target, source(), batch_size=500)
    # before line 501 is read, the first 500 keys are in the store, and so on
    assert seen[500] == 500 and seen[1999] == 1500
    assert len(target) == 2000


def test_a_large_store_streams_in_bounded_memory(tmp_path: Path) -> None:
    value = os.urandom(64 * 1024)
    count = 400  # 25 MiB of values, 34 MiB of export
    dump = tmp_path / "dump.jsonl"
    with KvStore.open(str(tmp_path / "big")) as big:
        for i in range(count):
            big.set(f"key{i:05d}", value)
        tracemalloc.start()
        try:
            with open(dump, "wb") as out:
                assert export_store(big, out) == count
            export_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert dump.stat().st_size > count * len(value)
    with KvStore.open(str(tmp_path / "copy")) as copy:
        tracemalloc.start()
        try:
            with open(dump, "rb") as source:
                result = import_store(copy, source, batch_size=16)
            import_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert result.keys == count and len(copy) == count
        assert copy.get("key00399") == value
    assert export_peak < 4 * 1024 * 1024, export_peak
    assert import_peak < 12 * 1024 * 1024, import_peak


# -- bad input: nothing partial beyond the last complete batch -------------------------------


def test_a_bad_line_keeps_exactly_the_complete_batches_before_it(target: KvStore) -> None:
    source = lines_of(*(good_line(i) for i in range(25)), '{"k": "broken"', good_line(26))
    with pytest.raises(TransferError) as caught:
        import_store(target, source, batch_size=10)
    message = str(caught.value)
    assert message.startswith("line 26: not valid JSON")
    assert "20 keys of lines 1-20 were imported, nothing after line 20" in message
    assert sorted(target.scan()) == [f"key{i:04d}" for i in range(20)]


def test_a_bad_line_in_the_first_batch_imports_nothing(target: KvStore) -> None:
    source = lines_of(good_line(0), good_line(1), {"k": "a", "v": {"b64": "%%%"}})
    with pytest.raises(TransferError, match=r"^line 3: \"v\": bad base64.*nothing was imported"):
        import_store(target, source, batch_size=10)
    assert len(target) == 0


def test_a_batch_the_store_refuses_is_reported_with_its_lines(tmp_path: Path) -> None:
    source = lines_of(*(good_line(i) for i in range(14)), {"k": "k" * 100, "v": "v"})
    with KvStore.open(str(tmp_path / "small"), max_key_size=64) as small:
        with pytest.raises(TransferError) as caught:
            import_store(small, source, batch_size=10)
        assert len(small) == 10
    message = str(caught.value)
    assert message.startswith("writing the batch of lines 11-15 failed: ")
    assert message.endswith("10 keys of lines 1-10 were imported, nothing after line 10")


# -- the command line ------------------------------------------------------------------------


def test_cli_export_piped_into_import(tmp_path: Path) -> None:
    with KvStore.open(str(tmp_path / "old")) as old:
        fill(old, SAMPLE)
        old.set("expiring", "soon", ttl=600)
    env = {k: v for k, v in os.environ.items() if k != "KVS_DIR"}
    exporter = subprocess.Popen(
        [*KVS, "--dir", "old", "export"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    importer = subprocess.Popen(
        [*KVS, "--dir", "new", "import", "--batch", "3"],
        cwd=tmp_path,
        stdin=exporter.stdout,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert exporter.stdout is not None
    exporter.stdout.close()
    imported, import_err = importer.communicate(timeout=120)
    export_err = exporter.communicate(timeout=120)[1]
    total = len(SAMPLE) + 1
    assert (exporter.returncode, export_err) == (0, f"exported {total} keys\n".encode())
    assert (importer.returncode, import_err) == (0, b"")
    assert imported == f"imported {total} keys in 4 batches\n".encode()
    with KvStore.open(str(tmp_path / "new")) as new:
        assert contents(new) == {**SAMPLE, "expiring": "soon"}
        assert 590 <= (new.ttl("expiring") or 0) <= 600


def test_cli_files_with_output_and_input(tmp_path: Path) -> None:
    with KvStore.open(str(tmp_path / "old")) as old:
        fill(old, SAMPLE)
    (tmp_path / "dump.jsonl").write_bytes(b"old contents\n")
    result = run("--dir", "old", "export", "--output", "dump.jsonl", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, b"")
    assert result.stderr == f"exported {len(SAMPLE)} keys\n".encode()
    dump = tmp_path / "dump.jsonl"
    assert stat.S_IMODE(dump.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump.jsonl", "old"]
    result = run("import", "-i", "dump.jsonl", "--dir", "new", cwd=tmp_path)
    assert result.stdout == f"imported {len(SAMPLE)} keys in 1 batch\n".encode()
    with KvStore.open(str(tmp_path / "new")) as new:
        assert contents(new) == SAMPLE


def test_cli_empty_store(tmp_path: Path) -> None:
    KvStore.open(str(tmp_path / "empty")).close()
    result = run("--dir", "empty", "export", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"exported 0 keys\n")
    result = run("--dir", "other", "import", cwd=tmp_path, stdin=b"")
    assert (result.returncode, result.stdout) == (0, b"imported 0 keys in 0 batches\n")


def test_cli_failed_export_leaves_the_old_file_and_no_temporary(
    store: KvStore, tmp_path: Path
) -> None:
    fill(store, {f"k{i}": "v" for i in range(10)})
    real_get = store.get

    def failing_get(key: Key) -> Value | None:
        if key == "k5":
            raise OSError(5, "Input/output error")
        return real_get(key)

    store.get = failing_get  # type: ignore[method-assign]
    out = tmp_path / "out" / "dump.jsonl"
    out.parent.mkdir()
    out.write_bytes(b"previous export\n")
    with pytest.raises(OSError, match="Input/output error"):
        transfer._export_to_file(store, str(out), None)
    assert out.read_bytes() == b"previous export\n"
    assert [p.name for p in out.parent.iterdir()] == ["dump.jsonl"]


def test_cli_malformed_input_is_one_line_on_stderr(tmp_path: Path) -> None:
    source = b"".join(lines_of(good_line(0), good_line(1))) + b'{"k": "x", "v": {"b64": "!"}}\n'
    result = run("--dir", "new", "import", "--batch", "1", cwd=tmp_path, stdin=source)
    assert result.returncode == 5
    assert result.stdout == b""
    stderr = assert_one_line_error(result, "kvs: import: line 3: ", "bad base64")
    assert stderr.rstrip().endswith("2 keys of lines 1-2 were imported, nothing after line 2")
    with KvStore.open(str(tmp_path / "new")) as new:
        assert len(new) == 2


@pytest.mark.parametrize(
    ("stdin", "fragment"),
    [
        (b"not json\n", "line 1: not valid JSON"),
        (b'{"k": "a", "v": "b"}\n\n{"k": 1, "v": "b"}\n', 'line 3: "k" must be'),
        (b'{"k": "a", "v": "b"}\n\xff\xfe\n', "line 2: not UTF-8"),
        (b'{"k": "a", "v": "b", "ttl_ms": -1}\n', 'line 1: "ttl_ms" must be'),
    ],
)
def test_cli_every_bad_line_is_one_clear_line(tmp_path: Path, stdin: bytes, fragment: str) -> None:
    result = run("import", cwd=tmp_path, stdin=stdin)
    assert result.returncode == 5
    assert_one_line_error(result, fragment)


@pytest.mark.parametrize("batch", ["0", "-1", "x", ""])
def test_cli_bad_batch_is_a_usage_error(tmp_path: Path, batch: str) -> None:
    result = run("import", "--batch", batch, cwd=tmp_path, stdin=b"")
    assert result.returncode == 2
    assert b"--batch" in result.stderr and b"Traceback" not in result.stderr


def test_cli_missing_input_file(tmp_path: Path) -> None:
    result = run("import", "--input", "nowhere.jsonl", cwd=tmp_path)
    assert result.returncode == 5
    assert_one_line_error(result, "No such file or directory", "nowhere.jsonl")


def test_cli_export_of_a_directory_without_a_store_fails_and_creates_nothing(
    tmp_path: Path,
) -> None:
    """A typo in --dir used to export 0 keys, exit 0, and leave a new store behind (so that
    ``kvs --dir typo export | kvs --dir new import`` "worked" and moved nothing)."""
    result = run("--dir", "typo", "export", cwd=tmp_path)
    assert result.returncode == 5
    assert_one_line_error(result, "holds no store")
    assert not (tmp_path / "typo").exists()
    (tmp_path / "bare").mkdir()
    for args, status, out in (
        (("get", "k"), 0, b"Key not found\n"),
        (("rm", "k"), 1, b"Key not found\n"),
        (("compact",), 5, b""),
    ):
        result = run("--dir", "bare", *args, cwd=tmp_path)
        assert (result.returncode, result.stdout) == (status, out), args
    assert list((tmp_path / "bare").iterdir()) == [], "reading created no files"


def test_cli_export_through_a_symlink_and_into_a_fifo_keeps_the_nodes(tmp_path: Path) -> None:
    """Export renamed its temporary file over the path given: a symlink became a regular file
    (its target never written), a FIFO too (its reader hung), and ``-o /dev/stdout`` as
    root replaced the device node for the whole machine."""
    with KvStore.open(str(tmp_path / "s")) as store:
        store.set("k", "v")
    real = tmp_path / "real.jsonl"
    real.write_bytes(b"old")
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    result = run("--dir", "s", "export", "-o", str(link), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and b'"k"' in real.read_bytes()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    result = run("--dir", "s", "export", "-o", str(fifo), cwd=tmp_path)
    out, _ = reader.communicate(timeout=30)
    assert result.returncode == 0, result.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and b'"k"' in out


def test_cli_unwritable_output(tmp_path: Path) -> None:
    KvStore.open(str(tmp_path)).close()
    result = run("export", "-o", str(tmp_path / "no" / "such" / "dir" / "x"), cwd=tmp_path)
    assert result.returncode == 5
    assert_one_line_error(result, "No such file or directory")


def test_cli_export_into_a_closed_pipe(tmp_path: Path) -> None:
    with KvStore.open(str(tmp_path / "old")) as old:
        old.update({f"key{i:05d}": "v" * 200 for i in range(3000)})  # far beyond a pipe buffer
    process = subprocess.Popen(
        [*KVS, "--dir", "old", "export"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.readline()
    process.stdout.close()  # like `kvs export | head -1`
    stderr = process.stderr.read().decode()
    process.wait(timeout=60)
    assert first.startswith(b'{"k": "key00000"')
    assert process.returncode == 5
    assert stderr == "kvs: export: standard output was closed before the export finished\n"


def test_cli_store_locked_by_another_process(tmp_path: Path) -> None:
    with KvStore.open(str(tmp_path / "busy")):
        result = run("--dir", "busy", "export", cwd=tmp_path)
    assert result.returncode == 3
    assert_one_line_error(result, "locked")


# -- progress ---------------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_progress_bar_unless_on_a_terminal() -> None:
    assert Progress.on_terminal("export", 10, io.StringIO()) is None
    assert Progress.on_terminal("export", 10, FakeTerminal()) is not None


def test_progress_bar_draws_and_ends_its_line(store: KvStore) -> None:
    fill(store, {f"k{i}": "v" for i in range(50)})
    screen = FakeTerminal()
    progress = Progress("export", len(store), screen, interval=0)
    export_store(store, io.BytesIO(), progress)
    progress.close()
    text = screen.getvalue()
    assert text.startswith("\rexport [") and text.endswith("\n")
    assert "100%" in text and "50 keys" in text
    screen = FakeTerminal()
    unknown = Progress("import", None, screen, interval=0)
    unknown.update(10, 3)
    unknown.close()
    assert "import 3 keys" in screen.getvalue()


def test_cli_progress_on_a_terminal_and_clean_data_on_stdout(tmp_path: Path) -> None:
    with KvStore.open(str(tmp_path / "old")) as old:
        old.update({f"key{i:05d}": "v" for i in range(2000)})
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run(
            [*KVS, "--dir", "old", "export", "-o", "dump.jsonl"],
            cwd=tmp_path,
            stderr=terminal,
            stdout=subprocess.PIPE,
            timeout=60,
        )
        os.close(terminal)
        terminal = -1
        drawn = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    assert result.returncode == 0
    text = drawn.decode()
    assert "\rexport [" in text and "100%" in text and "2,000 keys" in text
    assert text.rstrip().endswith("exported 2000 keys")
    assert len((tmp_path / "dump.jsonl").read_bytes().splitlines()) == 2000


# -- other engines ---------------------------------------------------------------------------


def require_redis_server() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server")


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A throw-away redis-server (no persistence) on a free port."""
    require_redis_server()
    server = RedisServer(tmp_path / "redis-server", free_port())
    try:
        server.start()
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_cluster_url(tmp_path: Path) -> Iterator[str]:
    """A one-node Redis Cluster that owns all 16,384 slots (cross-slot rules apply as on a
    real one)."""
    if not engine_available("redis"):
        pytest.skip("engine 'redis' is not registered yet")
    require_redis_server()
    cluster = Cluster(tmp_path / "redis-cluster", masters=1)
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.stop()


@pytest.mark.parametrize("engine", ["memory", "sqlite", "redis"])
def test_migration_through_another_engine(
    tmp_path: Path, engine: str, request: pytest.FixtureRequest
) -> None:
    if not engine_available(engine):
        pytest.skip(f"engine {engine!r} is not registered yet")
    location = request.getfixturevalue("redis_url") if engine == "redis" else str(tmp_path / engine)
    with KvStore.open(str(tmp_path / "old")) as old:
        fill(old, SAMPLE)
        old.set("expiring", "soon", ttl=600)
        dump = export_bytes(old)
    with KvStore.open(location, engine=engine) as middle:
        import_store(middle, io.BytesIO(dump), batch_size=4)
        assert contents(middle) == {**SAMPLE, "expiring": "soon"}
        again = export_bytes(middle)
    with KvStore.open(str(tmp_path / "back")) as back:
        import_store(back, io.BytesIO(again))
        assert contents(back) == {**SAMPLE, "expiring": "soon"}
        assert 590 <= (back.ttl("expiring") or 0) <= 600
    # the same lines in the same order; only the remaining TTL has moved on
    assert [item[:2] for item in decoded(again)] == [item[:2] for item in decoded(dump)]


def test_cli_migration_to_sqlite(tmp_path: Path) -> None:
    if not cli_has_engine_option():
        pytest.skip("kvs has no --engine option yet")
    if not engine_available("sqlite"):
        pytest.skip("engine 'sqlite' is not registered yet")
    with KvStore.open(str(tmp_path / "old")) as old:
        fill(old, SAMPLE)
    exported = run("--dir", "old", "export", cwd=tmp_path)
    assert exported.returncode == 0
    result = run(
        "--dir", "new", "--engine", "sqlite", "import", cwd=tmp_path, stdin=exported.stdout
    )
    assert result.returncode == 0, result.stderr
    back = run("--dir", "new", "--engine", "sqlite", "export", cwd=tmp_path)
    assert back.stdout == exported.stdout


def test_cli_unknown_engine_is_a_clear_error(tmp_path: Path) -> None:
    if not cli_has_engine_option():
        pytest.skip("kvs has no --engine option yet")
    for command in ("export", "import"):
        result = run("--engine", "nope", command, cwd=tmp_path, stdin=b"")
        stderr = result.stderr.decode()
        assert result.returncode == 2  # a usage error: usage, then one line naming the engine
        assert "Traceback" not in stderr
        assert "'nope'" in stderr.strip().splitlines()[-1]
        assert not list(tmp_path.iterdir())  # and nothing was created


def test_cli_import_into_a_cluster_with_the_default_batch(
    tmp_path: Path, redis_cluster_url: str
) -> None:
    """A batch's keys fall in many hash slots; import writes one transaction per slot (the
    3-master cluster tests are in tests/engines/test_redis_cluster.py)."""
    dump = b"".join(lines_of(*(good_line(i) for i in range(30))))
    result = run(
        "--dir", redis_cluster_url, "--engine", "redis", "import", cwd=tmp_path, stdin=dump
    )  # fmt: skip
    assert result.stdout == b"imported 30 keys in 1 batch\n", result.stderr
    exported = run("--dir", redis_cluster_url, "--engine", "redis", "export", cwd=tmp_path)
    assert exported.stdout == dump
    with KvStore.open(redis_cluster_url, engine="redis") as cluster:
        result = import_store(cluster, io.BytesIO(dump), batch_size=10)
        assert (result.keys, result.batches) == (30, 3)
        assert len(cluster) == 30


def test_a_ttl_longer_than_the_format_takes_is_exported_as_the_longest(tmp_path: Path) -> None:
    """Export wrote such a ttl_ms as it was, and import then refused the file."""
    import io

    from kvs.cli.transfer import MAX_TTL_MS, export_store, import_store

    with KvStore.open(str(tmp_path / "old")) as old:
        old.set("forever-ish", "v", ttl=1e13)
        out = io.BytesIO()
        assert export_store(old, out, None) == 1
    assert f'"ttl_ms": {MAX_TTL_MS}'.encode() in out.getvalue()
    with KvStore.open(str(tmp_path / "new"), engine="sqlite") as new:
        import_store(new, io.BytesIO(out.getvalue()))
        assert new.get("forever-ish") == "v"
        assert (new.ttl("forever-ish") or 0) > 1e12
