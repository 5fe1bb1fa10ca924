"""One sweep trial: a Tune function trainable that runs the pipeline's Ray Train stage.

    Tune trial (this function, a tiny CPU share)
      └─ pipelines.train.run_training ── TorchTrainer (Train V2) ── N DDP workers
           on_epoch ──> tune.report({epoch, train_bound, valid_bound, ...})   ASHA reads these
      └─ test log-likelihood on the driver: complete test images (Figure 1 left) and log p(x_o)
      └─ tune.report(final) and {trial_dir}/trial_result.json (atomic)

Ray 2.60's Train V2 cannot be handed to a Tuner directly; a function trainable that builds the
TorchTrainer is the supported shape. A trial's directory is named after its label and Tune
trial id, which Tune keeps on restore: a resumed trial calls `run_training` on the same
run_dir, and Train V2 continues the same-named run from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from pipelines.config import PipelineConfig
from pipelines.ingest import ingest_fingerprint
from pipelines.storage import write_json_atomic
from tune.space import trial_config

TRIAL_RESULT = "trial_result.json"
ATTEMPTS = "attempts.jsonl"  # one line per start of the trial function (restores show up here)
TRIAL_CPUS = 0.1  # the trial process only waits on its TorchTrainer; the workers ask for theirs


@dataclasses.dataclass(frozen=True)
class SweepContext:
    """What every trial needs besides its own parameters (handed over by tune.with_parameters)."""

    base: dict[str, Any]  # the PipelineConfig dict the overrides apply to
    sweep_dir: str


def overrides_of(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's dotted overrides: its variant's, then the sampled keys (Tune's flat params)."""
    sampled = {k: v for k, v in params.items() if k != "variant"}
    return {**params["variant"]["overrides"], **sampled}


def data_run_dir(sweep_dir: str | Path, config: PipelineConfig) -> Path:
    """Where the shards of this data setting live: shared by every trial with the same data."""
    return Path(sweep_dir) / "data" / ingest_fingerprint(config)[:16]


def trial_dir_name(label: str, trial_id: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9=.]+", "-", label).strip("-").lower()
    return f"{slug}-{trial_id}"


def run_trial(params: dict[str, Any], sweep: SweepContext) -> None:
    """The function trainable: train, report per epoch, evaluate, report the final result."""
    import ray.data
    import ray.tune

    from pipelines.ingest import run_ingest
    from pipelines.train import evaluate_test_log_likelihood, run_training

    # The trial's own Data context: progress bars from every trial would bury the sweep's log.
    ray.data.DataContext.get_current().enable_progress_bars = False
    label = str(params["variant"]["label"])
    trial_id = ray.tune.get_context().get_trial_id()
    config = trial_config(sweep.base, overrides_of(params))
    trial_dir = Path(sweep.sweep_dir) / "trials" / trial_dir_name(label, trial_id)
    config = dataclasses.replace(config, run_dir=str(trial_dir))
    trial_dir.mkdir(parents=True, exist_ok=True)
    with (trial_dir / ATTEMPTS).open("a") as attempts:
        attempts.write(json.dumps({"started": time.time(), "pid": os.getpid()}) + "\n")

    # Shards were written by the sweep driver before any trial started; this only reads the
    # manifest (a trial with a sampled data setting writes its own, under a lock).
    ingest = run_ingest(dataclasses.replace(config, run_dir=str(data_run_dir(sweep.sweep_dir, config))))

    def report_epoch(entry: dict[str, Any]) -> None:
        ray.tune.report({k: float(v) for k, v in entry.items() if v is not None})

    trained = run_training(config, ingest, on_epoch=report_epoch)
    complete_ll = evaluate_test_log_likelihood(config, ingest, trained.checkpoint_dir, complete=True)
    result = {
        "label": label,
        "trial_id": trial_id,
        "overrides": overrides_of(params),
        "epochs": len(trained.history),
        "train_bound": trained.history[-1]["train_bound"],
        "valid_bound": trained.history[-1]["valid_bound"],
        "test_log_likelihood": complete_ll,
        "test_log_px_o": trained.test_log_likelihood,
        "train_seconds": trained.seconds,
        "checkpoint_dir": str(trained.checkpoint_dir),
    }
    write_json_atomic(trial_dir / TRIAL_RESULT, result)
    ray.tune.report(
        {
            "epoch": float(len(trained.history)),
            "valid_bound": float(result["valid_bound"]),
            "test_log_likelihood": complete_ll,
            "test_log_px_o": trained.test_log_likelihood,
            "train_seconds": trained.seconds,
        }
    )


__all__ = ["ATTEMPTS", "TRIAL_CPUS", "TRIAL_RESULT", "SweepContext", "data_run_dir", "run_trial"]
