"""A user's table (CSV / Parquet) as the source of the ingest stage: read, typed, split,
standardised and written as shards, a piece at a time.

The reading half of the table path (the imputation half is the stage in pipelines/tabular.py).
``ingest.run_ingest`` calls :func:`write_table_shards` when ``data.path`` is set:

1. :func:`plan_ingest`: the files, their common columns and row counts (Parquet footers; a
   CSV file is read once), the split of every row (:class:`SplitPlan`, decidable per piece);
2. per piece (pipelines.table_files.Piece: a CSV file, or up to PIECE_ROWS rows of a Parquet
   file's row groups), its stats (pipelines.table_stats), merged;
3. :func:`fit_table`: the checks, column types, levels and standardisation from the merged
   stats: the manifest's ``table`` entry;
4. per piece again, its rows in the shard layout, written as one Parquet file per split.

Steps 2 and 4 are Ray Data tasks over the pieces when the table has more than
``ingest.table_parallel_rows`` rows, else they run in this process; either way no process
holds more than a piece of the table, and the shards are the same. Both stages share the
manifest entry (:func:`tabular_model_config`). The layout of the shards and the rules for
columns are described in pipelines/tabular.py's docstring.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from missiwae.categorical import OneHot, is_missing
from missiwae.columns import Standardization, infer_column_types
from missiwae.config import ConfigError
from pipelines.config import PipelineConfig
from pipelines.shards import SPLITS, IngestResult, shard_table
from pipelines.storage import atomic_file
from pipelines.table_files import (
    Piece,
    SourceFiles,
    TablePlan,
    is_uri,
    plan_table,
    read_files,
    sources_sha256,
)
from pipelines.table_stats import (
    TableStats,
    as_float,
    check_kinds,
    check_split,
    check_standardised,
    check_table,
    is_text,
)

if TYPE_CHECKING:
    import pyarrow as pa

# The split's block (SplitPlan): rows whose split is drawn together.
SPLIT_BLOCK_ROWS = 1 << 20
# Bump when the tabular shard layout or standardisation changes (part of the ingest fingerprint).
# 2: the `source` column (the file's cells in their own types), bookkeeping-safe output names.
# 3: several files (data.path a folder or a glob); the manifest's `sources`.
# 4: columns of labels, one-hot in the shards; the manifest's `levels`.
# 5: read and written a piece at a time: a shard per piece and split, splits drawn per block.
TABULAR_FORMAT_VERSION = 5
CATEGORICAL = "categorical"  # a column of labels' type in the manifest


@dataclasses.dataclass(frozen=True)
class SourceTable:
    """A user's table as read and checked (:func:`load_table`; small tables and tests: the
    ingest itself reads a piece at a time).

    values: float64 (N, D), NaN = missing (the model's view: integers and booleans as floats;
    a text column 0 where observed); columns: the D modelled columns' names, in the file's
    order; labels: float64 (N,) of ``data.label_column``, or None; source: the file's own
    cells, untouched, as one Arrow struct array (N,) with fields ``label`` (when there is a
    label column) and ``c0`` ... ``c{D-1}``, each in the file's type; files: where the rows came
    from (pipelines.table_files); texts: per column, the (N,) object array of a text column's
    labels (None in the holes), or None for a number column.
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
    """Read and check the user's CSV / Parquet file, or files, whole (:class:`SourceTable`;
    pipelines.table_files says which files and how they are joined).

    Raises ConfigError (one line, naming the file, and the column where there is one) for what
    makes a table unusable whatever its split (pipelines.table_stats.check_kinds and
    check_table): an empty or unreadable file, duplicate column names, files that disagree on
    their columns, fewer than 3 rows or no column, columns neither numbers nor text, a text
    column mixing numbers and words, inf, a column with no observed value, a column too wide
    for standardisation, an unknown or incomplete label column.
    """
    arrow, files, name = read_files(path)
    columns = check_kinds(arrow.schema, label_column, name, arrow.num_rows)
    stats = TableStats.of_piece(arrow, np.zeros(arrow.num_rows, np.int8), label_column)
    check_table(stats, label_column, name)
    labels = as_float(arrow.column(label_column)) if label_column is not None else None
    values, texts, source = _model_view(arrow, columns, label_column, frozenset())
    return SourceTable(name, values, columns, labels, source, files, texts)


def _model_view(
    arrow: pa.Table, columns: list[str], label_column: str | None, categorical: frozenset[str]
) -> tuple[np.ndarray, list[np.ndarray | None], pa.StructArray]:
    """The rows of `arrow` as the model's float view (N, D) (NaN = missing; a column of labels
    0 where observed), each column's labels (N,) objects (text columns and the number columns
    in `categorical`) or None, and the file's own cells as one struct (SourceTable's fields)."""
    import pyarrow as pa

    texts: list[np.ndarray | None] = []
    for column in columns:
        cells = arrow.column(column)
        if is_text(cells.type):
            texts.append(np.asarray(cells.cast(pa.string()).to_pylist(), dtype=object))
        elif column in categorical:
            texts.append(np.asarray(cells.to_pylist(), dtype=object))
        else:
            texts.append(None)
    values = (
        np.column_stack(
            [
                as_float(arrow.column(column)) if text is None else np.where(is_missing(text), np.nan, 0.0)
                for column, text in zip(columns, texts, strict=True)
            ]
        )
        if columns
        else np.zeros((arrow.num_rows, 0))
    )
    fields = [arrow.column(c).combine_chunks() for c in ([label_column] if label_column else []) + columns]
    names = (["label"] if label_column is not None else []) + [f"c{j}" for j in range(len(columns))]
    return values, texts, pa.StructArray.from_arrays(fields, names=names)


def column_types(values: np.ndarray, observation: str) -> list[str]:
    """bernoulli for columns whose observed values are all 0 or 1, `observation` for the rest."""
    _check_observation(observation)
    return infer_column_types(values, observation)


def _check_observation(observation: str) -> None:
    if observation not in ("gaussian", "student_t"):
        raise ConfigError(
            f"model.observation={observation!r}: a table's continuous columns need 'gaussian' or "
            "'student_t' (0/1 columns are Bernoulli automatically)"
        )


# ------------------------------------------------------------------------------ the split


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """Which split each row of the table goes to, decidable for any range of rows without
    the others: a uniformly random partition of the N rows into train / valid / test of exactly
    the sizes ``data.valid_fraction`` and ``data.test_fraction`` ask for (each >= 1 row).

    The rows are cut into blocks of SPLIT_BLOCK_ROWS; ``counts`` (num_blocks, 3) says how many
    of each split a block holds (a multivariate hypergeometric draw per block, block after
    block, seeded with ``data.seed``: the rows' split sizes are then those of one random
    permutation of all N rows), and a seeded permutation of the block says which rows. The
    first block draws its permutation as the whole table always did, so a table of up to
    SPLIT_BLOCK_ROWS rows keeps the splits it had before blocks.
    """

    seed: int
    num_rows: int
    counts: np.ndarray

    @classmethod
    def make(cls, num_rows: int, seed: int, valid_fraction: float, test_fraction: float) -> SplitPlan:
        num_valid = max(1, round(num_rows * valid_fraction))
        num_test = max(1, round(num_rows * test_fraction))
        num_train = num_rows - num_valid - num_test
        if num_train < 1:
            raise ConfigError(f"{num_rows} rows leave none for training after the valid/test fractions")
        num_blocks = -(-num_rows // SPLIT_BLOCK_ROWS)
        sizes = np.full(num_blocks, SPLIT_BLOCK_ROWS, np.int64)
        sizes[-1] = num_rows - SPLIT_BLOCK_ROWS * (num_blocks - 1)
        remaining = np.array([num_train, num_valid, num_test], np.int64)
        rng = np.random.default_rng([seed, num_rows])
        counts = np.zeros((num_blocks, 3), np.int64)
        for block, size in enumerate(sizes):
            last = block == num_blocks - 1
            counts[block] = remaining if last else rng.multivariate_hypergeometric(remaining, int(size))
            remaining -= counts[block]
        return cls(seed, num_rows, counts)

    def codes(self, first: int, num_rows: int) -> np.ndarray:
        """(num_rows,) int8 split codes (SPLITS' index: 0 train, 1 valid, 2 test) of the table's
        rows [first, first + num_rows)."""
        out = np.empty(num_rows, np.int8)
        stop = first + num_rows
        for block in range(first // SPLIT_BLOCK_ROWS, -(-stop // SPLIT_BLOCK_ROWS)):
            lo = block * SPLIT_BLOCK_ROWS
            block_codes = self._block_codes(block)
            a, b = max(first, lo), min(stop, lo + len(block_codes))
            out[a - first : b - first] = block_codes[a - lo : b - lo]
        return out

    def _block_codes(self, block: int) -> np.ndarray:
        train, valid, _ = (int(c) for c in self.counts[block])
        rng = np.random.default_rng(self.seed if block == 0 else [self.seed, block])
        order = rng.permutation(int(self.counts[block].sum()))
        codes = np.full(len(order), 2, np.int8)
        codes[order[:train]] = 0
        codes[order[train : train + valid]] = 1
        return codes


def split_rows(
    num_rows: int, seed: int, valid_fraction: float, test_fraction: float
) -> dict[str, np.ndarray]:
    """Disjoint sorted row indices per split (:class:`SplitPlan`; each split >= 1 row)."""
    codes = SplitPlan.make(num_rows, seed, valid_fraction, test_fraction).codes(0, num_rows)
    return {split: np.flatnonzero(codes == i) for i, split in enumerate(SPLITS)}


# ------------------------------------------------------------------------------ the ingest


@dataclasses.dataclass(frozen=True)
class TableIngest:
    """Everything a piece's task needs (picklable: Ray Data ships it to the workers): the
    files (`plan`), the split, the modelled columns, the label column and the number columns
    data.column_types makes categorical."""

    plan: TablePlan
    split: SplitPlan
    columns: list[str]
    label_column: str | None
    categorical: frozenset[str]

    def stats(self, piece: Piece) -> TableStats:
        """The piece's :class:`pipelines.table_stats.TableStats`."""
        arrow = self.plan.read(piece)
        codes = self.split.codes(piece.first, piece.num_rows)
        return TableStats.of_piece(arrow, codes, self.label_column, self.categorical)

    def shards(self, piece: Piece, info: dict[str, Any], row_ids: Sequence[int]) -> dict[str, pa.Table]:
        """The piece's rows in the shard layout, per split (module docstring of
        pipelines/tabular.py), from the manifest's `info`; `row_ids` (3,): the index within its
        split of the piece's first row of each split."""
        arrow = self.plan.read(piece)
        codes = self.split.codes(piece.first, piece.num_rows)
        values, texts, source = _model_view(arrow, self.columns, self.label_column, self.categorical)
        onehot = table_onehot(info)
        model_values = onehot.encode([values[:, j] if t is None else t for j, t in enumerate(texts)])
        observed = ~np.isnan(model_values)
        scaling = Standardization(np.asarray(info["mean"]), np.asarray(info["scale"]))
        standardised = scaling.transform(model_values, observed).astype(np.float32)
        labels = as_float(arrow.column(self.label_column)) if self.label_column else np.full(len(codes), -1.0)
        source_row = piece.first + np.arange(piece.num_rows, dtype=np.int64)
        tables = {}
        for i, split in enumerate(SPLITS):
            rows = np.flatnonzero(codes == i)
            if not len(rows):
                continue
            table = shard_table(
                split,
                labels[rows],
                standardised[rows],
                observed[rows],
                source_row=source_row[rows],
                first_row_id=row_ids[i],
                values=model_values[rows],
                source=source.take(rows),
            )
            tables[split] = table
        return tables


def plan_ingest(config: PipelineConfig) -> TableIngest:
    """The files, the split and the columns of ``data.path``, from the files' footers (a CSV
    file is read once): ConfigError for what the schema alone refuses (check_kinds)."""
    data = config.data
    assert data.path is not None
    _check_observation(config.model.observation)
    plan = plan_table(data.path)
    columns = check_kinds(plan.schema, data.label_column, plan.where, plan.total_rows)
    unknown = sorted(set(data.column_types) - set(columns))
    if unknown:
        raise ConfigError(
            f"data.column_types names {unknown}, not modelled column(s) of {plan.where} (its columns: "
            f"{columns}; data.label_column is not modelled)"
        )
    categorical = frozenset(
        c
        for c, kind in data.column_types.items()
        if kind == CATEGORICAL and not is_text(plan.schema.field(c).type)
    )
    split = SplitPlan.make(plan.total_rows, data.seed, data.valid_fraction, data.test_fraction)
    return TableIngest(plan, split, columns, data.label_column, categorical)


def fit_table(ingest: TableIngest, stats: TableStats, config: PipelineConfig) -> dict[str, Any]:
    """The manifest's ``table`` entry from the merged stats of every piece: the checks
    (pipelines.table_stats), each column's model (:func:`chosen_types`), the levels of the
    columns of labels (from their TRAIN rows, sorted) and the standardisation of the
    continuous ones (mean and standard deviation of their observed TRAIN values; a column with
    fewer than two distinct TRAIN values takes both from all its observed rows, since the
    TRAIN rows cannot tell its units)."""
    data = config.data
    where = ingest.plan.where
    check_table(stats, data.label_column, where)
    types = chosen_types(stats, data.column_types, config.model.observation, where, ingest.plan.schema)
    check_split(stats, where)
    try:
        onehot = OneHot.fit(
            [np.asarray(list(column.levels), dtype=object) for column in stats.stats],
            [kind == CATEGORICAL for kind in types],
            ingest.columns,
        )
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from error
    continuous = [kind not in ("bernoulli", CATEGORICAL) for kind in types]
    mean, scale = np.zeros(len(types)), np.ones(len(types))
    for j, (column, use) in enumerate(zip(stats.stats, continuous, strict=True)):
        if not use:
            continue
        moments = column.train if len(column.levels) >= 2 else column.whole
        mean[j], scale[j] = moments.mean, moments.std if moments.std > 0 else 1.0
    check_standardised(stats, mean, scale, continuous, ingest.columns, where)
    spans = onehot.spans()
    model_mean, model_scale = np.zeros(onehot.num_model_columns), np.ones(onehot.num_model_columns)
    for j, span in enumerate(spans):
        if continuous[j]:
            model_mean[span.start], model_scale[span.start] = mean[j], scale[j]
    num_cells = stats.num_rows * len(types)
    return {
        "source": _where_from(str(data.path)),
        "source_sha256": sources_sha256(str(data.path)),
        "sources": ingest.plan.sources.to_manifest(),
        "columns": ingest.columns,
        "column_types": types,
        # Per column: its levels (a column of labels, one-hot in the model) or None.
        "levels": [None if found is None else list(found) for found in onehot.levels],
        "mean": model_mean.tolist(),
        "scale": model_scale.tolist(),
        "label_column": data.label_column,
        "num_rows": stats.num_rows,
        "num_missing": int(num_cells - sum(column.observed for column in stats.stats)),
    }


def _where_from(path: str) -> str:
    """``data.path`` as the manifest records it: a URI as given, a local path resolved."""
    return path if is_uri(path) else str(Path(path).expanduser().resolve())


def chosen_types(
    stats: TableStats, chosen: Mapping[str, str], observation: str, where: str, schema: pa.Schema
) -> list[str]:
    """Each column's model (D,): inferred unless ``data.column_types`` (`chosen`) names it.
    Inferred: text is categorical; numbers are bernoulli when every observed value is 0 or 1,
    else `observation`. Chosen: any number column may be gaussian, student_t or categorical
    (its distinct values are its levels, and its imputed cells come back as one of them, in
    the column's own type: codes, ratings, years), and bernoulli when it holds only 0 and 1; a
    text column can only be categorical. ConfigError naming the file and column otherwise."""
    types = []
    for column, column_stats in zip(stats.columns, stats.stats, strict=True):
        kind = chosen.get(column)
        if is_text(schema.field(column).type):
            if kind not in (None, CATEGORICAL):
                raise ConfigError(
                    f"data.column_types.{column}={kind}: column {column!r} of {where} holds text, "
                    "which can only be 'categorical'"
                )
            types.append(CATEGORICAL)
        elif kind is None:
            types.append("bernoulli" if column_stats.binary else observation)
        else:
            if kind == "bernoulli" and not column_stats.binary:
                raise ConfigError(
                    f"data.column_types.{column}=bernoulli: column {column!r} of {where} holds "
                    f"{column_stats.not_binary:g}; a Bernoulli column holds 0 and 1 only"
                )
            types.append(kind)
    return types


def tabular_split_tables(config: PipelineConfig) -> tuple[dict[str, pa.Table], dict[str, Any]]:
    """The three splits' Arrow tables (pipelines/tabular.py's layout) and the manifest's
    ``table`` entry, in this process (small tables and tests; the ingest writes the same rows
    a piece at a time: :func:`write_table_shards`)."""
    import pyarrow as pa

    ingest = plan_ingest(config)
    pieces = ingest.plan.pieces()
    piece_stats = [ingest.stats(piece) for piece in pieces]
    info = fit_table(ingest, TableStats.merge_all(piece_stats), config)
    parts: dict[str, list[pa.Table]] = {split: [] for split in SPLITS}
    for piece, row_ids in zip(pieces, _row_ids(piece_stats), strict=True):
        for split, table in ingest.shards(piece, info, row_ids).items():
            parts[split].append(table)
    return {split: pa.concat_tables(tables) for split, tables in parts.items()}, info


def _row_ids(piece_stats: Sequence[TableStats]) -> list[list[int]]:
    """Per piece, the index within each split of its first row of that split, from the
    pieces' own split counts (their stats, in source order)."""
    counts = np.array([stats.split_rows for stats in piece_stats], np.int64).reshape(-1, len(SPLITS))
    return (np.cumsum(counts, axis=0) - counts).tolist()


def table_onehot(info: dict[str, Any]) -> OneHot:
    """The ingested table's model columns (the manifest's ``table`` entry): a column of labels
    one-hot over its ``levels``, every other column one model column."""
    levels = info.get("levels") or [None] * len(info["columns"])
    return OneHot(tuple(None if found is None else tuple(found) for found in levels))


def write_table_shards(
    config: PipelineConfig, folders: Mapping[str, Path]
) -> tuple[dict[str, Any], dict[str, list[str]], dict[str, int]]:
    """Ingest the table of ``data.path`` into the empty `folders` (split -> folder) a piece at a
    time (module docstring): ``part-{piece:05d}.parquet`` per piece that has rows of the split.
    Returns the manifest's ``table`` entry, each split's file names, sorted, and its rows."""
    import pyarrow.parquet as pq

    ingest = plan_ingest(config)
    pieces = ingest.plan.pieces()
    parallel = ingest.plan.total_rows > config.ingest.table_parallel_rows

    def piece_stats(piece: Piece) -> str:
        return ingest.stats(piece).to_json()

    per_piece = [TableStats.from_json(text) for text in map_pieces(piece_stats, pieces, parallel=parallel)]
    stats = TableStats.merge_all(per_piece)
    info = fit_table(ingest, stats, config)
    row_ids = _row_ids(per_piece)

    def write(index: int) -> str:
        written = {}
        for split, table in ingest.shards(pieces[index], info, row_ids[index]).items():
            name = f"part-{index:05d}.parquet"
            with atomic_file(folders[split] / name) as temporary:
                pq.write_table(table, temporary)
            written[split] = name
        return json.dumps(written)

    names: dict[str, list[str]] = {split: [] for split in SPLITS}
    for text in map_pieces(write, list(range(len(pieces))), parallel=parallel):
        for split, name in json.loads(text).items():
            names[split].append(name)
    num_rows = dict(zip(SPLITS, stats.split_rows, strict=True))
    return info, {split: sorted(found) for split, found in names.items()}, num_rows


def map_pieces(fn: Callable[[Any], str], items: Sequence[Any], *, parallel: bool) -> list[str]:
    """[fn(item) for item in items], in order: in this process, or (`parallel`) as one Ray Data
    task per item, the results (JSON text: a piece's stats or file names, small) gathered in the
    driver. A ConfigError in a task (an unreadable file, say) is raised here as itself, not as
    Ray's wrapper of it."""
    if not parallel or len(items) <= 1:
        return [fn(item) for item in items]
    import ray.data

    from pipelines.runtime import ensure_ray

    ensure_ray()

    def task(row: dict[str, Any]) -> dict[str, Any]:
        try:
            return {"index": row["index"], "result": fn(items[row["index"]]), "error": ""}
        except ConfigError as error:
            return {"index": row["index"], "result": "", "error": str(error)}

    rows = (
        ray.data.from_items([{"index": i} for i in range(len(items))], override_num_blocks=len(items))
        .map(task)
        .take_all()
    )
    rows.sort(key=lambda row: row["index"])
    failed = [row["error"] for row in rows if row["error"]]
    if failed:
        raise ConfigError(failed[0])
    if [row["index"] for row in rows] != list(range(len(items))):
        raise RuntimeError("a Ray Data task of the table's ingest was lost or ran twice")
    return [str(row["result"]) for row in rows]


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
    "SPLIT_BLOCK_ROWS",
    "TABULAR_FORMAT_VERSION",
    "SourceTable",
    "SplitPlan",
    "TableIngest",
    "chosen_types",
    "column_types",
    "fit_table",
    "load_table",
    "map_pieces",
    "plan_ingest",
    "read_table",
    "split_rows",
    "table_onehot",
    "tabular_model_config",
    "tabular_split_tables",
    "write_table_shards",
]
