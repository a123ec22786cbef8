"""Every name the log engine gives a file, made and parsed here and nowhere else.

A store directory may be shared with other files (the ``kvs`` command defaults to the current
directory), so every file the engine owns starts with ``kvs``:

=========================  =================================================================
``kvs-<id>.data``          a data file; ``<id>`` is a zero-padded decimal file number
``kvs-<id>.hint``          the hint file of data file ``<id>``
``kvs-<id>.<kind>.tmp``    a data or hint file being written; never trusted, removed on open
``kvs.lock``               the directory lock; holds the owner's pid
``kvs.engine``             written by ``kvs-server``: the engine the directory belongs to
=========================  =================================================================

Anything else in the directory is left alone.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection
from enum import Enum


class FileKind(Enum):
    DATA = "data"
    HINT = "hint"
    TEMP = "tmp"


LOCK_NAME = "kvs.lock"
ENGINE_NAME = "kvs.engine"
_ID_WIDTH = 10
_PATTERN = re.compile(r"^kvs-(\d{10,})\.(data|hint)(\.tmp)?$")


def data_file(directory: str, file_id: int) -> str:
    return os.path.join(directory, f"kvs-{file_id:0{_ID_WIDTH}d}.data")


def hint_file(directory: str, file_id: int) -> str:
    return os.path.join(directory, f"kvs-{file_id:0{_ID_WIDTH}d}.hint")


def temp_file(final_path: str) -> str:
    """The name a file is written under before it is renamed to ``final_path``."""
    return final_path + ".tmp"


def lock_file(directory: str) -> str:
    return os.path.join(directory, LOCK_NAME)


def engine_file(directory: str) -> str:
    return os.path.join(directory, ENGINE_NAME)


#: The sqlite engine's database (``kvs.engines.sqlite``), named here so that every engine can
#: tell whose data a directory holds.
SQLITE_NAME = "kvs.sqlite3"


def engine_holding(names: Collection[str], read_engine_file: Callable[[], bytes]) -> str | None:
    """The engine whose data a directory of these file ``names`` holds: the one ``kvs-server``
    recorded in ``kvs.engine`` (read with ``read_engine_file``), else the one whose files are
    there; ``None`` for neither."""
    if ENGINE_NAME in names:
        recorded = read_engine_file().decode(errors="replace").strip()
        if recorded:
            return recorded
    if any(parse(name) is not None for name in names):
        return "kvs"
    if SQLITE_NAME in names:
        return "sqlite"
    return None


def parse(name: str) -> tuple[FileKind, int] | None:
    """``(kind, file_id)`` for a name this module makes, else ``None`` (lock file included)."""
    match = _PATTERN.match(name)
    if match is None:
        return None
    if match.group(3):
        return FileKind.TEMP, int(match.group(1))
    return FileKind(match.group(2)), int(match.group(1))
