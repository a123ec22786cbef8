"""What the sqlite engine promises beyond the ``KvStore`` contract: its lock, its options, its
file, its durability, and what happens across fork and kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kvs import (
    CorruptionError,
    FormatError,
    KvsError,
    KvStore,
    LimitError,
    StoreClosedError,
    WriteBatch,
)
from kvs.engines.sqlite import DB_NAME, SqliteStore


def run_python(code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def raw_db(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection to a closed store's database."""
    return sqlite3.connect(path / DB_NAME)


# -- one process per directory -----------------------------------------------------------------

OPEN_IN_CHILD = """
    import sys
    from kvs import KvStore, StoreLockedError
    try:
        KvStore.open({path!r}, engine={engine!r}).close()
    except StoreLockedError as error:
        print("locked", error.pid, error)
    else:
        print("opened")
"""


def test_a_second_process_gets_store_locked_error_naming_the_pid(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path), sync="no")
    store.set("k", "v")
    done = run_python(OPEN_IN_CHILD.format(path=str(tmp_path), engine="sqlite"))
    assert done.returncode == 0, done.stderr
    word, pid, *message = done.stdout.split()
    assert (word, int(pid)) == ("locked", os.getpid())
    assert f"process {os.getpid()}" in " ".join(message)
    # The kvs engine shares the lock file, but refuses a sqlite directory before the lock:
    # its data is not kvs's to open, whoever holds it.
    done = run_python(OPEN_IN_CHILD.format(path=str(tmp_path), engine="kvs"))
    assert done.returncode != 0 and "holds data of the 'sqlite' engine" in done.stderr
    store.close()
    done = run_python(OPEN_IN_CHILD.format(path=str(tmp_path), engine="sqlite"))
    assert done.stdout.strip() == "opened", done.stderr


def test_a_failed_open_releases_the_lock(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not a database, not at all" * 100)
    with pytest.raises(CorruptionError):
        SqliteStore(str(tmp_path))
    (tmp_path / DB_NAME).unlink()
    with SqliteStore(str(tmp_path)) as store:  # not StoreLockedError
        store.set("k", "v")


# -- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "synchronous"), [("always", 2), ("everysec", 1), ("no", 0)]
)  # FULL, NORMAL, OFF
def test_sync_policy_maps_to_synchronous_in_wal_mode(
    tmp_path: Path, policy: str, synchronous: int
) -> None:
    with SqliteStore(str(tmp_path), sync=policy) as store:  # type: ignore[arg-type]
        with store._locked() as conn:
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == synchronous
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA locking_mode").fetchone()[0] == "exclusive"
        assert store.stats()["sync"] == policy


def test_bad_options_are_refused_clearly(tmp_path: Path) -> None:
    for bad in ("sometimes", "ALWAYS", "", None):
        with pytest.raises(ValueError, match="sync must be 'always', 'everysec' or 'no'"):
            SqliteStore(str(tmp_path), sync=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"no option 'max_file_size'.*takes: sync"):
        KvStore.open(str(tmp_path), engine="sqlite", max_file_size=4096)
    with pytest.raises(TypeError, match="'a', 'b'"):
        SqliteStore(str(tmp_path), b=1, a=2)
    assert not (tmp_path / DB_NAME).exists()  # refused before anything was created


# -- the file ----------------------------------------------------------------------------------


def test_layout_one_table_flags_and_expiry(tmp_path: Path) -> None:
    with SqliteStore(str(tmp_path), sync="always") as store:
        store.set(b"bb", b"v")
        store.set(b"bs", "v")
        store.set("sb", b"v")
        store.set("ss", "v", ttl=3600)
    assert stat.S_IMODE(os.stat(tmp_path / DB_NAME).st_mode) == 0o600
    assert not (tmp_path / f"{DB_NAME}-wal").exists()  # folded in at close
    assert not (tmp_path / f"{DB_NAME}-shm").exists()  # exclusive locking: no shared memory
    conn = raw_db(tmp_path)
    try:
        (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table'").fetchone()
        assert "kv(" in sql and "WITHOUT ROWID" in sql
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        columns = [(row[1], row[2]) for row in conn.execute("PRAGMA table_info(kv)")]
        assert columns == [
            ("k", "BLOB"),
            ("v", "BLOB"),
            ("flags", "INTEGER"),
            ("expires_ms", "INTEGER"),
        ]
        rows = conn.execute("SELECT k, v, flags, expires_ms FROM kv ORDER BY k").fetchall()
    finally:
        conn.close()
    assert [row[:3] for row in rows] == [
        (b"bb", b"v", 0),
        (b"bs", b"v", 2),
        (b"sb", b"v", 1),
        (b"ss", b"v", 3),
    ]
    assert [row[3] is None for row in rows] == [True, True, True, False]
    assert abs(rows[3][3] - (time.time() + 3600) * 1000) < 60_000


def test_expired_rows_are_invisible_then_deleted_by_compact(tmp_path: Path) -> None:
    with SqliteStore(str(tmp_path), sync="no") as store:
        store.set("gone", "x" * 10_000, ttl=0.05)
        for i in range(2000):
            store.set(b"filler%d" % i, b"y" * 500)
        for i in range(2000):
            store.remove(b"filler%d" % i)
        store.set("kept", "y")
        time.sleep(0.1)
        before = store.stats()
        assert before["keys"] == 1 and before["expired_rows"] == 1
        store.compact()
        after = store.stats()
        assert after["expired_rows"] == 0 and after["keys"] == 1
        # VACUUM gave the space back
        assert int(after["file_bytes"]) < int(before["file_bytes"]) // 4
        assert after["wal_bytes"] == 0  # and the WAL was emptied into the file
    conn = raw_db(tmp_path)
    try:
        assert conn.execute("SELECT k FROM kv").fetchall() == [(b"kept",)]
    finally:
        conn.close()


def test_another_engines_directory_is_refused(tmp_path: Path) -> None:
    with KvStore.open(str(tmp_path / "log"), engine="kvs") as log_store:
        log_store.set("k", "v")
    with pytest.raises(KvsError, match="'kvs' engine"):
        SqliteStore(str(tmp_path / "log"))
    (tmp_path / "marked").mkdir()
    (tmp_path / "marked" / "kvs.engine").write_text("kvs\n")
    with pytest.raises(KvsError, match="engine='kvs'"):
        SqliteStore(str(tmp_path / "marked"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "kvs.engine").write_text("sqlite\n")
    with SqliteStore(str(tmp_path / "mine")) as store:
        store.set("k", "v")


def test_a_newer_format_is_refused(tmp_path: Path) -> None:
    SqliteStore(str(tmp_path)).close()
    conn = raw_db(tmp_path)
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    with pytest.raises(FormatError, match="format version 2"):
        SqliteStore(str(tmp_path))


def test_values_over_sqlites_length_limit_are_limit_errors_and_batches_roll_back(
    tmp_path: Path,
) -> None:
    with SqliteStore(str(tmp_path), sync="no") as store:
        with store._locked() as conn:  # SQLite's default limit is 1e9 bytes: lower it
            conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1000)
        with pytest.raises(LimitError):
            store.set("k", "x" * 2000)
        batch = WriteBatch()
        batch.set("a", "1")
        batch.set("b", "x" * 2000)
        with pytest.raises(LimitError):
            store.write(batch)
        assert store.get("a") is None and len(store) == 0
        store.set("a", "1")  # and the store goes on
        assert store.get("a") == "1"


# -- durability --------------------------------------------------------------------------------

KILLED_WRITER = """
    import os, signal
    from kvs import KvStore
    store = KvStore.open({path!r}, engine="sqlite", sync={policy!r})
    for i in range(500):
        store.set(f"k{{i}}", f"v{{i}}")
    with store.batch() as batch:
        for i in range(500):
            batch.set(f"b{{i}}", "batched")
    print("acknowledged", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("policy", ["always", "everysec", "no"])
def test_kill_9_loses_nothing_acknowledged(tmp_path: Path, policy: str) -> None:
    done = run_python(KILLED_WRITER.format(path=str(tmp_path), policy=policy))
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert done.stdout.strip() == "acknowledged"
    with SqliteStore(str(tmp_path)) as store:
        assert len(store) == 1000
        assert store.get("k499") == "v499" and store.get("b0") == "batched"


def test_everysec_syncs_in_the_background_and_sync_covers_every_policy(tmp_path: Path) -> None:
    with SqliteStore(str(tmp_path / "everysec"), sync="everysec") as store:
        store.set("k", "v")
        deadline = time.monotonic() + 5
        while store._synced < store._commits and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store._synced == store._commits == 1
    for policy in ("no", "everysec", "always"):
        with SqliteStore(str(tmp_path / policy), sync=policy) as store:
            store.set("k", "v")
            store.sync()
            assert store._synced == store._commits or policy == "always"


def test_a_failed_background_fsync_makes_the_store_read_only(tmp_path: Path) -> None:
    from kvs import ReadOnlyError

    with SqliteStore(str(tmp_path), sync="everysec") as store:
        store.set("k", "v")
        store._fsync_failed(OSError(5, "Input/output error"))  # as _every_second would
        with pytest.raises(ReadOnlyError, match="fsync failed"):
            store.set("k", "w")
        with pytest.raises(ReadOnlyError):
            store.sync()  # not retried: the failed fsync may have dropped the pages
        assert store.get("k") == "v"  # reads go on


# -- fork --------------------------------------------------------------------------------------


def test_forked_child_gets_a_clear_error_and_parent_keeps_working(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path), sync="no")
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
        store.close()  # must not close the parent's database (nor its WAL)
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
    with SqliteStore(str(tmp_path)) as reopened:
        assert (reopened.get("k"), reopened.get("k2")) == ("v", "v2")
