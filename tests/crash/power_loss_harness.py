"""Simulated power cuts at every sync point of a seeded workload (RELIABILITY.md A2, A6, A8).

``run_power_loss_round(seed, policy, workdir)`` runs one seeded workload (sets, overwrites,
removes, batches, bulk updates, TTLs, explicit syncs, compactions, a close and reopen; small
data files, so they rotate) on a ``FaultyFileSystem``. Its observer takes the crash image a
power cut would leave (``FaultyFileSystem.crash_image``) just before and just after every
sync (``append.sync``, ``append.close``, ``writer.sync``, ``fsync_dir``), and a few *harsh*
images (unsynced bytes kept only in part, then zeros or garbage; only some of the directory
changes since its last fsync, a prefix or, for half of them, any subset) at sync points and
between them. With each image it notes what the workload had done by then:

* ``acked``: writes that had returned;
* ``started``: writes begun (``acked`` plus the one in progress, if any);
* ``durable``: writes acknowledged before the start of the last completed sync of a data
  file, i.e. the ones that sync must have made durable whatever the policy.

After the workload every distinct image is written to a directory and opened with the real
file system. The store must open (a torn tail is fine; ``CorruptionError`` is a failure) and
hold exactly the map after some prefix ``P`` of the writes, with ``P <= started`` (no value
that was never written, batches all or nothing) and ``P >= acked`` under ``sync="always"``,
``P >= durable`` otherwise. Then it must take more writes and reopen with them (usable after
recovery). Finally the ``audit`` of the file system is checked for A8: no write went into a
data file whose directory entry was not yet durable, no file was renamed into place before
its content was synced, and no file was removed while a new file's entry was not durable.

``reorder=True`` adds images whose unsynced region is kept block by block (a later block on
disk, an earlier one not). ``docs/format.md`` section 14 says how those open: as a torn tail,
or with ``CorruptionError`` naming the newest data file at an offset in its unsynced region
("valid records follow"); anything else is a failure. They are counted in
``reorder_corruption``.

Failures are collected with the seed and the moment of the cut; the round raises
``AssertionError`` listing them (``strict=False`` returns them in ``problems`` instead).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvs import CorruptionError, KvStore
from kvs.log import record
from kvs.log.faultfs import FaultyFileSystem, FileImage, write_image

Value = str | bytes
Model = dict[bytes, Value]

#: Small data files, so that a workload rotates through many of them.
OPTIONS: dict[str, Any] = {"max_file_size": 4096, "auto_compact": False}
DATA_SYNCS = ("append.sync", "append.close")
SYNCS = (*DATA_SYNCS, "writer.sync", "fsync_dir")
POLICIES = ("always", "everysec", "no")
#: A ttl that is long past when the crash images are checked (the workload sleeps it off).
SHORT_TTL = 0.001


@dataclass
class Requirement:
    """What one crash image must hold: the map after ``P`` writes, ``low <= P <= high``."""

    low: int
    high: int
    acked: int
    moment: str


@dataclass
class Crash:
    image: dict[str, FileImage]
    requirements: list[Requirement] = field(default_factory=list)
    kind: str = "gentle"  # "gentle", "harsh" or "reorder"
    #: For "reorder": per file, how many leading bytes were durable (damage must lie after).
    durable_lengths: dict[str, int] = field(default_factory=dict)


class Workload:
    """Runs the seeded operations and keeps the model: ``models[i]`` is the map after the
    first ``i`` writes."""

    def __init__(self, seed: int, policy: str, fs: FaultyFileSystem, directory: str) -> None:
        self.rng = random.Random(seed)
        self.policy = policy
        self.fs = fs
        self.directory = directory
        self.models: list[Model] = [{}]
        self.acked = 0
        self.started = 0
        self.store: KvStore | None = None

    @property
    def model(self) -> Model:
        return self.models[self.acked]

    def open(self) -> KvStore:
        self.store = KvStore.open(self.directory, sync=self.policy, fs=self.fs, **OPTIONS)
        return self.store

    def write(self, changes: dict[bytes, Value | None], call: Callable[[], None]) -> None:
        """Run the write ``call``, whose effect on the map is ``changes`` (None: removed)."""
        new = dict(self.model)
        for key, value in changes.items():
            if value is None:
                new.pop(key, None)
            else:
                new[key] = value
        self.models.append(new)
        self.started += 1
        call()
        self.acked += 1

    def value(self) -> Value:
        rng = self.rng
        if rng.random() < 0.8:
            size = rng.choice([0, 1, 10, 50, 120, 300])
        else:
            size = rng.randint(400, 1500)  # a few to a file: rotations
        if rng.random() < 0.5:
            return "".join(rng.choice("abcdefgh-é") for _ in range(size))
        return rng.randbytes(size)

    def key(self) -> bytes:
        return b"k%02d" % self.rng.randrange(30)

    def present(self) -> bytes | None:
        keys = sorted(self.model)
        return self.rng.choice(keys) if keys else None

    def step(self) -> str:
        """One seeded operation; returns its kind."""
        rng, store = self.rng, self.store
        assert store is not None
        sync_weight = {"always": 0.02, "everysec": 0.12, "no": 0.03}[self.policy]
        roll = rng.random()
        if roll < sync_weight:
            store.sync()  # for everysec, the once-a-second flush, at seeded moments
            return "sync"
        roll = rng.random()
        if roll < 0.5:
            key, value = self.key(), self.value()
            as_str = rng.random() < 0.3
            self.write({key: value}, lambda: store.set(key.decode() if as_str else key, value))
            return "set"
        if roll < 0.63:
            key = self.present()
            if key is None:
                return "skip"
            self.write({key: None}, lambda: store.remove(key))
            return "remove"
        if roll < 0.75:
            self.batch()
            return "batch"
        if roll < 0.81:
            pairs = {self.key(): self.rng.randbytes(rng.randint(0, 200)) for _ in range(3)}
            self.write(dict(pairs), lambda: store.update(pairs))  # type: ignore[attr-defined]
            return "update"
        if roll < 0.86:
            key, value = self.key(), self.value()
            self.write({key: value}, lambda: store.set(key, value, ttl=3600))
            return "ttl"
        if roll < 0.88:
            key, value = self.key(), self.value()
            self.write({key: None}, lambda: store.set(key, value, ttl=SHORT_TTL))
            time.sleep(SHORT_TTL * 3)  # expired before any image is checked
            return "ttl-expired"
        if roll < 0.91:
            store.compact()
            return "compact"
        if roll < 0.92:
            store.close()
            self.open()
            return "reopen"
        return "skip"

    def batch(self) -> None:
        store = self.store
        assert store is not None
        changes: dict[bytes, Value | None] = {}
        ops: list[tuple[str, bytes, Value | None]] = []
        for _ in range(self.rng.randint(2, 4)):
            if self.rng.random() < 0.3:
                key = self.present() or self.key()
                ops.append(("rm", key, None))
                changes[key] = None
            else:
                key, value = self.key(), self.value()
                ops.append(("set", key, value))
                changes[key] = value

        def run() -> None:
            with store.batch() as batch:
                for op, key, value in ops:
                    if op == "set":
                        assert value is not None
                        batch.set(key, value)
                    else:
                        batch.remove(key, missing_ok=True)

        self.write(changes, run)


class Recorder:
    """The observer: takes the crash images at the sync points while the workload runs."""

    def __init__(
        self,
        workload: Workload,
        rng: random.Random,
        harsh_rate: float,
        reorder: bool,
    ) -> None:
        self.workload = workload
        self.rng = rng
        self.harsh_rate = harsh_rate
        self.reorder = reorder
        self.durable = 0
        self._sync_started: dict[str, int] = {}
        self.crashes: dict[tuple[str, Any], Crash] = {}
        self.points = 0

    def __call__(self, moment: str, number: int, name: str, path: str) -> None:
        work = self.workload
        if name in DATA_SYNCS and path.endswith(".data"):
            if moment == "before":
                self._sync_started[path] = work.acked
            else:
                self.durable = max(self.durable, self._sync_started.pop(path, 0))
        sync_point = name in SYNCS
        if not sync_point and not (name == "append.write" and self.rng.random() < 0.05):
            return
        self.points += 1
        where = f"{moment} op {number} {name} {os.path.basename(path)}"
        gentle = work.fs.crash_image(work.directory)
        if sync_point:
            self._add("gentle", gentle, where)
        if self.rng.random() < self.harsh_rate:
            rng = random.Random(self.rng.randrange(1 << 62))
            in_order = self.rng.random() < 0.5  # else directory changes persist out of order
            harsh = work.fs.crash_image(work.directory, rng, names_in_order=in_order)
            if harsh != gentle:
                self._add("harsh", harsh, where)
        if self.reorder and self.rng.random() < self.harsh_rate:
            rng = random.Random(self.rng.randrange(1 << 62))
            image = work.fs.crash_image(work.directory, rng, reorder_block=512)
            if image != gentle:
                lengths = {
                    n: complete_records_end(f.data) if n.endswith(".data") else len(f.data)
                    for n, f in gentle.items()
                }
                self._add("reorder", image, where, lengths)

    def _add(
        self,
        kind: str,
        image: dict[str, FileImage],
        where: str,
        durable_lengths: dict[str, int] | None = None,
    ) -> None:
        work = self.workload
        low = work.acked if work.policy == "always" else self.durable
        crash = self.crashes.setdefault((kind, tuple(image.items())), Crash(image, kind=kind))
        crash.requirements.append(Requirement(low, work.started, work.acked, where))
        if durable_lengths is not None:
            crash.durable_lengths = durable_lengths


def contents(store: KvStore) -> Model:
    out: Model = {}
    for key in store.scan():
        value = store.get(key)
        assert value is not None, f"scan lists {key!r} but get finds nothing"
        out[key.encode() if isinstance(key, str) else key] = value
    return out


@dataclass
class Results:
    crash_states: int = 0
    harsh_states: int = 0
    reorder_states: int = 0
    reorder_corruption: int = 0
    operations_checked: int = 0
    acknowledged_checked: int = 0
    acknowledged_lost: int = 0
    problems: list[str] = field(default_factory=list)


def check_crash(
    crash: Crash, models: list[Model], target: Path, results: Results, label: str
) -> None:
    """Open one crash image and check every requirement noted with it."""
    write_image(crash.image, str(target))
    keep = False
    try:
        try:
            store = KvStore.open(str(target), sync="no", **OPTIONS)
        except CorruptionError as error:
            if crash.kind == "reorder" and _reorder_damage_allowed(crash, error):
                results.reorder_corruption += 1
                return
            keep = True
            results.problems.append(f"{label}: {crash.kind} state does not open: {error}")
            return
        try:
            found = contents(store)
        finally:
            store.close()
        for need in crash.requirements:
            results.acknowledged_checked += need.low
            if any(models[p] == found for p in range(need.low, need.high + 1)):
                continue
            keep = True
            matches = [p for p, model in enumerate(models) if model == found]
            lost = _lost(models[need.low], found)
            if crash.kind == "gentle" or not matches or max(matches) < need.low:
                results.acknowledged_lost += lost
            results.problems.append(
                f"{label}: {crash.kind} cut {need.moment}: expected the map after P writes, "
                f"{need.low} <= P <= {need.high} ({need.acked} acknowledged); it equals the "
                f"map after {matches or 'no prefix'}; {lost} acknowledged keys differ"
            )
            break
        else:
            keep = not _usable_after_recovery(target, found, results, label)
    except Exception as error:  # anything else is a failure of this state, reported
        keep = True
        results.problems.append(f"{label}: {crash.kind}: {type(error).__name__}: {error}")
    finally:
        if keep:
            results.problems[-1] += f" (state kept in {target})"
        else:
            shutil.rmtree(target, ignore_errors=True)


def complete_records_end(data: bytes) -> int:
    """Where the last complete, valid record of a data file's durable image ends. A sync that
    ran on another thread (everysec's) while a record was being copied in made only part of it
    durable: that part is no more durable than the bytes after it, so reordered write-back may
    leave it damaged with valid records after it (format.md section 14)."""
    offset = record.FILE_HEADER_SIZE
    while offset < len(data):
        try:
            flags, key_len, value_len, _ = record.check_record(data, offset, len(data))
        except record.BadRecord:
            break
        offset += record.FRAMING + value_len + (0 if flags & record.BATCH else key_len)
    return min(offset, len(data))


def _lost(expected: Model, found: Model) -> int:
    return sum(1 for key, value in expected.items() if found.get(key) != value) + sum(
        1 for key in found if key not in expected
    )


def _reorder_damage_allowed(crash: Crash, error: CorruptionError) -> bool:
    """format.md section 14: reordered writeback of the newest data file's unsynced region
    may leave valid records after damage; that, and only that, is a CorruptionError."""
    data = sorted(name for name in crash.image if name.endswith(".data"))
    path = str(getattr(error, "path", ""))
    offset = getattr(error, "offset", -1)
    name = os.path.basename(path)
    return (
        bool(data)
        and name == data[-1]
        and "valid records follow" in str(error)
        and offset >= crash.durable_lengths.get(name, 0)
    )


def _usable_after_recovery(target: Path, found: Model, results: Results, label: str) -> bool:
    """More writes on the recovered store, then a reopen, must keep them all."""
    expected = dict(found)
    with KvStore.open(str(target), sync="no", **OPTIONS) as store:
        store.set(b"after-cut", b"x" * 700)
        expected[b"after-cut"] = b"x" * 700
        for key in sorted(found)[:2]:
            store.set(key, "rewritten")
            expected[key] = "rewritten"
        if found:
            gone = sorted(found)[-1]
            store.remove(gone)
            del expected[gone]
        with store.batch() as batch:
            batch.set(b"after-batch", b"b" * 900)
            batch.remove(b"after-cut")
        expected[b"after-batch"] = b"b" * 900
        del expected[b"after-cut"]
    with KvStore.open(str(target), sync="no", **OPTIONS) as store:
        again = contents(store)
    if again != expected:
        results.problems.append(
            f"{label}: after recovery, writes then a reopen: missing or wrong "
            f"{sorted(k for k in expected if again.get(k) != expected[k])[:5]}, "
            f"unexpected {sorted(set(again) - set(expected))[:5]}"
        )
        return False
    return True


def audit_problems(fs: FaultyFileSystem) -> list[str]:
    """A8: the directory-fsync audit of a whole run."""
    problems = []
    for event in fs.audit:
        name = os.path.basename(event.path)
        if event.name == "append.write" and not event.name_durable:
            problems.append(
                f"op {event.op_number}: a write into {name} before its directory entry was durable"
            )
        elif event.name == "rename" and not event.content_durable:
            problems.append(f"op {event.op_number}: {name} renamed before it was synced")
        elif event.name == "remove" and not name.endswith(".tmp"):
            pending = [other for other in event.pending if not other.endswith(".tmp")]
            if pending:
                problems.append(
                    f"op {event.op_number}: {name} removed while the entries of {pending} "
                    "were not durable"
                )
    return problems


def run_power_loss_round(
    seed: int,
    policy: str,
    workdir: Path,
    *,
    operations: int = 120,
    harsh_rate: float = 0.25,
    reorder: bool = False,
    strict: bool = True,
) -> dict[str, Any]:
    """One seeded round; returns the counts (see ``Results``). ``acknowledged_lost`` must be
    0. With ``strict`` (the default) any problem raises ``AssertionError`` listing them."""
    assert policy in POLICIES, policy
    workdir = Path(workdir)
    directory = str(workdir / "store")
    fs = FaultyFileSystem()
    workload = Workload(seed, policy, fs, directory)
    recorder = Recorder(workload, random.Random(seed ^ 0x5EED), harsh_rate, reorder)
    fs.observer = recorder
    kvs_log = logging.getLogger("kvs")
    level = kvs_log.level
    kvs_log.setLevel(logging.ERROR)  # every crash image is an unclean shutdown: quiet
    try:
        workload.open()
        try:
            for _ in range(operations):
                workload.step()
        finally:
            assert workload.store is not None
            workload.store.close()
        fs.observer = None
        results = Results(operations_checked=workload.acked)
        results.problems.extend(f"seed {seed} {policy}: {p}" for p in audit_problems(fs))
        for number, crash in enumerate(recorder.crashes.values()):
            if crash.kind == "harsh":
                results.harsh_states += 1
            elif crash.kind == "reorder":
                results.reorder_states += 1
            results.crash_states += 1
            check_crash(
                crash,
                workload.models,
                workdir / f"cut{number}",
                results,
                f"seed {seed} {policy} state {number}",
            )
    finally:
        kvs_log.setLevel(level)
        fs.observer = None
        with contextlib.suppress(Exception):
            fs.release_all()
    counts: dict[str, Any] = {
        "crash_states": results.crash_states,
        "harsh_states": results.harsh_states,
        "reorder_states": results.reorder_states,
        "reorder_corruption": results.reorder_corruption,
        "sync_points": recorder.points,
        "operations_checked": results.operations_checked,
        "acknowledged_checked": results.acknowledged_checked,
        "acknowledged_lost": results.acknowledged_lost,
        "problems": results.problems,
    }
    if strict and results.problems:
        shown = "\n".join(results.problems[:20])
        raise AssertionError(
            f"power-loss round seed={seed} policy={policy}: {len(results.problems)} "
            f"problem(s), {results.acknowledged_lost} acknowledged writes lost:\n{shown}"
        )
    return counts
