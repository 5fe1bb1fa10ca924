"""Every trial an MLflow run, nested under the sweep's run: a Tune callback on the driver.

Logging happens in the sweep driver (one writer for the sqlite store), from Tune's trial
events: a nested run per trial with the trial's whole config as params, per-epoch metrics at
step = epoch, the test log-likelihoods when the trial ends, FINISHED / FAILED at the end.

Tune pickles its RunConfig (callbacks included) into the experiment so that `Tuner.restore`
gets them back; this callback therefore holds only the path of the sweep's state file, where
the sweep run, the experiment, the base config and trial id -> MLflow run id are kept, so a
restored sweep logs into the same runs instead of opening duplicates.

Why not Ray's own `ray.air.integrations.mlflow.MLflowLoggerCallback` (read in Ray 2.60): it
names each run after Tune's trial (`run_trial_1a2b3_00000`, not "K=50 zero"); it logs Tune's
`trial.config` (the variant dict and sampled keys), not the resolved `PipelineConfig` a trial
ran with, unscrubbed; it steps by `training_iteration`, so a restored trial's replayed epochs
are logged twice; it keeps trial -> run in memory, so after `Tuner.restore` every unfinished
trial opens a second run; and its `setup` raises when the store is unreachable, failing the
sweep, where `pipelines.tracking.RunLogger` (the project's one MLflow owner) degrades to a
warning. Nesting alone would fit (a `mlflow.parentRunId` tag). `setup_mlflow` logs from
inside each trial process: several writers on one sqlite store, and a dependency on MLflow in
every worker, which the driver-side callback avoids.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ray.tune import Callback

from pipelines.storage import write_json_atomic
from pipelines.tracking import RunLogger
from tune.space import trial_config
from tune.trial import overrides_of

# test_curve: only when evaluate.curve_rows is set (pipelines.train_worker.TEST_CURVE_KEY).
EPOCH_METRICS = ("train_bound", "valid_bound", "seconds", "images_per_second", "restores", "test_curve")
FINAL_METRICS = ("test_log_likelihood", "test_log_px_o", "train_seconds")
TRIAL_ID_TAG = "trial_id"


def read_state(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text())) if path.is_file() else {}


class TrialRuns(Callback):
    """Tune callback: one nested MLflow run per trial under the sweep run named in `state_path`."""

    def __init__(self, state_path: str | Path) -> None:
        self.state_path = Path(state_path)
        self._sweep: RunLogger | None = None
        self._runs: dict[str, RunLogger] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"state_path": self.state_path, "_sweep": None, "_runs": {}}

    # ---------------------------------------------------------------- state file

    def _state(self) -> dict[str, Any]:
        return read_state(self.state_path)

    def _remember(self, trial_id: str, **values: Any) -> None:
        state = self._state()
        trials = state.setdefault("trials", {})
        trials.setdefault(trial_id, {}).update(values)
        write_json_atomic(self.state_path, state)

    def _sweep_run(self) -> RunLogger:
        if self._sweep is None:
            state = self._state()
            uri, run_id, experiment_id = state["tracking_uri"], state["sweep_run_id"], state["experiment_id"]
            self._sweep = RunLogger.connect(uri, run_id, experiment_id)
        return self._sweep

    def _trial_run(self, trial: Any) -> RunLogger:
        """The trial's run: the one a previous (interrupted) sweep opened, else a new one."""
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        state = self._state()
        known = state.get("trials", {}).get(trial.trial_id, {}).get("run_id")
        sweep = self._sweep_run()
        label = str(trial.config["variant"]["label"])
        if known:
            run = sweep.reopen(known)
        else:
            run = sweep.child(label, {TRIAL_ID_TAG: trial.trial_id, "sweep": state.get("space", "")})
            config = trial_config(state["base"], overrides_of(trial.config))
            run.log_params({**config.to_dict(), "label": label, "trial_id": trial.trial_id})
            self._remember(trial.trial_id, run_id=run.run_id, label=label)
        self._runs[trial.trial_id] = run
        return run

    # ---------------------------------------------------------------- Tune events

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._trial_run(trial)

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        run = self._trial_run(trial)
        epoch = int(result.get("epoch", 0))
        final = {k: float(result[k]) for k in FINAL_METRICS if _number(result.get(k))}
        if final:
            run.log_metrics(final, step=epoch)
            # Also under the job's stable names (pipelines.tracking.headline): a trial and a job
            # line up in the same columns of the MLflow UI.
            run.log_headline(
                test_log_likelihood=final.get("test_log_likelihood"),
                seconds={"train": final["train_seconds"]} if "train_seconds" in final else None,
            )
            return
        logged = int(self._state().get("trials", {}).get(trial.trial_id, {}).get("epoch", 0))
        if epoch <= logged:  # an epoch a resumed trial replays from its checkpoint
            return
        run.log_metrics({k: float(result[k]) for k in EPOCH_METRICS if _number(result.get(k))}, step=epoch)
        self._remember(trial.trial_id, epoch=epoch)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Finished, or stopped by the scheduler: either way Tune will not run it again."""
        self._trial_run(trial).end("FINISHED")
        self._runs.pop(trial.trial_id, None)
        self._remember(trial.trial_id, status="TERMINATED")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        error = RuntimeError(f"trial {trial.trial_id} failed; see {trial.local_path}")
        self._trial_run(trial).end("FAILED", error)
        self._runs.pop(trial.trial_id, None)
        self._remember(trial.trial_id, status="ERROR")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


__all__ = ["TrialRuns", "read_state"]
