"""A store carried across fork(): the child gets a clear error; the parent is unaffected."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvs import KvStore, StoreClosedError, StoreLockedError


def test_forked_child_gets_a_clear_error_and_parent_keeps_working(tmp_path: Path) -> None:
    store = KvStore.open(str(tmp_path), sync="no")
    store.set("k", "v")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what using the inherited store does, then leave at once
        os.close(read_fd)
        outcome = b"no error"
        try:
            store.get("k")
        except StoreClosedError as error:
            outcome = b"StoreClosedError: " + str(error).encode()
        except BaseException as error:  # anything else is a failure of the test
            outcome = type(error).__name__.encode()
        os.write(write_fd, outcome)
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        outcome = pipe.read()
    os.waitpid(pid, 0)
    assert outcome.startswith(b"StoreClosedError: "), outcome
    assert b"fork" in outcome
    store.set("k2", "v2")
    assert store.get("k") == "v"
    store.close()
    with KvStore.open(str(tmp_path)) as reopened:
        assert reopened.get("k2") == "v2"


def test_child_that_outlives_the_parents_close_does_not_hold_the_lock(tmp_path: Path) -> None:
    """The child inherits the lock's descriptor; if it kept it, the parent's close() would
    not free the store while the child lives (flock belongs to the shared file description)."""
    store = KvStore.open(str(tmp_path), sync="no")
    store.set("k", "v")
    ready_read, ready_write = os.pipe()
    done_read, done_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: stay alive until the parent has closed and reopened the store
        os.close(ready_read)
        os.close(done_write)
        os.write(ready_write, b"x")
        os.read(done_read, 1)
        os._exit(0)
    os.close(ready_write)
    os.close(done_read)
    try:
        assert os.read(ready_read, 1) == b"x"
        with pytest.raises(StoreLockedError):  # the parent still holds the lock
            KvStore.open(str(tmp_path))
        store.close()
        with KvStore.open(str(tmp_path)) as reopened:  # while the child still lives
            assert reopened.get("k") == "v"
    finally:
        os.write(done_write, b"x")
        os.close(done_write)
        os.close(ready_read)
        os.waitpid(pid, 0)
