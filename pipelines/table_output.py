"""The imputed table's format: what the workers write, and the reader that gives it back in order.

The one owner of the table path's output (the stage that runs the job is pipelines/tabular.py).
Under ``{run_dir}/imputed/table``::

    missiwae_single/{split}-{first:012d}.parquet ...     holes = E[x_m | x_o] (SNIS)
    missiwae_multiple_00/{split}-{first:012d}.parquet ... holes = one SIR draw each (M folders)
    missiwae_single.csv                                   small tables only (tabular.write_csv)
    _MANIFEST.json                                        partitions, sources, metrics, seconds

Each folder is one completed table, partitioned: the Ray Data job's writer tasks
(:func:`write_partitions`) write its files, never the driver, so no process holds the table.
A partition holds the rows of one split from one run of ``impute_stage.table_rows_per_file``
consecutive imputed rows, sorted by their row in the table; ``first`` is the first one's. Every
folder has the same partition names. :func:`read_imputed_table` yields a folder's rows in the
table's order (its files one after the other, each file's rows in order; a merge of the splits'
partitions, one batch at a time); :func:`load_imputed_table` is that as one Arrow table. Any
Parquet reader can read a folder too (``pandas.read_parquet(folder)``); the rows then come
grouped by split: sort by ``source_file``'s position and ``source_row`` for the file's order.

Columns: ``source_file``, ``source_row``, ``split``, ``mask``, (the label column,) then the
file's columns, each in the file's own type (:func:`table_maker`): observed cells copied from
the shards' ``source``, imputed ones cast to the column's type (integers rounded, booleans
P >= 0.5: :func:`cast_imputed`; a column of labels its most probable level, or the drawn one).
``mask`` is the row's lineage: a string with one character per file column, in the file's
column order, ``o`` where the cell is the file's own and ``i`` where it was imputed
(:func:`mask_strings`; :func:`read_table_mask` turns it back into a (N, D) bool array, True =
observed, as in the MNIST datasets). Letters, not 0/1: a CSV reader would take ``0110`` for the
integer 110. ``source_file`` and ``source_row`` are where the row came from: the file (its path
relative to the files' common folder, the name alone for one file) and the row's index in it.
A user column called ``source_file``, ``source_row``, ``split`` or ``mask`` keeps its name; the
bookkeeping column then becomes ``_source_file`` / ``_source_row`` / ``_split`` / ``_mask``
(:func:`row_columns`; the manifest's ``row_columns``). Bernoulli float columns hold
P(x_j = 1 | x_o) in the single imputation and 0/1 draws in the multiple ones.

Exactly once. Each writer task returns one summary row per partition (:data:`SUMMARY_COLUMNS`);
:func:`check_partitions` proves from them that every imputed row was written exactly once (per
split, disjoint row ranges whose counts add up to the split's rows), and :func:`keep_only`
removes whatever else a killed or retried task left in the folders, before the stage publishes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from missiwae.atomic import atomic_file
from pipelines.publish import MANIFEST
from pipelines.shards import read_table, tensor_matrix
from pipelines.table_files import SourceFiles
from pipelines.table_source import table_onehot

if TYPE_CHECKING:
    import pyarrow as pa

SINGLE = "missiwae_single"
MULTIPLE_PREFIX = "missiwae_multiple_"
# What the output is built from, besides the imputations: lineage, split, mask, the file's cells.
OUTPUT_SOURCE_COLUMNS = ("source_row", "split", "mask", "source")
# The imputation job's output for a table, per row (pipelines/impute_job.py's ImputeActor).
IMPUTED_TABLE_COLUMNS = (*OUTPUT_SOURCE_COLUMNS, "single", "multiple", "ess", "log_likelihood")
# The output's bookkeeping columns, in order; each steps aside for a user column of its name.
ROW_COLUMNS = ("source_file", "source_row", "split", "mask")
# The output mask's letters (module docstring).
OBSERVED, IMPUTED = "o", "i"
# One summary row per written partition (write_partitions -> check_partitions).
SUMMARY_COLUMNS = ("file", "split", "first", "last", "num_rows", "num_imputed_cells", "ll_sum", "ess_sum")


def dataset_names(num_imputations: int) -> list[str]:
    """The output folders: the single imputation, then the M multiple ones."""
    return [SINGLE, *(f"{MULTIPLE_PREFIX}{m:02d}" for m in range(num_imputations))]


def partition_name(split: str, first: int) -> str:
    """A partition's file name: its split and the table row of its first row (zero-padded, so
    a folder's names sort by split, then by row)."""
    return f"{split}-{first:012d}.parquet"


# ------------------------------------------------------------------------------ writing


def write_partitions(batch: pa.Table, *, info: dict[str, Any], directory: str) -> pa.Table:
    """The writer of a Ray Data ``map_batches`` (batch_format "pyarrow"): `batch` holds
    IMPUTED_TABLE_COLUMNS of B consecutive imputed rows (single (B, D') and multiple (B, M, D')
    in standardised units, D' model columns); `info` is the ingest manifest's ``table`` entry.
    Writes, per split in the batch, one partition into `directory`'s SINGLE folder and each
    multiple one's (which must exist), atomically; returns one summary row per partition."""
    import pyarrow as pa

    source_row = batch.column("source_row").to_numpy()
    order = np.argsort(source_row, kind="stable")
    if (np.diff(source_row[order]) == 0).any():
        raise RuntimeError("a batch of the table's imputation job holds a row twice")
    batch = batch.take(order)
    source_row = source_row[order]
    splits = np.asarray(batch.column("split").to_pylist(), dtype=object)
    single = tensor_matrix(batch.column("single"), np.float64, what="the imputed batch", name="single")
    multiple = tensor_matrix(batch.column("multiple"), np.float64, what="the imputed batch", name="multiple")
    multiple = multiple.reshape(len(source_row), -1, single.shape[1])  # (B, M, D')
    names = dataset_names(multiple.shape[1])
    ess = batch.column("ess").to_numpy().astype(np.float64)
    log_likelihood = batch.column("log_likelihood").to_numpy().astype(np.float64)
    summary: dict[str, list[Any]] = {key: [] for key in SUMMARY_COLUMNS}
    for split in dict.fromkeys(splits.tolist()):
        rows = np.flatnonzero(splits == split)
        piece = batch.take(rows)
        make = table_maker(piece, info)
        name = partition_name(str(split), int(source_row[rows[0]]))
        for dataset, values in zip(names, [single[rows], *np.moveaxis(multiple[rows], 1, 0)], strict=True):
            write_parquet(make(values), Path(directory) / dataset / name)
        mask = table_mask(tensor_matrix(piece.column("mask"), np.bool_, name="mask"), info)
        for key, value in (
            ("file", name),
            ("split", str(split)),
            ("first", int(source_row[rows[0]])),
            ("last", int(source_row[rows[-1]])),
            ("num_rows", len(rows)),
            ("num_imputed_cells", int((~mask).sum())),
            ("ll_sum", float(log_likelihood[rows].sum())),
            ("ess_sum", float(ess[rows].sum())),
        ):
            summary[key].append(value)
    return pa.table(summary)


def write_parquet(table: pa.Table, target: Path) -> None:
    """`table` at `target`, atomically (missiwae.atomic): a task killed mid-write leaves only a
    temporary file, which :func:`keep_only` removes."""
    import pyarrow.parquet as pq

    with atomic_file(target) as temporary:
        pq.write_table(table, temporary)


def check_partitions(summary: pa.Table, num_rows: Mapping[str, int]) -> None:
    """RuntimeError unless the partitions in `summary` (SUMMARY_COLUMNS rows) hold every row of
    each split of `num_rows` exactly once: per split, their row ranges [first, last] are
    disjoint and their counts add up to the split's rows (each partition's rows are distinct
    and sorted, which write_partitions checks)."""
    splits = np.asarray(summary.column("split").to_pylist(), dtype=object)
    first = summary.column("first").to_numpy()
    last = summary.column("last").to_numpy()
    counts = summary.column("num_rows").to_numpy()
    for split, expected in num_rows.items():
        rows = np.flatnonzero(splits == split)
        rows = rows[np.argsort(first[rows], kind="stable")]
        overlap = (first[rows][1:] <= last[rows][:-1]).any()
        if overlap or int(counts[rows].sum()) != expected:
            raise RuntimeError(
                f"the table's imputation job lost or duplicated rows of split {split!r}: "
                f"{int(counts[rows].sum())} written for {expected}{' (ranges overlap)' if overlap else ''}"
            )
    unknown = set(splits.tolist()) - set(num_rows)
    if unknown:
        raise RuntimeError(
            f"the table's imputation job wrote rows of split(s) {sorted(unknown)} it was not given"
        )


def keep_only(directory: Path, datasets: Sequence[str], files: Sequence[str]) -> None:
    """In each of `datasets`' folders under `directory`, remove every entry but `files`, and
    RuntimeError if one of `files` is missing."""
    wanted = set(files)
    for dataset in datasets:
        folder = directory / dataset
        present = {path.name for path in folder.iterdir()}
        missing = wanted - present
        if missing:
            raise RuntimeError(
                f"{dataset}: the partition(s) {sorted(missing)[:3]} were reported but not found"
            )
        for name in present - wanted:
            stray = folder / name
            if stray.is_dir():
                shutil.rmtree(stray)
            else:
                stray.unlink()


def fresh_folders(directory: Path, datasets: Sequence[str]) -> None:
    """Empty folders for `datasets` under `directory` (what an earlier attempt wrote is removed)."""
    for dataset in datasets:
        shutil.rmtree(directory / dataset, ignore_errors=True)
        (directory / dataset).mkdir(parents=True)


# ------------------------------------------------------------------------------ reading


def read_imputed_table(folder: str | Path, batch_rows: int = 65_536) -> Iterator[pa.Table]:
    """One output folder's rows in the table's order (the files' rows one after the other),
    as Arrow tables of about `batch_rows` rows or fewer (module docstring). Memory stays
    at a batch per split, whatever the table's size. The folder's ``../_MANIFEST.json`` says
    where each file's rows start. DataError for an unreadable file, FileNotFoundError for a
    folder without partitions."""
    folder = Path(folder)
    manifest = json.loads((folder.parent / MANIFEST).read_text())
    files = SourceFiles.from_manifest(manifest["sources"])
    starts = dict(zip(files.names, np.concatenate([[0], np.cumsum(files.num_rows)[:-1]]), strict=True))
    names = manifest["row_columns"]
    partitions = sorted(path.name for path in folder.glob("*.parquet"))
    if not partitions:
        raise FileNotFoundError(f"no Parquet partitions in {folder}")
    by_split: dict[str, list[Path]] = {}
    for name in partitions:
        by_split.setdefault(name.rsplit("-", 1)[0], []).append(folder / name)

    def keyed(paths: list[Path]) -> Iterator[tuple[np.ndarray, pa.Table]]:
        for path in paths:
            table = read_table(path)
            file_start = np.array(
                [starts[name] for name in table.column(names["source_file"]).to_pylist()], dtype=np.int64
            )
            yield file_start + table.column(names["source_row"]).to_numpy(), table

    yield from merge_in_order([keyed(paths) for paths in by_split.values()], batch_rows)


def merge_in_order(
    streams: Sequence[Iterator[tuple[np.ndarray, pa.Table]]], batch_rows: int
) -> Iterator[pa.Table]:
    """Several streams of (keys (n,), a table of those n rows), each ascending by key across
    its items, merged into one ascending stream of tables of at most `batch_rows` rows (keys
    are distinct). Holds one item per stream: rows up to the smallest last key of the streams
    that may still send more are final, the rest wait for the next round."""
    import pyarrow as pa

    heads: dict[int, tuple[np.ndarray, pa.Table]] = {}
    finished: set[int] = set()
    while True:
        for i, stream in enumerate(streams):
            while i not in finished and (i not in heads or len(heads[i][0]) == 0):
                item = next(stream, None)
                if item is None:
                    finished.add(i)
                    heads.pop(i, None)
                else:
                    heads[i] = (np.asarray(item[0]), item[1])
        heads = {i: head for i, head in heads.items() if len(head[0])}
        if not heads:
            return
        still_open = [keys[-1] for i, (keys, _) in heads.items() if i not in finished]
        bound = min(still_open) if still_open else max(keys[-1] for keys, _ in heads.values())
        takes = {i: int(np.searchsorted(keys, bound, side="right")) for i, (keys, _) in heads.items()}
        if sum(takes.values()) > batch_rows:  # the batch_rows smallest of the final rows
            final = np.concatenate([heads[i][0][:take] for i, take in takes.items()])
            bound = np.partition(final, batch_rows - 1)[batch_rows - 1]
            takes = {i: int(np.searchsorted(keys, bound, side="right")) for i, (keys, _) in heads.items()}
        keys_out, parts = [], []
        for i, take in takes.items():
            keys, table = heads[i]
            keys_out.append(keys[:take])
            parts.append(table.slice(0, take))
            heads[i] = (keys[take:], table.slice(take))
        yield pa.concat_tables(parts).take(np.argsort(np.concatenate(keys_out), kind="stable"))


def load_imputed_table(folder: str | Path) -> pa.Table:
    """One output folder as one Arrow table in the table's order (:func:`read_imputed_table`)."""
    import pyarrow as pa

    return pa.concat_tables(list(read_imputed_table(folder)))


# ------------------------------------------------------------------------------ one table's rows


def table_maker(shards: pa.Table, info: dict[str, Any]) -> Callable[[np.ndarray], pa.Table]:
    """A function from imputations (N, D) in standardised units to the output table (module
    docstring): `shards` holds OUTPUT_SOURCE_COLUMNS of the N rows sorted by source_row, `info`
    the ingest manifest's ``table`` entry. Observed cells come from the shards' ``source`` (the
    file's cells in their own types), never through the float32 model or float64."""
    import pyarrow as pa

    mean, scale = np.asarray(info["mean"], np.float64), np.asarray(info["scale"], np.float64)
    onehot = table_onehot(info)
    spans = onehot.spans()
    mask = table_mask(
        tensor_matrix(shards.column("mask"), np.bool_, what="the table's shards", name="mask"), info
    )
    struct = shards.column("source").combine_chunks()
    source = dict(zip(struct.type.names, struct.flatten(), strict=True))
    row_names = row_columns(info)
    files = SourceFiles.from_manifest(info["sources"])
    file_index, file_row = files.locate(shards.column("source_row").to_numpy())
    bookkeeping = {
        row_names["source_file"]: pa.array(np.asarray(files.names, dtype=object)[file_index], pa.string()),
        row_names["source_row"]: pa.array(file_row, pa.int64()),
        row_names["split"]: shards.column("split").cast(pa.string()),
        row_names["mask"]: pa.array(mask_strings(mask), pa.string()),
    }

    def table(standardised: np.ndarray) -> pa.Table:
        imputed_values = np.asarray(standardised, np.float64) * scale + mean  # the file's units
        columns: dict[str, Any] = dict(bookkeeping)
        if info["label_column"] is not None:
            columns[info["label_column"]] = source["label"]
        for j, name in enumerate(info["columns"]):
            if onehot.levels[j] is None:
                imputed = imputed_values[:, spans[j].start]
            else:  # a column of labels: its most probable (single) or drawn (multiple) level
                imputed = onehot.most_probable(imputed_values, j)
            columns[name] = completed_column(source[f"c{j}"], mask[:, j], imputed)
        return pa.table(columns)

    return table


def table_mask(model_mask: np.ndarray, info: dict[str, Any]) -> np.ndarray:
    """(N, D) True = observed, one per table column, from the shards' (N, D') model mask (a
    column of labels is observed or missing across its whole one-hot block)."""
    return model_mask[:, [span.start for span in table_onehot(info).spans()]]


def mask_strings(mask: np.ndarray) -> list[str]:
    """The output's ``mask`` column from a (N, D) bool mask (True = observed): N strings of D
    letters, ``o`` (OBSERVED) for a cell copied from the file, ``i`` (IMPUTED) for a hole."""
    letters = np.where(np.asarray(mask, np.bool_), ord(OBSERVED), ord(IMPUTED)).astype(np.uint8)
    return [row.tobytes().decode("ascii") for row in letters]


def read_table_mask(column: Any) -> np.ndarray:
    """The (N, D) bool mask (True = observed) back from an output's ``mask`` column: a pyarrow
    array, a pandas Series or a list of N strings of D letters (:func:`mask_strings`)."""
    strings = column.to_pylist() if hasattr(column, "to_pylist") else list(column)
    if not strings:
        return np.zeros((0, 0), np.bool_)
    if len({len(row) for row in strings}) != 1:
        raise ValueError("the rows of a table mask differ in length")
    letters = np.frombuffer("".join(strings).encode("ascii", "replace"), np.uint8)
    if not np.isin(letters, (ord(OBSERVED), ord(IMPUTED))).all():
        raise ValueError(f"a table mask holds only the letters {OBSERVED!r} and {IMPUTED!r}")
    letters = letters.reshape(len(strings), -1)
    return letters == ord(OBSERVED)


def row_columns(info: dict[str, Any]) -> dict[str, str]:
    """The output's names for the bookkeeping columns ``source_file``, ``source_row``, ``split``
    and ``mask`` (ROW_COLUMNS): those names,
    or, when the user's table already has a column so called, the name with ``_`` prepended until
    it is free. The user's columns always keep their own names (nothing of theirs is dropped or
    overwritten); the output manifest's ``row_columns`` records the names used."""
    taken = set(info["columns"]) | ({info["label_column"]} if info["label_column"] is not None else set())
    names: dict[str, str] = {}
    for key in ROW_COLUMNS:
        name = key
        while name in taken:
            name = "_" + name
        taken.add(name)
        names[key] = name
    return names


def completed_column(original: pa.Array, observed: np.ndarray, imputed: np.ndarray) -> pa.Array:
    """One output column (N,) of `original`'s type: the observed cells (`observed` (N,) True)
    copied from `original` itself, the holes from `imputed` (N,): float64 cast to that type
    (:func:`cast_imputed`), or, for a column of labels, the levels themselves (objects)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if imputed.dtype == object:  # levels: strings, or a categorical number column's values
        fill = pa.array(imputed.tolist()).cast(original.type)
    else:
        fill = pa.array(cast_imputed(imputed, original.type.to_pandas_dtype()), type=original.type)
    return pc.if_else(pa.array(observed, pa.bool_()), original, fill)


def cast_imputed(imputed: np.ndarray, dtype: Any) -> np.ndarray:
    """Imputed values (N,) float64 in a column's own numpy `dtype`: booleans are the more likely
    value (>= 0.5), integers rounded to the nearest and clipped to the type's range, narrower
    floats clipped to their finite range (never inf)."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return np.asarray(imputed >= 0.5)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        rounded = np.rint(imputed)
        # float(info.max) rounds up for 64-bit types, so compare and set the ends exactly.
        low, high = rounded <= float(info.min), rounded >= float(info.max)
        out = np.where(low | high, 0.0, rounded).astype(dtype)
        out[low], out[high] = info.min, info.max
        return out
    limit = float(np.finfo(dtype).max)
    return np.clip(imputed, -limit, limit).astype(dtype)


__all__ = [
    "IMPUTED",
    "IMPUTED_TABLE_COLUMNS",
    "MULTIPLE_PREFIX",
    "OBSERVED",
    "OUTPUT_SOURCE_COLUMNS",
    "ROW_COLUMNS",
    "SINGLE",
    "SUMMARY_COLUMNS",
    "cast_imputed",
    "check_partitions",
    "completed_column",
    "dataset_names",
    "fresh_folders",
    "keep_only",
    "load_imputed_table",
    "mask_strings",
    "merge_in_order",
    "partition_name",
    "read_imputed_table",
    "read_table_mask",
    "row_columns",
    "table_maker",
    "table_mask",
    "write_parquet",
    "write_partitions",
]
