"""The end-to-end job: ingest -> train -> impute -> classify, every stage an MLflow run.

    python pipelines/full.py --config smoke                 # embedded local Ray, sqlite MLflow
    ray job submit --working-dir . -- python pipelines/full.py --config paper

`--config` takes a preset name (pipelines/configs/*.yaml) or a YAML/JSON path; `--set
section.key=value` overrides any setting (unknown keys are errors). The console shows one line
per stage as it starts and ends (seconds and its key figure) and progress bars for training
epochs, imputed rows and classifier runs (pipelines.console); Ray's and MLflow's own log
lines and the Ray workers' output go to {run_dir}/logs/ray.log instead, or also to the console
with `--verbose`. Ends by printing the Table 1 layout and where to look in MLflow.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

# Run as a script (`python pipelines/full.py`, also under `ray job submit`): make the
# repository root importable so `pipelines` resolves to this checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # before torch is imported: a wrong python or no MNIST fails in a second
    from pipelines.console import exit_quietly_on_interrupt
    from pipelines.preflight import run_or_exit

    exit_quietly_on_interrupt("pipelines/full.py")  # Ctrl-C while importing: one line; until main()

    run_or_exit(sys.argv[1:], "pipelines/full.py")

from missiwae.config import ConfigError
from missiwae.mnist_files import DataError
from missiwae.runs import RunError
from missiwae.training import TrainingDiverged
from pipelines.config import PipelineConfig, add_override_argument, load_pipeline_config
from pipelines.console import (
    EXIT_INTERRUPTED,
    Console,
    raise_on_interrupt,
    reapply_routing,
    route_library_logs,
    say_interrupted,
)
from pipelines.runtime import configure_ray_auth, exit_now, ray_is_up, set_log_to_driver, stop_ray

MANIFEST_NAME = "_MANIFEST.json"
STAGES = ("ingest", "train", "impute", "classify")
TABLE_STAGES = ("ingest", "train", "impute")  # a user's table: no classifier
LOG_FILE = Path("logs") / "ray.log"  # under run_dir: Ray's, MLflow's and the workers' log lines
PROG = "pipelines/full.py"
EXIT_USER_ERROR = 2
# pipelines.tracking.runs.TRACKING_NOTE_PREFIX, not imported: that would import MLflow for a
# config error (tests/pipeline/test_interrupt.py checks they agree).
TRACKING_NOTE = "TrackingWarning: "
# What a user can fix (settings, data files, paths; OSError covers missing files, an unwritable
# run_dir and a refused output path; a learning rate that made training diverge): one line and
# status 2. Anything else is a bug.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, DataError, RunError, TrainingDiverged, OSError)


def run(config: PipelineConfig, console: Console | None = None) -> dict[str, float]:
    """Run every stage, each announced on `console` (default: stdout); returns the wall time
    per stage in seconds."""
    if config.data.path is not None:
        return run_table(config, console or Console(TABLE_STAGES))
    console = console or Console(STAGES)
    from pipelines.classify import format_table, run_classification, write_table
    from pipelines.impute import run_imputation
    from pipelines.runtime import ensure_ray
    from pipelines.shards import load_split_numpy
    from pipelines.storage import ensure_writable
    from pipelines.tracking import Tracker, pixel_columns, ui_command, ui_url

    ensure_writable(config.run_path)  # a bad run_dir fails now, not after training
    ensure_ray()
    reapply_routing()  # MLflow configured its loggers when imported above
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    with Tracker(config, run_name=f"full-{Path(config.run_dir).name}") as tracker:
        ingest = _ingest_stage(tracker, config, seconds, console)

        trained, ensemble = _train_stage(tracker, config, ingest, seconds, console)

        with console.stage("impute", _impute_doing(config)) as shown, tracker.stage("impute") as stage:
            clock = time.perf_counter()
            rows_bar = shown.progress(None, "impute rows", unit="row")
            imputed = run_imputation(
                config,
                ingest.shards,
                trained.checkpoint_dir,
                ensemble_dirs=ensemble,
                on_progress=lambda done, total: _advance(rows_bar, done, total),
            )
            seconds["impute"] = time.perf_counter() - clock
            shown.result = _accuracy_figure(imputed.metrics, imputed.reused)
            stage.log_metrics({**imputed.metrics, "stage_seconds": seconds["impute"]})
            stage.log_params({f"dataset.{name}": str(path) for name, path in imputed.datasets.items()})
            _log_figures(stage, ingest, trained.checkpoint_dir, imputed.datasets["missiwae_single"])

        doing = f"{len(imputed.datasets)} datasets x {config.classify.num_seeds} seeds, Ray tasks"
        with console.stage("classify", doing) as shown, tracker.stage("classify") as stage:
            clock = time.perf_counter()
            test_x, _, test_labels, _ = load_split_numpy(ingest, "test")
            bar = shown.progress(None, "classifier runs", unit="run")
            result = run_classification(
                config,
                dict(imputed.datasets),
                (test_x, test_labels),
                on_progress=lambda done, total: _advance(bar, done, total),
            )
            seconds["classify"] = time.perf_counter() - clock
            shown.result = "test accuracy " + ", ".join(
                f"{row.dataset} {row.accuracy_mean:.4f}" for row in result.summary
            )
            tables = write_table(result, config.run_path / "results")
            for path in tables.values():
                stage.log_artifact(path)
            stage.log_metrics({"stage_seconds": seconds["classify"]})

        # The model, then the headline numbers under stable names (pipelines.tracking.headline).
        tracker.log_imputer(
            trained.checkpoint_dir, _features(config, pixel_columns(config.model.num_features))
        )
        seconds["total"] = time.perf_counter() - started
        tracker.log_headline(
            summary=result.summary,
            impute=imputed.metrics,
            test_log_likelihood=trained.test_log_likelihood,
            seconds=seconds,
        )
        for path in tables.values():
            tracker.log_artifact(path)

    print()
    print(format_table(result))
    print()
    print("stage times: " + ", ".join(f"{name} {value:.0f} s" for name, value in seconds.items()))
    print(f"results: {config.run_path / 'results'}")
    if tracker.run_id is not None and tracker.health.ok:
        print(f"MLflow: experiment '{config.tracking.experiment}', run {tracker.run_id}")
        print(f"  browse with: {ui_command(config)}")
        print(f"  then open: {ui_url(tracker.experiment_id)}")
    else:  # the store failed: the TrackingWarning above says what was not logged
        print("MLflow: not (fully) logged, see the TrackingWarning above; the results are on disk")
    return seconds


def run_table(config: PipelineConfig, console: Console | None = None) -> dict[str, float]:
    """A user's table (data.path): ingest -> train -> impute; the MNIST-only parts (missForest
    on pixels, the classifier, digit figures, accuracy against a known truth) are skipped."""
    console = console or Console(TABLE_STAGES)
    from pipelines.table_source import tabular_model_config
    from pipelines.tabular import run_tabular_imputation
    from pipelines.tracking import Tracker, ui_command, ui_url

    # Ray starts inside the stages, after the table has been read and checked.
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    reapply_routing()  # MLflow configured its loggers when imported above
    with Tracker(config, run_name=f"table-{Path(config.run_dir).name}") as tracker:
        ingest = _ingest_stage(tracker, config, seconds, console, log_table=True)

        config = tabular_model_config(config, ingest)  # num_features, column_types from the table
        trained, ensemble = _train_stage(tracker, config, ingest, seconds, console)

        with console.stage("impute", _impute_doing(config)) as shown, tracker.stage("impute") as stage:
            clock = time.perf_counter()
            imputed = run_tabular_imputation(config, ingest, trained.checkpoint_dir, ensemble)
            seconds["impute"] = time.perf_counter() - clock
            shown.result = f"{len(imputed.datasets)} completed tables written"
            stage.log_metrics({**imputed.metrics, "stage_seconds": seconds["impute"]})
            stage.log_params({f"dataset.{name}": str(path) for name, path in imputed.datasets.items()})
            stage.log_artifact(imputed.directory / MANIFEST_NAME)

        assert ingest.table is not None
        info = ingest.table
        tracker.log_imputer(
            trained.checkpoint_dir,
            _features(config, info["columns"], info["mean"], info["scale"], info.get("levels")),
        )
        seconds["total"] = time.perf_counter() - started
        tracker.log_headline(test_log_likelihood=trained.test_log_likelihood, seconds=seconds)

    table = ingest.table
    print()
    print(
        f"table: {table['source']} ({table['num_rows']} rows x {len(table['columns'])} columns, "
        f"{table['num_missing']} missing cells)"
    )
    print(f"test log p(x_o) (standardised units): {trained.test_log_likelihood:.3f}")
    single = imputed.datasets["missiwae_single"]
    as_csv = f" and {single.name}.csv" if single.with_suffix(".csv").is_file() else ""
    print(f"completed table: {single}/ (Parquet partitions){as_csv}; {len(imputed.datasets) - 1} multiple")
    print("  imputations beside it; pipelines.table_output.read_imputed_table reads one in the file's order")
    print("stage times: " + ", ".join(f"{name} {value:.0f} s" for name, value in seconds.items()))
    print(f"MLflow: experiment '{config.tracking.experiment}', run {tracker.run_id}")
    print(f"  browse with: {ui_command(config)}")
    print(f"  then open: {ui_url(tracker.experiment_id)}")
    return seconds


def _ingest_stage(
    tracker: Any,
    config: PipelineConfig,
    seconds: dict[str, float],
    console: Console,
    log_table: bool = False,
) -> Any:
    """The ingest stage as a nested run: rows per split, reuse, time; with `log_table`, the
    user's table too (size, source, and table.json: columns, types, standardisation)."""
    from pipelines.ingest import run_ingest

    if config.data.path:
        doing = f"the table {config.data.path} -> Parquet shards, a piece of it at a time"
    else:
        doing = f"MNIST, missing rate {config.data.missing_rate} -> {config.ingest.num_shards} Parquet shards"
    with console.stage("ingest", doing) as shown, tracker.stage("ingest") as stage:
        clock = time.perf_counter()
        ingest = run_ingest(config)
        seconds["ingest"] = time.perf_counter() - clock
        rows = ", ".join(f"{count} {split}" for split, count in ingest.num_rows.items())
        shown.result = f"{rows} rows {'reused' if ingest.reused else 'written'}"
        stage.log_metrics({f"rows_{split}": rows for split, rows in ingest.num_rows.items()})
        stage.log_metrics({"reused": float(ingest.reused), "stage_seconds": seconds["ingest"]})
        stage.log_params({"data_dir": str(ingest.data_dir)})
        if log_table:
            assert ingest.table is not None
            table = ingest.table
            stage.log_metrics(
                {"num_missing": float(table["num_missing"]), "num_columns": float(len(table["columns"]))}
            )
            stage.log_params({"source": table["source"]})
            stage.log_dict(table, "table.json")
    return ingest


def _train_stage(
    tracker: Any, config: PipelineConfig, ingest: Any, seconds: dict[str, float], console: Console
) -> tuple[Any, list[Path]]:
    """The Ray Train stage as a nested run: per-epoch metrics live (and an epoch bar), then
    the test log-likelihood. With impute.bootstrap_models = B > 1 the B bootstrap members
    train at the same time (a bar of finished members); returns (TrainResult, their
    checkpoint directories, [] for B = 1)."""
    from pipelines.train import run_training, start_bootstrap_training

    train, num_members = config.train, config.impute.bootstrap_models
    doing = f"{train.epochs} epochs, K={train.K}, {config.scaling.num_workers} Ray Train workers"
    if num_members > 1:
        doing += f", + {num_members} bootstrap models at once"
    with console.stage("train", doing) as shown, tracker.stage("train") as stage:
        clock = time.perf_counter()
        wait_for_members = None
        member_bounds: dict[int, float] = {}
        if num_members > 1:
            member_bar = shown.progress(num_members, "bootstrap models", unit="model")

            def on_member(b: int, history: list[dict[str, Any]]) -> None:
                member_bounds[b] = float(history[-1]["valid_bound"])
                member_bar.update(1)

            wait_for_members = start_bootstrap_training(config, ingest, on_member=on_member)
        bar = shown.progress(train.epochs, "train epochs", unit="epoch")

        def on_epoch(entry: dict[str, Any]) -> None:
            stage.log_metrics(
                {k: float(v) for k, v in entry.items() if k != "epoch" and v is not None},
                step=int(entry["epoch"]),
            )
            bar.set_postfix_str(_bounds(entry), refresh=False)
            bar.update(1)

        trained = run_training(config, ingest, on_epoch=on_epoch)
        ensemble = wait_for_members() if wait_for_members is not None else []
        seconds["train"] = time.perf_counter() - clock
        stopped = ""
        if trained.stopped_at is not None:  # early stopping: the published weights are the best epoch's
            stopped = f" (stopped at epoch {trained.stopped_at}, best epoch {trained.best_epoch})"
        shown.result = (
            f"final {_bounds(trained.history[-1])}{stopped}, "
            f"test log p(x_o) {trained.test_log_likelihood:.2f}"
        )
        metrics = {"test_log_likelihood": trained.test_log_likelihood, "stage_seconds": seconds["train"]}
        if trained.best_epoch is not None:
            metrics["best_epoch"] = float(trained.best_epoch)
        if ensemble:
            bounds = [member_bounds[b] for b in sorted(member_bounds)]
            shown.result += (
                f"; {len(ensemble)} bootstrap models, final valid {min(bounds):.2f} to {max(bounds):.2f}"
            )
            metrics.update({f"bootstrap_valid_bound_{b:02d}": bound for b, bound in enumerate(bounds)})
        stage.log_metrics(metrics)
        stage.log_params({"checkpoint_dir": str(trained.checkpoint_dir)})
    return trained, ensemble


def _bounds(entry: dict[str, Any]) -> str:
    """An epoch's bounds as the console shows them (the validation bound may be missing)."""
    text = f"train bound {entry['train_bound']:.2f}"
    return text if entry.get("valid_bound") is None else f"{text}, valid {entry['valid_bound']:.2f}"


def _impute_doing(config: PipelineConfig) -> str:
    impute, stage = config.impute, config.impute_stage
    ensemble = (
        f" (and from {impute.bootstrap_models} bootstrap models)" if impute.bootstrap_models > 1 else ""
    )
    return (
        f"L={impute.num_samples} importance samples, M={impute.num_imputations} imputations{ensemble}, "
        f"{stage.num_actors} actors"
    )


def _accuracy_figure(metrics: dict[str, float], reused: dict[str, bool]) -> str:
    """Imputation accuracy per method on the first imputed split, e.g. 'imputation accuracy
    (train) missiwae_single 0.912, zero 0.867'."""
    accuracies = {key: value for key, value in metrics.items() if "/accuracy/" in key}
    if not accuracies:
        return "reused" if all(reused.values()) else ""
    split = next(iter(accuracies)).split("/")[0]
    parts = [  # per copy (missiwae_multiple_00, ...) stays in the stage's metrics
        f"{name} {value:.4f}"
        for key, value in accuracies.items()
        if key.startswith(f"{split}/") and not re.search(r"_\d+$", name := key.rsplit("/", 1)[1])
    ]
    return (
        f"imputation accuracy ({split}) " + ", ".join(parts) + (" (reused)" if all(reused.values()) else "")
    )


def _advance(bar: Any, done: int, total: int) -> None:
    """Move a bar whose total is only known once the work is planned."""
    if bar.total != total:
        bar.total = total
    bar.update(done - bar.n)


def _features(
    config: PipelineConfig, columns: Any, mean: Any = None, scale: Any = None, levels: Any = None
) -> Any:
    """What the logged MLflow model needs besides the checkpoint: the frame's columns, the
    table's standardisation and its columns' levels, and L and the seed of its SNIS imputation."""
    from pipelines.tracking import Features

    return Features.for_table(columns, config.impute.num_samples, config.impute.seed, mean, scale, levels)


def _log_figures(stage: Any, ingest: Any, checkpoint_dir: Path, single_dir: Path) -> None:
    """Figure 2 (samples) and Figure 3 (incomplete training digits beside their imputations)."""
    from missiwae.training import load_model
    from pipelines import figures
    from pipelines.impute import read_dataset
    from pipelines.shards import load_split_numpy

    x, mask, _, _ = load_split_numpy(ingest, "train")
    _, _, imputed = read_dataset(single_dir)
    for figure, name in (
        (figures.samples_figure(load_model(checkpoint_dir)), "figure2_samples.png"),
        (figures.imputations_figure(x, mask, imputed), "figure3_imputations.png"),
    ):
        stage.log_figure(figure, name)
        figures.close(figure)


def main(argv: list[str] | None = None) -> int:
    """Run the job; returns the exit status: 0 done, 2 a user error (one line on stderr), 130
    interrupted (one line; finished stages and epochs are kept, so running again resumes). Any
    other exception is a bug and propagates with its traceback."""
    raise_on_interrupt()
    try:
        return _main(argv)
    except KeyboardInterrupt:
        say_interrupted(PROG)
        return EXIT_INTERRUPTED


def _main(argv: list[str] | None) -> int:
    # Token auth for the embedded Ray is set in the environment, which Ray reads only when it is
    # first imported: so here, before any stage imports it.
    configure_ray_auth()
    args = _parser().parse_args(argv)
    try:
        preset = args.config or ("table" if args.data else "smoke")
        from pipelines.table_files import is_uri

        where = args.data if args.data is None or is_uri(args.data) else str(Path(args.data).resolve())
        # JSON quoting: the override value is parsed as YAML, which would turn e.g. "1.csv" odd.
        data = [f"data.path={json.dumps(where)}"] if where else []
        config = load_pipeline_config(preset, [*data, *args.overrides])
    except USER_ERRORS as error:
        return _user_error(error)
    set_log_to_driver(args.verbose)  # the workers' stdout/stderr: Ray's log files, or live too
    if not args.verbose:  # MLflow's own bars while it logs the model are not the job's progress
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        from pipelines.storage import ensure_writable

        ensure_writable(config.run_path)  # a bad run_dir fails before the log file is made in it
        log_file = config.run_path / LOG_FILE
        ray_was_up = ray_is_up()  # a caller's cluster (a notebook, the tests) is theirs to stop
        with route_library_logs(log_file, verbose=args.verbose):
            try:
                run(config, Console(TABLE_STAGES if config.data.path else STAGES))
            finally:  # errors propagate in full; this line says where Ray's side of them is
                if not ray_was_up:
                    stop_ray()  # its held-back "(raylet)" lines go to the file, not the console
                print(f"Ray's own log lines: {log_file}", flush=True)
    except Exception as error:
        if _user_cause(error) is None:
            raise  # a bug: the traceback is what a report needs
        return _user_error(error)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        default=None,
        help="preset name (smoke, paper, table) or a YAML/JSON file; default: smoke, or table with --data",
    )
    parser.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        help="a CSV or Parquet table (NaN = missing) instead of MNIST: a file, a folder of them or a "
        "glob ('data/part-*.csv'); sets data.path",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help=f"show Ray's and MLflow's own log lines and the Ray workers' output live "
        f"(they always go to {{run_dir}}/{LOG_FILE})",
    )
    add_override_argument(parser)
    return parser


def _user_cause(error: BaseException) -> BaseException | None:
    """The user error behind `error` (itself, or what a Ray task, a Ray Train worker or its
    controller raised, which Ray hands back wrapped, the remote traceback in its text), or None
    for a bug."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        inner = _wrapped(current)
        if inner is None:
            return current if isinstance(current, USER_ERRORS) else None
        current = inner
    return None


def _wrapped(error: BaseException) -> BaseException | None:
    """The exception Ray wrapped in `error`, None when it wraps none."""
    # ray.exceptions.RayTaskError (.cause); ray.train's ControllerError (.controller_failure)
    # and WorkerGroupError (.worker_failures, by rank: the first rank's says it).
    failures = getattr(error, "worker_failures", None)
    candidates = [
        getattr(error, "cause", None),
        getattr(error, "controller_failure", None),
        failures[min(failures)] if isinstance(failures, dict) and failures else None,
    ]
    return next((c for c in candidates if isinstance(c, BaseException) and c is not error), None)


def _user_error(error: BaseException) -> int:
    """Report a user error as one line on stderr, then what tracking lost if it failed too
    (a note the job's Tracker put on the exception, so it comes after the error); status 2."""
    cause = _user_cause(error) or error
    text = " ".join(str(cause).split()) or type(cause).__name__
    print(f"{PROG}: error: {text}", file=sys.stderr, flush=True)
    for note in getattr(error, "__notes__", []):
        if note.startswith(TRACKING_NOTE):
            print(f"{PROG}: warning: {note[len(TRACKING_NOTE) :]}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


if __name__ == "__main__":
    status = main()
    exit_now(status)  # Ctrl-C left Ray Train's fit() inside Ray: no ray.shutdown (see stop_ray)
    raise SystemExit(status)
