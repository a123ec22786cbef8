"""The ``kvs`` command: one store operation per run.

    kvs [--dir PATH] set KEY VALUE     store VALUE under KEY; prints nothing
    kvs [--dir PATH] get KEY           prints the value, or "Key not found" (exit 0 either way)
    kvs [--dir PATH] rm KEY            prints nothing; "Key not found" and exit 1 if absent
    kvs [--dir PATH] compact           reclaim the space of overwritten and removed records
    kvs [--dir PATH] check [--fix]     verify every record; repair only with --fix
    kvs [--dir PATH] export [-o FILE]  every key as JSON lines (kvs.cli.transfer)
    kvs [--dir PATH] import [-i FILE]  read export's JSON lines into the store
    kvs -V | --version

Every command takes ``--engine NAME`` (any of ``kvs.engines.available()``). Without it, the
engine is the one the directory already holds (``directory_engine``), else ``kvs``; naming
another engine than the one that holds the directory is an error.

The store is the current directory unless ``--dir`` (or the ``KVS_DIR`` environment variable)
names another. Every error is one line on stderr and a non-zero exit status (``EXIT_CODES``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from kvs import __version__, engines
from kvs.cli import transfer
from kvs.cli._args import UsageParser, add_set_get_rm, key_or_value
from kvs.errors import (
    CorruptionError,
    KeyNotFound,
    KvsError,
    StoreLockedError,
)
from kvs.log import filenames
from kvs.store import KvStore

#: Exit status by outcome; documented in the README.
EXIT_OK = 0
EXIT_NOT_FOUND = 1  # rm of an absent key; check found problems it did not fix
EXIT_USAGE = 2
EXIT_LOCKED = 3
EXIT_CORRUPT = 4
EXIT_ERROR = 5  # any other failure: I/O, permissions, a read-only store


def build_parser() -> argparse.ArgumentParser:
    common = UsageParser(add_help=False)
    common.add_argument(
        "--dir",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="store directory (default: $KVS_DIR, else the current directory)",
    )
    common.add_argument(
        "--engine",
        default=argparse.SUPPRESS,
        choices=engines.available(),
        metavar="NAME",
        help=f"storage engine, one of {', '.join(engines.available())} (default: the one the "
        "directory holds, else kvs)",
    )
    parser = UsageParser(
        prog="kvs",
        description="A persistent key-value store. One operation per run.",
        parents=[common],
    )
    parser.add_argument("-V", "--version", action="version", version=f"kvs {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=UsageParser)
    commands.required = True
    add_set_get_rm(commands, common)
    commands.add_parser("compact", help="reclaim space now", parents=[common])
    check_cmd = commands.add_parser(
        "check", help="verify every record; change nothing unless --fix", parents=[common]
    )
    check_cmd.add_argument(
        "--fix", action="store_true", help="repair what was found (asks first; keeps backups)"
    )
    check_cmd.add_argument("--yes", action="store_true", help="with --fix: do not ask")
    transfer.add_parsers(commands, common)
    return parser


def _store_dir(args: argparse.Namespace) -> str:
    return str(getattr(args, "dir", None) or os.environ.get("KVS_DIR") or os.getcwd())


def directory_engine(directory: str) -> str | None:
    """The engine whose data ``directory`` holds (``filenames.engine_holding``); ``None`` for
    none (or no such directory)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return None

    def read_engine_file() -> bytes:
        try:
            with open(filenames.engine_file(directory), "rb") as f:
                return f.read()
        except OSError:
            return b""

    return filenames.engine_holding(names, read_engine_file)


def _engine(args: argparse.Namespace, directory: str, holds: str | None) -> str:
    """``--engine``, checked against the engine whose data the directory ``holds``; else
    that data's engine."""
    requested: str | None = getattr(args, "engine", None)
    if requested is not None and holds is not None and holds != requested:
        # Another engine would show an empty store and write beside the data: refuse.
        raise KvsError(
            f"{directory} holds data of the {holds!r} engine; it cannot be opened with "
            f"{requested!r} (use --engine {holds})"
        )
    if requested is None and holds is None and directory.split("://")[0] in _REDIS_SCHEMES:
        return "redis"  # --dir redis://host:port/0 names a server, not a directory
    return requested or holds or engines.DEFAULT_ENGINE


_REDIS_SCHEMES = ("redis", "rediss", "redis+cluster")
#: Commands that only read: on a directory that holds no store they create none.
_READING = ("get", "rm", "export", "compact")


def _fail(message: str, status: int) -> int:
    print(f"kvs: {message}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="kvs: %(levelname)s: %(message)s", level=logging.WARNING)
    directory = _store_dir(args)
    try:
        holds = directory_engine(directory)
        engine = _engine(args, directory, holds)
        if args.command == "check":
            if engine != "kvs":
                return _fail(f"check reads the kvs engine's files; {directory} is {engine}", 2)
            return _check(directory, args.fix, args.yes)
        if engine == "memory":
            return _fail(
                "the memory engine keeps nothing once this command exits; use it from a "
                "program or through kvs-server",
                EXIT_USAGE,
            )
        if args.command in _READING and engine in ("kvs", "sqlite") and holds is None:
            # Nothing to read, and no files made for it (a typo in --dir would otherwise
            # leave a new store behind, and pin the directory to an engine).
            if args.command == "get":
                print("Key not found")
                return EXIT_OK
            if args.command == "rm":
                print("Key not found")
                return EXIT_NOT_FOUND
            return _fail(f"{directory} holds no store", EXIT_ERROR)
        with KvStore.open(directory, engine=engine) as store:
            if args.command in ("export", "import"):
                return transfer.run(store, args)
            key = key_or_value(args.key) if args.command in ("set", "get", "rm") else ""
            if args.command == "set":
                store.set(key, key_or_value(args.value))
            elif args.command == "get":
                value = store.get(key)
                if value is None:
                    print("Key not found")
                else:
                    # Bytes as stored, and a str as UTF-8 whatever stdout's encoding
                    # (kvs stores str as UTF-8; an ASCII locale must not end in a traceback).
                    raw = value if isinstance(value, bytes) else value.encode()
                    sys.stdout.flush()
                    sys.stdout.buffer.write(raw + b"\n")
                    sys.stdout.flush()
            elif args.command == "rm":
                try:
                    store.remove(key)
                except KeyNotFound:
                    print("Key not found")
                    return EXIT_NOT_FOUND
            elif args.command == "compact":
                before = store.stats()
                store.compact()
                after = store.stats()
                summary = f"compacted: {after.get('keys', len(store))} keys"
                if "live_bytes" in after and "stale_bytes" in before:  # not every engine
                    reclaimed = int(before["stale_bytes"]) - int(after.get("stale_bytes", 0))
                    summary += f", {after['live_bytes']} live bytes, {reclaimed} bytes reclaimed"
                print(summary)
    except StoreLockedError as error:
        return _fail(str(error), EXIT_LOCKED)
    except CorruptionError as error:
        return _fail(f"{error}; run 'kvs check' for details", EXIT_CORRUPT)
    except KvsError as error:
        return _fail(str(error), EXIT_ERROR)
    except OSError as error:
        where = f": {error.filename}" if error.filename else ""
        return _fail(f"{error.strerror or error}{where}", EXIT_ERROR)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    return EXIT_OK


def _check(directory: str, fix: bool, yes: bool) -> int:
    from kvs.log import check

    # One lock from the check to the repair: nothing can write between the report, the
    # question and the fix.
    with check.StoreCheck(directory) as store_check:
        report = store_check.check()
        for problem in report.problems:
            print(problem)
        print(
            f"checked {report.files} data files, {report.records} records: "
            f"{len(report.problems)} problem{'s' if len(report.problems) != 1 else ''}"
        )
        if not report.problems:
            return EXIT_OK
        if not fix:
            return EXIT_NOT_FOUND
        damaged = {p.path for p in report.problems if p.kind == "corruption"}
        if not yes:
            if not sys.stdin.isatty():
                return _fail(
                    "--fix needs confirmation: run it on a terminal, or add --yes", EXIT_USAGE
                )
            warning = (
                f" The damaged bytes of {len(damaged)} file(s) will be cut out; the records in "
                "them are lost, and a lost remove brings back the key's older value (backups "
                "are kept)."
                if damaged
                else ""
            )
            sys.stdout.flush()
            answer = input(f"Repair {len(report.problems)} problem(s)?{warning} [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                return _fail("nothing changed", EXIT_NOT_FOUND)
        for line in store_check.repair(report):
            print(line)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
