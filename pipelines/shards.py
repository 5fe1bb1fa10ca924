"""The Parquet shard format: the one module that writes and reads the stages' tables.

Ingest shards (one row per image or table row; ``{run_dir}/data/{split}/part-NNNNN-0.parquet``)::

    row_id      int64    index of the row within its split
    split       string   "train" / "valid" / "test"
    label       int64    the digit (a table: float64, its label column or -1)
    source_row  int64    the row's index in its source: MNIST the row of the split's binarized
                         file (missiwae.data's ``source_rows``), a table the row of the user's file
    pixels      (D,)     the model input: MNIST the TRUE 0/1 pixels as uint8, missing ones
                         included (oracle ι and accuracy need them; models look only where mask
                         is True); a table float32 standardised values, 0 in the holes
    mask        bool     (D,) True = observed
    values      float64  a table only: (D,) the file's values, NaN in the holes
    source      struct   a table only: the file's own cells in their own types (fields
                         ``label`` when there is a label column, then ``c0`` ... ``c{D-1}``;
                         null or NaN in the holes): what every output copies observed cells from

Imputed datasets (``{run_dir}/imputed/{split}/{name}/*.parquet``), lineage included::

    row_id      int64    as in the ingest shard the row came from
    label       int64
    source_row  int64    as in the ingest shard: traces the row back to the source file
    pixels      float32  (D,) the completed data: observed cells copied from the data
    mask        bool     (D,) True = observed, False = the cell was imputed

:func:`read_imputed_rows` returns one in source order; its manifest (pipelines/impute.py) names
the checkpoint and the config that produced it.

The (D,) columns are Ray tensor-extension columns (``ArrowTensorTypeV2``), so Ray Data hands them
to ``map_batches`` / ``iter_torch_batches`` as (n, D) arrays; plain pyarrow (no Ray imported)
sees ``large_list`` columns, and a user may hand in (fixed-size) list columns: every reader here
takes all of them. The width D is taken from the data (784 for MNIST, the number of columns for a
table), never from a constant.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from missiwae.mnist_files import DataError

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

    from pipelines.config import PipelineConfig

SPLITS: tuple[str, ...] = ("train", "valid", "test")
SHARD_COLUMNS: tuple[str, ...] = ("row_id", "split", "label", "source_row", "pixels", "mask")
TABLE_SHARD_COLUMNS: tuple[str, ...] = (*SHARD_COLUMNS, "values", "source")
IMPUTED_COLUMNS: tuple[str, ...] = ("row_id", "label", "source_row", "pixels", "mask")


@dataclasses.dataclass(frozen=True)
class IngestResult:
    """A published set of ingest shards (pipelines/ingest.py writes them)."""

    data_dir: Path  # {run_dir}/data
    shards: dict[str, list[Path]]  # split -> Parquet files, sorted
    num_rows: dict[str, int]
    reused: bool  # True: an intact manifest with the same fingerprint was found, nothing written
    seconds: float
    fingerprint: str = ""
    # A user's table (data.path): columns, column_types, mean, scale, source... (tabular.py);
    # None for MNIST.
    table: dict[str, Any] | None = None


# ------------------------------------------------------------------------------ writing


def tensor_array(values: np.ndarray) -> pa.Array:
    """(n, *shape) numpy -> a Ray tensor-extension column (C-contiguous copy when needed)."""
    from ray.data.extensions import ArrowTensorArray

    return ArrowTensorArray.from_numpy(np.ascontiguousarray(values))


def shard_table(
    split: str,
    label: np.ndarray,
    pixels: np.ndarray,
    mask: np.ndarray,
    *,
    source_row: np.ndarray,
    values: np.ndarray | None = None,
    source: pa.StructArray | None = None,
    first_row_id: int = 0,
) -> pa.Table:
    """One split's rows in the shard layout (module docstring), row_id = first_row_id + 0..n-1
    (a piece of a split: its rows' place in the split).

    label (n,) kept in its dtype; pixels (n, D) kept in its dtype; mask (n, D) as bool;
    source_row (n,) each row's index in the source file; values (n, D) and source (n,) (the
    file's cells, a struct of its columns) for a table only.
    """
    import pyarrow as pa

    n = len(label)
    if pixels.shape[0] != n or mask.shape != pixels.shape or np.shape(source_row) != (n,):
        raise ValueError(
            f"expected label and source_row (n,), pixels and mask (n, D), got {label.shape}, "
            f"{np.shape(source_row)}, {pixels.shape}, {mask.shape}"
        )
    columns: dict[str, Any] = {
        "row_id": pa.array(np.arange(first_row_id, first_row_id + n, dtype=np.int64)),
        "split": pa.array([split] * n, type=pa.string()),
        "label": pa.array(label),
        "source_row": pa.array(np.asarray(source_row).astype(np.int64)),
    }
    columns["pixels"] = tensor_array(pixels)
    columns["mask"] = tensor_array(mask.astype(bool))
    if values is not None:
        columns["values"] = tensor_array(values)
    if source is not None:
        if len(source) != n:
            raise ValueError(f"expected source (n,) = ({n},), got ({len(source)},)")
        columns["source"] = source
    return pa.table(columns)


def imputed_columns(
    row_id: np.ndarray, label: np.ndarray, source_row: np.ndarray, pixels: np.ndarray, mask: np.ndarray
) -> dict[str, np.ndarray]:
    """An imputed dataset's rows as numpy columns in the layout's order and dtypes: row_id,
    label, source_row (N,) int64, pixels (N, D) float32, mask (N, D) bool."""
    return {
        "row_id": np.asarray(row_id, dtype=np.int64),
        "label": np.asarray(label, dtype=np.int64),
        "source_row": np.asarray(source_row, dtype=np.int64),
        "pixels": np.ascontiguousarray(pixels, dtype=np.float32),
        "mask": np.ascontiguousarray(mask, dtype=np.bool_),
    }


def imputed_table(
    row_id: np.ndarray, label: np.ndarray, source_row: np.ndarray, pixels: np.ndarray, mask: np.ndarray
) -> pa.Table:
    """An imputed dataset's rows as an Arrow table (:func:`imputed_columns`, tensor columns)."""
    import pyarrow as pa

    columns = imputed_columns(row_id, label, source_row, pixels, mask)
    return pa.table({k: tensor_array(v) if v.ndim == 2 else pa.array(v) for k, v in columns.items()})


def write_shards(table: pa.Table, directory: Path, num_shards: int, what: str = "the shards") -> list[str]:
    """Write `table` with Ray Data into the fresh, empty `directory`: `num_shards` files of
    contiguous row ranges, ``part-{i:05d}-0.parquet``. Returns the file names, sorted.
    (`what` names the table in the error raised when Ray writes another number of files.)"""
    import ray.data

    # One Arrow block per shard, one write task and file per block.
    bounds = np.linspace(0, table.num_rows, num_shards + 1).astype(int)
    blocks = [table.slice(int(lo), int(hi - lo)) for lo, hi in itertools.pairwise(bounds)]
    # A fresh, empty folder: OVERWRITE only lifts Ray's check that file names hold the write's
    # uuid (meant to stop concurrent writes from clobbering each other).
    ray.data.from_arrow(blocks).write_parquet(
        str(directory), filename_provider=_shard_names(), mode=ray.data.SaveMode.OVERWRITE
    )
    names = sorted(p.name for p in directory.glob("*.parquet"))
    if len(names) != num_shards:
        raise RuntimeError(f"Ray Data wrote {len(names)} files for {what}, expected {num_shards}")
    return names


def _shard_names() -> ray.data.datasource.FilenameProvider:
    """Files ``part-{task:05d}`` (pyarrow appends ``-0.parquet``); built lazily (imports Ray)."""
    from ray.data.datasource import FilenameProvider

    class ShardNames(FilenameProvider):
        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return f"part-{task_index:05d}.parquet"

    return ShardNames()


# ------------------------------------------------------------------------------ reading


def read_table(path: str | os.PathLike[str], columns: Sequence[str] | None = None) -> pa.Table:
    """One Parquet file as an Arrow table; a truncated, corrupt or foreign file (or one lacking
    `columns`) is a DataError naming it, not an Arrow traceback."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=None if columns is None else list(columns))
    except (pa.ArrowException, OSError, ValueError) as error:
        raise _unreadable(path, error) from error


def _unreadable(path: str | os.PathLike[str], error: Exception) -> DataError:
    message = " ".join(str(error).split())[:300]
    return DataError(f"{path}: not a readable Parquet file of this pipeline ({message})")


def check_columns(files: Sequence[str | os.PathLike[str]], columns: Sequence[str], hint: str) -> None:
    """A DataError naming the first of `files` whose schema lacks one of `columns` (only the
    footers are read); `hint` says what to do, e.g. which stage to re-run (older layouts)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for path in files:
        try:
            names = set(pq.read_schema(path).names)
        except (pa.ArrowException, OSError, ValueError) as error:
            raise _unreadable(path, error) from error
        missing = [c for c in columns if c not in names]
        if missing:
            raise DataError(f"{path} lacks column(s) {missing}: {hint}")


def parquet_size(files: Sequence[str | Path]) -> tuple[int, int]:
    """(rows, uncompressed bytes) of the Parquet `files`, from their footers (no data read)."""
    import pyarrow.parquet as pq

    rows = size = 0
    for path in files:
        metadata = pq.ParquetFile(path).metadata
        rows += metadata.num_rows
        size += sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))
    return rows, size


def read_shards(
    files: Sequence[str | os.PathLike[str]], columns: Sequence[str], order_by: str | None = "row_id"
) -> pa.Table:
    """`columns` of several files as one table, sorted (stably) by the `order_by` column, or in
    file then row order when it is None."""
    import pyarrow as pa

    table = pa.concat_tables([read_table(path, columns) for path in files])
    if order_by is None:
        return table
    return table.take(np.argsort(table.column(order_by).to_numpy(), kind="stable"))


def tensor_matrix(
    column: pa.ChunkedArray, dtype: Any, *, what: str = "shard", name: str = "pixels"
) -> np.ndarray:
    """(n, D) of `dtype` from a Ray tensor-extension column or a (nested, fixed-size or large)
    list column; D is the data's row width. Raises ValueError starting with `what` on null rows,
    rows of different lengths or a non-numeric type (`name`: the column's, for the message).
    Nulls inside a row become NaN."""
    import pyarrow as pa
    import pyarrow.compute as pc

    parts: list[np.ndarray] = []
    widths: set[int] = set()
    for chunk in column.chunks:
        array: pa.Array = chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk
        num_rows, width = len(array), 1
        while _is_list(array.type):
            if array.null_count:
                raise ValueError(f"{what}: the {name} column has null entries")
            lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
            if len(lengths) and (lengths != lengths[0]).any():
                raise ValueError(f"{what}: {name} rows of different lengths")
            width *= int(lengths[0]) if len(lengths) else 1
            array = array.flatten()  # honours slicing offsets, unlike .values
        kind = array.type
        if not (pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_boolean(kind)):
            raise ValueError(f"{what}: unsupported {name} type {column.type}")
        if num_rows:
            widths.add(width)
            parts.append(array.to_numpy(zero_copy_only=False).reshape(num_rows, width))
    if len(widths) > 1:
        raise ValueError(f"{what}: {name} rows of different lengths")
    if not parts:
        return np.zeros((0, _declared_width(column.type)), dtype=dtype)
    return np.ascontiguousarray(np.concatenate(parts).astype(dtype, copy=False))


def _is_list(kind: pa.DataType) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind))


def _declared_width(kind: pa.DataType) -> int:
    """The row width an empty column's type declares (tensor shape, fixed list size), else 0."""
    import pyarrow as pa

    shape = getattr(kind, "shape", None)
    if shape is not None:
        return int(np.prod(shape))
    return int(kind.list_size) if pa.types.is_fixed_size_list(kind) else 0


def batch_matrix(values: np.ndarray, dtype: Any) -> np.ndarray:
    """(B, D) of `dtype` from a Ray Data numpy batch column: 2-D already (tensor columns) or an
    object array of per-row arrays (list columns)."""
    array = np.asarray(values)
    if array.dtype == object:
        array = np.stack(list(array)) if len(array) else np.zeros((0, 0))
    if array.ndim != 2:
        raise ValueError(f"expected a (rows, features) column, got shape {array.shape}")
    return array.astype(dtype, copy=False)


# ------------------------------------------------------------------ a run's splits and outputs


def read_split(ingest: IngestResult, split: str, columns: Sequence[str] | None = None) -> ray.data.Dataset:
    """The split's shards as a Ray Dataset, in the shards' order (each shard's rows as written).

    In order because Ray Data otherwise emits blocks as their reads finish: a split
    materialised for training, then cut into the workers' shards, would give a worker other
    rows from run to run, and so train another model (pipelines.train.training_data_config).
    Pass `columns` to read only some (``iter_torch_batches`` cannot convert the string
    column ``split``: select numeric columns, e.g. ``["pixels", "mask"]``, before it).
    """
    import ray.data

    _check_split(ingest, split)
    dataset = ray.data.read_parquet([str(p) for p in ingest.shards[split]])
    dataset.context.execution_options.preserve_order = True  # this dataset's own context
    # select_columns is pushed down into the Parquet read (`columns=` is deprecated in 2.60).
    return dataset.select_columns(list(columns)) if columns is not None else dataset


def load_split_numpy(
    ingest: IngestResult, split: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The whole split in the driver, sorted by row_id (plain pyarrow, no Ray tasks).

    Returns:
        x float32 (N, 784) the true pixels, mask bool (N, 784) True = observed,
        labels int64 (N,), row_id int64 (N,) (= arange(N) for a complete split).
    """
    _check_split(ingest, split)
    table = read_shards(ingest.shards[split], ["row_id", "label", "pixels", "mask"])
    what = f"split {split!r}"
    return (
        tensor_matrix(table.column("pixels"), np.float32, what=what, name="pixels"),
        tensor_matrix(table.column("mask"), np.bool_, what=what, name="mask"),
        table.column("label").to_numpy().astype(np.int64),
        table.column("row_id").to_numpy().astype(np.int64),
    )


def merge_in_order(
    streams: Sequence[tuple[int, Callable[[], Iterator[tuple[np.ndarray, pa.Table]]]]], batch_rows: int
) -> Iterator[pa.Table]:
    """Merge streams of (keys (n,), a table of those n rows), each ascending by key across its
    items, into one ascending stream of tables of at most `batch_rows` rows (keys are distinct).
    A stream is given as (its smallest key, a function that opens it) and is opened only when
    the merge reaches that key, so memory holds one item per stream whose keys interleave with
    the rows being merged, not one per stream. Rows up to the smallest last key of the open
    streams, and below the next unopened stream's first key, are final; the rest wait."""
    import pyarrow as pa

    pending = sorted(streams, key=lambda stream: stream[0])
    opened: list[Iterator[tuple[np.ndarray, pa.Table]]] = []
    heads: dict[int, tuple[np.ndarray, pa.Table]] = {}
    while True:
        for i, stream in enumerate(opened):
            while i in heads and len(heads[i][0]) == 0:
                item = next(stream, None)
                if item is None:
                    del heads[i]
                else:
                    heads[i] = (np.asarray(item[0]), item[1])
        bound = min((keys[-1] for keys, _ in heads.values()), default=None)
        if pending and (bound is None or pending[0][0] <= bound):
            opened.append(pending.pop(0)[1]())
            heads[len(opened) - 1] = (np.zeros(0, np.int64), pa.table({}))
            continue  # fill its head, then look again
        if bound is None:
            return
        takes = {i: int(np.searchsorted(keys, bound, side="right")) for i, (keys, _) in heads.items()}
        if sum(takes.values()) > batch_rows:  # the batch_rows smallest of the final rows
            final = np.concatenate([heads[i][0][:take] for i, take in takes.items()])
            bound = np.partition(final, batch_rows - 1)[batch_rows - 1]
            takes = {i: int(np.searchsorted(keys, bound, side="right")) for i, (keys, _) in heads.items()}
        keys_out, parts = [], []
        for i, take in takes.items():
            keys, table = heads[i]
            if take:
                keys_out.append(keys[:take])
                parts.append(table.slice(0, take))
            heads[i] = (keys[take:], table.slice(take))
        yield pa.concat_tables(parts).take(np.argsort(np.concatenate(keys_out), kind="stable"))


def iter_split_batches(
    ingest: IngestResult, split: str, columns: Sequence[str], batch_rows: int
) -> Iterator[pa.Table]:
    """The split's `columns` in row_id order, `batch_rows` rows at a time (the last batch
    shorter), streamed from the shards a row group at a time: the rows that :func:`load_split_numpy`
    returns, without holding the split. Each shard's row_ids must ascend (ingest writes them so);
    ValueError naming the file otherwise."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _check_split(ingest, split)
    names = list(dict.fromkeys(["row_id", *columns]))

    def keyed(path: Path) -> Iterator[tuple[np.ndarray, pa.Table]]:
        last = -1
        for batch in pq.ParquetFile(path).iter_batches(columns=names):
            row_id = batch.column(0).to_numpy()
            if len(row_id) and (row_id[0] <= last or (np.diff(row_id) <= 0).any()):
                raise ValueError(f"{path}: the shard's row_id column does not ascend")
            last = int(row_id[-1]) if len(row_id) else last
            yield row_id, pa.Table.from_batches([batch]).select(list(columns))

    streams = []
    for path in map(Path, ingest.shards[split]):
        file = pq.ParquetFile(path)
        if file.metadata.num_rows:
            first = next(file.iter_batches(batch_size=1, columns=["row_id"])).column(0)[0].as_py()
            streams.append((int(first), functools.partial(keyed, path)))
    pending: list[pa.Table] = []
    held = 0
    for table in merge_in_order(streams, batch_rows):
        pending.append(table)
        held += table.num_rows
        while held >= batch_rows:  # exact sizes: a batch's random stream depends on its size
            joined = pa.concat_tables(pending)
            yield joined.slice(0, batch_rows)
            pending, held = [joined.slice(batch_rows)], held - batch_rows
    if held:
        yield pa.concat_tables(pending)


def _check_split(ingest: IngestResult, split: str) -> None:
    if split not in ingest.shards:
        raise ValueError(f"split must be one of {sorted(ingest.shards)}, got {split!r}")


def imputed_dir(config: PipelineConfig) -> Path:
    """{run_dir}/imputed: the stage's output, one folder per split (each with its MANIFEST)."""
    return config.run_path / "imputed"


def dataset_files(directory: str | os.PathLike[str]) -> list[Path]:
    """The Parquet files of one imputed dataset folder, sorted (FileNotFoundError when none)."""
    files = sorted(Path(directory).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no Parquet files in {directory}")
    return files


class ImputedRows(NamedTuple):
    """One imputed dataset with its lineage, in source order (:func:`read_imputed_rows`)."""

    values: np.ndarray  # float32 (N, D): the completed data, observed cells copied from the data
    mask: np.ndarray  # bool (N, D): True = observed, False = the cell was imputed
    labels: np.ndarray  # int64 (N,)
    source_rows: np.ndarray  # int64 (N,), ascending: each row's index in the source file


def read_imputed_rows(directory: str | os.PathLike[str]) -> ImputedRows:
    """One imputed dataset folder as (values, mask, labels, source_rows), sorted by source row,
    so row i can be set beside row source_rows[i] of the source file (plain pyarrow, no Ray).

    Raises FileNotFoundError for a folder without Parquet files, DataError for one written
    before the lineage columns existed (re-run the imputation stage) or unreadable, ValueError
    for duplicate source rows.
    """
    files = dataset_files(directory)
    columns = ["label", "source_row", "pixels", "mask"]
    check_columns(files, columns, "an imputed dataset of an older layout; re-run the imputation stage")
    table = read_shards(files, columns, order_by="source_row")
    what = f"dataset {directory}"
    source_rows = table.column("source_row").to_numpy().astype(np.int64)
    if (np.diff(source_rows) == 0).any():
        raise ValueError(f"{what}: duplicate source_row values")
    return ImputedRows(
        values=tensor_matrix(table.column("pixels"), np.float32, what=what, name="pixels"),
        mask=tensor_matrix(table.column("mask"), np.bool_, what=what, name="mask"),
        labels=table.column("label").to_numpy().astype(np.int64),
        source_rows=source_rows,
    )


__all__ = [
    "IMPUTED_COLUMNS",
    "SHARD_COLUMNS",
    "SPLITS",
    "TABLE_SHARD_COLUMNS",
    "ImputedRows",
    "IngestResult",
    "batch_matrix",
    "check_columns",
    "dataset_files",
    "imputed_columns",
    "imputed_dir",
    "imputed_table",
    "iter_split_batches",
    "load_split_numpy",
    "merge_in_order",
    "parquet_size",
    "read_imputed_rows",
    "read_shards",
    "read_split",
    "read_table",
    "shard_table",
    "tensor_array",
    "tensor_matrix",
    "write_shards",
]
