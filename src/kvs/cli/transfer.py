"""``kvs export`` and ``kvs import``: a whole store as JSON lines, for backups and for moving
data between engines (``kvs --dir old export | kvs --dir new --engine sqlite import``).

The format
----------
One line per key, UTF-8, each ending in ``\\n``::

    {"k": "user:1", "v": "Ada"}
    {"k": {"b64": "AP8="}, "v": {"b64": ""}, "ttl_ms": 29981}

* ``"k"`` and ``"v"`` are required. A ``str`` key or value is a JSON string; a ``bytes`` one is
  an object with one field, ``{"b64": "..."}``: standard base64 (RFC 4648 section 4, ``+/``
  alphabet, with ``=`` padding, no line breaks). So each comes back as the type it was set
  with. An empty ``str`` is ``""``; empty bytes are ``{"b64": ""}``.
* ``"ttl_ms"``, optional: the key's remaining time to live in whole milliseconds when it was
  exported (at least 1, at most ``MAX_TTL_MS``, about 285,000 years: a longer one is
  exported as that). Absent (or ``null``) means the key never expires. It is relative:
  the time a file spends between export and import is *not* subtracted, so a key lives
  ``ttl_ms`` after its import.
* No other field is allowed, and no field twice (so a typo such as ``"ttl"`` is an error, not
  a silently dropped expiry).
* Export writes keys in the order of ``KvStore.scan()``: byte order of the UTF-8 / raw bytes.
  It writes ``{"k": ..., "v": ..., "ttl_ms": ...}`` with ``", "`` and ``": "`` separators and
  non-ASCII characters as themselves (not ``\\u`` escapes). Import accepts any JSON
  whitespace, ``\\n`` or ``\\r\\n`` line ends, a last line without a line end, and blank lines
  (skipped); line numbers count every line, blank ones too.
* ``"a"`` and ``{"b64": "YQ=="}`` name the same key (as they do in a store). When a file
  holds a key twice, the later line wins.

Export
------
Streams: for each key of one ``scan()`` it reads the value and TTL and writes its line, so only
one value is in memory at a time (the log engine's scan itself is a list of the keys, which
the engine holds in memory anyway). From the ``redis`` engine it reads through
``RedisStore.items_with_ttl`` instead: ``GET`` and ``PTTL`` of 1000 keys per round trip (per
primary), not two round trips per key, so up to 1000 values are in memory. How consistent is
it?

* ``scan()`` is a snapshot of the *keys* taken when the export starts; each value (and TTL) is
  read afterwards, one by one, so a key written meanwhile may come out newer than the snapshot,
  and a key removed or expired meanwhile is left out.
* Through the ``kvs`` command with the ``kvs`` or ``sqlite`` engine, the exporting process owns
  the store directory (every other opener gets ``StoreLockedError``), so nothing writes
  meanwhile: the export is an exact snapshot, except for keys that expire during it. A store
  shared by threads of one program (the library API), or a ``redis`` server with other
  clients, gives only the per-key consistency above.

``--output FILE`` writes to a temporary file in the same directory (mode 0600), fsyncs it and
renames it over ``FILE`` only once every key is written: a failed export leaves no partial
file. Standard output (``-``, the default) cannot be taken back.

Import
------
Reads line by line and writes ``--batch N`` keys (default 1000, and at most 64 MiB of key and
value bytes) at a time with ``store.write(WriteBatch)``, each batch atomic as the engine makes
it. Keys already in the target store are overwritten; other keys are kept. On a bad line, or a
batch the store refuses, import stops with one line naming the line number: every batch before
it is written, nothing of the batch the bad line is in, nothing after. The message says how
many keys were imported and up to which line, so a rerun can start after it (``tail -n +L``).

Into a Redis Cluster, where a transaction must stay in one hash slot, each batch is written
with ``RedisStore.write_by_slot``: one ``MULTI``/``EXEC`` per hash slot its keys fall in
(pipelined, one round trip per primary). So there a batch is atomic per slot, not as a whole:
when a batch fails, keys of it in other slots may have been written (the message says so).

A progress bar goes to standard error when standard error is a terminal (never into a pipe
or a file). Export's summary goes to standard error (standard output may carry the data);
import's to standard output, like ``kvs compact``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Protocol, runtime_checkable

from kvs.cli._args import positive_int
from kvs.errors import KeyNotFound, KvsError
from kvs.store import Key, KvStore, Value, WriteBatch

DEFAULT_BATCH = 1000
#: A batch is also cut once its keys and values reach this many bytes, far below the log
#: engine's 1 GiB batch limit, so large values cannot make one batch too big to write.
DEFAULT_BATCH_BYTES = 64 * 1024 * 1024
#: Largest ``ttl_ms`` accepted (about 285,000 years): every engine can store it.
MAX_TTL_MS = 2**53 - 1

_FIELDS = frozenset(("k", "v", "ttl_ms"))


class TransferError(KvsError):
    """A line of an import is malformed, or a batch could not be written; or the export's
    output went away. The message is one line and names the input line where there is one."""


class _BinaryWriter(Protocol):
    def write(self, data: bytes, /) -> int: ...


# -- the format ------------------------------------------------------------------------------


def _encode_data(data: Key) -> str | dict[str, str]:
    if isinstance(data, str):
        return data
    return {"b64": base64.b64encode(data).decode("ascii")}


def encode_item(key: Key, value: Value, ttl_ms: int | None = None) -> bytes:
    """One line of the format, ``\\n`` included, as UTF-8 bytes."""
    item: dict[str, Any] = {"k": _encode_data(key), "v": _encode_data(value)}
    if ttl_ms is not None:
        item["ttl_ms"] = ttl_ms
    return json.dumps(item, ensure_ascii=False).encode() + b"\n"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise ValueError(f"field {json.dumps(name)} appears twice")
            seen.add(name)
    return result


def _json_type(data: object) -> str:
    if data is None:
        return "null"
    if isinstance(data, bool):
        return "a boolean"
    if isinstance(data, int | float):
        return "a number"
    if isinstance(data, list):
        return "an array"
    if isinstance(data, dict):
        return "an object"
    return "a string"


def _decode_data(data: object, field: str) -> Key:
    """A ``"k"`` or ``"v"`` field as str or bytes; ``ValueError`` says what is wrong."""
    if isinstance(data, str):
        try:
            data.encode()
        except UnicodeEncodeError as error:
            raise ValueError(
                f'"{field}" holds a lone surrogate (\\u{ord(data[error.start]):04x}), '
                "which is not valid Unicode"
            ) from None
        return data
    if isinstance(data, dict) and data.keys() == {"b64"}:
        encoded = data["b64"]
        if not isinstance(encoded, str):
            raise ValueError(f'"{field}": "b64" must be a string, not {_json_type(encoded)}')
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as error:
            raise ValueError(f'"{field}": bad base64 ({error})') from None
    raise ValueError(
        f'"{field}" must be a JSON string or {{"b64": "..."}}, not {_json_type(data)}'
        + (f" with fields {', '.join(sorted(data))}" if isinstance(data, dict) else "")
    )


def decode_line(line: bytes, lineno: int) -> tuple[Key, Value, int | None] | None:
    """``(key, value, ttl_ms)`` from one line of the format, ``None`` for a blank line.

    Raises ``TransferError("line N: ...")`` for anything else.
    """
    try:
        text = line.decode()
    except UnicodeDecodeError as error:
        raise TransferError(f"line {lineno}: not UTF-8 (at byte {error.start + 1})") from None
    if not text.strip():
        return None
    try:
        item = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as error:
        raise TransferError(
            f"line {lineno}: not valid JSON: {error.msg} at column {error.colno}"
        ) from None
    except ValueError as error:  # a duplicate field (_no_duplicates), an int of 4300+ digits
        raise TransferError(f"line {lineno}: {error}") from None
    except RecursionError:
        raise TransferError(f"line {lineno}: JSON nested too deeply") from None
    if not isinstance(item, dict):
        raise TransferError(
            f'line {lineno}: expected an object {{"k": ..., "v": ...}}, not {_json_type(item)}'
        )
    unknown = item.keys() - _FIELDS
    if unknown:
        names = ", ".join(json.dumps(name) for name in sorted(unknown))
        raise TransferError(f'line {lineno}: unknown field {names} (allowed: "k", "v", "ttl_ms")')
    for required in ("k", "v"):
        if required not in item:
            raise TransferError(f'line {lineno}: missing field "{required}"')
    try:
        key = _decode_data(item["k"], "k")
        value = _decode_data(item["v"], "v")
    except ValueError as error:
        raise TransferError(f"line {lineno}: {error}") from None
    ttl_ms = item.get("ttl_ms")
    if ttl_ms is not None and (
        not isinstance(ttl_ms, int) or isinstance(ttl_ms, bool) or not 1 <= ttl_ms <= MAX_TTL_MS
    ):
        raise TransferError(
            f'line {lineno}: "ttl_ms" must be a whole number of milliseconds from 1 to '
            f"{MAX_TTL_MS}, or absent, not {json.dumps(ttl_ms)}"
        )
    return key, value, ttl_ms


# -- export and import ----------------------------------------------------------------------


def export_store(store: KvStore, out: _BinaryWriter, progress: Progress | None = None) -> int:
    """Write every key of ``store`` to ``out`` in the format, in scan order; return how many.

    Streams: one value is in memory at a time (from the ``redis`` engine, one chunk of 1000).
    Keys removed or expired after the scan started are left out (see the module docstring on
    consistency).
    """
    count = 0
    for key, value, ttl in _items_with_ttl(store):
        # Clamped to what import takes: a longer TTL (which every engine stores) is
        # ~285,000 years either way.
        ttl_ms = None if ttl is None else min(MAX_TTL_MS, max(1, round(ttl * 1000)))
        out.write(encode_item(key, value, ttl_ms))
        count += 1
        if progress is not None:
            progress.update(count, count)
    return count


@runtime_checkable
class _BulkReader(Protocol):
    """A store that reads keys, values and ttls in bulk (the redis engine: a few keys per
    round trip instead of two round trips per key)."""

    def items_with_ttl(self) -> Iterator[tuple[Key, Value, float | None]]: ...


@runtime_checkable
class _SlotWriter(Protocol):
    """A store that may be a Redis Cluster, where one transaction holds one hash slot."""

    @property
    def cluster(self) -> bool: ...

    def write_by_slot(self, batch: WriteBatch) -> int: ...


def _items_with_ttl(store: KvStore) -> Iterator[tuple[Key, Value, float | None]]:
    """Every key of ``store`` in scan order with its value and ttl; keys removed or expired
    after the scan are left out."""
    if isinstance(store, _BulkReader):
        yield from store.items_with_ttl()
        return
    for key in store.scan():
        value = store.get(key)
        if value is None:
            continue  # removed or expired since the scan
        try:
            ttl = store.ttl(key)
        except KeyNotFound:
            continue
        yield key, value, ttl


@dataclass(frozen=True)
class ImportResult:
    """What ``import_store`` wrote: ``keys`` counts the lines whose key was written (a key
    given twice counts twice), ``lines`` every line read, blank ones included."""

    keys: int
    batches: int
    lines: int


def import_store(
    store: KvStore,
    lines: Iterable[bytes],
    *,
    batch_size: int = DEFAULT_BATCH,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    progress: Progress | None = None,
) -> ImportResult:
    """Read the format from ``lines`` (a binary file, or any iterable of lines) and write it
    into ``store`` in atomic batches of ``batch_size`` keys (fewer once a batch holds
    ``batch_bytes`` of keys and values); into a Redis Cluster, each batch atomic per hash
    slot (see the module docstring).

    On a bad line or a failed batch write, raises ``TransferError`` naming the line; every
    batch before it is written, nothing of its own batch or after it.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    # Into a cluster, a batch is written as one transaction per hash slot (its keys almost
    # never share one, and a transaction spanning slots is refused).
    write: Callable[[WriteBatch], object] = store.write
    by_slot = False
    if isinstance(store, _SlotWriter) and store.cluster:
        write, by_slot = store.write_by_slot, True
    keys = batches = 0
    committed_line = 0  # the last line of the last batch written
    batch = WriteBatch()
    pending_bytes = 0
    first_pending = 0
    lineno = 0
    bytes_read = 0

    def where() -> str:
        if keys == 0:
            return "nothing was imported"
        return (
            f"{keys} key{'s' if keys != 1 else ''} of lines 1-{committed_line} were imported, "
            f"nothing after line {committed_line}"
        )

    def flush() -> None:
        nonlocal keys, batches, committed_line, batch, pending_bytes
        try:
            write(batch)
        except (KvsError, OSError, ValueError, TypeError) as error:
            partly = (
                " (on a cluster each hash slot of a batch is written on its own: keys of "
                "this batch in other slots may have been written)"
                if by_slot
                else ""
            )
            raise TransferError(
                f"writing the batch of lines {first_pending}-{lineno} failed: "
                f"{str(error) or type(error).__name__}; {where()}{partly}"
            ) from error
        keys += len(batch)
        batches += 1
        committed_line = lineno
        batch = WriteBatch()
        pending_bytes = 0

    for lineno, line in enumerate(lines, 1):  # flush() and where() read lineno
        bytes_read += len(line)
        try:
            item = decode_line(line, lineno)
        except TransferError as error:
            raise TransferError(f"{error}; {where()}") from None
        if item is None:
            continue
        key, value, ttl_ms = item
        if not batch:
            first_pending = lineno
        batch.set(key, value, None if ttl_ms is None else ttl_ms / 1000)
        pending_bytes += len(key) + len(value)
        if len(batch) >= batch_size or pending_bytes >= batch_bytes:
            flush()
        if progress is not None:
            progress.update(bytes_read, keys + len(batch))
    if batch:
        flush()
    return ImportResult(keys, batches, lineno)


# -- progress --------------------------------------------------------------------------------


class Progress:
    """A one-line progress bar, redrawn at most ten times a second on a terminal.

    ``done`` counts towards ``total`` (keys for export, bytes of input for import); ``keys``
    is shown as well. With no ``total`` (input from a pipe) only the counts and rate are shown.
    """

    WIDTH = 24

    def __init__(
        self, label: str, total: int | None, stream: IO[str], interval: float = 0.1
    ) -> None:
        self.label = label
        self.total = total
        self.stream = stream
        self.interval = interval
        self.started = time.monotonic()
        self._next = self.started
        self._done = 0
        self._keys = 0
        self._drawn = False

    @classmethod
    def on_terminal(
        cls, label: str, total: int | None, stream: IO[str] | None = None
    ) -> Progress | None:
        """A bar on ``stream`` (standard error) if it is a terminal, else ``None``."""
        stream = sys.stderr if stream is None else stream
        try:
            is_tty = stream.isatty()
        except (AttributeError, ValueError, OSError):
            is_tty = False
        return cls(label, total, stream) if is_tty else None

    def update(self, done: int, keys: int) -> None:
        self._done, self._keys = done, keys
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = f"{self._keys / elapsed:,.0f} keys/s"
        if self.total:
            fraction = min(1.0, self._done / self.total)
            filled = int(fraction * self.WIDTH)
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            text = f"{self.label} [{bar}] {fraction:4.0%}  {self._keys:,} keys  {rate}"
        else:
            text = f"{self.label} {self._keys:,} keys  {rate}"
        self.stream.write(f"\r{text}\x1b[K")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Draw the final state and end the line (only if anything was drawn or counted)."""
        if self._drawn or self._keys:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()


# -- the command line ------------------------------------------------------------------------


def add_parsers(commands: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    """The ``export`` and ``import`` subcommands, taking ``common``'s options (``--dir``, and
    the engine options) on either side of the subcommand."""
    export_cmd = commands.add_parser(
        "export", help="write every key as JSON lines (see docs/scaling.md)", parents=[common]
    )
    export_cmd.add_argument(
        "-o",
        "--output",
        default="-",
        metavar="FILE",
        help="where to write (default: -, standard output); a file is replaced only on success",
    )
    import_cmd = commands.add_parser(
        "import", help="read JSON lines written by export into the store", parents=[common]
    )
    import_cmd.add_argument(
        "-i",
        "--input",
        default="-",
        metavar="FILE",
        help="where to read (default: -, standard input)",
    )
    import_cmd.add_argument(
        "--batch",
        type=positive_int,
        default=DEFAULT_BATCH,
        metavar="N",
        help=f"keys per atomic batch (default {DEFAULT_BATCH}; on a Redis Cluster atomic per hash "
        "slot)",
    )


def run(store: KvStore, args: argparse.Namespace) -> int:
    """Carry out ``kvs export`` or ``kvs import`` on the open ``store``; exit status 0.

    Errors are raised as ``KvsError`` / ``OSError`` with a one-line message, which the ``kvs``
    command prints as ``kvs: <command>: <message>``.
    """
    try:
        if args.command == "export":
            _run_export(store, args.output)
        else:
            _run_import(store, args.input, args.batch)
    except TransferError as error:
        raise TransferError(f"{args.command}: {error}") from None
    return 0


def _run_export(store: KvStore, output: str) -> None:
    to_stdout = output == "-"
    progress = None
    if not (to_stdout and sys.stdout.isatty()):  # a bar would garble data on the terminal
        progress = Progress.on_terminal("export", len(store))
    try:
        if to_stdout:
            out = sys.stdout.buffer
            sys.stdout.flush()
            try:
                count = export_store(store, out, progress)
                out.flush()
            except BrokenPipeError:
                _detach_stdout()
                raise TransferError(
                    "standard output was closed before the export finished"
                ) from None
        else:
            count = _export_to_file(store, output, progress)
    finally:
        if progress is not None:
            progress.close()
    print(f"exported {count} key{'s' if count != 1 else ''}", file=sys.stderr)


def _export_to_file(store: KvStore, output: str, progress: Progress | None) -> int:
    """Export into a temporary file next to ``output``, renamed over it only when complete.

    A symlink is followed (the file it points to is replaced, not the link); a target that is
    not a regular file (a FIFO, ``/dev/stdout``, a device) is written in place: renaming over
    it would replace the node itself.
    """
    target = os.path.realpath(output)
    try:
        special = not stat.S_ISREG(os.stat(target).st_mode)
    except FileNotFoundError:
        special = False
    if special:
        with open(target, "wb") as out:
            count = export_store(store, out, progress)
            out.flush()
        return count
    fd, temporary = tempfile.mkstemp(
        prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=os.path.dirname(target)
    )
    try:
        with os.fdopen(fd, "wb") as out:
            count = export_store(store, out, progress)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return count


def _detach_stdout() -> None:
    """Point standard output at /dev/null, so that the interpreter's final flush of a closed
    pipe does not print a second, confusing error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file descriptor (an in-process test): nothing to do
        pass


def _run_import(store: KvStore, input_path: str, batch_size: int) -> None:
    source = sys.stdin.buffer if input_path == "-" else open(input_path, "rb")  # noqa: SIM115
    try:
        total = None
        try:
            info = os.fstat(source.fileno())
            if stat.S_ISREG(info.st_mode):
                total = info.st_size - source.tell()
        except (OSError, ValueError):
            pass
        progress = Progress.on_terminal("import", total)
        try:
            result = import_store(store, source, batch_size=batch_size, progress=progress)
        finally:
            if progress is not None:
                progress.close()
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    print(
        f"imported {result.keys} key{'s' if result.keys != 1 else ''} "
        f"in {result.batches} batch{'es' if result.batches != 1 else ''}"
    )
