"""The imputed table's format: what the workers write, and the reader that gives it back in order.

The one owner of the table path's output (the stage that runs the job is pipelines/tabular.py).
Under ``{run_dir}/imputed/table``::

    missiwae_single/{split}-{first:012d}.parquet ...     holes = E[x_m | x_o] (SNIS)
    missiwae_multiple_00/{split}-{first:012d}.parquet ... holes = one SIR draw each (M folders)
    missiwae_single.csv                                   small tables only (tabular.write_csv)
    _MANIFEST.json                                        partitions, sources, metrics, seconds

Each folder is one completed table, partitioned: the Ray Data job's writer tasks
(:func:`write_partitions`) write its files, never the driver, so no process holds the table.
A partition holds the rows of one split among one writer task's batch (at most
``impute_stage.table_rows_per_file`` imputed rows), sorted by their row in the table; ``first``
is the first one's. Nothing else is assumed about which rows a batch holds: Ray Data's reader
packs row groups of several shard files into one read, so a batch's rows need not be
consecutive, and the row ranges of two partitions may interleave. Every folder has the same
partition names. :func:`read_imputed_table` yields a folder's rows in the table's order (its
files one after the other, each file's rows in order) by merging the partitions, opening each
only when the merge reaches its first row; :func:`load_imputed_table` is that as one Arrow
table. Any Parquet reader can read a folder too (``pandas.read_parquet(folder)``); the rows then
come grouped by split: sort by ``source_file``'s position and ``source_row`` for the file's order.

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

Exactly once. Each writer task returns one summary row per partition (:data:`SUMMARY_COLUMNS`),
with its row count and a checksum of its rows (:func:`row_checksum`: a sum of 64-bit hashes of
their indices, modulo 2**64). :func:`check_partitions` compares, per split, the partitions'
counts and checksums with the imputed shards' own (:func:`expected_rows`): a row lost and
another written twice leave the count as it was but change the checksum unless their hashes
agree modulo 2**64 (chance 2**-64 per such pair); the partition names must be distinct too.
:func:`keep_only` then removes whatever else a killed or retried task left in the folders,
before the stage publishes.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from missiwae.atomic import atomic_file
from pipelines.publish import MANIFEST
from pipelines.shards import merge_in_order, tensor_matrix
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
SUMMARY_COLUMNS = ("file", "split", "num_rows", "checksum", "num_imputed_cells", "ll_sum", "ess_sum")


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
            ("num_rows", len(rows)),
            ("checksum", row_checksum(source_row[rows])),
            ("num_imputed_cells", int((~mask).sum())),
            ("ll_sum", float(log_likelihood[rows].sum())),
            ("ess_sum", float(ess[rows].sum())),
        ):
            summary[key].append(value)
    return pa.table(summary, schema=summary_schema())


def write_parquet(table: pa.Table, target: Path) -> None:
    """`table` at `target`, atomically (missiwae.atomic): a task killed mid-write leaves only a
    temporary file, which :func:`keep_only` removes."""
    import pyarrow.parquet as pq

    with atomic_file(target) as temporary:
        pq.write_table(table, temporary)


def summary_schema() -> pa.Schema:
    """The writer tasks' summary rows (SUMMARY_COLUMNS), one per partition."""
    import pyarrow as pa

    types = (pa.string(), pa.string(), pa.int64(), pa.uint64(), pa.int64(), pa.float64(), pa.float64())
    return pa.schema(list(zip(SUMMARY_COLUMNS, types, strict=True)))


def row_checksum(rows: np.ndarray) -> int:
    """The sum, modulo 2**64, of a 64-bit hash (splitmix64's finaliser) of each table row index
    in `rows` (n,): equal for two collections of rows when they hold the same rows, and
    different, but with chance 2**-64, when one lost a row and holds another twice."""
    z = np.asarray(rows, np.int64).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return int(z.sum(dtype=np.uint64))


def expected_rows(shards: Mapping[str, Sequence[Path]]) -> dict[str, tuple[int, int]]:
    """Per split, (rows, :func:`row_checksum`) of the shard files `shards` [split] feeds the
    imputation job, read a row group at a time (only their ``source_row`` column)."""
    import pyarrow.parquet as pq

    expected: dict[str, tuple[int, int]] = {}
    for split, paths in shards.items():
        count, checksum = 0, 0
        for path in paths:
            for batch in pq.ParquetFile(path).iter_batches(columns=["source_row"]):
                rows = batch.column(0).to_numpy()
                count += len(rows)
                checksum = (checksum + row_checksum(rows)) % 2**64
        expected[split] = (count, checksum)
    return expected


def check_partitions(summary: pa.Table, expected: Mapping[str, tuple[int, int]]) -> None:
    """RuntimeError unless the partitions in `summary` (SUMMARY_COLUMNS rows) hold every row of
    each split of `expected` exactly once (module docstring): per split, their row counts and
    checksums add up to `expected` [split] = (rows, checksum), and no two have the same name
    (each partition's rows are distinct, which write_partitions checks)."""
    names = summary.column("file").to_pylist()
    if len(set(names)) != len(names):
        raise RuntimeError("the table's imputation job wrote a partition twice (a batch imputed twice)")
    splits = np.asarray(summary.column("split").to_pylist(), dtype=object)
    counts = summary.column("num_rows").to_numpy()
    checksums = summary.column("checksum").to_pylist()
    for split, (num_rows, checksum) in expected.items():
        rows = np.flatnonzero(splits == split)
        written = int(counts[rows].sum())
        written_checksum = sum(checksums[i] for i in rows) % 2**64
        if written != num_rows or written_checksum != checksum:
            raise RuntimeError(
                f"the table's imputation job lost or duplicated rows of split {split!r}: {written} "
                f"written for {num_rows}{'' if written != num_rows else ', with other row indices'}"
            )
    unknown = set(splits.tolist()) - set(expected)
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
    as Arrow tables of about `batch_rows` rows or fewer (module docstring). Memory stays at a
    batch per partition whose rows the merge is between, whatever the table's size. The
    folder's ``../_MANIFEST.json`` says where each file's rows start. FileNotFoundError for a
    folder without partitions."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    folder = Path(folder)
    manifest = json.loads((folder.parent / MANIFEST).read_text())
    files = SourceFiles.from_manifest(manifest["sources"])
    names = pa.array(files.names, pa.string())
    starts = np.concatenate([[0], np.cumsum(files.num_rows)[:-1]]).astype(np.int64)
    row_names = manifest["row_columns"]
    partitions = sorted(folder.glob("*.parquet"))
    if not partitions:
        raise FileNotFoundError(f"no Parquet partitions in {folder}")

    def keyed(path: Path) -> Iterator[tuple[np.ndarray, pa.Table]]:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            table = pa.Table.from_batches([batch])
            file_index = pc.index_in(table.column(row_names["source_file"]), value_set=names).to_numpy()
            yield starts[file_index] + table.column(row_names["source_row"]).to_numpy(), table

    def first_row(path: Path) -> int:
        return int(path.stem.rsplit("-", 1)[1])

    yield from merge_in_order(
        [(first_row(path), functools.partial(keyed, path)) for path in partitions], batch_rows
    )


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
    "expected_rows",
    "fresh_folders",
    "keep_only",
    "load_imputed_table",
    "mask_strings",
    "partition_name",
    "read_imputed_table",
    "read_table_mask",
    "row_checksum",
    "row_columns",
    "summary_schema",
    "table_maker",
    "table_mask",
    "write_parquet",
    "write_partitions",
]
