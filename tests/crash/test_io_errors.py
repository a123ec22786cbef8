"""I/O errors at every file operation (RELIABILITY A9, A10), SQLite's anomaly loop.

The loop itself and what each run checks are in ``io_fault_harness``: for N = 1, 2, ... until
the workload completes without reaching N, operation N fails (EIO, ENOSPC; once, and from then
on); every failing call raises a ``KvsError`` naming the path, an fsync failure turns the
store read-only, nothing leaks, and a clean reopen holds every acknowledged write. The
compound loop does the same to the recovery of a crashed store.

Default run (about 40 s on two busy cores): every N for one workload under ``always``, every
second N under ``no``, every third under ``everysec``, and the recovery loop at three crash
points. ``--soak``: six longer workloads, every N under every policy, nine crash points.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from soakmode import soak_scale

from kvs import KvsError, KvStore, ReadOnlyError
from kvs.log.faultfs import FaultyFileSystem

from .io_fault_harness import (
    LoopResult,
    count_ops,
    fault_loop,
    leaked_fds,
    make_workload,
    open_fds,
    recovery_loop,
    run_io_fault_round,
)

SEEDS = list(range(soak_scale(1, 6)))
#: Steps of the workload: short by default (every N of it still runs), long under --soak.
LENGTH = soak_scale(24, 60)
#: In the default run, the loop under each policy tries every STRIDE-th N.
STRIDE = {"always": 1, "no": 2, "everysec": 3}


@pytest.fixture(autouse=True)
def _quiet_kvs_logger() -> Iterator[None]:
    """Thousands of injected faults log thousands of warnings; they are expected here."""
    logger = logging.getLogger("kvs")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


def assert_loop_clean(result: LoopResult) -> None:
    assert result.lost == 0
    assert not result.problems, f"{len(result.problems)} problems:\n" + "\n".join(
        result.problems[:15]
    )
    assert result.faults > 0 and result.runs > result.faults


@pytest.mark.timeout(600)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("sync", ["always", "no", "everysec"])
def test_io_error_at_every_operation_is_typed_and_loses_nothing(
    tmp_path: Path, seed: int, sync: str
) -> None:
    steps = make_workload(seed, LENGTH)
    # Every N under "always" (and under every policy with --soak); a stride elsewhere.
    stride = soak_scale(STRIDE[sync], 1)
    result = fault_loop(
        tmp_path,
        steps,
        sync,
        # Past the end too: a run that reaches no fault shows the loop covered every step.
        numbers=None
        if stride == 1
        else (lambda total: [*range(1, total + 1, stride), total + 1, total + 2]),
    )
    assert_loop_clean(result)


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "point", [0.2, 0.5, 0.9] if soak_scale(0, 1) == 0 else [i / 10 for i in range(1, 10)]
)
def test_io_error_during_recovery_of_a_crashed_store(tmp_path: Path, point: float) -> None:
    """Compound failure: crash mid-workload, then fail every operation of the reopen."""
    for seed in SEEDS:
        steps = make_workload(seed, LENGTH)
        total = count_ops(tmp_path, steps, "always")
        result = recovery_loop(tmp_path / f"seed{seed}", steps, max(12, int(total * point)))
        assert_loop_clean(result)


def test_disk_full_at_reserve_fails_the_write_and_the_store_recovers(tmp_path: Path) -> None:
    """A10: ENOSPC while reserving blocks for a record: that set fails with a typed error,
    reads keep working, writes succeed once space returns, no partial record on reopen."""
    path = tmp_path / "store"
    fs = FaultyFileSystem()
    store = KvStore.open(str(path), fs=fs, sync="always", max_file_size=16 << 20)
    try:
        store.set("small", "1")
        fs.fail_next("append.reserve", errno.ENOSPC)
        big = b"B" * (5 << 20)  # past the 4 MiB reserved so far: needs a reserve
        with pytest.raises(KvsError) as info:
            store.set("big", big)
        assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
        assert str(path) in str(info.value)
        assert store.get("small") == "1" and store.get("big") is None
        store.set("big", big)  # the disk has room again
        store.set("after", "2")
        assert store.get("big") == big
    finally:
        store.close()
    with KvStore.open(str(path), sync="no") as reopened:
        assert dict((k, reopened.get(k)) for k in reopened.scan()) == {
            "small": "1",
            "big": big,
            "after": "2",
        }


@pytest.mark.parametrize("persistent", [False, True])
def test_failed_fsync_under_always_makes_the_store_read_only_until_reopened(
    tmp_path: Path, persistent: bool
) -> None:
    path = tmp_path / "store"
    fds = open_fds()
    fs = FaultyFileSystem()
    store = KvStore.open(str(path), fs=fs, sync="always")
    try:
        store.set("a", "1")
        if persistent:  # the set's copy is operation count + 1, its fsync count + 2
            fs.fail_at(fs.count + 2, errno.EIO, persistent=True)
        else:
            fs.fail_next("append.sync", errno.EIO)
        with pytest.raises(ReadOnlyError, match=re.escape(str(path))):
            store.set("b", "2")
        fs.disarm()
        for _ in range(3):  # refused every time, though the disk works again
            with pytest.raises(ReadOnlyError, match="reopen"):
                store.set("c", "3")
            with pytest.raises(ReadOnlyError):
                store.remove("a")
        assert store.get("a") == "1"
    finally:
        with contextlib.suppress(KvsError):
            store.close()
    fs.release_all()
    assert leaked_fds(fds, path) == []
    with KvStore.open(str(path), sync="always") as reopened:
        assert reopened.get("a") == "1" and reopened.get("c") is None
        reopened.set("c", "3")  # writable again after the reopen
    with KvStore.open(str(path)) as reopened:
        assert reopened.get("c") == "3"


@pytest.mark.timeout(30)
def test_failed_background_fsync_under_everysec_refuses_writes_until_reopened(
    tmp_path: Path,
) -> None:
    """docs/format.md section 14: whatever the policy, a failed fsync is not retried
    silently; the store refuses writes until it is reopened (RELIABILITY rule 3.2)."""
    path = tmp_path / "store"
    fs = FaultyFileSystem()
    store = KvStore.open(str(path), fs=fs, sync="everysec")
    try:
        store.set("a", "1")  # acknowledged, not yet synced
        fs.fail_next("append.sync", errno.EIO)
        deadline = time.monotonic() + 5
        while "append.sync" not in [name for name, _ in fs.ops] and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.1)
        with pytest.raises(ReadOnlyError, match=re.escape(str(path))):
            store.set("b", "2")
        with pytest.raises(ReadOnlyError):
            store.sync()  # a sync that succeeds now does not undo the failed one
        assert store.get("a") == "1"
    finally:
        with contextlib.suppress(KvsError):
            store.close()
    fs.release_all()
    with KvStore.open(str(path)) as reopened:
        assert reopened.get("a") == "1" and reopened.get("b") is None
        reopened.set("b", "2")


def test_failed_fsync_at_close_is_reported(tmp_path: Path) -> None:
    """A close whose final sync fails says so, instead of returning as if all were durable."""
    path = tmp_path / "store"
    fs = FaultyFileSystem()
    store = KvStore.open(str(path), fs=fs, sync="no")
    store.set("a", "1")
    fs.fail_next("append.sync", errno.EIO)
    with pytest.raises(KvsError, match=re.escape(str(path))):
        store.close()
    assert fs.misuse == []
    fs.release_all()
    with KvStore.open(str(path)) as reopened:
        assert reopened.get("a") == "1"


@pytest.mark.timeout(600)
def test_soak_round_reports_its_counts(tmp_path: Path) -> None:
    """The entry point of the soak driver (a short workload here): its counts, and nothing
    acknowledged lost."""
    counts = run_io_fault_round(7, tmp_path, length=soak_scale(8, 40))
    assert counts["lost"] == 0 and counts["crashes"] == 1
    assert counts["faults"] > 50 and counts["operations_checked"] > counts["faults"]
