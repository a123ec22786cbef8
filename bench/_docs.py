"""The one place the benchmark scripts write their results into docs/benchmarks.md.

Each script owns a section between two markers (``<!-- NAME-bench:start -->`` and
``<!-- NAME-bench:end -->``); ``write_section`` replaces what is between them and leaves the
rest of the file alone.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCS_PATH = REPO_ROOT / "docs" / "benchmarks.md"


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of a script that records its table here: --write-docs, --quick, --tmp-dir."""
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--quick", action="store_true", help="small counts: a ~30 s smoke run")
    parser.add_argument("--tmp-dir", help="where the stores go (default: the system temp dir)")


def write_section(
    start: str,
    end: str,
    section: str,
    *,
    heading: str = "",
    new_file: str = "# Benchmarks\n",
    path: Path = DOCS_PATH,
) -> None:
    """Replace the text between the markers ``start`` and ``end`` in ``path`` with ``section``
    (the markers stay). Without both markers the section is appended to the end, under
    ``heading`` if one is given; a missing file is created with ``new_file`` first."""
    block = f"{start}\n{section}{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else new_file
    head, found_start, rest = text.partition(start)
    _, found_end, tail = rest.partition(end)
    if found_start and found_end:
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + (f"{heading}\n\n" if heading else "") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1) -> list[str]:
    """A Markdown table; the first ``text_columns`` columns align left, the rest right."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.ljust(width) if i < text_columns else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rules = [
        ":" + "-" * (width + 1) if i < text_columns else "-" * (width + 1) + ":"
        for i, width in enumerate(widths)
    ]
    return [line(header), "|" + "|".join(rules) + "|", *(line(row) for row in rows)]


def run_stamp() -> list[str]:
    """The date, the commit and the machine: the first lines of every benchmark section."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"- date: {now}; kvs commit: {commit}",
        f"- machine: nproc {cpus}, {platform.machine()}, {platform.platform(terse=True)}",
    ]
