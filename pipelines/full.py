"""The end-to-end job: ingest -> train -> impute -> classify, every stage an MLflow run.

    python pipelines/full.py --config smoke                 # embedded local Ray, sqlite MLflow
    ray job submit --working-dir . -- python pipelines/full.py --config paper

`--config` takes a preset name (pipelines/configs/*.yaml) or a YAML/JSON path; `--set
section.key=value` overrides any setting (unknown keys are errors). Ends by printing the
Table 1 layout and where to look in MLflow.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

# Run as a script (`python pipelines/full.py`, also under `ray job submit`): make the
# repository root importable so `pipelines` resolves to this checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from missiwae.config import ConfigError
from missiwae.mnist_files import DataError
from pipelines.config import PipelineConfig, add_override_argument, load_pipeline_config
from pipelines.runtime import configure_ray_auth

MANIFEST_NAME = "_MANIFEST.json"


def run(config: PipelineConfig) -> dict[str, float]:
    """Run every stage; returns the wall time per stage in seconds."""
    if config.data.path is not None:
        return run_table(config)
    from pipelines.classify import format_table, run_classification, write_table
    from pipelines.impute import run_imputation
    from pipelines.runtime import ensure_ray
    from pipelines.shards import load_split_numpy
    from pipelines.storage import ensure_writable
    from pipelines.tracking import Tracker, ui_command

    ensure_writable(config.run_path)  # a bad run_dir fails now, not after training
    ensure_ray()
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    with Tracker(config, run_name=f"full-{Path(config.run_dir).name}") as tracker:
        ingest = _ingest_stage(tracker, config, seconds)

        trained = _train_stage(tracker, config, ingest, seconds)

        with tracker.stage("impute") as stage:
            clock = time.perf_counter()
            imputed = run_imputation(config, ingest.shards, trained.checkpoint_dir)
            seconds["impute"] = time.perf_counter() - clock
            stage.log_metrics({**imputed.metrics, "stage_seconds": seconds["impute"]})
            stage.log_params({f"dataset.{name}": str(path) for name, path in imputed.datasets.items()})
            _log_figures(stage, ingest, trained.checkpoint_dir, imputed.datasets["missiwae_single"])

        with tracker.stage("classify") as stage:
            clock = time.perf_counter()
            test_x, _, test_labels, _ = load_split_numpy(ingest, "test")
            result = run_classification(config, dict(imputed.datasets), (test_x, test_labels))
            seconds["classify"] = time.perf_counter() - clock
            tables = write_table(result, config.run_path / "results")
            for path in tables.values():
                stage.log_artifact(path)
            stage.log_metrics({"stage_seconds": seconds["classify"]})

        seconds["total"] = time.perf_counter() - started
        tracker.log_metrics({f"seconds_{name}": value for name, value in seconds.items()})
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
    else:  # the store failed: the TrackingWarning above says what was not logged
        print("MLflow: not (fully) logged, see the TrackingWarning above; the results are on disk")
    return seconds


def run_table(config: PipelineConfig) -> dict[str, float]:
    """A user's table (data.path): ingest -> train -> impute; the MNIST-only parts (missForest
    on pixels, the classifier, digit figures, accuracy against a known truth) are skipped."""
    from pipelines.table_source import tabular_model_config
    from pipelines.tabular import run_tabular_imputation
    from pipelines.tracking import Tracker, ui_command

    # Ray starts inside the stages, after the table has been read and checked.
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    with Tracker(config, run_name=f"table-{Path(config.run_dir).name}") as tracker:
        ingest = _ingest_stage(tracker, config, seconds, log_table=True)

        config = tabular_model_config(config, ingest)  # num_features, column_types from the table
        trained = _train_stage(tracker, config, ingest, seconds)

        with tracker.stage("impute") as stage:
            clock = time.perf_counter()
            imputed = run_tabular_imputation(config, ingest, trained.checkpoint_dir)
            seconds["impute"] = time.perf_counter() - clock
            stage.log_metrics({**imputed.metrics, "stage_seconds": seconds["impute"]})
            stage.log_params({f"dataset.{name}": str(path) for name, path in imputed.datasets.items()})
            stage.log_artifact(imputed.directory / MANIFEST_NAME)

        seconds["total"] = time.perf_counter() - started
        tracker.log_metrics({f"seconds_{name}": value for name, value in seconds.items()})

    table = ingest.table
    print()
    print(
        f"table: {table['source']} ({table['num_rows']} rows x {len(table['columns'])} columns, "
        f"{table['num_missing']} missing cells)"
    )
    print(f"test log p(x_o) (standardised units): {trained.test_log_likelihood:.3f}")
    print(
        f"completed table: {imputed.datasets['missiwae_single']} (+ .csv); "
        f"{len(imputed.datasets) - 1} multiple imputations beside it"
    )
    print("stage times: " + ", ".join(f"{name} {value:.0f} s" for name, value in seconds.items()))
    print(f"MLflow: experiment '{config.tracking.experiment}', run {tracker.run_id}")
    print(f"  browse with: {ui_command(config)}")
    return seconds


def _ingest_stage(
    tracker: Any, config: PipelineConfig, seconds: dict[str, float], log_table: bool = False
) -> Any:
    """The ingest stage as a nested run: rows per split, reuse, time; with `log_table`, the
    user's table too (size, source, and table.json: columns, types, standardisation)."""
    from pipelines.ingest import run_ingest

    with tracker.stage("ingest") as stage:
        clock = time.perf_counter()
        ingest = run_ingest(config)
        seconds["ingest"] = time.perf_counter() - clock
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


def _train_stage(tracker: Any, config: PipelineConfig, ingest: Any, seconds: dict[str, float]) -> Any:
    """The Ray Train stage as a nested run: per-epoch metrics live, then the test log-likelihood."""
    from pipelines.train import run_training

    with tracker.stage("train") as stage:
        clock = time.perf_counter()
        trained = run_training(
            config,
            ingest,
            on_epoch=lambda entry: stage.log_metrics(
                {k: float(v) for k, v in entry.items() if k != "epoch" and v is not None},
                step=int(entry["epoch"]),
            ),
        )
        seconds["train"] = time.perf_counter() - clock
        stage.log_metrics(
            {"test_log_likelihood": trained.test_log_likelihood, "stage_seconds": seconds["train"]}
        )
        stage.log_params({"checkpoint_dir": str(trained.checkpoint_dir)})
    return trained


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
    # Token auth for the embedded Ray is set in the environment, which Ray reads only when it is
    # first imported: so here, before any stage imports it.
    configure_ray_auth()
    parser = argparse.ArgumentParser(
        prog="pipelines/full.py",
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
        help="a CSV or Parquet table (NaN = missing) instead of MNIST; sets data.path",
    )
    add_override_argument(parser)
    args = parser.parse_args(argv)
    try:
        preset = args.config or ("table" if args.data else "smoke")
        # JSON quoting: the override value is parsed as YAML, which would turn e.g. "1.csv" odd.
        data = [f"data.path={json.dumps(str(Path(args.data).resolve()))}"] if args.data else []
        config = load_pipeline_config(preset, [*data, *args.overrides])
    except (ConfigError, DataError) as error:
        print(f"pipelines/full.py: error: {error}", file=sys.stderr)
        return 2
    try:
        run(config)
    # OutputError: a run_dir that cannot be written; ConfigError: e.g. a table with non-numeric
    # columns, found at ingest
    except (OSError, DataError, ConfigError) as error:
        print(f"pipelines/full.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
