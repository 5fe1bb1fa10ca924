"""benchmarks/coverage.py's driver: replications on disk as they finish, resume, Ray fan-out.

The coverage numbers themselves are tests/statistical's; these runs use the methods that fit
no imputer model (complete data, complete cases, IterativeImputer), so they take seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import coverage

CHEAP = ["--tables", "linear", "--mechanisms", "mcar", "--rates", "0.3", "--rows", "120", "--M", "3"]


def _run(out: Path, *extra: str) -> dict:
    coverage.main([*CHEAP, "--methods", "complete", "complete_case", "iterative", "--out", str(out), *extra])
    return json.loads((out / "coverage.json").read_text())["settings"]


def _without_seconds(summary: dict) -> dict:
    return {
        s: {m: {k: v for k, v in n.items() if k != "seconds"} for m, n in by.items()}
        for s, by in summary.items()
    }


def test_a_stopped_run_resumes_from_the_replications_on_disk_and_gives_the_same_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = _run(tmp_path / "whole", "--replications", "4")
    out = tmp_path / "stopped"
    _run(out, "--replications", "3")
    (out / "linear-mcar-0.3" / "rep_0001.json").unlink()  # as if the run had died before it
    ran: list[int] = []
    replicate = coverage.replicate

    def counting(setting, replication, args):
        ran.append(replication)
        return replicate(setting, replication, args)

    monkeypatch.setattr(coverage, "replicate", counting)
    on_disk = _run(out, "--replications", "4", "--summary-only")  # what is there, nothing run
    assert ran == [] and on_disk["linear-mcar-0.3"]["complete"]["replications"] == 2
    resumed = _run(out, "--replications", "4")
    assert sorted(ran) == [1, 3]  # only what was not on disk
    assert _without_seconds(resumed) == _without_seconds(reference)
    assert resumed["linear-mcar-0.3"]["complete"]["replications"] == 4


def test_a_run_refuses_to_resume_in_a_folder_made_with_other_settings(tmp_path: Path) -> None:
    _run(tmp_path, "--replications", "1")
    with pytest.raises(SystemExit, match="other settings \\(rows\\)"):
        _run(tmp_path, "--replications", "1", "--rows", "150")


def test_replications_fanned_out_as_ray_tasks_give_the_numbers_of_the_local_run(
    ray_cluster, tmp_path: Path
) -> None:
    local = _run(tmp_path / "local", "--replications", "3")
    fanned = _run(tmp_path / "ray", "--replications", "3", "--ray")
    assert _without_seconds(fanned) == _without_seconds(local)
