"""Simulated power cuts (RELIABILITY.md A2, the power-cut half of A6, A8).

The workload, the crash images and the checks live in ``power_loss_harness`` (the soak calls
it too); these tests run it for each sync policy and a few seeds (many more under ``--soak``),
cut the power at every step of a compaction, and audit the directory fsyncs.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from soakmode import soak_scale

from kvs import KvStore
from kvs.log import engine
from kvs.log.engine import LogStore
from kvs.log.faultfs import FaultyFileSystem, FileImage, write_image

from .helpers import Expected, assert_contents, copy_dir, open_store, temp_files
from .power_loss_harness import POLICIES, SYNCS, audit_problems, run_power_loss_round
from .test_compaction_crash import OPTIONS as COMPACTION_OPTIONS
from .test_compaction_crash import build_store

SEEDS = soak_scale(4, 30)
OPERATIONS = soak_scale(120, 300)


@pytest.mark.parametrize("policy", POLICIES)
def test_power_cut_at_every_sync_point_keeps_what_the_policy_promises(
    policy: str, tmp_path: Path
) -> None:
    """always: every acknowledged write; everysec and no: everything before the last
    completed fsync, and exactly some prefix of the history; batches all or nothing; harsh
    cuts (unsynced bytes partly kept, then zeros or garbage) too; usable after recovery."""
    totals = {"crash_states": 0, "harsh_states": 0, "acknowledged_checked": 0}
    for seed in range(SEEDS):
        counts = run_power_loss_round(seed, policy, tmp_path / f"seed{seed}", operations=OPERATIONS)
        assert counts["acknowledged_lost"] == 0 and counts["problems"] == []
        for name in totals:
            totals[name] += counts[name]
        shutil.rmtree(tmp_path / f"seed{seed}")
    # The cuts really were taken, and really required something.
    assert totals["crash_states"] >= 30 * SEEDS
    assert totals["harsh_states"] >= 3 * SEEDS
    assert totals["acknowledged_checked"] > 0


def test_reordered_writeback_is_a_torn_tail_or_the_documented_corruption(
    tmp_path: Path,
) -> None:
    """Unsynced blocks of the newest file reach the disk out of order: the store opens with
    some prefix of the history, or (format.md section 14) raises CorruptionError naming the
    newest data file at an offset in its unsynced region; never anything else."""
    states = 0
    for seed in range(soak_scale(2, 20)):
        for policy in POLICIES:
            counts = run_power_loss_round(
                seed, policy, tmp_path / f"{policy}{seed}", operations=OPERATIONS, reorder=True
            )
            states += counts["reorder_states"]
            shutil.rmtree(tmp_path / f"{policy}{seed}")
    assert states >= 10


def test_directory_fsync_audit_over_whole_workloads(tmp_path: Path) -> None:
    """A8: writes, rotations, hints, compactions and closes; no write goes into a data file
    before its directory entry is durable, nothing is renamed into place unsynced, and no file
    is removed while a new file's entry is not yet durable."""
    fs = FaultyFileSystem()
    store = KvStore.open(str(tmp_path / "s"), fs=fs, sync="no", max_file_size=4096)
    rng = random.Random(7)
    try:
        for _ in range(soak_scale(3, 20)):
            for i in range(150):
                store.set(b"k%d" % rng.randrange(40), rng.randbytes(rng.randint(0, 400)))
                if i % 17 == 0:
                    with store.batch() as batch:
                        batch.set(b"b%d" % i, b"x" * 100)
                        batch.remove(b"k%d" % rng.randrange(40), missing_ok=True)
            store.compact()
            store.close()
            store = KvStore.open(str(tmp_path / "s"), fs=fs, sync="no", max_file_size=4096)
    finally:
        store.close()
    names = {event.name for event in fs.audit}
    assert names == {"append.write", "rename", "remove"}
    assert len([e for e in fs.audit if e.name == "remove"]) >= 3  # compaction inputs
    assert audit_problems(fs) == []


def test_the_audit_catches_a_data_file_used_before_its_directory_entry_is_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audit can fail: without the directory fsync after creating a data file, the
    first write into it is reported, and a power cut loses acknowledged writes."""
    original = engine.LogStore._start_new_active

    def without_dir_fsync(self: LogStore, capacity: int, reserve_ids: int = 0) -> None:
        skip = self._fs.fsync_dir
        self._fs.fsync_dir = lambda path: None  # type: ignore[method-assign]
        try:
            original(self, capacity, reserve_ids)
        finally:
            self._fs.fsync_dir = skip  # type: ignore[method-assign]

    monkeypatch.setattr(engine.LogStore, "_start_new_active", without_dir_fsync)
    fs = FaultyFileSystem()
    with KvStore.open(str(tmp_path / "s"), fs=fs, sync="always", max_file_size=4096) as store:
        store.set("k", "v")
        fs.power_cut(str(tmp_path / "s"), str(tmp_path / "cut"))
    assert any("before its directory entry was durable" in p for p in audit_problems(fs))
    with KvStore.open(str(tmp_path / "cut")) as store:
        assert store.get("k") is None  # lost: the file itself vanished


# -- compaction: a power cut at every step (A6, power-loss variant) ------------------------


@pytest.fixture(scope="module")
def compaction_base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Expected]:
    path = tmp_path_factory.mktemp("power-compaction") / "store"
    return path, build_store(path)


def compaction_cuts(base: Path, work: Path) -> list[tuple[str, dict[str, FileImage], bool]]:
    """Compact a copy of ``base`` and take the power-cut image before every file operation
    and after every sync, plus a harsh one at each step: ``(moment, image, harsh)``."""
    copy_dir(base, work)
    fs = FaultyFileSystem()
    store = open_store(work, fs=fs, **COMPACTION_OPTIONS)
    rng = random.Random(11)
    cuts: list[tuple[str, dict[str, FileImage], bool]] = []

    def observe(moment: str, number: int, name: str, path: str) -> None:
        if moment == "after" and name not in SYNCS:
            return
        where = f"{moment} {name} {Path(path).name}"
        cuts.append((where, fs.crash_image(str(work)), False))
        cuts.append((where, fs.crash_image(str(work), random.Random(rng.random())), True))

    try:
        fs.observer = observe
        store.compact()
        fs.observer = None
    finally:
        store.close()
    cuts.append(("after close", fs.crash_image(str(work)), False))
    return cuts


def test_power_cut_at_every_compaction_step_keeps_the_map(
    compaction_base: tuple[Path, Expected], tmp_path: Path
) -> None:
    """Map identical to the one before the merge, deletes stay deleted, no temp file left,
    and the compaction runs again to completion (then a reopen still holds the map)."""
    base, expected = compaction_base
    cuts = compaction_cuts(base, tmp_path / "run")
    assert len(cuts) >= 2 * 40
    seen: set[tuple[tuple[str, FileImage], ...]] = set()
    checked = 0
    for number, (where, image, harsh) in enumerate(cuts):
        key = tuple(sorted(image.items()))
        if key in seen:
            continue
        seen.add(key)
        target = tmp_path / f"cut{number}"
        write_image(image, str(target))
        try:
            store = open_store(target, **COMPACTION_OPTIONS)
            try:
                assert temp_files(target) == []
                assert_contents(store, expected)
                store.compact()
                assert_contents(store, expected)
            finally:
                store.close()
            with open_store(target, **COMPACTION_OPTIONS) as store:
                assert_contents(store, expected)
                assert store.get("ttl-short0") is None
        except Exception as error:
            kind = "harsh" if harsh else "power"
            raise AssertionError(f"{kind} cut {where} (state {number}): {error}") from None
        shutil.rmtree(target)
        checked += 1
    assert checked >= 10


def test_group_commit_acknowledges_only_durable_writes_from_many_threads(
    tmp_path: Path,
) -> None:
    """sync="always" with 8 writer threads sharing fsyncs (leaders, gates, gathering) and a
    rotation every ~40 records: the moment a set returns, a power cut must keep it. Each
    acknowledged set takes the power-cut image right then; a sample of them is opened later."""
    import threading

    fs = FaultyFileSystem()
    directory = str(tmp_path / "s")
    store = KvStore.open(directory, fs=fs, sync="always", max_file_size=4096, auto_compact=False)
    writers, per_writer = 8, soak_scale(25, 100)
    acknowledged: list[tuple[bytes, bytes, dict[str, FileImage]]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(writers)

    def writer(number: int) -> None:
        rng = random.Random(number)
        barrier.wait()
        try:
            for i in range(per_writer):
                key, value = b"w%d-%d" % (number, i), rng.randbytes(rng.randint(1, 120))
                store.set(key, value)
                acknowledged.append((key, value, fs.crash_image(directory)))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    syncs = int(store.stats()["durability_syncs"])
    store.close()
    assert errors == []
    assert len(acknowledged) == writers * per_writer
    assert syncs < len(acknowledged), "no fsync was shared"
    for number, (key, value, image) in enumerate(random.Random(1).sample(acknowledged, 60)):
        target = tmp_path / f"cut{number}"
        write_image(image, str(target))
        with KvStore.open(str(target), sync="no") as cut:
            assert cut.get(key) == value, f"acknowledged {key!r} lost by a power cut"
