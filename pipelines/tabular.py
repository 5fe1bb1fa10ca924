"""A user's table instead of MNIST: CSV / Parquet in, the ingest layout, imputed tables out.

    python pipelines/full.py --data my_table.csv            # the `table` preset
    python pipelines/full.py --config table --set data.path=my.parquet --set train.epochs=50

Ingest (``table_source.tabular_split_tables``, called by ``ingest.run_ingest`` when ``data.path``
is set). The file is read with pandas (``.csv`` / ``.parquet``); NaN (an empty CSV cell) marks a
missing entry. Every column must be numeric (booleans count as 0/1); ``data.label_column``, when
given, is set aside as the label (not modelled, not imputed). Rows are split into
train / valid / test by a permutation seeded with ``data.seed`` (``data.valid_fraction``,
``data.test_fraction``; each split keeps the file's row order). The shards have the MNIST
layout plus two columns::

    row_id      int64    index of the row within its split
    split       string
    label       float64  data.label_column, or -1 without one
    source_row  int64    the row's index in the user's file
    pixels      float32  (D,) model input: standardised values, 0 in the holes
    mask        bool     (D,) True = observed
    values      float64  (D,) the file's values, NaN in the holes (observed cells are copied
                         from here into every output, bit for bit)

Columns whose observed values are all 0 or 1 are modelled as Bernoulli and left as they are;
the others get ``model.observation`` (gaussian or student_t) and are standardised with the
mean and standard deviation of their observed TRAIN-split entries (the decoder's scales start
near 1). The manifest's ``table`` entry records columns, types, mean and scale;
``table_source.tabular_model_config`` turns it into the model's ``num_features`` / ``column_types``.

Impute (:func:`run_tabular_imputation`). One Ray Data job over the shards of
``impute_stage.splits`` (the ``table`` preset: all three, so the whole file is completed): the
actor pool of pipelines/impute_job.py (``ImputeActor(table=True)``) computes the SNIS single
imputation (L = ``impute.num_samples``) and M = ``impute.num_imputations`` SIR draws per batch,
seeded per batch as in impute.py.
The driver maps them back to the file's units and writes, under ``{run_dir}/imputed/table``::

    missiwae_single.parquet (+ .csv)      the file's rows in its order, holes = E[x_m | x_o]
    missiwae_multiple_00.parquet ...      holes = one SIR draw each
    _MANIFEST.json                        fingerprint, metrics, seconds

with columns ``source_row``, ``split``, (the label column,) then the file's columns. Bernoulli
columns hold P(x_j = 1 | x_o) in the single imputation and 0/1 draws in the multiple ones.
There is no truth for a user's holes, so the metrics are what can be measured: the imputed
cell counts, the SNIS estimate of log p(x_o) (standardised units) and the effective sample size.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from missiwae.config import to_dict
from pipelines.config import PipelineConfig
from pipelines.publish import MANIFEST, Publisher, fingerprint, hash_files
from pipelines.shards import IngestResult, imputed_dir, read_shards, tensor_matrix
from pipelines.table_source import TABULAR_FORMAT_VERSION

if TYPE_CHECKING:
    import pyarrow as pa

SINGLE = "missiwae_single"
MULTIPLE_PREFIX = "missiwae_multiple_"
_OUTPUT_DIR = "table"
_LOCK = ".tabular.lock"


# ------------------------------------------------------------------------------ imputation


@dataclasses.dataclass(frozen=True)
class TabularImputeResult:
    """datasets: name -> Parquet file (missiwae_single, missiwae_multiple_00, ...); metrics:
    "{split}/num_rows", "{split}/num_imputed_cells", "{split}/missing_fraction",
    "{split}/log_likelihood_mean", "{split}/ess_mean", "rows_per_second"."""

    directory: Path
    datasets: dict[str, Path]
    metrics: dict[str, float]
    seconds: float
    reused: bool


def run_tabular_imputation(
    config: PipelineConfig, ingest: IngestResult, checkpoint_dir: Path
) -> TabularImputeResult:
    """Impute the splits of `impute_stage.splits` and write the imputed tables (module docstring)."""

    assert ingest.table is not None
    started = time.perf_counter()
    splits = list(config.impute_stage.splits)
    files = sorted(Path(p) for split in splits for p in ingest.shards[split])
    checkpoint_hash = hash_files([Path(checkpoint_dir) / "model.pt", Path(checkpoint_dir) / "config.json"])
    digest = fingerprint(
        {
            "format_version": TABULAR_FORMAT_VERSION,
            "impute": to_dict(config.impute),
            "splits": splits,
            "checkpoint": checkpoint_hash,
            "inputs": hash_files(files),
        }
    )
    out = Publisher(imputed_dir(config), _LOCK, "the imputed table {!r}")
    target = out.root / _OUTPUT_DIR
    with out.locked():
        manifest = out.reusable(
            target / MANIFEST,
            digest,
            lambda m: all((target / name).is_file() for name in m.get("files", [])),
        )
        if manifest is not None:
            return _impute_result(target, manifest, time.perf_counter() - started, reused=True)
        out.sweep([_OUTPUT_DIR])  # left by a crashed run: never complete by construction
        with out.stage(_OUTPUT_DIR) as staged:
            manifest = _impute_into(config, ingest, files, Path(checkpoint_dir), staged.path)
            manifest["fingerprint"] = digest
            staged.manifest = manifest  # written last, then swapped into place
    return _impute_result(target, manifest, time.perf_counter() - started, reused=False)


def _impute_result(
    directory: Path, manifest: dict[str, Any], seconds: float, reused: bool
) -> TabularImputeResult:
    datasets = {Path(name).stem: directory / name for name in manifest["files"] if name.endswith(".parquet")}
    metrics = {k: float(v) for k, v in manifest["metrics"].items()}
    return TabularImputeResult(directory, datasets, metrics, seconds, reused)


def _impute_into(
    config: PipelineConfig, ingest: IngestResult, files: list[Path], checkpoint_dir: Path, staging: Path
) -> dict[str, Any]:
    """Run the Ray Data job, map back to the file's units, write the tables into `staging`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.impute_job import imputation_dataset

    assert ingest.table is not None
    info = ingest.table
    mean, scale = np.asarray(info["mean"]), np.asarray(info["scale"])
    clock = time.perf_counter()
    parts: dict[str, list[np.ndarray]] = {
        key: [] for key in ("source_row", "single", "multiple", "ess", "ll")
    }
    for batch in imputation_dataset(config, files, checkpoint_dir, table=True).iter_batches(
        batch_format="numpy", batch_size=None
    ):
        parts["source_row"].append(np.asarray(batch["source_row"]))
        parts["single"].append(np.asarray(batch["single"], np.float64))
        parts["multiple"].append(np.asarray(batch["multiple"], np.float64))
        parts["ess"].append(np.asarray(batch["ess"], np.float64))
        parts["ll"].append(np.asarray(batch["log_likelihood"], np.float64))
    job_seconds = time.perf_counter() - clock
    imputed = {key: np.concatenate(value) for key, value in parts.items()}
    order = np.argsort(imputed["source_row"], kind="stable")
    imputed = {key: value[order] for key, value in imputed.items()}

    # The original values, split names and labels, straight from the shards (plain pyarrow).
    shards = read_shards(files, ["source_row", "split", "label", "values", "mask"], order_by="source_row")
    source_row = shards.column("source_row").to_numpy()
    if not np.array_equal(source_row, imputed["source_row"]):
        raise RuntimeError("the imputation job lost or duplicated rows")
    values = tensor_matrix(shards.column("values"), np.float64, what="the table's shards", name="values")
    mask = tensor_matrix(shards.column("mask"), np.bool_, what="the table's shards", name="mask")
    split_names = np.asarray(shards.column("split").to_pylist(), dtype=object)
    labels = shards.column("label").to_numpy()

    def table(standardised: np.ndarray) -> pa.Table:
        # Observed cells come from the file's values, never through the float32 round trip.
        completed = np.where(mask, values, standardised * scale + mean)
        columns: dict[str, Any] = {"source_row": source_row, "split": split_names.tolist()}
        if info["label_column"] is not None:
            columns[info["label_column"]] = labels
        for j, name in enumerate(info["columns"]):
            columns[name] = completed[:, j]
        return pa.table(columns)

    names = [f"{SINGLE}.parquet", f"{SINGLE}.csv"]
    single = table(imputed["single"])
    pq.write_table(single, staging / names[0])
    single.to_pandas().to_csv(staging / names[1], index=False)
    for m in range(imputed["multiple"].shape[1]):
        name = f"{MULTIPLE_PREFIX}{m:02d}.parquet"
        pq.write_table(table(imputed["multiple"][:, m]), staging / name)
        names.append(name)

    metrics: dict[str, float] = {"rows_per_second": len(source_row) / max(job_seconds, 1e-9)}
    for split in dict.fromkeys(split_names.tolist()):
        rows = split_names == split
        metrics[f"{split}/num_rows"] = float(rows.sum())
        metrics[f"{split}/num_imputed_cells"] = float((~mask[rows]).sum())
        metrics[f"{split}/missing_fraction"] = float((~mask[rows]).mean())
        metrics[f"{split}/log_likelihood_mean"] = float(imputed["ll"][rows].mean())
        metrics[f"{split}/ess_mean"] = float(imputed["ess"][rows].mean())
    return {
        "format_version": TABULAR_FORMAT_VERSION,
        "files": names,
        "metrics": metrics,
        "seconds": {"impute_job": job_seconds},
        "config": {"impute": to_dict(config.impute), "splits": list(config.impute_stage.splits)},
        "checkpoint_dir": str(checkpoint_dir),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


__all__ = ["TabularImputeResult", "run_tabular_imputation"]
