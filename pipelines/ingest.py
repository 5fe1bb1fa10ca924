"""Ray Data ingest: masked static binarized MNIST -> Parquet shards, one folder per split.

With ``data.path`` set, a user's CSV / Parquet table is ingested instead, in the same layout
(float standardised ``pixels`` and a few extra columns; see pipelines/tabular.py).

Layout under ``{run_dir}/data``::

    train/part-00000-0.parquet ... part-{num_shards-1:05d}-0.parquet
    valid/...   test/...
    _MANIFEST.json      written last: fingerprint, row counts, shard names and sizes

Columns (one row per image):

    row_id  int64    index of the row within the split subset (load_incomplete_mnist's order)
    split   string   "train" / "valid" / "test"
    label   int64    the digit
    pixels  uint8    (784,) the TRUE binary pixels, missing ones included (oracle ι and
                     imputation accuracy need them; models look only where mask is True)
    mask    bool     (784,) True = observed

`pixels` and `mask` are Ray tensor-extension columns (``ArrowTensorTypeV2``), so Ray Data
hands them to ``map_batches`` / ``iter_torch_batches`` as (n, 784) arrays. Plain pyarrow (no
Ray imported) sees them as ``large_list`` columns; :func:`load_split_numpy` reads either.

The rows and masks come from :func:`missiwae.data.load_incomplete_mnist`; nothing here
re-implements masking. Writes are atomic per split (a temporary sibling folder renamed into
place) and the manifest is written last, so a crash never leaves a half-written split that a
later run would trust; such leftovers are removed on the next run. A re-run with the same
``data`` and ``ingest`` settings and an intact manifest reuses the shards untouched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from missiwae.config import to_dict
from missiwae.data import NUM_PIXELS, load_incomplete_mnist
from pipelines.config import PipelineConfig
from pipelines.storage import (
    TEMP_PREFIX,
    OutputError,
    ensure_writable,
    exclusive,
    output_error,
    read_manifest,
    read_parquet_table,
    swap_into_place,
    write_json_atomic,
)

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

SPLITS: tuple[str, ...] = ("train", "valid", "test")
COLUMNS: tuple[str, ...] = ("row_id", "split", "label", "pixels", "mask")
MANIFEST = "_MANIFEST.json"
# Bump when the shard layout or schema changes: old manifests then stop matching.
FORMAT_VERSION = 1
_TEMP_PREFIX = TEMP_PREFIX  # temporary split folders being written, and old ones being removed
_LOCK = ".ingest.lock"


@dataclasses.dataclass(frozen=True)
class IngestResult:
    data_dir: Path  # {run_dir}/data
    shards: dict[str, list[Path]]  # split -> Parquet files, sorted
    num_rows: dict[str, int]
    reused: bool  # True: an intact manifest with the same fingerprint was found, nothing written
    seconds: float
    fingerprint: str = ""
    # A user's table (data.path): columns, column_types, mean, scale, source... (tabular.py);
    # None for MNIST.
    table: dict[str, Any] | None = None


def ingest_fingerprint(config: PipelineConfig) -> str:
    """sha256 of the settings that decide the shards' content and layout."""
    payload: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "data": to_dict(config.data),
        "ingest": to_dict(config.ingest),
    }
    if config.data.path is not None:  # the table's bytes, not only its name, decide the shards
        from pipelines.tabular import TABULAR_FORMAT_VERSION, file_sha256

        payload["source_sha256"] = file_sha256(config.data.path)
        payload["tabular_format_version"] = TABULAR_FORMAT_VERSION
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _split_rows(config: PipelineConfig, split: str) -> int | None:
    return {
        "train": config.data.num_train,
        "valid": config.data.num_valid,
        "test": config.data.num_test,
    }[split]


def run_ingest(config: PipelineConfig) -> IngestResult:
    """Write (or reuse) the Parquet shards of the three splits; see the module docstring."""
    started = time.perf_counter()
    data_dir = config.run_path / "data"
    ensure_writable(data_dir)
    fingerprint = ingest_fingerprint(config)
    with exclusive(data_dir / _LOCK):  # a second ingest of the same run_dir waits, then reuses
        _remove_temporaries(data_dir)  # left by a crashed run: never complete by construction
        manifest = read_manifest(data_dir / MANIFEST)
        if (
            manifest is not None
            and manifest.get("fingerprint") == fingerprint
            and _intact(data_dir, manifest)
        ):
            return _result(data_dir, manifest, reused=True, seconds=time.perf_counter() - started)

        # From here on the old shards are not trusted: drop the manifest first, so a crash
        # mid-way leaves no manifest and the next run rewrites everything.
        (data_dir / MANIFEST).unlink(missing_ok=True)
        from pipelines.runtime import ensure_ray

        splits: dict[str, dict[str, Any]] = {}
        table_info: dict[str, Any] | None = None
        tables: dict[str, pa.Table] = {}
        if config.data.path is not None:  # read (and reject a bad table) before Ray starts
            from pipelines.tabular import tabular_split_tables

            tables, table_info = tabular_split_tables(config)
        ensure_ray()
        for split in SPLITS:
            table = tables[split] if table_info is not None else _mnist_table(config, split)
            names, num_rows = write_split_table(data_dir, split, table, config.ingest.num_shards)
            splits[split] = {
                "num_rows": num_rows,
                "shards": names,
                "bytes": [(data_dir / split / name).stat().st_size for name in names],
            }
        manifest = {
            "format_version": FORMAT_VERSION,
            "fingerprint": fingerprint,
            "config": {"data": to_dict(config.data), "ingest": to_dict(config.ingest)},
            "columns": list(COLUMNS),
            "splits": splits,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if table_info is not None:
            manifest["table"] = table_info
        write_json_atomic(data_dir / MANIFEST, manifest)
        return _result(data_dir, manifest, reused=False, seconds=time.perf_counter() - started)


def _mnist_table(config: PipelineConfig, split: str) -> pa.Table:
    dataset = load_incomplete_mnist(
        split,  # type: ignore[arg-type]
        missing_rate=config.data.missing_rate,
        seed=config.data.seed,
        num_rows=_split_rows(config, split),
        data_dir=config.data.data_dir,
    )
    return split_table(
        split,
        pixels=dataset.x.numpy(),
        mask=dataset.mask.numpy(),
        labels=dataset.labels.numpy(),
    )


def write_split_table(data_dir: Path, split: str, table: pa.Table, num_shards: int) -> tuple[list[str], int]:
    """Write one split's table into a temporary folder with Ray Data, then swap it into place."""
    import ray.data

    num_rows = table.num_rows
    if num_shards > num_rows:
        raise ValueError(f"ingest.num_shards={num_shards} exceeds the {num_rows} rows of split {split!r}")
    # One Arrow block per shard (contiguous row ranges), one write task and file per block.
    bounds = np.linspace(0, num_rows, num_shards + 1).astype(int)
    blocks = [table.slice(int(lo), int(hi - lo)) for lo, hi in itertools.pairwise(bounds)]
    temporary = data_dir / f"{_TEMP_PREFIX}{split}-{uuid.uuid4().hex}"
    temporary.mkdir()
    try:
        # A fresh, empty folder: OVERWRITE only lifts Ray's check that file names hold the
        # write's uuid (meant to stop concurrent writes from clobbering each other).
        ray.data.from_arrow(blocks).write_parquet(
            str(temporary), filename_provider=_shard_names(), mode=ray.data.SaveMode.OVERWRITE
        )
        names = sorted(p.name for p in temporary.glob("*.parquet"))
        if len(names) != num_shards:
            raise RuntimeError(
                f"Ray Data wrote {len(names)} files for split {split!r}, expected {num_shards}"
            )
        trash = data_dir / f"{_TEMP_PREFIX}old-{split}-{uuid.uuid4().hex}"
        swap_into_place(temporary, data_dir / split, trash)
    except BaseException as error:
        shutil.rmtree(temporary, ignore_errors=True)
        if isinstance(error, OSError) and not isinstance(error, OutputError):
            raise output_error(error, f"the ingest split {split!r}", data_dir) from error
        raise
    return names, num_rows


def split_table(split: str, pixels: np.ndarray, mask: np.ndarray, labels: np.ndarray) -> pa.Table:
    """The Arrow table of one split: pixels (n, 784) of 0/1, mask (n, 784) bool, labels (n,)."""
    import pyarrow as pa
    from ray.data.extensions import ArrowTensorArray

    n = pixels.shape[0]
    if pixels.shape != (n, NUM_PIXELS) or mask.shape != (n, NUM_PIXELS) or labels.shape != (n,):
        raise ValueError(
            f"expected pixels/mask (n, {NUM_PIXELS}) and labels (n,), got "
            f"{pixels.shape}, {mask.shape}, {labels.shape}"
        )
    pixels_u8 = pixels.astype(np.uint8)
    if not np.array_equal(pixels_u8, pixels):
        raise ValueError("pixels must be binary (0/1): the shards store them as uint8")
    return pa.table(
        {
            "row_id": pa.array(np.arange(n, dtype=np.int64)),
            "split": pa.array([split] * n, type=pa.string()),
            "label": pa.array(labels.astype(np.int64)),
            "pixels": ArrowTensorArray.from_numpy(np.ascontiguousarray(pixels_u8)),
            "mask": ArrowTensorArray.from_numpy(np.ascontiguousarray(mask.astype(bool))),
        }
    )


def _shard_names() -> ray.data.datasource.FilenameProvider:
    """Files ``part-{task:05d}`` (pyarrow appends ``-0.parquet``); built lazily (imports Ray)."""
    from ray.data.datasource import FilenameProvider

    class ShardNames(FilenameProvider):
        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return f"part-{task_index:05d}.parquet"

    return ShardNames()


def _remove_temporaries(data_dir: Path) -> None:
    for leftover in data_dir.glob(f"{_TEMP_PREFIX}*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _intact(data_dir: Path, manifest: dict[str, Any]) -> bool:
    """Every split present with exactly the manifest's files, each of the recorded size."""
    try:
        for split in SPLITS:
            entry = manifest["splits"][split]
            on_disk = sorted(p.name for p in (data_dir / split).glob("*.parquet"))
            if on_disk != sorted(entry["shards"]):
                return False
            for name, size in zip(entry["shards"], entry["bytes"], strict=True):
                if (data_dir / split / name).stat().st_size != size:
                    return False
    except (KeyError, TypeError, ValueError, OSError):
        return False
    return True


def _result(data_dir: Path, manifest: dict[str, Any], *, reused: bool, seconds: float) -> IngestResult:
    splits = manifest["splits"]
    return IngestResult(
        data_dir=data_dir,
        shards={s: [data_dir / s / name for name in sorted(splits[s]["shards"])] for s in SPLITS},
        num_rows={s: int(splits[s]["num_rows"]) for s in SPLITS},
        reused=reused,
        seconds=seconds,
        fingerprint=str(manifest["fingerprint"]),
        table=manifest.get("table"),
    )


# --------------------------------------------------------------------------- reading


def read_split(ingest: IngestResult, split: str, columns: Sequence[str] | None = None) -> ray.data.Dataset:
    """The split's shards as a Ray Dataset (row order not guaranteed: sort by row_id if needed).

    Pass `columns` to read only some (``iter_torch_batches`` cannot convert the string
    column ``split``: select numeric columns, e.g. ``["pixels", "mask"]``, before it).
    """
    import ray.data

    _check_split(ingest, split)
    dataset = ray.data.read_parquet([str(p) for p in ingest.shards[split]])
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
    import pyarrow as pa

    _check_split(ingest, split)
    columns = ["row_id", "label", "pixels", "mask"]
    table = pa.concat_tables([read_parquet_table(path, columns=columns) for path in ingest.shards[split]])
    row_id = table.column("row_id").to_numpy()
    order = np.argsort(row_id, kind="stable")
    pixels = _tensor_column(table.column("pixels"))
    mask = _tensor_column(table.column("mask"))
    labels = table.column("label").to_numpy()
    return (
        pixels[order].astype(np.float32),
        mask[order].astype(bool),
        labels[order].astype(np.int64),
        row_id[order].astype(np.int64),
    )


def _tensor_column(column: pa.ChunkedArray) -> np.ndarray:
    """A (n, width) array from a Ray tensor-extension column or its list storage (width: 784
    pixels for MNIST, the number of columns for a user's table)."""
    import pyarrow as pa

    parts = []
    for chunk in column.chunks:
        storage = chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk
        values = storage.flatten().to_numpy(zero_copy_only=False)
        if len(chunk):
            parts.append(values.reshape(len(chunk), -1))
    if not parts:
        return np.zeros((0, NUM_PIXELS))
    return np.concatenate(parts)


def _check_split(ingest: IngestResult, split: str) -> None:
    if split not in ingest.shards:
        raise ValueError(f"split must be one of {sorted(ingest.shards)}, got {split!r}")


__all__ = [
    "COLUMNS",
    "MANIFEST",
    "SPLITS",
    "IngestResult",
    "ingest_fingerprint",
    "load_split_numpy",
    "read_split",
    "run_ingest",
    "split_table",
    "write_split_table",
]
