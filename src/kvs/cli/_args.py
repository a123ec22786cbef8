"""What the kvs commands share in parsing their arguments."""

from __future__ import annotations

import argparse
import os
import sys

EXIT_USAGE = 2


class UsageParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are usage on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    """An argparse ``type``: a whole number of at least 1."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def key_or_value(text: str) -> str | bytes:
    """A KEY or VALUE argument as the store should take it: the ``str`` itself when it is
    valid UTF-8, else the bytes the shell passed (Python decodes such argv bytes to lone
    surrogates, which cannot be encoded back to UTF-8)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return os.fsencode(text)
    return text


def add_set_get_rm(commands: argparse._SubParsersAction[UsageParser], common: UsageParser) -> None:
    """The ``set KEY VALUE``, ``get KEY`` and ``rm KEY`` subcommands, taking ``common``'s
    options on either side of the subcommand."""
    set_cmd = commands.add_parser("set", help="store VALUE under KEY", parents=[common])
    set_cmd.add_argument("key", metavar="KEY")
    set_cmd.add_argument("value", metavar="VALUE")
    get_cmd = commands.add_parser("get", help="print the value of KEY", parents=[common])
    get_cmd.add_argument("key", metavar="KEY")
    rm_cmd = commands.add_parser("rm", help="remove KEY", parents=[common])
    rm_cmd.add_argument("key", metavar="KEY")
