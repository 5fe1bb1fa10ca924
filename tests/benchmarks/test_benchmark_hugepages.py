"""benchmarks/bench_hugepages.py: both settings measured in their own processes, side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_hugepages


def test_each_measurement_runs_with_the_setting_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker sees the variable it was given (numpy reads it on import), whatever the
    caller's environment says."""
    monkeypatch.setenv("NUMPY_MADVISE_HUGEPAGE", "1")
    seen: list[str] = []
    real_run = bench_hugepages.subprocess.run

    def run(command, **kwargs):
        seen.append(kwargs["env"]["NUMPY_MADVISE_HUGEPAGE"])
        return real_run(command, **kwargs)

    monkeypatch.setattr(bench_hugepages.subprocess, "run", run)
    assert set(bench_hugepages.measure("0")) == set(bench_hugepages.MEASURES)
    assert seen == ["0"]


def test_one_repetition_writes_both_settings_and_every_measure(tmp_path: Path) -> None:
    out = bench_hugepages.main(["--reps", "1", "--out", str(tmp_path / "h.json")])
    payload = json.loads(out.read_text())
    assert set(payload["medians"]) == {"1", "0"}
    for setting in ("1", "0"):
        assert len(payload["runs"][setting]) == 1
        assert all(payload["medians"][setting][m] > 0 for m in bench_hugepages.MEASURES)
