"""SIGKILL a writer process at random moments; every acknowledged write must survive.

A writer subprocess (``kill9_writer.py``) sets new keys, overwrites, removes, and writes bulk
updates and batches, printing ``BEGIN`` before and ``ACK`` after each call. The test kills it
after a random (seeded) delay, reopens the store and checks that it holds exactly the
acknowledged operations, plus possibly the one in flight (a batch all or nothing); then a new
writer continues on the same directory, and so on.

``KVS_KILL_ROUNDS`` sets the number of kills per test (default 34: 102 over the three sync
policies, RELIABILITY A1's default of 100; 1,000 per test under ``--soak``);
``KVS_KILL_SEED`` the seed. The soak script (``tests/soak/run_soak.py``) calls ``kill_rounds``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from soakmode import soak_scale

from .helpers import Expected, contents, open_store, temp_files
from .kill9_writer import value_for

ROUNDS = int(os.environ.get("KVS_KILL_ROUNDS", soak_scale(34, 1000)))
SEED = int(os.environ.get("KVS_KILL_SEED", "20240607"))
WRITER = Path(__file__).with_name("kill9_writer.py")
READY_TIMEOUT = 30.0


@dataclass
class Transcript:
    lines: list[str] = field(default_factory=list)
    partial: str = ""

    def read_from(self, stream: BinaryIO) -> None:
        for raw in stream:
            text = raw.decode(errors="replace")
            if text.endswith("\n"):
                self.lines.append(text.rstrip("\n"))
            else:
                self.partial = text  # cut off by the kill: never counts as an ACK

    def ops(self) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """The acknowledged operations in order, and the one in flight (if any)."""
        begun: dict[int, dict[str, Any]] = {}
        order: list[int] = []
        acked: set[int] = set()
        for line in self.lines:
            if line.startswith("BEGIN "):
                _, n, body = line.split(" ", 2)
                begun[int(n)] = json.loads(body)
                order.append(int(n))
            elif line.startswith("ACK "):
                acked.add(int(line.split()[1]))
        done = [begun[n] for n in order if n in acked]
        pending = [n for n in order if n not in acked]
        assert len(pending) <= 1 and (not pending or pending[0] == order[-1]), pending
        return done, (begun[pending[0]] if pending else None)


def apply_op(model: Expected, op: dict[str, Any]) -> None:
    kind = op["op"]
    if kind == "set":
        model[op["key"].encode()] = value_for(op["key"], op["tag"], op["len"], op["str"])
    elif kind == "rm":
        del model[op["key"].encode()]  # the writer only removes keys it knows are there
    elif kind == "update":
        for key, tag, length in op["items"]:
            model[key.encode()] = value_for(key, tag, length, False)
    elif kind == "batch":
        for item in op["items"]:
            if item[0] == "rm":
                del model[item[1].encode()]
            else:
                model[item[1].encode()] = value_for(item[1], item[2], item[3], item[4])


def describe_difference(actual: Expected, expected: Expected) -> str:
    missing = sorted(set(expected) - set(actual))[:5]
    phantom = sorted(set(actual) - set(expected))[:5]
    wrong = sorted(k for k in set(actual) & set(expected) if actual[k] != expected[k])[:5]
    return f"missing {missing}, never written {phantom}, wrong value {wrong}"


def run_writer(
    path: Path,
    options: dict[str, Any],
    seed: int,
    round_no: int,
    rng: random.Random,
    compact_weight: int,
    kill_in_compaction: bool,
    log: Path,
) -> Transcript:
    transcript = Transcript()
    with open(log, "ab") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(WRITER),
                str(path),
                json.dumps(options),
                str(seed),
                str(round_no),
                str(compact_weight),
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    try:
        assert proc.stdout is not None
        reader = threading.Thread(target=transcript.read_from, args=(proc.stdout,), daemon=True)
        reader.start()
        deadline = time.monotonic() + READY_TIMEOUT
        while "READY" not in transcript.lines:
            assert proc.poll() is None, f"writer died: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "writer did not open the store"
            time.sleep(0.005)
        if kill_in_compaction:
            # Kill while an explicit compact() runs (or just after it began).
            wanted = rng.randint(1, 3)
            while sum('"compact"' in line for line in transcript.lines) < wanted:
                assert proc.poll() is None, f"writer died: {log.read_text()[-2000:]}"
                assert time.monotonic() < deadline + 30, "no compaction started"
                time.sleep(0.001)
            time.sleep(rng.uniform(0, 0.02))
        else:
            time.sleep(rng.uniform(0.03, 0.4))
        assert proc.poll() is None, f"writer stopped early: {log.read_text()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        reader.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return transcript


def check_after_kill(path: Path, model: Expected, transcript: Transcript, round_no: int) -> int:
    """Check the reopened store against ``model`` (updated in place); returns how many
    operations were acknowledged this round."""
    done, in_flight = transcript.ops()
    assert done or in_flight, f"round {round_no}: the writer began nothing before it was killed"
    for op in done:
        apply_op(model, op)
    with_in_flight = dict(model)
    if in_flight is not None:
        apply_op(with_in_flight, in_flight)
    store = open_store(path, max_file_size=OPTIONS_BASE["max_file_size"])
    try:
        assert temp_files(path) == []
        actual = contents(store)
        if actual == with_in_flight:
            model.clear()
            model.update(with_in_flight)
        else:
            assert actual == model, (
                f"round {round_no} (in flight: {json.dumps(in_flight)[:200]}): "
                + describe_difference(actual, model)
            )
        assert len(store) == len(model)
    finally:
        store.close()
    return len(done)


OPTIONS_BASE: dict[str, Any] = {"max_file_size": 65536, "auto_compact": False}


def kill_rounds(
    tmp_path: Path,
    options: dict[str, Any],
    seed: int,
    compact_weight: int = 0,
    kill_in_compaction: bool = False,
    rounds: int = ROUNDS,
) -> dict[str, int]:
    """Kill a writer ``rounds`` times and check the store after each kill; returns counts."""
    path = tmp_path / "store"
    log = tmp_path / "writer-stderr.log"
    rng = random.Random(seed)
    model: Expected = {}
    acknowledged = 0
    for round_no in range(rounds):
        transcript = run_writer(
            path,
            options,
            rng.randrange(1 << 30),
            round_no,
            rng,
            compact_weight,
            kill_in_compaction,
            log,
        )
        acknowledged += check_after_kill(path, model, transcript, round_no)
    assert acknowledged >= rounds and len(model) > 0
    # A last clean session: write, close, reopen.
    store = open_store(path, **OPTIONS_BASE)
    try:
        store.set("final", b"clean close")
        model[b"final"] = b"clean close"
    finally:
        store.close()
    store = open_store(path, **OPTIONS_BASE)
    try:
        assert contents(store) == model
    finally:
        store.close()
    # A failed check raises, so a returned round lost nothing acknowledged.
    return {"kills": rounds, "acknowledged_ops": acknowledged, "keys_checked": len(model)}


@pytest.mark.parametrize("sync", ["always", "everysec", "no"])
def test_acknowledged_writes_survive_sigkill(tmp_path: Path, sync: str) -> None:
    kill_rounds(tmp_path, {**OPTIONS_BASE, "sync": sync}, SEED + len(sync))


def test_acknowledged_writes_survive_sigkill_during_compaction(tmp_path: Path) -> None:
    options = {
        "max_file_size": 16384,
        "sync": "no",
        "auto_compact": True,
        "compaction_min_stale_bytes": 32768,
        "compaction_stale_ratio": 0.5,
    }
    kill_rounds(tmp_path, options, SEED + 99, compact_weight=4, kill_in_compaction=True)
