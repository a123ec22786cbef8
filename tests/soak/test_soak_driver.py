"""The soak driver itself: it runs rounds, adds up their counts, and reports a failing round
with the seed that reproduces it (the long runs are only worth what their report says)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from soak import run_soak


def test_one_cycle_of_kill9_is_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report_path = tmp_path / "report.json"
    status = run_soak.main(
        ["--only", "kill9", "--cycles", "1", "--seed", "7", "--report", str(report_path)]
    )
    assert status == 0
    report = json.loads(report_path.read_text())
    totals = report["totals"]
    assert report["cycles"] == 1 and report["failures"] == []
    assert totals["rounds"] == 1 and totals["crashes"] == 8  # 5 + 3 kills
    assert totals["operations_checked"] > 0 and totals["lost"] == 0
    assert "| kill9 | 1 | 8 |" in capsys.readouterr().out


def test_a_failing_round_is_reported_with_its_seed_and_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeds: list[int] = []

    def broken(seed: int, workdir: Path) -> run_soak.Counts:
        seeds.append(seed)
        assert workdir.is_dir()
        raise AssertionError("lost k1")

    def fine(seed: int, workdir: Path) -> run_soak.Counts:
        return run_soak.Counts(rounds=1, crashes=2, operations_checked=10)

    monkeypatch.setattr(run_soak, "COMPONENTS", {"broken": broken, "fine": fine})
    report = run_soak.run_soak(0, seed=3, cycles=2, log=lambda line: None)
    assert len(seeds) == 2 and len(set(seeds)) == 2, "each round gets its own seed"
    assert [(f.component, f.seed) for f in report.failures] == [("broken", s) for s in seeds]
    assert "lost k1" in report.failures[0].error
    assert report.totals.rounds == 2 and report.totals.crashes == 4
    # Rerunning one round: --seed S --cycles 1 hands S itself to the component.
    again = run_soak.run_soak(0, seed=seeds[1], only=["broken"], cycles=1, log=lambda line: None)
    assert seeds[-1] == seeds[1] and len(again.failures) == 1
    monkeypatch.setattr(run_soak, "run_soak", lambda *a, **k: report)
    assert run_soak.main(["--cycles", "2"]) == 1
