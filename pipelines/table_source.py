"""A user's table (CSV / Parquet) as the source of the ingest stage: read, typed, split, standardised.

The reading half of the table path (the imputation half is the stage in pipelines/tabular.py):
``ingest.run_ingest`` calls :func:`tabular_split_tables` when ``data.path`` is set, and both
stages share the manifest entry it produces (:func:`tabular_model_config`). The layout of the
shards and the rules for columns are described in pipelines/tabular.py's docstring.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from missiwae.columns import Standardization, infer_column_types
from missiwae.config import ConfigError
from pipelines import publish
from pipelines.config import PipelineConfig
from pipelines.shards import SPLITS, IngestResult, shard_table

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

# Bump when the tabular shard layout or standardisation changes (part of the ingest fingerprint).
TABULAR_FORMAT_VERSION = 1
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def file_sha256(path: str | Path) -> str:
    """sha256 of the user's file (a ConfigError when it is missing or of an unknown type)."""
    return publish.file_sha256(_existing(path))


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
    return infer_column_types(values, observation)


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
    data = config.data
    assert data.path is not None
    values, columns, labels = read_table(data.path, data.label_column)
    types = column_types(values, config.model.observation)
    rows = split_rows(values.shape[0], data.seed, data.valid_fraction, data.test_fraction)
    observed = ~np.isnan(values)

    # Standardise with the observed TRAIN entries only: nothing about the held-out rows leaks in
    # (a column unobserved in train keeps (0, 1)). check_finite=False: an overflowing variance
    # keeps its infinite scale, as this stage always has.
    continuous = [t != "bernoulli" for t in types]
    scaling = Standardization.fit(values[rows["train"]], columns=continuous, check_finite=False)
    standardised = scaling.transform(values, observed)

    tables = {}
    for split in SPLITS:
        index = rows[split]
        n = len(index)
        tables[split] = shard_table(
            split,
            labels[index] if labels is not None else np.full(n, -1.0),
            standardised[index].astype(np.float32),
            observed[index],
            source_row=index,
            values=values[index],
        )
    info = {
        "source": str(Path(data.path).expanduser().resolve()),
        "source_sha256": file_sha256(data.path),
        "columns": columns,
        "column_types": types,
        "mean": scaling.mean.tolist(),
        "scale": scaling.scale.tolist(),
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


__all__ = [
    "SUFFIXES",
    "TABULAR_FORMAT_VERSION",
    "column_types",
    "file_sha256",
    "read_table",
    "split_rows",
    "tabular_model_config",
    "tabular_split_tables",
]
