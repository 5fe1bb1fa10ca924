"""Ray Tune sweeps over K, the imputation function ι and friends; every trial a Ray Train run.

    python -m tune.sweep --space paper --config smoke        # Figure 1 (left), embedded local Ray
    ray job submit --working-dir . -- python -m tune.sweep --space wide --config paper

    driver: ingest each data setting once ─> Tuner(function trainable, grid × samples, ASHA?)
              ├─ trial: tune.trial.run_trial ── TorchTrainer (DDP workers) ── report per epoch
              ├─ TrialRuns callback: one MLflow run per trial, nested under the sweep run
              └─ ranking.md / ranking.csv / figure1_left.png  (also MLflow artifacts)

Everything lives under ``{run_dir}/sweeps/<space>``: ``data/`` (shards per data setting),
``trials/`` (one run_dir per trial: checkpoints, trial_result.json), ``tune/`` (Tune's
experiment state), ``results/`` and ``sweep_state.json``. Running the same command again after
an interruption (Ctrl-C, a killed job) restores the experiment: finished trials are kept,
unfinished ones continue from their last Ray Train checkpoint, errored ones are retried.
``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from missiwae.config import ConfigError
from missiwae.mnist_files import DataError
from pipelines.config import PipelineConfig, add_override_argument, load_pipeline_config
from pipelines.storage import write_json_atomic
from tune.space import SearchSpace, check_space, load_space, trial_config

EXPERIMENT = "tune"  # Tune's experiment directory under the sweep directory
STATE_FILE = "sweep_state.json"
# What a trial's result depends on. Settings outside these (imputation, missForest, the
# classifier, tracking, the report) can change without invalidating a finished sweep.
TRIAL_SECTIONS = ("data", "ingest", "model", "train", "scaling", "evaluate")


@dataclasses.dataclass(frozen=True)
class SweepResult:
    sweep_dir: Path
    rows: list[Any]  # tune.ranking.TrialRow, ranked
    outputs: dict[str, Path]  # ranking.md / .csv / .json, figure1_left.png
    restored: bool  # True: an interrupted sweep was continued
    complete: bool  # every trial finished (done, or stopped early by the scheduler)
    mlflow_run_id: str | None  # None: the MLflow store was unreachable (results are on disk)
    seconds: float


def sweep_dir_of(config: PipelineConfig, space: SearchSpace, name: str | None = None) -> Path:
    return config.run_path / "sweeps" / (name or space.name)


def trial_settings(base: dict[str, Any]) -> dict[str, Any]:
    """The TRIAL_SECTIONS of a config dict: equal for two configs whose trials are the same."""
    return {section: base.get(section) for section in TRIAL_SECTIONS}


def run_sweep(
    config: PipelineConfig,
    space: SearchSpace,
    *,
    name: str | None = None,
    fresh: bool = False,
    max_concurrent_trials: int | None = None,
    preset: str = "",
) -> SweepResult:
    """Run (or continue) the sweep; see the module docstring."""
    import ray.tune

    from pipelines.ingest import run_ingest
    from pipelines.runtime import ensure_ray
    from pipelines.tracking import Tracker
    from tune.ranking import trial_row, write_ranking
    from tune.tracking import TrialRuns, read_state
    from tune.trial import TRIAL_CPUS, SweepContext, data_run_dir, run_trial

    started = time.perf_counter()
    base = config.to_dict()
    check_space(space, base)  # a misspelled key fails here, before Ray starts
    sweep_dir = sweep_dir_of(config, space, name)
    if fresh:
        shutil.rmtree(sweep_dir, ignore_errors=True)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    ensure_ray()

    # Each distinct data setting is ingested once, here, so concurrent trials only read.
    for variant in space.variants():
        variant_config = trial_config(base, variant.overrides)
        run_ingest(dataclasses.replace(variant_config, run_dir=str(data_run_dir(sweep_dir, variant_config))))

    state_path = sweep_dir / STATE_FILE
    state = read_state(state_path)
    experiment_dir = sweep_dir / EXPERIMENT
    restored = ray.tune.Tuner.can_restore(str(experiment_dir))
    if restored and state.get("base") is not None and trial_settings(state["base"]) != trial_settings(base):
        raise ConfigError(
            f"{sweep_dir} holds a sweep run with other settings; use --fresh to start over or --name "
            "to keep both"
        )
    tracker = Tracker(
        config,
        run_name=f"sweep-{name or space.name}",
        tags={"sweep": space.name},
        resume_run_id=state.get("sweep_run_id") if restored else None,
    )
    with tracker:
        state.update(
            space=space.name,
            base=base,
            sweep_run_id=tracker.run_id,
            experiment_id=tracker.experiment_id,
            tracking_uri=tracker.tracking_uri,
        )
        if not restored:
            state["trials"] = {}
            tracker.log_params({"sweep.space": space.name, "sweep.description": space.description})
            tracker.log_dict(dataclasses.asdict(space), "search_space.json")
        write_json_atomic(state_path, state)

        trainable = ray.tune.with_resources(
            ray.tune.with_parameters(run_trial, sweep=SweepContext(base=base, sweep_dir=str(sweep_dir))),
            {"CPU": TRIAL_CPUS},
        )
        if restored:
            tuner = ray.tune.Tuner.restore(
                str(experiment_dir),
                trainable,
                resume_unfinished=True,
                restart_errored=True,
                param_space=space.param_space(),
            )
        else:
            tuner = ray.tune.Tuner(
                trainable,
                param_space=space.param_space(),
                tune_config=ray.tune.TuneConfig(
                    num_samples=space.num_samples,
                    scheduler=_scheduler(space),
                    max_concurrent_trials=max_concurrent_trials or space.max_concurrent_trials,
                ),
                run_config=ray.tune.RunConfig(
                    name=EXPERIMENT,
                    storage_path=str(sweep_dir),
                    callbacks=[TrialRuns(state_path)],
                    failure_config=ray.tune.FailureConfig(max_failures=1),
                    verbose=1,
                ),
            )
        previous_sigint = signal.getsignal(signal.SIGINT)
        try:
            grid = tuner.fit()
        finally:
            # Tune leaves its own SIGINT handler installed: a later Ctrl-C in the caller (the
            # report's Table 1 stage, say) would only print Tune's "stopping" warning.
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, previous_sigint)

        statuses = {tid: t.get("status", "") for tid, t in read_state(state_path).get("trials", {}).items()}
        rows = []
        for index in range(len(grid)):
            result = grid[index]
            trial_id = str((result.metrics or {}).get("trial_id", ""))
            status = "ERROR" if result.error is not None else statuses.get(trial_id, "")
            rows.append(trial_row(base, result.config or {}, result.metrics or {}, status, trial_id))
        title = f"{space.description} ({preset} preset)" if preset else space.description
        outputs = write_ranking(rows, sweep_dir / "results", title)
        for path in outputs.values():
            tracker.log_artifact(path)
        # Tune creates grid trials lazily: a Ctrl-C before the last one exists leaves it out of
        # the grid altogether, so a sweep is complete only with every trial of the space in it.
        expected = len(space.variants()) * space.num_samples
        complete = len(rows) == expected and all(
            r.status == "done" or r.status.startswith("stopped early") for r in rows
        )
        tracker.log_metrics(
            {"trials_done": float(sum(r.status == "done" for r in rows)), "trials_total": float(len(rows))}
        )
        if not complete:
            tracker.set_tags({"sweep_status": "incomplete: run the same command again to resume"})

    from tune.ranking import rank

    return SweepResult(
        sweep_dir=sweep_dir,
        rows=rank(rows),
        outputs=outputs,
        restored=restored,
        complete=complete,
        mlflow_run_id=tracker.run_id,
        seconds=time.perf_counter() - started,
    )


def _scheduler(space: SearchSpace) -> Any:
    if space.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="epoch",
        metric="valid_bound",
        mode="max",
        grace_period=space.grace_period,
        reduction_factor=space.reduction_factor,
    )


def main(argv: list[str] | None = None) -> int:
    from pipelines.runtime import configure_ray_auth

    configure_ray_auth()  # before run_sweep imports Ray: Ray reads its auth settings on import
    parser = argparse.ArgumentParser(
        prog="python -m tune.sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--space", default="paper", help="search space preset (paper, wide, tiny) or YAML")
    parser.add_argument("--config", default="smoke", help="pipeline preset (smoke, paper) or YAML/JSON")
    add_override_argument(parser)
    parser.add_argument("--name", default=None, help="sweep directory name (default: the space's)")
    parser.add_argument("--fresh", action="store_true", help="discard an earlier sweep of that name")
    parser.add_argument("--max-concurrent", type=int, default=None, help="trials at once")
    args = parser.parse_args(argv)
    try:
        config = load_pipeline_config(args.config, args.overrides)
        space = load_space(args.space)
        result = run_sweep(
            config,
            space,
            name=args.name,
            fresh=args.fresh,
            max_concurrent_trials=args.max_concurrent,
            preset=Path(args.config).stem,
        )
    except (ConfigError, DataError) as error:
        print(f"tune.sweep: error: {error}", file=sys.stderr)
        return 2
    print()
    print(result.outputs["markdown"].read_text())
    restored = "restored, " if result.restored else ""
    print(f"results: {result.sweep_dir / 'results'} ({restored}{result.seconds:.0f} s)")
    print(f"MLflow: experiment '{config.tracking.experiment}', sweep run {result.mlflow_run_id}")
    if not result.complete:
        print("the sweep did not finish every trial: run the same command again to resume it")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
