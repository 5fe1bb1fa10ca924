"""Ray Data ingest: masked static binarized MNIST -> Parquet shards, one folder per split.

With ``data.path`` set, a user's CSV / Parquet table is ingested instead, in the same layout
(float standardised ``pixels`` and a few extra columns; see pipelines/tabular.py).

Layout under ``{run_dir}/data``::

    train/part-00000-0.parquet ... part-{num_shards-1:05d}-0.parquet
    valid/...   test/...
    _MANIFEST.json      written last: fingerprint, row counts, shard names and sizes

Columns (one row per image):

    row_id      int64    index of the row within the split subset (load_incomplete_mnist's order)
    split       string   "train" / "valid" / "test"
    label       int64    the digit
    source_row  int64    the row's index in the split's binarized MNIST file (the subset is a
                         seeded random draw: missiwae.data's ``source_rows``)
    pixels      uint8    (784,) the TRUE binary pixels, missing ones included (oracle ι and
                         imputation accuracy need them; models look only where mask is True)
    mask        bool     (784,) True = observed

`pixels` and `mask` are Ray tensor-extension columns (``ArrowTensorTypeV2``), so Ray Data
hands them to ``map_batches`` / ``iter_torch_batches`` as (n, 784) arrays. Plain pyarrow (no
Ray imported) sees them as ``large_list`` columns; :func:`load_split_numpy` reads either. The
format itself (schema, tensor columns, readers) is pipelines/shards.py's; publishing (lock,
staging, manifest, swap, reuse) is pipelines/publish.py's.

The rows and masks come from :func:`missiwae.data.load_incomplete_mnist`; nothing here
re-implements masking. Writes are atomic per split (a temporary sibling folder renamed into
place) and the manifest is written last, so a crash never leaves a half-written split that a
later run would trust; such leftovers are removed on the next run. A re-run with the same
``data`` and ``ingest`` settings and an intact manifest reuses the shards untouched.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from missiwae.config import to_dict
from missiwae.data import load_incomplete_mnist
from missiwae.mnist_files import NUM_PIXELS
from pipelines.config import PipelineConfig
from pipelines.publish import MANIFEST, Publisher, fingerprint
from pipelines.shards import (
    SHARD_COLUMNS,
    SPLITS,
    TABLE_SHARD_COLUMNS,
    IngestResult,
    shard_table,
    write_shards,
)
from pipelines.storage import TEMP_PREFIX, write_json_atomic

if TYPE_CHECKING:
    from pathlib import Path

    import pyarrow as pa

COLUMNS: tuple[str, ...] = SHARD_COLUMNS
# Bump when the shard layout or schema changes: old manifests then stop matching.
# 2: the source_row column (lineage) for MNIST too.
FORMAT_VERSION = 2
_LOCK = ".ingest.lock"


def ingest_fingerprint(config: PipelineConfig) -> str:
    """sha256 of the settings that decide the shards' content and layout."""
    data = to_dict(config.data)
    if not data["column_types"]:  # unset changes nothing: shards made before it existed still count
        del data["column_types"]
    ingest = to_dict(config.ingest)
    del ingest["table_parallel_rows"]  # where the work runs, not what it writes
    payload: dict[str, Any] = {"format_version": FORMAT_VERSION, "data": data, "ingest": ingest}
    if config.data.path is not None:  # the table's bytes, not only its name, decide the shards
        from pipelines.table_files import sources_sha256
        from pipelines.table_source import TABULAR_FORMAT_VERSION

        payload["source_sha256"] = sources_sha256(config.data.path)
        payload["tabular_format_version"] = TABULAR_FORMAT_VERSION
    return fingerprint(payload)


def _split_rows(config: PipelineConfig, split: str) -> int | None:
    return {
        "train": config.data.num_train,
        "valid": config.data.num_valid,
        "test": config.data.num_test,
    }[split]


def _publisher(data_dir: Path) -> Publisher:
    # Split folders are staged right beside them as .tmp-*: a crash's leftovers (and stray
    # atomic-write temporaries) are swept whole at the start of every run.
    return Publisher(data_dir, _LOCK, "the ingest split {!r}", area=data_dir, prefix=TEMP_PREFIX)


def run_ingest(config: PipelineConfig) -> IngestResult:
    """Write (or reuse) the Parquet shards of the three splits; see the module docstring."""
    started = time.perf_counter()
    data_dir = config.run_path / "data"
    out = _publisher(data_dir)
    digest = ingest_fingerprint(config)
    with out.locked():  # a second ingest of the same run_dir waits, then reuses
        out.sweep()  # left by a crashed run: never complete by construction
        manifest = out.reusable(data_dir / MANIFEST, digest, lambda m: _intact(data_dir, m))
        if manifest is not None:
            return _result(data_dir, manifest, reused=True, seconds=time.perf_counter() - started)

        # From here on the old shards are not trusted: drop the manifest first, so a crash
        # mid-way leaves no manifest and the next run rewrites everything.
        (data_dir / MANIFEST).unlink(missing_ok=True)
        from pipelines.runtime import ensure_ray

        splits: dict[str, dict[str, Any]] = {}
        table_info: dict[str, Any] | None = None
        if config.data.path is not None:
            table_info, splits = _ingest_table(config, data_dir)
        else:
            ensure_ray()
            for split in SPLITS:
                names, num_rows = write_split_table(
                    data_dir, split, _mnist_table(config, split), config.ingest.num_shards
                )
                splits[split] = _split_entry(data_dir / split, names, num_rows)
        manifest = {
            "format_version": FORMAT_VERSION,
            "fingerprint": digest,
            "config": {"data": to_dict(config.data), "ingest": to_dict(config.ingest)},
            "columns": list(COLUMNS if table_info is None else TABLE_SHARD_COLUMNS),
            "splits": splits,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if table_info is not None:
            manifest["table"] = table_info
        # The data folder's manifest, over the three split folders: written last, after them.
        write_json_atomic(data_dir / MANIFEST, manifest)
        return _result(data_dir, manifest, reused=False, seconds=time.perf_counter() - started)


def _ingest_table(config: PipelineConfig, data_dir: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The user's table (data.path) into the three split folders, a piece at a time
    (pipelines.table_source.write_table_shards), each folder swapped into place only when
    every piece is written."""
    from pipelines.table_source import write_table_shards

    out = _publisher(data_dir)
    with contextlib.ExitStack() as stack:
        staged = {split: stack.enter_context(out.stage(split)).path for split in SPLITS}
        info, names, num_rows = write_table_shards(config, staged)
        # The folders are swapped into place as the stack closes; the sizes are the same there.
        splits = {split: _split_entry(staged[split], names[split], num_rows[split]) for split in SPLITS}
    return info, splits


def _split_entry(folder: Path, names: list[str], num_rows: int) -> dict[str, Any]:
    """A split's manifest entry: rows, shard names and sizes."""
    return {
        "num_rows": num_rows,
        "shards": names,
        "bytes": [(folder / name).stat().st_size for name in names],
    }


def _mnist_table(config: PipelineConfig, split: str) -> pa.Table:
    dataset = load_incomplete_mnist(
        split,  # type: ignore[arg-type]
        missing_rate=config.data.missing_rate,
        seed=config.data.seed,
        num_rows=_split_rows(config, split),
        data_dir=config.data.data_dir,
    )
    assert dataset.source_rows is not None  # load_incomplete_mnist always says which rows
    return split_table(
        split,
        pixels=dataset.x.numpy(),
        mask=dataset.mask.numpy(),
        labels=dataset.labels.numpy(),
        source_rows=dataset.source_rows.numpy(),
    )


def write_split_table(data_dir: Path, split: str, table: pa.Table, num_shards: int) -> tuple[list[str], int]:
    """Write one split's table into a staging folder with Ray Data, then swap it into place."""
    num_rows = table.num_rows
    if num_shards > num_rows:
        raise ValueError(f"ingest.num_shards={num_shards} exceeds the {num_rows} rows of split {split!r}")
    with _publisher(data_dir).stage(split) as staged:
        names = write_shards(table, staged.path, num_shards, what=f"split {split!r}")
    return names, num_rows


def split_table(
    split: str, pixels: np.ndarray, mask: np.ndarray, labels: np.ndarray, source_rows: np.ndarray
) -> pa.Table:
    """The Arrow table of one MNIST split: pixels (n, 784) of 0/1, mask (n, 784) bool, labels (n,),
    source_rows (n,) the rows' indices in the split's binarized file."""
    n = pixels.shape[0]
    if (
        pixels.shape != (n, NUM_PIXELS)
        or mask.shape != (n, NUM_PIXELS)
        or labels.shape != (n,)
        or source_rows.shape != (n,)
    ):
        raise ValueError(
            f"expected pixels/mask (n, {NUM_PIXELS}) and labels/source_rows (n,), got "
            f"{pixels.shape}, {mask.shape}, {labels.shape}, {source_rows.shape}"
        )
    pixels_u8 = pixels.astype(np.uint8)
    if not np.array_equal(pixels_u8, pixels):
        raise ValueError("pixels must be binary (0/1): the shards store them as uint8")
    return shard_table(split, labels.astype(np.int64), pixels_u8, mask, source_row=source_rows)


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


__all__ = [
    "COLUMNS",
    "MANIFEST",
    "SPLITS",
    "IngestResult",
    "ingest_fingerprint",
    "run_ingest",
    "split_table",
    "write_split_table",
]
