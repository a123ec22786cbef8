"""The ``kvs-client`` command: one operation on a running ``kvs-server`` per run.

    kvs-client set KEY VALUE [--addr IP:PORT]   store VALUE under KEY; prints nothing
    kvs-client get KEY [--addr IP:PORT]         prints the value, or "Key not found" (exit 0)
    kvs-client rm KEY [--addr IP:PORT]          prints nothing; "Key not found" on stderr and
                                                exit 1 if absent
    kvs-client -V | --version

``--addr`` (default ``127.0.0.1:4000``; ``[::1]:4000`` for IPv6) and ``--password`` go before
or after the subcommand. The password may come from the ``KVS_PASSWORD`` environment variable
instead, which keeps it out of the process list. A key or value starting with ``-`` goes after
``--``: ``kvs-client get -- -key``. Keys and values are sent as the bytes the shell passed.

Every error is one line on stderr and a non-zero exit status: see the ``EXIT_*`` constants.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
from collections.abc import Sequence

from kvs import __version__
from kvs.cli._args import UsageParser, add_set_get_rm
from kvs.client import (
    ConnectionFailed,
    InvalidAddress,
    KvsClient,
    ReplyProtocolError,
    ServerError,
    parse_addr,
)
from kvs.errors import KeyNotFound, KvsError

#: Exit status by outcome.
EXIT_OK = 0
EXIT_NOT_FOUND = 1  # rm of an absent key
EXIT_USAGE = 2  # bad arguments, including an --addr that does not parse
EXIT_UNAVAILABLE = 3  # no connection to the server, it broke / timed out, or sent nonsense
EXIT_SERVER_ERROR = 4  # the server answered with an error (e.g. a wrong or missing password)
EXIT_OUTPUT = 5  # the value could not be written out (a full disk, a closed stdout)

DEFAULT_ADDR = "127.0.0.1:4000"


def build_parser() -> argparse.ArgumentParser:
    # Options in a parent shared by the main parser and every subcommand, so they are taken
    # on either side of it; SUPPRESS so that one given before is not reset by the default of
    # the subcommand's copy (defaults are applied in main).
    common = UsageParser(add_help=False)
    common.add_argument(
        "--addr",
        default=argparse.SUPPRESS,
        metavar="IP:PORT",
        help=f"server address (default: {DEFAULT_ADDR}; IPv6 as [::1]:4000)",
    )
    common.add_argument(
        "--password",
        default=argparse.SUPPRESS,
        metavar="PASSWORD",
        help="AUTH with this password first (default: $KVS_PASSWORD)",
    )
    parser = UsageParser(
        prog="kvs-client",
        description="Talk to a kvs-server. One operation per run.",
        parents=[common],
    )
    parser.add_argument("-V", "--version", action="version", version=f"kvs-client {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=UsageParser)
    commands.required = True
    add_set_get_rm(commands, common)
    return parser


def _fail(message: str, status: int) -> int:
    print(f"kvs-client: {message}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    addr: str = getattr(args, "addr", DEFAULT_ADDR)
    password: str | None = getattr(args, "password", None) or os.environ.get("KVS_PASSWORD")
    try:
        # Checked before any connection is tried: a typo is reported as a typo.
        host, port = parse_addr(addr)
    except InvalidAddress as error:
        return _fail(str(error), EXIT_USAGE)
    # Arguments as the shell passed them: fsencode undoes Python's decoding of argv, so
    # bytes that are not valid UTF-8 arrive at the server unchanged.
    key = os.fsencode(args.key)
    try:
        with KvsClient(host, port, password=password or None) as client:
            if args.command == "set":
                client.set(key, os.fsencode(args.value))
            elif args.command == "get":
                value = client.get(key)
                if value is None:
                    print("Key not found")
                else:
                    if sys.stdout is None:  # started with stdout closed (>&-)
                        raise OSError(errno.EBADF, "standard output is closed")
                    sys.stdout.flush()
                    sys.stdout.buffer.write(value + b"\n")
                    sys.stdout.buffer.flush()
            elif args.command == "rm":
                try:
                    client.remove(key)
                except KeyNotFound:
                    print("Key not found", file=sys.stderr)
                    return EXIT_NOT_FOUND
    except (ConnectionFailed, ReplyProtocolError) as error:  # the connection is unusable
        return _fail(str(error), EXIT_UNAVAILABLE)
    except ServerError as error:
        return _fail(f"server error: {error}", EXIT_SERVER_ERROR)
    except KvsError as error:
        return _fail(str(error), EXIT_SERVER_ERROR)
    except BrokenPipeError:
        # stdout closed early (| head): nothing left to say; keep Python from complaining.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as error:  # writing the output failed (the client's own errors are above)
        _silence_stdout()
        return _fail(f"cannot write the output: {error.strerror or error}", EXIT_OUTPUT)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    return EXIT_OK


def _silence_stdout() -> None:
    """Drop what is still buffered for stdout, so that the interpreter's final flush does not
    fail a second time with a traceback."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
