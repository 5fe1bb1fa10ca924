"""Faults survived, on a real local Ray cluster with tiny settings: an imputation actor killed
mid-job, the whole job killed (SIGKILL) during imputation and run again, an output directory
that cannot be written, a disk that fills up mid-write, and the MLflow store going away.

(A training worker killed mid-epoch: tests/pipeline/test_pipeline_train.py.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.config import ImputeStageConfig, MissForestConfig, PipelineConfig
from pipelines.impute import MANIFEST, dataset_names, read_dataset, run_imputation
from pipelines.storage import OutputError
from tests.conftest import REPO
from tests.pipeline.test_pipeline_impute import NUM_IMPUTE, Inputs, make_config, make_inputs

M = 3  # imputations per row in make_config


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Inputs:
    """test_pipeline_impute's: a briefly trained checkpoint and 200 rows in 2 Parquet shards."""
    return make_inputs(tmp_path_factory.mktemp("fault_inputs"), data_root)


def content_checksums(directories: dict[str, Path]) -> dict[str, str]:
    """name -> sha256 of the dataset's rows sorted by row_id (file names and Parquet layout
    differ between runs; the content must not)."""
    sums = {}
    for name, directory in directories.items():
        row_id, label, pixels = read_dataset(directory)
        digest = hashlib.sha256()
        for array in (row_id, label, pixels):
            digest.update(np.ascontiguousarray(array).tobytes())
        sums[name] = digest.hexdigest()
    return sums


# ------------------------------------------------------------------------ an actor killed


def test_an_imputation_actor_killed_mid_job_is_restarted_and_every_row_is_imputed_exactly_once(
    ray_cluster: Any,
    inputs: Inputs,
    tmp_path: Path,
) -> None:
    no_forest = MissForestConfig(enabled=False)
    clean = run_imputation(
        make_config(tmp_path / "clean", missforest=no_forest), inputs.shards, inputs.checkpoint
    )
    marker = tmp_path / "actor-died"
    killed = run_imputation(
        make_config(tmp_path / "killed", missforest=no_forest),
        inputs.shards,
        inputs.checkpoint,
        _fault_injection=str(marker),
    )

    assert marker.is_file()  # an actor did kill itself, at the start of its second batch
    assert killed.metrics["train/num_rows"] == NUM_IMPUTE
    for name in dataset_names(M, missforest=False):
        row_id, _, pixels = read_dataset(killed.datasets[name])
        assert len(row_id) == NUM_IMPUTE == len(np.unique(row_id)), name  # no duplicates, no gaps
        np.testing.assert_array_equal(row_id, inputs.row_id, err_msg=name)
        np.testing.assert_array_equal(pixels[inputs.mask], inputs.pixels[inputs.mask].astype(np.float32))
    # The retried batch drew the same random numbers: the output equals an undisturbed run's.
    assert content_checksums(killed.datasets) == content_checksums(clean.datasets)


# ---------------------------------------------------------------- the whole job killed and rerun

_DRIVER = """
import json, os, sys, time
sys.path.insert(0, {repo!r})
from pipelines import impute
from pipelines.config import PipelineConfig
from pipelines.impute import run_imputation

config = PipelineConfig.from_dict(json.loads({config!r}))
written = []
original = impute._write_dataset

def write_then_hang(dataset, directory):
    original(dataset, directory)
    written.append(directory)
    if len(written) == 2:  # two datasets of the split are on disk, the rest are not
        open({marker!r}, "w").write("\\n".join(map(str, written)))
        time.sleep(600)  # the test kills the process here

impute._write_dataset = write_then_hang
run_imputation(config, {{"train": [{shards}]}}, {checkpoint!r})
"""


def test_a_job_killed_during_imputation_reuses_finished_work_and_ends_identical_to_a_clean_run(
    ray_cluster: Any,
    inputs: Inputs,
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path / "run", missforest=MissForestConfig(enabled=False))
    config = dataclasses.replace(config, impute_stage=ImputeStageConfig(num_actors=2, cpus_per_actor=0.5))
    marker = tmp_path / "two-datasets-written"
    script = _DRIVER.format(
        repo=str(REPO),
        config=json.dumps(config.to_dict()),
        marker=str(marker),
        shards=", ".join(repr(str(p)) for p in inputs.shards["train"]),
        checkpoint=str(inputs.checkpoint),
    )
    # The driver joins this test's cluster (same token, same address), as `ray job submit` would.
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    job = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=REPO, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert marker.exists(), f"the job did not reach the imputation writes (exit {job.poll()})"
        os.killpg(job.pid, signal.SIGKILL)  # the driver and anything it forked
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=60)
    assert job.returncode == -signal.SIGKILL

    imputed = config.run_path / "imputed"
    staged = [p for p in (imputed / ".staging").iterdir()]
    assert len(staged) == 1 and len(list(staged[0].iterdir())) == 2  # killed mid-split ...
    assert not (imputed / "train").exists()  # ... and nothing half-written is visible

    again = run_imputation(config, inputs.shards, inputs.checkpoint)
    assert again.reused == {"train": False}  # the unfinished split was redone ...
    assert not list((imputed / ".staging").iterdir())  # ... and the killed run's leftovers swept
    assert (imputed / "train" / MANIFEST).is_file()
    reused = run_imputation(config, inputs.shards, inputs.checkpoint)
    assert reused.reused == {"train": True}  # finished work is reused as it is

    clean = run_imputation(
        dataclasses.replace(config, run_dir=str(tmp_path / "clean")), inputs.shards, inputs.checkpoint
    )
    assert content_checksums(again.datasets) == content_checksums(clean.datasets)
    assert list(again.datasets) == dataset_names(M, missforest=False)


# ---------------------------------------------------------------------- outputs that cannot be written


def test_a_run_dir_that_cannot_be_written_fails_before_any_stage_runs(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    from pipelines import full, runtime

    def no_ray(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("Ray must not start for an unusable run_dir")

    monkeypatch.setattr(runtime, "ensure_ray", no_ray)
    blocker = tmp_path / "a_file"
    blocker.write_text("a regular file where run_dir's parent should be")
    # A path under a regular file fails for every user, root included (chmod would not stop root).
    code = full.main(["--config", "smoke", "--set", f"run_dir={blocker / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert (
        "error:" in err and "not writable" in err and str(blocker / "run") in err and "Traceback" not in err
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits; the case above covers root")
def test_a_read_only_run_dir_fails_before_any_stage_runs(tmp_path: Path) -> None:
    from pipelines.storage import ensure_writable

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="not writable"):
            ensure_writable(locked / "run")
        assert not list(locked.iterdir())
    finally:
        locked.chmod(0o755)


def test_a_full_disk_while_imputing_is_a_clear_error_and_leaves_nothing_partial_visible(
    ray_cluster: Any,
    inputs: Inputs,
    tmp_path: Path,
    monkeypatch,
) -> None:
    import errno

    from pipelines import impute

    original = impute._write_dataset
    calls: list[Path] = []

    def fills_the_disk(dataset: Any, directory: Path) -> None:
        calls.append(directory)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / "part.parquet"))
        original(dataset, directory)

    monkeypatch.setattr(impute, "_write_dataset", fills_the_disk)
    config = make_config(tmp_path / "run", missforest=MissForestConfig(enabled=False))
    with pytest.raises(OutputError, match="No space left on device") as raised:
        run_imputation(config, inputs.shards, inputs.checkpoint)
    message = str(raised.value)
    assert "imputed split 'train'" in message and "nothing partial is visible" in message
    imputed = config.run_path / "imputed"
    assert [p.name for p in imputed.iterdir() if not p.name.startswith(".")] == []
    assert not list((imputed / ".staging").iterdir())


# ------------------------------------------------------------------------ MLflow gone, job goes on


def test_the_whole_job_finishes_with_results_on_disk_when_mlflow_is_unreachable(
    ray_cluster: Any, data_root: Path, tmp_path: Path, monkeypatch
) -> None:
    from pipelines.full import run
    from pipelines.tracking import TrackingWarning

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # one quick refusal, not minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    config = tiny_job(tmp_path / "run", data_root, tracking_uri="http://127.0.0.1:9")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seconds = run(config)
    assert set(seconds) >= {"ingest", "train", "impute", "classify", "total"}
    results = config.run_path / "results"
    assert (results / "table1.md").is_file() and (results / "table1.csv").is_file()
    assert (config.run_path / "model" / "model.pt").is_file()
    assert (config.run_path / "imputed" / "train" / MANIFEST).is_file()
    lost = [str(w.message) for w in caught if issubclass(w.category, TrackingWarning)]
    assert len(lost) == 1, lost
    for what in (
        "the parent run",
        "train: metrics",
        "impute: artifact figure3_imputations.png",
        "classify: artifact table1.md",
    ):
        assert what in lost[0], lost[0]


def tiny_job(run_dir: Path, data_root: Path, tracking_uri: str) -> PipelineConfig:
    """The whole job at its smallest: seconds per stage on 2 cores."""
    return PipelineConfig.from_dict(
        {
            "run_dir": str(run_dir),
            "data": {"data_dir": str(data_root), "num_train": 300, "num_valid": 100, "num_test": 100},
            "ingest": {"num_shards": 2},
            "model": {"hidden": [32], "latent_dim": 4},
            "train": {"K": 5, "batch_size": 50, "epochs": 1, "seed": 0},
            "scaling": {"num_workers": 1, "cpus_per_worker": 0.5, "max_failures": 1},
            "evaluate": {"num_samples": 10, "batch_size": 100},
            "impute": {"num_samples": 10, "num_imputations": 2, "batch_size": 100, "seed": 0},
            "impute_stage": {"num_actors": 1, "cpus_per_actor": 0.5},
            "missforest": {"enabled": False},
            "classify": {"num_seeds": 1, "epochs": 1, "batch_size": 100, "patience": 1},
            "tracking": {"experiment": "faults", "tracking_uri": tracking_uri},
        }
    )
