"""A user's table (CSV / Parquet) as the source of the ingest stage: read, typed, split, standardised.

The reading half of the table path (the imputation half is the stage in pipelines/tabular.py):
``ingest.run_ingest`` calls :func:`tabular_split_tables` when ``data.path`` is set, and both
stages share the manifest entry it produces (:func:`tabular_model_config`). The layout of the
shards and the rules for columns are described in pipelines/tabular.py's docstring.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from missiwae.categorical import OneHot, is_missing
from missiwae.columns import (
    Standardization,
    check_column_range,
    check_standardised_range,
    infer_column_types,
)
from missiwae.config import ConfigError
from pipelines.config import PipelineConfig
from pipelines.shards import SPLITS, IngestResult, shard_table
from pipelines.table_files import SourceFiles, read_files, sources_sha256

if TYPE_CHECKING:
    import pyarrow as pa

# Bump when the tabular shard layout or standardisation changes (part of the ingest fingerprint).
# 2: the `source` column (the file's cells in their own types), bookkeeping-safe output names.
# 3: several files (data.path a folder or a glob); the manifest's `sources`.
# 4: columns of labels, one-hot in the shards; the manifest's `levels`.
TABULAR_FORMAT_VERSION = 4
CATEGORICAL = "categorical"  # a column of labels' type in the manifest


@dataclasses.dataclass(frozen=True)
class SourceTable:
    """A user's table as read and checked (:func:`load_table`).

    values: float64 (N, D), NaN = missing (the model's view: integers and booleans as floats);
    columns: the D modelled columns' names, in the file's order; labels: float64 (N,) of
    ``data.label_column``, or None; source: the file's own cells, untouched, as one Arrow struct
    array (N,) with fields ``label`` (when there is a label column) and ``c0`` ... ``c{D-1}``, each
    in the file's type (int64, bool, float32 ...), null or NaN in the holes. Observed cells of
    every output are copied from `source`, never through float64. files: where the rows came
    from (pipelines.table_files; rows in source order: file after file). texts: per column, the
    (N,) object array of a column of labels (strings, or the numbers of a column that
    data.column_types makes categorical: :func:`table_column_types`; None or NaN in the holes;
    its `values` column is then 0 where observed, NaN in the holes), or None for a numeric column.
    """

    name: str
    values: np.ndarray
    columns: list[str]
    labels: np.ndarray | None
    source: pa.StructArray
    files: SourceFiles
    texts: list[np.ndarray | None] = dataclasses.field(default_factory=list)


def read_table(
    path: str | Path, label_column: str | None = None
) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """(values float64 (N, D) with NaN = missing, column names, labels (N,) or None).

    Raises ConfigError naming the file and the problem (see :func:`load_table`).
    """
    table = load_table(path, label_column)
    return table.values, table.columns, table.labels


def load_table(path: str | Path, label_column: str | None = None) -> SourceTable:
    """Read and check the user's CSV / Parquet file, or files (:class:`SourceTable`;
    pipelines.table_files says which files and how they are joined).

    Raises ConfigError (one line, naming the file, and the column where there is one): an empty
    or unreadable file, duplicate column names, files that disagree on their columns, fewer
    than 3 rows or no column, non-numeric columns, inf, a column with no observed value, a
    column too wide for standardisation (missiwae.columns.check_column_range), an unknown or
    incomplete label column.
    """
    arrow, files, name = read_files(path)
    labels = None
    label_array = None
    if label_column is not None:
        if label_column not in arrow.column_names:
            raise ConfigError(f"data.label_column {label_column!r} is not a column of {name}")
        label_array = arrow.column(label_column)
        arrow = arrow.drop_columns([label_column])
        labels = _as_float(label_array) if _is_numeric(label_array.type) else None
        if labels is None or np.isnan(labels).any():
            raise ConfigError(f"data.label_column {label_column!r} must be numeric with no missing value")
    if arrow.num_rows < 3 or arrow.num_columns < 1:
        raise ConfigError(f"{name} has {arrow.num_rows} rows and {arrow.num_columns} columns; need >= 3 x 1")
    columns = list(arrow.column_names)
    unusable = [
        f"{c} ({field.type})"
        for c, field in zip(columns, arrow.schema, strict=True)
        if not (_is_numeric(field.type) or _is_text(field.type))
    ]
    if unusable:
        raise ConfigError(
            f"column(s) {unusable} of {name} are neither numbers nor text: convert them (dates to "
            "days since a reference date, say) or drop them"
        )
    texts = [_as_text(column) if _is_text(column.type) else None for column in arrow.columns]
    for column_name, text in zip(columns, texts, strict=True):
        if text is not None:
            _check_not_mixed(text, column_name, name)
    values = np.column_stack(
        [
            _as_float(column) if text is None else np.where(is_missing(text), np.nan, 0.0)
            for column, text in zip(arrow.columns, texts, strict=True)
        ]
    )
    _check_values(values, columns, name)
    fields = ([label_array] if label_array is not None else []) + list(arrow.columns)
    field_names = (["label"] if label_array is not None else []) + [f"c{j}" for j in range(len(columns))]
    source = _struct(fields, field_names)
    return SourceTable(
        name=name, values=values, columns=columns, labels=labels, source=source, files=files, texts=texts
    )


def _is_numeric(kind: pa.DataType) -> bool:
    """Integers, floats and booleans are modelled; an all-empty CSV column reads as type null
    (numeric with no observed value, refused as such)."""
    import pyarrow as pa

    return bool(
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_null(kind)
    )


def _is_text(kind: pa.DataType) -> bool:
    """Strings (and dictionary-encoded strings, as Parquet stores categories): a column of labels."""
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _as_text(column: pa.ChunkedArray) -> np.ndarray:
    """(N,) object: the column's strings, None in the holes."""
    import pyarrow as pa

    return np.asarray(column.cast(pa.string()).to_pylist(), dtype=object)


def _check_not_mixed(text: np.ndarray, column: str, name: str) -> None:
    """ConfigError when a text column holds numbers beside words ("3" and "abc"): a CSV reader
    makes such a column text, and taking its numbers as labels would be a guess."""
    numbers, words = [], []
    for value in text.tolist():
        if value is None:
            continue
        try:
            float(value)
            numbers.append(value)
        except ValueError:
            words.append(value)
        if numbers and words:
            raise ConfigError(
                f"column {column!r} of {name} mixes numbers and text (e.g. {numbers[0]!r} and "
                f"{words[0]!r}): make it all numbers (a number column) or all labels"
            )


def _as_float(column: pa.ChunkedArray) -> np.ndarray:
    """(N,) float64, NaN for null (unsafe cast: int64 beyond 2**53 rounds; the model's view only)."""
    import pyarrow as pa

    return np.asarray(column.cast(pa.float64(), safe=False).fill_null(np.nan).to_numpy(), dtype=np.float64)


def _check_values(values: np.ndarray, columns: list[str], name: str) -> None:
    """ConfigError naming the columns holding inf, no observed value, or values too wide to model."""
    infinite = [c for c, bad in zip(columns, np.isinf(values).any(axis=0), strict=True) if bad]
    if infinite:
        raise ConfigError(
            f"column(s) {infinite} of {name} hold inf; only NaN (an empty cell) may mark a missing entry"
        )
    observed = ~np.isnan(values)
    empty = [c for c, seen in zip(columns, observed.any(axis=0), strict=True) if not seen]
    if empty:
        raise ConfigError(f"column(s) {empty} of {name} have no observed value: drop them")
    try:
        check_column_range(values, observed, names=columns, where=name)
    except ValueError as error:  # the library's check, the pipeline's error type (rc 2, one line)
        raise ConfigError(str(error)) from error


def _struct(fields: list[pa.ChunkedArray], names: list[str]) -> pa.StructArray:
    """The file's columns as one struct array (N,), each field in its own type."""
    import pyarrow as pa

    return pa.StructArray.from_arrays([field.combine_chunks() for field in fields], names=names)


def column_types(values: np.ndarray, observation: str) -> list[str]:
    """bernoulli for columns whose observed values are all 0 or 1, `observation` for the rest."""
    if observation not in ("gaussian", "student_t"):
        raise ConfigError(
            f"model.observation={observation!r}: a table's continuous columns need 'gaussian' or "
            "'student_t' (0/1 columns are Bernoulli automatically)"
        )
    return infer_column_types(values, observation)


def table_column_types(
    table: SourceTable, chosen: Mapping[str, str], observation: str
) -> tuple[SourceTable, list[str]]:
    """Each column's model (D,) and the table as the model takes it.

    Inferred unless ``data.column_types`` (`chosen`, column name -> type) names the column: text
    is categorical; numbers are :func:`column_types`' (bernoulli when every observed value is 0
    or 1, else `observation`). Chosen: any number column may be gaussian, student_t or
    categorical (its distinct values are its levels, and its imputed cells come back as one of
    them, in the column's own type: codes, ratings, years), and bernoulli when it holds only 0
    and 1; a text column can only be categorical. ConfigError naming the file and column for
    anything else, and for a name that is not a modelled column.
    """
    inferred = column_types(table.values, observation)
    unknown = sorted(set(chosen) - set(table.columns))
    if unknown:
        raise ConfigError(
            f"data.column_types names {unknown}, not modelled column(s) of {table.name} (its columns: "
            f"{table.columns}; data.label_column is not modelled)"
        )
    types, texts, values = [], list(table.texts), table.values.copy()
    for j, column in enumerate(table.columns):
        kind = chosen.get(column)
        if texts[j] is not None:
            if kind not in (None, CATEGORICAL):
                raise ConfigError(
                    f"data.column_types.{column}={kind}: column {column!r} of {table.name} holds text, "
                    "which can only be 'categorical'"
                )
            types.append(CATEGORICAL)
        elif kind is None:
            types.append(inferred[j])
        elif kind == CATEGORICAL:  # its values become labels, the model sees a one-hot block
            texts[j] = np.asarray(table.source.field(f"c{j}").to_pylist(), dtype=object)
            values[:, j] = np.where(np.isnan(values[:, j]), np.nan, 0.0)
            types.append(kind)
        else:
            if kind == "bernoulli" and inferred[j] != "bernoulli":  # not all 0/1 (binary_columns)
                observed = values[~np.isnan(values[:, j]), j]
                other = observed[(observed != 0.0) & (observed != 1.0)]
                raise ConfigError(
                    f"data.column_types.{column}=bernoulli: column {column!r} of {table.name} holds "
                    f"{other[0]:g}; a Bernoulli column holds 0 and 1 only"
                )
            types.append(kind)
    return dataclasses.replace(table, texts=texts, values=values), types


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


def fit_scaling(values: np.ndarray, train_rows: np.ndarray, continuous: list[bool]) -> Standardization:
    """Mean and scale (D,) of the `continuous` columns of `values` (N, D), from the observed
    entries of the TRAIN rows (`train_rows`, indices): nothing about the held-out rows leaks in.

    Except where the train rows cannot tell: a column with fewer than two distinct observed
    train values (a small table's one or two train rows) would get scale 1 in whatever units
    it has, and its held-out values could land 1e15 "standard deviations" out; such a column
    takes its mean and scale from all its observed rows. check_finite stays on (load_table's
    range check keeps the variance finite): no infinite scale ever reaches the manifest.
    """
    train = Standardization.fit(values[train_rows], columns=continuous)
    observed_train = values[train_rows]
    degenerate = np.array(
        [np.unique(col[~np.isnan(col)]).size < 2 for col in observed_train.T], dtype=bool
    ) & np.asarray(continuous, dtype=bool)
    if not degenerate.any():
        return train
    whole = Standardization.fit(values, columns=continuous)
    return Standardization(
        np.where(degenerate, whole.mean, train.mean), np.where(degenerate, whole.scale, train.scale)
    )


def tabular_split_tables(config: PipelineConfig) -> tuple[dict[str, pa.Table], dict[str, Any]]:
    """The three splits' Arrow tables (module docstring layout) and the manifest's `table` entry."""
    data = config.data
    assert data.path is not None
    table, types = table_column_types(
        load_table(data.path, data.label_column), data.column_types, config.model.observation
    )
    labels = table.labels
    rows = split_rows(table.values.shape[0], data.seed, data.valid_fraction, data.test_fraction)
    check_observed_in_training(~np.isnan(table.values), rows["train"], table.columns, table.name)
    onehot = _levels(table, rows["train"])
    # The model's columns: numbers as they are, a column of labels one-hot (missiwae.categorical).
    values = onehot.encode(
        [table.values[:, j] if text is None else text for j, text in enumerate(table.texts)]
    )
    model_types = onehot.model_column_types(types)
    model_names = onehot.model_column_names(table.columns)
    observed = ~np.isnan(values)

    continuous = [t not in ("bernoulli", CATEGORICAL) for t in model_types]
    try:
        scaling = fit_scaling(values, rows["train"], continuous)
    except ValueError as error:
        raise ConfigError(f"{table.name}: {error}") from error
    standardised = scaling.transform(values, observed)
    try:  # held-out rows far from the train rows' scaling would overflow the float32 model
        check_standardised_range(standardised, names=model_names, where=table.name)
    except ValueError as error:
        raise ConfigError(str(error)) from error

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
            source=table.source.take(index),
        )
    info = {
        "source": str(Path(data.path).expanduser().resolve()),
        "source_sha256": sources_sha256(data.path),
        "sources": table.files.to_manifest(),
        "columns": table.columns,
        "column_types": types,
        # Per column: its levels (a column of labels, one-hot in the model) or None.
        "levels": [None if found is None else list(found) for found in onehot.levels],
        "mean": scaling.mean.tolist(),
        "scale": scaling.scale.tolist(),
        "label_column": data.label_column,
        "num_rows": int(values.shape[0]),
        "num_missing": int(np.isnan(table.values).sum()),
    }
    return tables, info


def _levels(table: SourceTable, train_rows: np.ndarray) -> OneHot:
    """The levels of each column of labels, from its TRAINING rows (sorted); ConfigError naming
    the file, column and level when a held-out row holds a level no training row has: the model
    could not learn it, and its row's cell must come back as the file's own."""
    names = table.columns
    try:
        onehot = OneHot.fit(
            [
                text[train_rows] if text is not None else table.values[train_rows, j]
                for j, text in enumerate(table.texts)
            ],
            [text is not None for text in table.texts],
            names,
        )
    except ValueError as error:
        raise ConfigError(f"{table.name}: {error}") from error
    for j, (text, found) in enumerate(zip(table.texts, onehot.levels, strict=True)):
        if text is None or found is None:
            continue
        unseen = sorted({v for v in text.tolist() if v is not None} - set(found))
        if unseen:
            raise ConfigError(
                f"column {names[j]!r} of {table.name} holds the level {unseen[0]!r} only in held-out "
                f"rows (valid / test), never among the {len(train_rows)} training rows: the model "
                "could not learn it. Change data.seed or data.valid_fraction / data.test_fraction, "
                "or merge the rare level into another"
            )
    return onehot


def table_onehot(info: dict[str, Any]) -> OneHot:
    """The ingested table's model columns (the manifest's ``table`` entry): a column of labels
    one-hot over its ``levels``, every other column one model column."""
    levels = info.get("levels") or [None] * len(info["columns"])
    return OneHot(tuple(None if found is None else tuple(found) for found in levels))


def check_observed_in_training(
    observed: np.ndarray, train_rows: np.ndarray, columns: list[str], name: str
) -> None:
    """ConfigError naming the columns (`observed` (N, D), True = observed) with no observed
    value among the training rows: the model would never see one, so its imputations there
    would be the untrained decoder's, numbers that look like results and are not."""
    seen = observed[train_rows].any(axis=0)
    if seen.all():
        return
    unseen = [c for c, ok in zip(columns, seen, strict=True) if not ok]
    counts = [int(observed[:, j].sum()) for j in np.flatnonzero(~seen)]
    raise ConfigError(
        f"column(s) {unseen} of {name} have no observed value among the {len(train_rows)} training "
        f"rows (observed in {counts} held-out rows only): the model could not learn them. Drop "
        "them, or change data.seed or data.valid_fraction / data.test_fraction"
    )


def tabular_model_config(config: PipelineConfig, ingest: IngestResult) -> PipelineConfig:
    """`config` with model.num_features and model.column_types set from the ingested table, and
    scaling.num_workers clamped to the training rows (a small table's 1 or 2: Ray Train's equal
    split would leave a worker with no row)."""
    if ingest.table is None:
        raise ValueError("the ingest result holds no table (data.path was not set)")
    if config.model.architecture != "mlp":
        raise ConfigError("model.architecture must be 'mlp' for a table (the conv pair is for 28x28 images)")
    onehot = table_onehot(ingest.table)
    types: list[Any] = list(onehot.model_column_types(ingest.table["column_types"]))  # JSON names
    mixed = len(set(types)) > 1 or CATEGORICAL in types
    model = dataclasses.replace(
        config.model,
        num_features=len(types),
        observation=config.model.observation if mixed else types[0],
        column_types=tuple(types) if mixed else (),
        categorical_levels=onehot.categorical_levels,
    )
    workers = max(1, min(config.scaling.num_workers, ingest.num_rows["train"]))
    scaling = dataclasses.replace(config.scaling, num_workers=workers)
    return dataclasses.replace(config, model=model, scaling=scaling)


__all__ = [
    "CATEGORICAL",
    "TABULAR_FORMAT_VERSION",
    "SourceTable",
    "check_observed_in_training",
    "column_types",
    "fit_scaling",
    "load_table",
    "read_table",
    "split_rows",
    "table_column_types",
    "table_onehot",
    "tabular_model_config",
    "tabular_split_tables",
]
