"""The I/O-error anomaly loop (RELIABILITY A9, A10), shared by the tests and the soak.

SQLite's way: run a workload on ``FaultyFileSystem`` with its Nth operation failing, for
N = 1, 2, ... until the workload completes without reaching N; each N once with the fault
firing once, once with every operation from N on failing, and with EIO and ENOSPC. Each run
checks, with ``check_run``:

* every call that fails raises a ``KvsError`` whose message names the store's directory (a
  path in it), never a bare ``OSError``; a call fails only once a fault fired;
* a fault is absorbed silently only by best-effort work (hint files);
* once an fsync of a data file failed (``append.sync``, or the sync in ``append.close``), every
  later write is refused with ``ReadOnlyError`` until the store is reopened, whatever the sync
  policy (``docs/format.md`` section 14);
* reads of acknowledged keys keep working after a failed call;
* after ``close`` (which may fail) no file descriptor is left open (``/proc/self/fd``) and the
  file system saw no use of a closed handle (``misuse``);
* reopened on the real file system, the store holds every acknowledged write: each key has its
  last acknowledged value, or, if a call that touched it failed afterwards, possibly that
  call's value; no other key.

The compound loop (``recovery_loop``) crashes a workload part way (``crash_at``), then opens
the crashed store with the Nth operation of the open failing, for every N: the open fails with
a typed error naming the path, or succeeds; either way a later clean open holds every write
acknowledged before the crash.

``run_io_fault_round(seed, workdir)`` runs both loops for one seeded workload, for the soak.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvs import KvsError, KvStore, ReadOnlyError, StoreClosedError
from kvs.log.faultfs import FaultyFileSystem, SimulatedCrash

from .helpers import quiet_simulated_crashes

Value = str | bytes
#: Sentinel of "absent" among a key's allowed values.
ABSENT = None

OPTIONS: dict[str, Any] = {"max_file_size": 4096, "auto_compact": False}
ERRNOS = (errno.EIO, errno.ENOSPC)
#: Operations whose failure the engine may absorb: hint files are an optimisation only.
BEST_EFFORT_SUFFIXES = (".hint", ".hint.tmp")


class ThreadRecordingFileSystem(FaultyFileSystem):
    """``FaultyFileSystem`` that also records which thread ran each operation (``threads``,
    parallel to ``ops``): a hint written in the background interleaves with the workload."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

    def _op(self, name: str, path: str, token: int | None = None) -> int:
        with self._mutex:
            try:
                return super()._op(name, path, token)
            finally:
                thread = threading.current_thread().name
                self.threads.extend([thread] * (len(self.ops) - len(self.threads)))


def best_effort(fs: ThreadRecordingFileSystem, number: int) -> bool:
    """Whether operation ``number`` is one whose failure the engine may absorb: work on a
    hint file (an optimisation only: on a hint path, on the background hint writer's thread,
    or the directory sync right after a hint's rename in the same thread), or unmapping a
    read-only map (released either way; nothing is lost)."""
    name, path = fs.ops[number - 1]
    thread = fs.threads[number - 1]
    if path.endswith(BEST_EFFORT_SUFFIXES) or name == "read.close":
        return True
    if "_background_hint" in thread:
        return True
    if name == "fsync_dir":
        before = [
            op for op, t in zip(fs.ops[: number - 1], fs.threads, strict=False) if t == thread
        ]
        return bool(before) and before[-1][0] == "rename" and before[-1][1].endswith(".hint.tmp")
    return False


WRITE_KINDS = frozenset({"set", "remove", "batch", "update"})


@dataclass(frozen=True)
class Step:
    kind: str  # set, remove, batch, update, compact, sync, get
    items: tuple[tuple[Value, Value | None], ...] = ()  # (key, value or None for a remove)


def make_workload(seed: int, length: int = 40) -> list[Step]:
    """A seeded workload: sets (some values larger than a data file), overwrites, removes, a
    batch, a bulk update, an explicit sync, a compaction in the middle. Rotation comes from
    the small ``max_file_size``."""
    rng = random.Random(seed)
    keys = [f"k{i:02d}" for i in range(14)] + [f"b{i:02d}".encode() for i in range(6)]
    steps: list[Step] = []

    def value() -> Value:
        size = rng.choice([1, 20, 150, 400]) if rng.random() < 0.9 else rng.randint(2500, 6000)
        if rng.random() < 0.5:
            return "v" * size
        return rng.randbytes(size)

    for i in range(length):
        roll = rng.random()
        if i == length // 2:
            steps.append(Step("compact"))
        elif i == length // 3:
            steps.append(Step("sync"))
        elif i == length // 4 or i == 3 * length // 4:
            members = [(rng.choice(keys), value()) for _ in range(3)]
            steps.append(Step("batch", (*members, (rng.choice(keys), None))))
        elif i == 2 * length // 3:
            steps.append(
                Step("update", tuple((f"u{j}".encode(), rng.randbytes(60)) for j in range(4)))
            )
        elif roll < 0.2:
            steps.append(Step("remove", ((rng.choice(keys), None),)))
        else:
            steps.append(Step("set", ((rng.choice(keys), value()),)))
    return steps


def raw(key: Value) -> bytes:
    return key.encode() if isinstance(key, str) else key


@dataclass
class Model:
    """What the store may hold: per key, every value it may have (``ABSENT`` included)."""

    allowed: dict[bytes, set[Value | None]] = field(default_factory=dict)

    def definitely(self, key: bytes) -> Value | None:
        values = self.allowed.get(key, {ABSENT})
        return next(iter(values)) if len(values) == 1 else _UNSURE  # type: ignore[return-value]

    def acknowledge(self, items: tuple[tuple[Value, Value | None], ...]) -> None:
        final: dict[bytes, Value | None] = {}
        for key, value in items:
            final[raw(key)] = value
        for key, value in final.items():
            self.allowed[key] = {value}

    def uncertain(self, items: tuple[tuple[Value, Value | None], ...]) -> None:
        """A call that failed may or may not have taken effect (all of it or none of it)."""
        final: dict[bytes, Value | None] = {}
        for key, value in items:
            final[raw(key)] = value
        for key, value in final.items():
            self.allowed.setdefault(key, {ABSENT}).add(value)

    def check(self, actual: dict[bytes, Value]) -> list[str]:
        """Problems of the reopened store's map ``actual``; the first words say what kind."""
        problems = []
        for key, values in self.allowed.items():
            got = actual.get(key, ABSENT)
            if got not in values:
                kind = "lost" if got is ABSENT else "wrong value"
                problems.append(
                    f"{kind}: {key!r} is {_short(got)}, expected one of "
                    f"{[_short(v) for v in values]}"
                )
        for key in set(actual) - set(self.allowed):
            problems.append(f"phantom: {key!r} = {_short(actual[key])}")
        return problems


_UNSURE = object()


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) < 40 else text[:30] + f"...({len(text)} chars)"


def open_fds() -> dict[int, str]:
    """This process's open descriptors and what they point at."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return out


def leaked_fds(before: dict[int, str], directory: Path) -> list[str]:
    """Descriptors open now on files in ``directory`` that were not open ``before``."""
    prefix = str(directory)
    return sorted(
        target
        for fd, target in open_fds().items()
        if target.startswith(prefix) and before.get(fd) != target
    )


def read_map(store: KvStore) -> dict[bytes, Value]:
    out: dict[bytes, Value] = {}
    for key in store.scan():
        value = store.get(key)
        assert value is not None, f"scan lists {key!r} but get finds nothing"
        out[raw(key)] = value
    return out


@dataclass
class RunResult:
    """What one run of the workload did and found."""

    total_ops: int  # operations the file system saw (including failed ones)
    fired: bool  # the fault was reached
    calls: int  # calls made (open, steps, close)
    failed_calls: int
    lost: int
    problems: list[str]


def _apply(store: KvStore, step: Step, model: Model) -> None:
    if step.kind == "set":
        ((key, value),) = step.items
        assert value is not None
        store.set(key, value)
    elif step.kind == "remove":
        ((key, _),) = step.items
        store.remove(key)
    elif step.kind == "batch":
        with store.batch() as batch:
            for key, value in step.items:
                if value is None:
                    batch.remove(key, missing_ok=True)
                else:
                    batch.set(key, value)
    elif step.kind == "update":
        store.update(dict(step.items))
    elif step.kind == "compact":
        store.compact()
    elif step.kind == "sync":
        store.sync()
    else:  # pragma: no cover
        raise AssertionError(step.kind)


def run_once(
    path: Path,
    steps: list[Step],
    sync: str,
    fail_at: int | None = None,
    code: int = errno.EIO,
    persistent: bool = False,
    check_reads: bool = True,
) -> RunResult:
    """Run the workload on a fresh store at ``path`` with operation ``fail_at`` failing, then
    check everything listed in the module doc. ``path`` must not exist yet."""
    problems: list[str] = []
    fds_before = open_fds()
    fs = ThreadRecordingFileSystem()
    if fail_at is not None:
        fs.fail_at(fail_at, code, persistent)
    model = Model()
    where = str(path)
    calls = failed = 0
    fsync_failed = False  # an fsync of a data file failed: writes must be refused from then

    def fault_fired() -> bool:
        return fail_at is not None and fs.count >= fail_at

    def faulted_op() -> tuple[str, str]:
        assert fail_at is not None
        return fs.ops[fail_at - 1]

    def note_error(what: str, error: BaseException) -> None:
        nonlocal failed
        failed += 1
        if not isinstance(error, KvsError):
            problems.append(f"{what}: not a KvsError: {type(error).__name__}: {error}")
        elif where not in str(error):
            problems.append(f"{what}: {type(error).__name__} does not name the path: {error}")
        if not fault_fired():
            problems.append(f"{what} failed before any fault: {type(error).__name__}: {error}")

    def sync_failed_now() -> bool:
        if not fault_fired():
            return False
        name, op_path = faulted_op()
        return name in ("append.sync", "append.close") and op_path.endswith(".data")

    store: KvStore | None = None
    calls += 1
    try:
        store = KvStore.open(where, fs=fs, sync=sync, **OPTIONS)
    except Exception as error:
        note_error("open", error)
    if store is not None:
        for number, step in enumerate(steps):
            what = f"step {number} {step.kind}"
            if step.kind == "remove":
                key = raw(step.items[0][0])
                present = model.definitely(key)
                if present is ABSENT or present is _UNSURE:
                    continue  # only remove what is surely there: KeyNotFound is not a fault
            calls += 1
            try:
                _apply(store, step, model)
            except Exception as error:
                note_error(what, error)
                if step.kind in WRITE_KINDS:
                    model.uncertain(step.items)
                refusable = step.kind in WRITE_KINDS | {"compact"}
                if fsync_failed and refusable and not isinstance(error, ReadOnlyError):
                    problems.append(
                        f"{what} after a failed fsync: {type(error).__name__}, not ReadOnlyError"
                    )
                fsync_failed = fsync_failed or sync_failed_now()
                if check_reads:
                    problems.extend(_check_reads(store, model, what))
            else:
                if step.kind in WRITE_KINDS:
                    model.acknowledge(step.items)
                    if fsync_failed:
                        problems.append(f"{what} was accepted after a failed fsync")
                elif step.kind == "compact" and fsync_failed:
                    problems.append(f"{what} ran after a failed fsync")
                fsync_failed = fsync_failed or sync_failed_now()
        calls += 1
        try:
            store.close()
        except Exception as error:
            note_error("close", error)
    leaked = leaked_fds(fds_before, path)
    if leaked:
        problems.append(f"descriptors left open after close: {leaked}")
    if fs.misuse:
        problems.append(f"operations on closed handles: {fs.misuse[:3]}")
    fired = fault_fired()
    if fired and failed == 0 and not best_effort(fs, fail_at):
        name, op_path = faulted_op()
        problems.append(
            f"the fault at operation {fail_at} ({name} {op_path}) was absorbed silently"
        )
    total_ops = fs.count
    fs.release_all()

    lost = 0
    if os.path.isdir(path):
        try:
            with KvStore.open(where, sync="no", **OPTIONS) as reopened:
                found = model.check(read_map(reopened))
        except Exception as error:
            found = [f"reopen on a clean file system: {type(error).__name__}: {error}"]
        lost = sum(1 for p in found if p.startswith("lost"))
        problems.extend(found)
    elif model.allowed:
        problems.append("the store directory is gone")
    return RunResult(total_ops, fired, calls, failed, lost, problems)


def _check_reads(store: KvStore, model: Model, what: str) -> list[str]:
    """After a failed call: every key reads back one of its allowed values."""
    try:
        for key, values in model.allowed.items():
            got = store.get(key)
            if got not in values:
                return [
                    f"after {what}: get {key!r} = {_short(got)}, expected one of "
                    f"{[_short(v) for v in values]}"
                ]
    except StoreClosedError:
        return []
    except Exception as error:
        return [f"after {what}: a read failed: {type(error).__name__}: {error}"]
    return []


@dataclass
class LoopResult:
    runs: int = 0
    faults: int = 0
    operations_checked: int = 0
    lost: int = 0
    problems: list[str] = field(default_factory=list)

    def add(self, label: str, result: RunResult) -> None:
        self.runs += 1
        self.faults += int(result.fired)
        self.operations_checked += result.calls
        self.lost += result.lost
        self.problems.extend(f"{label}: {p}" for p in result.problems)


def count_ops(workdir: Path, steps: list[Step], sync: str) -> int:
    """Operations a clean run of the workload takes (which bounds the loop over N)."""
    path = workdir / "count"
    result = run_once(path, steps, sync)
    assert not result.problems, result.problems
    shutil.rmtree(path)
    return result.total_ops


def fault_loop(
    workdir: Path,
    steps: list[Step],
    sync: str,
    codes: tuple[int, ...] = ERRNOS,
    modes: tuple[bool, ...] = (False, True),
    numbers: Callable[[int], list[int]] | None = None,
) -> LoopResult:
    """For N = 1, 2, ... until a run completes without reaching N (or over ``numbers(total)``
    of a clean run's ``total`` operations): run the workload with operation N failing, for
    each errno in ``codes`` and each mode (``persistent`` False/True)."""
    out = LoopResult()
    total = count_ops(workdir, steps, sync)
    candidates = numbers(total) if numbers is not None else None
    n = 0
    while True:
        if candidates is not None:
            if not candidates:
                break
            n = candidates.pop(0)
        else:
            n += 1
        reached = False
        for code in codes:
            for persistent in modes:
                label = f"sync={sync} N={n} {errno.errorcode[code]} " + (
                    "persistent" if persistent else "once"
                )
                path = workdir / f"n{n}-{code}-{int(persistent)}"
                result = run_once(path, steps, sync, n, code, persistent)
                out.add(label, result)
                reached = reached or result.fired
                shutil.rmtree(path, ignore_errors=True)
        if candidates is None and not reached:
            break
        if candidates is None and n > total * 3 + 50:  # pragma: no cover - a runaway loop
            out.problems.append(f"sync={sync}: the loop passed N={n} without completing")
            break
    return out


def crashed_store(path: Path, steps: list[Step], crash_at: int) -> Model:
    """Run the workload with a simulated crash at operation ``crash_at``; return what was
    acknowledged before it (the call that crashed may or may not have taken effect)."""
    fs = FaultyFileSystem()
    fs.crash_at(crash_at)
    model = Model()
    store: KvStore | None = None
    with quiet_simulated_crashes():
        step: Step | None = None
        try:
            store = KvStore.open(str(path), fs=fs, sync="always", **OPTIONS)
            for step in steps:
                key = raw(step.items[0][0]) if step.items else b""
                if step.kind == "remove" and model.definitely(key) in (ABSENT, _UNSURE):
                    continue
                _apply(store, step, model)
                if step.kind in WRITE_KINDS:
                    model.acknowledge(step.items)
            step = None
            store.close()
        except BaseException:
            # The crash may reach the caller as SimulatedCrash, or (when a background thread
            # such as the group commit died) as the error that thread's death caused.
            if not fs.crashed:
                raise
            if step is not None and step.kind in WRITE_KINDS:
                model.uncertain(step.items)
            if store is not None:
                with contextlib.suppress(Exception, SimulatedCrash):
                    store.close()
        fs.release_all()
    return model


def recovery_loop(
    workdir: Path, steps: list[Step], crash_at: int, codes: tuple[int, ...] = ERRNOS
) -> LoopResult:
    """Compound failures: an I/O error at every operation of the recovery of a crashed store."""
    out = LoopResult()
    base = workdir / "crashed"
    model = crashed_store(base, steps, crash_at)
    if not base.exists():
        return out
    n = 0
    while True:
        n += 1
        reached = False
        for code in codes:
            for persistent in (False, True):
                label = f"recovery crash_at={crash_at} N={n} {errno.errorcode[code]}" + (
                    " persistent" if persistent else " once"
                )
                path = workdir / f"r{n}-{code}-{int(persistent)}"
                shutil.copytree(base, path)
                result = _faulty_reopen(path, model, n, code, persistent)
                out.add(label, result)
                reached = reached or result.fired
                shutil.rmtree(path, ignore_errors=True)
        if not reached:
            break
    shutil.rmtree(base, ignore_errors=True)
    return out


def _faulty_reopen(
    path: Path, model: Model, fail_at: int, code: int, persistent: bool
) -> RunResult:
    """Open (and close) a crashed store with operation ``fail_at`` of it failing; then check
    a clean open."""
    problems: list[str] = []
    fds_before = open_fds()
    fs = ThreadRecordingFileSystem()
    fs.fail_at(fail_at, code, persistent)
    failed = 0
    where = str(path)
    for what in ("open", "close"):
        try:
            if what == "open":
                store = KvStore.open(where, fs=fs, sync="always", **OPTIONS)
                found = read_map(store)
                problems.extend(f"while open: {p}" for p in model.check(found))
            else:
                store.close()
        except Exception as error:
            failed += 1
            if not isinstance(error, KvsError):
                problems.append(f"{what}: not a KvsError: {type(error).__name__}: {error}")
            elif where not in str(error):
                problems.append(f"{what}: {type(error).__name__} does not name the path: {error}")
            if fs.count < fail_at:
                problems.append(f"{what} failed before the fault: {error}")
            if what == "open":
                break
    leaked = leaked_fds(fds_before, path)
    if leaked:
        problems.append(f"descriptors left open: {leaked}")
    if fs.misuse:
        problems.append(f"operations on closed handles: {fs.misuse[:3]}")
    fired = fs.count >= fail_at
    if fired and not failed and not best_effort(fs, fail_at):
        problems.append(f"the fault at {fs.ops[fail_at - 1]} was absorbed silently")
    total = fs.count
    fs.release_all()
    lost = 0
    try:
        with KvStore.open(where, sync="no", **OPTIONS) as reopened:
            found_problems = model.check(read_map(reopened))
    except Exception as error:
        found_problems = [f"clean reopen: {type(error).__name__}: {error}"]
    lost = sum(1 for p in found_problems if p.startswith("lost"))
    problems.extend(found_problems)
    return RunResult(total, fired, 2, failed, lost, problems)


def run_io_fault_round(seed: int, workdir: Path, length: int | None = None) -> dict[str, int]:
    """One soak round: the full loop over every N (EIO and ENOSPC, once and persistent) for
    a workload made from ``seed`` under a sync policy chosen by it, then the compound loop
    over the recovery of that workload crashed at a seeded point.

    Returns ``{"crashes", "faults", "operations_checked", "lost"}``; raises
    ``AssertionError`` listing the problems if any check failed.
    """
    rng = random.Random(seed)
    steps = make_workload(seed, length=length or rng.randint(20, 50))
    sync = ("always", "everysec", "no")[seed % 3]
    workdir.mkdir(parents=True, exist_ok=True)
    loop = fault_loop(workdir, steps, sync)
    total = count_ops(workdir, steps, "always")
    recovery = recovery_loop(workdir, steps, rng.randint(10, max(11, total - 5)))
    problems = loop.problems + recovery.problems
    if problems:
        raise AssertionError(f"{len(problems)} problems, first ones:\n" + "\n".join(problems[:20]))
    return {
        "crashes": 1,
        "faults": loop.faults + recovery.faults,
        "operations_checked": loop.operations_checked + recovery.operations_checked,
        "lost": loop.lost + recovery.lost,
    }
