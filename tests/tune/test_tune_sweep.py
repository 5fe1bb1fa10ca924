"""Tune sweeps on a real local Ray cluster: a tiny 2 x 2 sweep end to end, and restore after
an interrupted sweep (Ctrl-C) finishing only what had not finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from missiwae.config import ConfigError
from pipelines.config import PipelineConfig
from tests.conftest import REPO
from tune.space import load_space
from tune.sweep import STATE_FILE, run_sweep
from tune.trial import ATTEMPTS, TRIAL_RESULT


def tiny_config(run_dir: Path, data_root: Path, epochs: int = 1) -> dict[str, Any]:
    return {
        "run_dir": str(run_dir),
        "data": {"data_dir": str(data_root), "num_train": 200, "num_valid": 100, "num_test": 100},
        "ingest": {"num_shards": 1},
        "model": {"hidden": [32], "latent_dim": 4},
        "train": {"K": 1, "batch_size": 50, "epochs": epochs, "learning_rate": 3e-3, "seed": 0},
        "scaling": {"num_workers": 1, "cpus_per_worker": 0.5, "max_failures": 1},
        "evaluate": {"num_samples": 10, "batch_size": 100},
        "tracking": {"experiment": "sweep-test"},
    }


def _child_runs(run_dir: Path, parent: str) -> list[Any]:
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sweep-test")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]


def test_tiny_sweep_runs_every_trial_logs_one_mlflow_run_each_and_ranks_them(
    ray_cluster, data_root, tmp_path
):
    config = PipelineConfig.from_dict(tiny_config(tmp_path / "run", data_root))
    sigint_handler = signal.getsignal(signal.SIGINT)
    result = run_sweep(config, load_space("tiny"), preset="tiny-test")

    assert result.complete and not result.restored
    # Tune's own Ctrl-C handler does not outlive the sweep (the caller's Ctrl-C works again).
    assert signal.getsignal(signal.SIGINT) is sigint_handler
    assert result.mlflow_run_id is not None
    assert sorted(r.trial for r in result.rows) == ["K=1 oracle", "K=1 zero", "K=2 oracle", "K=2 zero"]
    assert all(r.status == "done" and r.epochs == 1 for r in result.rows)
    lls = [r.test_log_likelihood for r in result.rows]
    assert lls == sorted(lls, reverse=True)  # ranked, best first
    # Complete-image log p(x) covers all 784 pixels, log p(x_o) about half of them.
    assert all(r.test_log_likelihood < r.test_log_px_o < 0 for r in result.rows)

    children = _child_runs(tmp_path / "run", result.mlflow_run_id)
    assert sorted(r.info.run_name for r in children) == sorted(r.trial for r in result.rows)
    assert all(r.info.status == "FINISHED" for r in children)
    by_name = {r.info.run_name: r for r in children}
    assert by_name["K=2 oracle"].data.params["train.K"] == "2"
    assert by_name["K=2 oracle"].data.params["model.imputation"] == "oracle"
    for row in result.rows:
        assert by_name[row.trial].data.metrics["test_log_likelihood"] == row.test_log_likelihood
        assert "valid_bound" in by_name[row.trial].data.metrics

    table = result.outputs["markdown"].read_text()
    assert table.count("| done |") == 4
    assert result.outputs["figure"].stat().st_size > 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    artifacts = {a.path for a in client.list_artifacts(result.mlflow_run_id)}
    assert {"ranking.md", "ranking.csv", "figure1_left.png"} <= artifacts

    # Settings no trial reads (the classifier's) leave the finished sweep valid: it is
    # restored, nothing is trained again. A setting trials do read is refused.
    values = tiny_config(tmp_path / "run", data_root)
    reused = run_sweep(
        PipelineConfig.from_dict({**values, "classify": {"epochs": 2}}),
        load_space("tiny"),
        preset="tiny-test",
    )
    assert reused.restored and reused.complete
    assert [r.test_log_likelihood for r in reused.rows] == lls
    changed = {**values, "train": {**values["train"], "learning_rate": 1e-3}}
    with pytest.raises(ConfigError, match="other settings"):
        run_sweep(PipelineConfig.from_dict(changed), load_space("tiny"), preset="tiny-test")


def _sweep_command(space: Path, config: Path) -> list[str]:
    return [sys.executable, "-m", "tune.sweep", "--space", str(space), "--config", str(config)]


def _wait_for_a_finished_trial(process: subprocess.Popen[bytes], state_path: Path, timeout: float) -> str:
    """The id of the first trial Tune has marked finished (the callback records it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the sweep ended before it could be interrupted"
        if state_path.is_file():
            try:
                trials = json.loads(state_path.read_text()).get("trials", {})
            except ValueError:  # never half-written (atomic), but be safe
                trials = {}
            finished = [tid for tid, t in trials.items() if t.get("status") == "TERMINATED"]
            if finished:
                return finished[0]
        time.sleep(0.5)
    raise AssertionError("no trial finished in time")


def test_restore_after_interrupting_a_sweep_runs_only_the_unfinished_trials(
    _ray_session, data_root, tmp_path
):
    import ray

    ray.shutdown()  # the sweep runs as its own process with its own local Ray
    space = tmp_path / "space.yaml"
    space.write_text("grid: {train.K: [1, 2]}\nmax_concurrent_trials: 1\n")
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_config(tmp_path / "run", data_root)))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    sweep_dir = tmp_path / "run" / "sweeps" / "space"

    log = tmp_path / "interrupted.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            _sweep_command(space, config), cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT
        )
        try:
            first = _wait_for_a_finished_trial(process, sweep_dir / STATE_FILE, timeout=300)
            process.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves its state and stops
            code = process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
    # 1: "run the same command again to resume"
    assert code == 1, log.read_text(errors="replace")[-4000:]
    first_dir = next(p for p in (sweep_dir / "trials").iterdir() if p.name.endswith(first))
    finished_before = (first_dir / TRIAL_RESULT).read_text()

    rerun = subprocess.run(_sweep_command(space, config), cwd=REPO, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "restored" in rerun.stdout

    trial_dirs = sorted((sweep_dir / "trials").iterdir())
    assert len(trial_dirs) == 2 and all((d / TRIAL_RESULT).is_file() for d in trial_dirs)
    attempts = {d.name: len((d / ATTEMPTS).read_text().splitlines()) for d in trial_dirs}
    assert attempts[first_dir.name] == 1, attempts  # the finished trial was not run again
    assert (first_dir / TRIAL_RESULT).read_text() == finished_before
    assert sum(attempts.values()) <= 3, attempts  # at most the interrupted trial ran twice

    state = json.loads((sweep_dir / STATE_FILE).read_text())
    children = _child_runs(tmp_path / "run", state["sweep_run_id"])
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    ranking = (sweep_dir / "results" / "ranking.md").read_text()
    assert ranking.count("| done |") == 2
