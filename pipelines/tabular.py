"""A user's table instead of MNIST: CSV / Parquet in, the ingest layout, imputed tables out.

    python pipelines/full.py --data my_table.csv            # the `table` preset
    python pipelines/full.py --config table --set data.path=my.parquet --set train.epochs=50

Ingest (``table_source.write_table_shards``, called by ``ingest.run_ingest`` when
``data.path`` is set; a piece of the table at a time, in Ray Data tasks for a large table:
pipelines/table_source.py). ``data.path`` is a file, a folder or a glob (pipelines.table_files: which
files, in which order, and how their columns must agree). Each file is read with pyarrow
(``.csv`` / ``.parquet``), each column in its own type; an empty cell, NaN or null marks a
missing entry. Every column must be integer, float, boolean or text (a column of labels, one
model column per level: missiwae/categorical.py); ``data.label_column``, when
given, is set aside as the label (not modelled, not imputed). What is refused (rc 2, one line
naming the file and column) is listed in docs/tables.md. Rows are split into train / valid /
test at random with ``data.seed`` (``data.valid_fraction``, ``data.test_fraction``; exact
sizes; ``table_source.SplitPlan``; each split keeps the file's row order); each piece of the
table gives one shard file per split it has rows of (3 rows is enough). The shards have the
MNIST layout plus two columns::

    row_id      int64    index of the row within its split
    split       string
    label       float64  data.label_column, or -1 without one
    source_row  int64    the row's index in the user's table: its files' rows one after the
                         other (pipelines.table_files); the outputs name the file and the row
                         in it (``source_file``, ``source_row``)
    pixels      float32  (D,) model input: standardised values, 0 in the holes
    mask        bool     (D,) True = observed
    values      float64  (D,) the file's values as floats, NaN in the holes (the model's view)
    source      struct   the file's cells in their own types: fields ``label`` (with a label
                         column) and ``c0`` ... ``c{D-1}``; every output copies observed cells
                         from here, bit for bit (pipelines/shards.py)

Columns whose observed values are all 0 or 1 are modelled as Bernoulli and left as they are;
text columns are categorical, one-hot over the levels of their TRAIN-split rows (so pixels,
mask and values are D' = D - C + Σ k_c wide); the others get ``model.observation`` (gaussian
or student_t) and are standardised with the mean and standard deviation of their observed
TRAIN-split entries (the decoder's scales start near 1; ``table_source.fit_table``).
``data.column_types`` sets a column's model by name instead (``--set
data.column_types.zip=categorical``: a number column of codes one-hot over its values;
``table_source.chosen_types`` says what may be chosen). The
manifest's ``table`` entry records columns, types, levels, mean and scale (D');
``table_source.tabular_model_config`` turns it into the model's ``num_features`` /
``column_types`` / ``categorical_levels`` (and clamps the Train workers to the training rows).

Impute (:func:`run_tabular_imputation`). One Ray Data job over the shards of
``impute_stage.splits`` (the ``table`` preset: all three, so the whole file is completed): the
actor pool of pipelines/impute_job.py (``ImputeActor(table=True)``) computes the SNIS single
imputation (L = ``impute.num_samples``) and M = ``impute.num_imputations`` SIR draws per batch,
seeded per batch as in impute.py.
Ray Data writer tasks after the pool map them back to the file's units and write the completed
tables, partitioned, under ``{run_dir}/imputed/table`` (pipelines/table_output.py owns that format
and the reader that yields it back in the file's row order)::

    missiwae_single/*.parquet (+ missiwae_single.csv)   holes = E[x_m | x_o]; the CSV up to
                                                        CSV_MAX_ROWS rows, or as
                                                        impute_stage.table_csv says
    missiwae_multiple_00/*.parquet ...                  holes = one SIR draw each
    _MANIFEST.json                                      fingerprint, partitions, metrics, seconds

The driver holds one summary row per partition, never the table: it checks that every row was
written exactly once, writes the CSV from the reader batch by batch, and publishes the folder.
There is no truth for a user's holes, so the metrics are what can be measured: the imputed
cell counts, the SNIS estimate of log p(x_o) (standardised units) and the effective sample size.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from missiwae.config import to_dict
from pipelines.config import PipelineConfig
from pipelines.publish import MANIFEST, Publisher, checkpoint_sha256, checkpoints_key, fingerprint, hash_files
from pipelines.shards import IngestResult, imputed_dir
from pipelines.storage import atomic_file, write_json_atomic
from pipelines.table_output import (
    SINGLE,
    check_partitions,
    dataset_names,
    expected_rows,
    fresh_folders,
    keep_only,
    read_imputed_table,
    row_columns,
    summary_schema,
    write_partitions,
)
from pipelines.table_source import TABULAR_FORMAT_VERSION

if TYPE_CHECKING:
    import pyarrow as pa

_OUTPUT_DIR = "table"
# 3: source_file, and source_row counted within it; 4: columns of labels; 5: partitioned
# folders written by the workers (pipelines/table_output.py).
_OUTPUT_VERSION = 5
# impute_stage.table_csv "auto": the single imputation also as CSV up to this many rows.
CSV_MAX_ROWS = 1_000_000
_LOCK = ".tabular.lock"


# ------------------------------------------------------------------------------ imputation


@dataclasses.dataclass(frozen=True)
class TabularImputeResult:
    """datasets: name -> folder of Parquet partitions (missiwae_single, missiwae_multiple_00,
    ...; pipelines.table_output.read_imputed_table reads one in the file's order); metrics:
    "{split}/num_rows", "{split}/num_imputed_cells", "{split}/missing_fraction",
    "{split}/log_likelihood_mean", "{split}/ess_mean", "rows_per_second"."""

    directory: Path
    datasets: dict[str, Path]
    metrics: dict[str, float]
    seconds: float
    reused: bool


def run_tabular_imputation(
    config: PipelineConfig, ingest: IngestResult, checkpoint_dir: Path, ensemble_dirs: Sequence[Path] = ()
) -> TabularImputeResult:
    """Impute the splits of `impute_stage.splits` and write the imputed tables (module docstring).
    `ensemble_dirs`: the bootstrap members' checkpoints (impute.bootstrap_models > 1), whose
    draws are then the multiple imputations (proper imputation: pipelines/impute_job.py)."""

    assert ingest.table is not None
    started = time.perf_counter()
    splits = list(config.impute_stage.splits)
    files = sorted(Path(p) for split in splits for p in ingest.shards[split])
    checkpoints = [Path(checkpoint_dir), *(Path(p) for p in ensemble_dirs)]
    csv = write_csv(config, ingest)
    payload: dict[str, Any] = {
        "format_version": TABULAR_FORMAT_VERSION,
        "output_version": _OUTPUT_VERSION,
        "impute": to_dict(config.impute),
        "splits": splits,
        "rows_per_file": config.impute_stage.table_rows_per_file,
        "checkpoint": checkpoints_key([checkpoint_sha256(path) for path in checkpoints]),
        "inputs": hash_files(files),
    }
    if not csv:  # only then: outputs written before the choice existed (all with CSV) still count
        payload["csv"] = False
    digest = fingerprint(payload)
    out = Publisher(imputed_dir(config), _LOCK, "the imputed table {!r}")
    target = out.root / _OUTPUT_DIR
    with out.locked():
        manifest = out.reusable(target / MANIFEST, digest, lambda m: _intact(target, m))
        if manifest is not None:
            return _impute_result(target, manifest, time.perf_counter() - started, reused=True)
        out.sweep([_OUTPUT_DIR])  # left by a crashed run: never complete by construction
        with out.stage(_OUTPUT_DIR) as staged:
            manifest = _impute_into(config, ingest, files, checkpoints, staged.path, csv=csv)
            manifest["fingerprint"] = digest
            staged.manifest = manifest  # written last, then swapped into place
    return _impute_result(target, manifest, time.perf_counter() - started, reused=False)


def _intact(directory: Path, manifest: dict[str, Any]) -> bool:
    """Every dataset folder holds exactly the manifest's partitions, and its other files exist."""
    try:
        partitions = sorted(manifest["partitions"])
        folders_ok = all(
            sorted(p.name for p in (directory / name).iterdir()) == partitions
            for name in manifest["datasets"]
        )
        return folders_ok and all((directory / name).is_file() for name in manifest["files"])
    except (KeyError, TypeError, OSError):
        return False


def _impute_result(
    directory: Path, manifest: dict[str, Any], seconds: float, reused: bool
) -> TabularImputeResult:
    datasets = {name: directory / name for name in manifest["datasets"]}
    metrics = {k: float(v) for k, v in manifest["metrics"].items()}
    return TabularImputeResult(directory, datasets, metrics, seconds, reused)


def write_csv(config: PipelineConfig, ingest: IngestResult) -> bool:
    """Whether the single imputation is also written as CSV: impute_stage.table_csv, "auto"
    meaning up to CSV_MAX_ROWS rows in the imputed splits."""
    choice = config.impute_stage.table_csv
    if choice != "auto":
        return bool(choice)
    return sum(ingest.num_rows[split] for split in config.impute_stage.splits) <= CSV_MAX_ROWS


def _impute_into(
    config: PipelineConfig,
    ingest: IngestResult,
    files: list[Path],
    checkpoints: list[Path],
    staging: Path,
    *,
    csv: bool,
) -> dict[str, Any]:
    """Run the Ray Data job whose writer tasks fill `staging` (`checkpoints`: the model's, then
    the bootstrap members'), check and tidy what they wrote, add the CSV (`csv`) and return the
    manifest. The driver holds one summary row per partition."""
    import pyarrow as pa

    from pipelines.impute_job import imputation_dataset, run_surviving_node_loss

    assert ingest.table is not None
    info = ingest.table
    datasets = dataset_names(config.impute.num_imputations)
    splits = list(config.impute_stage.splits)
    # The writer tasks need the output's row-column names and the files behind the rows.
    writer = functools.partial(write_partitions, info=info, directory=str(staging))
    clock = time.perf_counter()

    def collect() -> pa.Table:
        fresh_folders(staging, datasets)  # an attempt starts from nothing (run_surviving_node_loss)
        job = imputation_dataset(
            config,
            files,
            checkpoints[0],
            ensemble_dirs=checkpoints[1:],
            table=True,
            table_writer=writer,
            rows_per_write=config.impute_stage.table_rows_per_file,
        )
        parts = list(job.iter_batches(batch_format="pyarrow", batch_size=None))
        return pa.concat_tables(parts) if parts else summary_schema().empty_table()

    summary = run_surviving_node_loss(collect, "the table's imputation job")
    job_seconds = time.perf_counter() - clock
    check_partitions(summary, expected_rows({split: ingest.shards[split] for split in splits}))
    partitions = sorted(summary.column("file").to_pylist())
    keep_only(staging, datasets, partitions)  # what a killed or retried writer left behind

    manifest: dict[str, Any] = {
        "format_version": TABULAR_FORMAT_VERSION,
        "datasets": datasets,
        "partitions": partitions,
        "files": [],
        "sources": info["sources"],  # where each file's rows start: the reader's order
        "row_columns": row_columns(info),
        "metrics": _metrics(summary, len(info["columns"]), job_seconds),
        "seconds": {"impute_job": job_seconds},
        "config": {"impute": to_dict(config.impute), "splits": splits},
        "checkpoint_dir": str(checkpoints[0]),
        "ensemble_dirs": [str(path) for path in checkpoints[1:]],  # bootstrap members; [] for B = 1
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if csv:  # from the partitions in the file's order, a batch at a time
        write_json_atomic(staging / MANIFEST, manifest)  # the reader finds the sources here
        name = f"{SINGLE}.csv"
        with atomic_file(staging / name) as temporary:
            for i, batch in enumerate(read_imputed_table(staging / SINGLE)):
                batch.to_pandas().to_csv(temporary, index=False, header=i == 0, mode="w" if i == 0 else "a")
        manifest["files"] = [name]
    return manifest


def _metrics(summary: pa.Table, num_columns: int, job_seconds: float) -> dict[str, float]:
    """Per split: rows, imputed cells, missing fraction, mean log-likelihood and ESS, from the
    partitions' summary rows; and the job's rows per second."""
    splits = np.asarray(summary.column("split").to_pylist(), dtype=object)
    columns = {
        key: summary.column(key).to_numpy().astype(np.float64)
        for key in ("num_rows", "num_imputed_cells", "ll_sum", "ess_sum")
    }
    metrics: dict[str, float] = {"rows_per_second": columns["num_rows"].sum() / max(job_seconds, 1e-9)}
    for split in dict.fromkeys(splits.tolist()):
        rows = splits == split
        num_rows = columns["num_rows"][rows].sum()
        cells = columns["num_imputed_cells"][rows].sum()
        metrics[f"{split}/num_rows"] = float(num_rows)
        metrics[f"{split}/num_imputed_cells"] = float(cells)
        metrics[f"{split}/missing_fraction"] = float(cells / (num_rows * num_columns))
        metrics[f"{split}/log_likelihood_mean"] = float(columns["ll_sum"][rows].sum() / num_rows)
        metrics[f"{split}/ess_mean"] = float(columns["ess_sum"][rows].sum() / num_rows)
    return metrics


__all__ = [
    "CSV_MAX_ROWS",
    "TabularImputeResult",
    "run_tabular_imputation",
    "write_csv",
]
