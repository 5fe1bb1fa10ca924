"""A user's table instead of MNIST: CSV / Parquet in, the ingest layout, imputed tables out.

    python pipelines/full.py --data my_table.csv            # the `table` preset
    python pipelines/full.py --config table --set data.path=my.parquet --set train.epochs=50

Ingest (:func:`tabular_split_tables`, called by ``ingest.run_ingest`` when ``data.path`` is
set). The file is read with pandas (``.csv`` / ``.parquet``); NaN (an empty CSV cell) marks a
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
:func:`tabular_model_config` turns it into the model's ``num_features`` / ``column_types``.

Impute (:func:`run_tabular_imputation`). One Ray Data job over the shards of
``impute_stage.splits`` (the ``table`` preset: all three, so the whole file is completed): an
actor pool holding the model computes the SNIS single imputation (L = ``impute.num_samples``)
and M = ``impute.num_imputations`` SIR draws per batch, seeded per batch as in impute.py.
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
import hashlib
import json
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from missiwae.config import ConfigError, to_dict
from pipelines.config import PipelineConfig
from pipelines.storage import exclusive, read_manifest, swap_into_place, write_json_atomic

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    import ray.data

    from pipelines.ingest import IngestResult

# Bump when the tabular shard layout or standardisation changes (part of the ingest fingerprint).
TABULAR_FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
SINGLE = "missiwae_single"
MULTIPLE_PREFIX = "missiwae_multiple_"
MANIFEST = "_MANIFEST.json"
_OUTPUT_DIR = "table"
_SNIS_STREAM, _SIR_STREAM = 0, 1


# ------------------------------------------------------------------------------ reading


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(_existing(path), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _existing(path: str | Path) -> Path:
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise ConfigError(f"data.path: no such file: {resolved}")
    if resolved.suffix.lower() not in SUFFIXES:
        raise ConfigError(
            f"data.path must end in one of {sorted(SUFFIXES)} (CSV or Parquet), got {resolved.name}"
        )
    return resolved


def read_table(
    path: str | Path, label_column: str | None = None
) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """(values float64 (N, D) with NaN = missing, column names, labels (N,) or None).

    Raises ConfigError naming the problem: unreadable or unknown format, non-numeric columns,
    inf, a column with no observed value, an unknown or incomplete label column.
    """
    import pandas as pd

    resolved = _existing(path)
    is_csv = SUFFIXES[resolved.suffix.lower()] == "csv"
    frame: pd.DataFrame = pd.read_csv(resolved) if is_csv else pd.read_parquet(resolved)
    frame.columns = [str(c) for c in frame.columns]
    labels = None
    if label_column is not None:
        if label_column not in frame.columns:
            raise ConfigError(f"data.label_column {label_column!r} is not a column of {resolved.name}")
        label_series = frame.pop(label_column)
        if not pd.api.types.is_numeric_dtype(label_series) or label_series.isna().any():
            raise ConfigError(f"data.label_column {label_column!r} must be numeric with no missing value")
        labels = label_series.to_numpy(dtype=np.float64)
    if frame.shape[0] < 3 or frame.shape[1] < 1:
        raise ConfigError(
            f"{resolved.name} has {frame.shape[0]} rows and {frame.shape[1]} columns; need >= 3 x 1"
        )
    non_numeric = [
        c
        for c in frame.columns
        if not (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]))
    ]
    if non_numeric:
        raise ConfigError(
            f"column(s) {non_numeric} of {resolved.name} are not numeric: encode them as numbers "
            "(e.g. one-hot 0/1 columns, which are modelled as Bernoulli) or drop them"
        )
    values = frame.astype(np.float64).to_numpy()
    if np.isinf(values).any():
        raise ConfigError(f"{resolved.name} holds inf; only NaN (an empty cell) may mark a missing entry")
    empty = [
        c for c, observed in zip(frame.columns, (~np.isnan(values)).any(axis=0), strict=True) if not observed
    ]
    if empty:
        raise ConfigError(f"column(s) {empty} of {resolved.name} have no observed value: drop them")
    return values, list(frame.columns), labels


def column_types(values: np.ndarray, observation: str) -> list[str]:
    """bernoulli for columns whose observed values are all 0 or 1, `observation` for the rest."""
    if observation not in ("gaussian", "student_t"):
        raise ConfigError(
            f"model.observation={observation!r}: a table's continuous columns need 'gaussian' or "
            "'student_t' (0/1 columns are Bernoulli automatically)"
        )
    observed = ~np.isnan(values)
    binary = ((values == 0.0) | (values == 1.0) | ~observed).all(axis=0)
    return ["bernoulli" if is_binary else observation for is_binary in binary]


def split_rows(
    num_rows: int, seed: int, valid_fraction: float, test_fraction: float
) -> dict[str, np.ndarray]:
    """Disjoint sorted row indices per split from a seeded permutation (each split >= 1 row)."""
    num_valid = max(1, round(num_rows * valid_fraction))
    num_test = max(1, round(num_rows * test_fraction))
    num_train = num_rows - num_valid - num_test
    if num_train < 1:
        raise ConfigError(f"{num_rows} rows leave none for training after the valid/test fractions")
    order = np.random.default_rng(seed).permutation(num_rows)
    parts = np.split(order, [num_train, num_train + num_valid])
    return {split: np.sort(part) for split, part in zip(SPLITS, parts, strict=True)}


def tabular_split_tables(config: PipelineConfig) -> tuple[dict[str, pa.Table], dict[str, Any]]:
    """The three splits' Arrow tables (module docstring layout) and the manifest's `table` entry."""
    import pyarrow as pa
    from ray.data.extensions import ArrowTensorArray

    data = config.data
    assert data.path is not None
    values, columns, labels = read_table(data.path, data.label_column)
    types = column_types(values, config.model.observation)
    rows = split_rows(values.shape[0], data.seed, data.valid_fraction, data.test_fraction)
    observed = ~np.isnan(values)

    # Standardise with the observed TRAIN entries only: nothing about the held-out rows leaks in.
    train = values[rows["train"]]
    continuous = np.array([t != "bernoulli" for t in types])
    has_train = (~np.isnan(train)).any(axis=0)
    mean = np.zeros(len(columns))
    std = np.ones(len(columns))
    use = continuous & has_train  # a column unobserved in train keeps (0, 1): nothing to learn
    if use.any():
        mean[use] = np.nanmean(train[:, use], axis=0)
        std[use] = np.nanstd(train[:, use], axis=0)
    scale = np.where(std > 0, std, 1.0)
    standardised = np.where(observed, (values - mean) / scale, 0.0)

    tables = {}
    for split in SPLITS:
        index = rows[split]
        n = len(index)
        tables[split] = pa.table(
            {
                "row_id": pa.array(np.arange(n, dtype=np.int64)),
                "split": pa.array([split] * n, type=pa.string()),
                "label": pa.array(labels[index] if labels is not None else np.full(n, -1.0)),
                "source_row": pa.array(index.astype(np.int64)),
                "pixels": ArrowTensorArray.from_numpy(np.ascontiguousarray(standardised[index], np.float32)),
                "mask": ArrowTensorArray.from_numpy(np.ascontiguousarray(observed[index])),
                "values": ArrowTensorArray.from_numpy(np.ascontiguousarray(values[index])),
            }
        )
    info = {
        "source": str(Path(data.path).expanduser().resolve()),
        "source_sha256": file_sha256(data.path),
        "columns": columns,
        "column_types": types,
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "label_column": data.label_column,
        "num_rows": int(values.shape[0]),
        "num_missing": int((~observed).sum()),
    }
    return tables, info


def tabular_model_config(config: PipelineConfig, ingest: IngestResult) -> PipelineConfig:
    """`config` with model.num_features and model.column_types set from the ingested table."""
    if ingest.table is None:
        raise ValueError("the ingest result holds no table (data.path was not set)")
    if config.model.architecture != "mlp":
        raise ConfigError("model.architecture must be 'mlp' for a table (the conv pair is for 28x28 images)")
    types = list(ingest.table["column_types"])
    mixed = len(set(types)) > 1
    model = dataclasses.replace(
        config.model,
        num_features=len(types),
        observation=config.model.observation if mixed else types[0],
        column_types=tuple(types) if mixed else (),
    )
    return dataclasses.replace(config, model=model)


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


class TabularImputeActor:
    """map_batches callable: the model is loaded once per actor.

    In: row_id, source_row (B,), pixels (B, D) standardised, mask (B, D). Out: source_row,
    single (B, D) and multiple (B, M, D) float32 in standardised units, ess and log_likelihood (B,).
    """

    def __init__(
        self, checkpoint_dir: str, num_samples: int, num_imputations: int, chunk_size: int | None, seed: int
    ) -> None:
        from missiwae.allocator import retain_freed_memory
        from missiwae.training import load_model

        retain_freed_memory()
        self.model = load_model(checkpoint_dir, device="cpu")
        self.num_samples, self.num_imputations = num_samples, num_imputations
        self.chunk_size, self.seed = chunk_size, seed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from missiwae.imputation import impute_multiple, impute_single
        from missiwae.model import make_generator
        from pipelines.impute import as_matrix, batch_seed

        source_row = np.asarray(batch["source_row"], dtype=np.int64)
        mask = torch.tensor(as_matrix(batch["mask"], np.bool_))  # a copy: Ray's batch is read-only
        x = torch.tensor(as_matrix(batch["pixels"], np.float32)).masked_fill(~mask, float("nan"))
        start = int(source_row[0])
        single = impute_single(
            self.model,
            x,
            mask,
            self.num_samples,
            chunk_size=self.chunk_size,
            generator=make_generator(batch_seed(self.seed, start, _SNIS_STREAM)),
        )
        multiple = impute_multiple(
            self.model,
            x,
            mask,
            self.num_imputations,
            self.num_samples,
            chunk_size=self.chunk_size,
            generator=make_generator(batch_seed(self.seed, start, _SIR_STREAM)),
        )
        return {
            "source_row": source_row,
            "single": single.imputed.float().numpy(),
            "multiple": multiple.imputations.permute(1, 0, 2).float().numpy(),  # (B, M, D)
            "ess": single.effective_sample_size.float().numpy(),
            "log_likelihood": single.log_likelihood.double().numpy(),
        }


def run_tabular_imputation(
    config: PipelineConfig, ingest: IngestResult, checkpoint_dir: Path
) -> TabularImputeResult:
    """Impute the splits of `impute_stage.splits` and write the imputed tables (module docstring)."""
    from pipelines.impute import _hash_files, imputed_dir

    assert ingest.table is not None
    started = time.perf_counter()
    splits = list(config.impute_stage.splits)
    files = sorted(Path(p) for split in splits for p in ingest.shards[split])
    checkpoint_hash = _hash_files([Path(checkpoint_dir) / "model.pt", Path(checkpoint_dir) / "config.json"])
    payload = {
        "format_version": TABULAR_FORMAT_VERSION,
        "impute": to_dict(config.impute),
        "splits": splits,
        "checkpoint": checkpoint_hash,
        "inputs": _hash_files(files),
    }
    fingerprint = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    out_root = imputed_dir(config)
    out_root.mkdir(parents=True, exist_ok=True)
    target = out_root / _OUTPUT_DIR
    with exclusive(out_root / ".tabular.lock"):
        manifest = read_manifest(target / MANIFEST)
        if (
            manifest is not None
            and manifest.get("fingerprint") == fingerprint
            and all((target / name).is_file() for name in manifest.get("files", []))
        ):
            return _impute_result(target, manifest, time.perf_counter() - started, reused=True)
        staging = out_root / f".staging-table-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            manifest = _impute_into(config, ingest, files, Path(checkpoint_dir), staging)
            manifest["fingerprint"] = fingerprint
            write_json_atomic(staging / MANIFEST, manifest)  # last: marks the output complete
            swap_into_place(staging, target, out_root / f".old-table-{uuid.uuid4().hex}")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
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

    from pipelines.impute import column_matrix

    assert ingest.table is not None
    info = ingest.table
    mean, scale = np.asarray(info["mean"]), np.asarray(info["scale"])
    clock = time.perf_counter()
    parts: dict[str, list[np.ndarray]] = {
        key: [] for key in ("source_row", "single", "multiple", "ess", "ll")
    }
    for batch in _imputation_dataset(config, files, checkpoint_dir).iter_batches(
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
    shards = pa.concat_tables(
        [pq.read_table(p, columns=["source_row", "split", "label", "values", "mask"]) for p in files]
    )
    shard_order = np.argsort(shards.column("source_row").to_numpy(), kind="stable")
    source_row = shards.column("source_row").to_numpy()[shard_order]
    if not np.array_equal(source_row, imputed["source_row"]):
        raise RuntimeError("the imputation job lost or duplicated rows")
    values = column_matrix(shards.column("values"), np.float64)[shard_order]
    mask = column_matrix(shards.column("mask"), np.bool_)[shard_order]
    split_names = np.asarray(shards.column("split").to_pylist(), dtype=object)[shard_order]
    labels = shards.column("label").to_numpy()[shard_order]

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


def _imputation_dataset(config: PipelineConfig, files: list[Path], checkpoint_dir: Path) -> ray.data.Dataset:
    """Ordered read, blocks of exactly impute.batch_size rows (one batch each), the actor pool."""
    import ray.data

    from pipelines.impute import _job_context
    from pipelines.runtime import ensure_ray

    ensure_ray()
    stage, impute = config.impute_stage, config.impute
    with _job_context():
        dataset = ray.data.read_parquet([str(p) for p in files]).select_columns(
            ["row_id", "source_row", "pixels", "mask"]
        )
        dataset = dataset.repartition(target_num_rows_per_block=impute.batch_size, strict=True)
        return dataset.map_batches(
            TabularImputeActor,
            fn_constructor_kwargs={
                "checkpoint_dir": str(checkpoint_dir),
                "num_samples": impute.num_samples,
                "num_imputations": impute.num_imputations,
                "chunk_size": impute.chunk_size,
                "seed": impute.seed,
            },
            batch_size=impute.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=stage.num_actors),
            num_cpus=stage.cpus_per_actor,
        )


__all__ = [
    "TABULAR_FORMAT_VERSION",
    "TabularImputeActor",
    "TabularImputeResult",
    "column_types",
    "file_sha256",
    "read_table",
    "run_tabular_imputation",
    "split_rows",
    "tabular_model_config",
    "tabular_split_tables",
]
