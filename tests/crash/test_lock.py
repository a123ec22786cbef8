"""One process per store directory: the lock on ``kvs.lock``.

A second open fails at once with ``StoreLockedError`` naming the holder's pid (the CLI prints
one line and exits non-zero); the lock survives the holder opening and closing other
descriptors on ``kvs.lock`` and on the data files; a SIGKILLed holder leaves no lock behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvs import KvStore, StoreLockedError

KVS_CLI = Path(sys.executable).with_name("kvs")

HOLDER = r"""
import os, sys
from kvs import KvStore, StoreLockedError
directory = sys.argv[1]
store = KvStore.open(directory)
store.set("held", "by the holder")
print("READY", os.getpid(), flush=True)
for line in sys.stdin:
    command = line.strip()
    if command == "fds":
        # Other descriptors on the lock file and the data files, opened and closed.
        lock = os.path.join(directory, "kvs.lock")
        with open(lock, "rb") as f:
            f.read()
        fd = os.open(lock, os.O_RDWR)
        os.close(fd)
        for name in os.listdir(directory):
            if name.endswith(".data"):
                with open(os.path.join(directory, name), "rb") as f:
                    f.read(16)
        # Even a second open of the same store in the holder fails without dropping the lock.
        try:
            KvStore.open(directory)
        except StoreLockedError:
            pass
        else:
            raise SystemExit("second open in the holder succeeded")
        store.set("after-fds", "still working")
        print("FDS-DONE", flush=True)
    elif command == "close":
        store.close()
        print("CLOSED", flush=True)
"""


class Holder:
    def __init__(self, directory: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(directory)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.readline()
        assert line.startswith("READY"), line
        self.pid = int(line.split()[1])
        assert self.pid == self.proc.pid

    def readline(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            assert self.proc.stderr is not None
            raise AssertionError(f"holder exited: {self.proc.stderr.read()[-2000:]}")
        return line.strip()

    def command(self, text: str, reply: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        assert self.readline() == reply

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Holder]:
    proc = Holder(tmp_path / "store")
    try:
        yield proc
    finally:
        proc.kill()


def assert_locked_by(directory: Path, pid: int) -> None:
    started = time.monotonic()
    with pytest.raises(StoreLockedError) as info:
        KvStore.open(str(directory))
    assert time.monotonic() - started < 1.0, "the second open must fail at once, not wait"
    assert info.value.pid == pid
    assert str(pid) in str(info.value)


def test_second_open_fails_at_once_naming_the_holder_pid(holder: Holder, tmp_path: Path) -> None:
    assert_locked_by(tmp_path / "store", holder.pid)
    assert_locked_by(tmp_path / "store", holder.pid)  # and failing changed nothing


def test_cli_on_a_locked_store_fails_with_one_line_and_no_traceback(
    holder: Holder, tmp_path: Path
) -> None:
    result = subprocess.run(
        [str(KVS_CLI), "--dir", str(tmp_path / "store"), "set", "k", "v"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert str(holder.pid) in lines[0]
    assert result.stdout == ""


def test_lock_survives_the_holder_opening_and_closing_other_descriptors(
    holder: Holder, tmp_path: Path
) -> None:
    holder.command("fds", "FDS-DONE")
    assert_locked_by(tmp_path / "store", holder.pid)
    holder.command("fds", "FDS-DONE")
    assert_locked_by(tmp_path / "store", holder.pid)


def test_killed_holder_leaves_no_lock(holder: Holder, tmp_path: Path) -> None:
    directory = tmp_path / "store"
    assert_locked_by(directory, holder.pid)
    holder.kill()
    started = time.monotonic()
    store = KvStore.open(str(directory))
    try:
        assert time.monotonic() - started < 1.0
        assert store.get("held") == "by the holder"
        lock_text = (directory / "kvs.lock").read_text()
        assert lock_text.split()[0] == str(os.getpid())
    finally:
        store.close()


def test_closed_holder_releases_the_lock(holder: Holder, tmp_path: Path) -> None:
    holder.command("close", "CLOSED")
    store = KvStore.open(str(tmp_path / "store"))
    try:
        assert store.get("held") == "by the holder"
    finally:
        store.close()
