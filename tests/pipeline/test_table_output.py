"""The imputed table's format without Ray: the workers' partitions, the exactly-once check, and
the reader that gives a folder back in the file's row order (pipelines/table_output.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.table_output import (
    IMPUTED_TABLE_COLUMNS,
    OUTPUT_SOURCE_COLUMNS,
    SINGLE,
    check_partitions,
    dataset_names,
    fresh_folders,
    keep_only,
    load_imputed_table,
    merge_in_order,
    read_imputed_table,
    row_columns,
    table_maker,
    write_partitions,
)
from tests.pipeline.test_pipeline_tabular import COLUMNS, write_csv

NUM_ROWS, M = 90, 2


@pytest.mark.parametrize("seed", range(6))
def test_merging_sorted_streams_gives_every_row_once_in_order_in_bounded_batches(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_rows, num_streams = int(rng.integers(1, 300)), int(rng.integers(1, 5))
    owner = rng.integers(0, num_streams, num_rows)  # which stream holds each key
    batch_rows = int(rng.integers(1, 40))

    def stream(keys: np.ndarray) -> Any:
        cuts = np.sort(rng.integers(0, len(keys) + 1, int(rng.integers(0, 6))))
        for part in np.split(keys, cuts):  # items of any size, empty ones included
            yield part, pa.table({"key": part})

    streams = [stream(np.flatnonzero(owner == s)) for s in range(num_streams)]
    batches = list(merge_in_order(streams, batch_rows))
    assert all(1 <= batch.num_rows <= batch_rows for batch in batches)
    merged = np.concatenate([batch.column("key").to_numpy() for batch in batches])
    assert merged.tolist() == list(range(num_rows))


def _shards(tmp_path: Path) -> tuple[pa.Table, dict[str, Any]]:
    """A 90-row table's shard rows (OUTPUT_SOURCE_COLUMNS, in the job's order: split after
    split) and the ingest manifest's ``table`` entry."""
    from pipelines.config import load_pipeline_config
    from pipelines.shards import read_shards
    from pipelines.table_source import tabular_split_tables

    write_csv(tmp_path / "t.csv", num_rows=NUM_ROWS)
    overrides = [
        f"data.path={json.dumps(str(tmp_path / 't.csv'))}",
        f"run_dir={json.dumps(str(tmp_path / 'run'))}",
        "data.label_column=target",
    ]
    tables, info = tabular_split_tables(load_pipeline_config("table", overrides))
    files = []
    for split in ("test", "train", "valid"):  # the job reads the shards in sorted path order
        files.append(tmp_path / f"{split}.parquet")
        pq.write_table(tables[split], files[-1])
    return read_shards(files, OUTPUT_SOURCE_COLUMNS, order_by=None), info


def _imputed_batch(rows: pa.Table, single: np.ndarray, multiple: np.ndarray) -> pa.Table:
    """What the imputation actors hand the writer (IMPUTED_TABLE_COLUMNS) for `rows`."""
    from pipelines.shards import tensor_array

    n = rows.num_rows
    batch = rows.append_column("single", tensor_array(single.astype(np.float32)))
    batch = batch.append_column("multiple", tensor_array(multiple.astype(np.float32)))
    batch = batch.append_column("ess", pa.array(np.full(n, 3.0, np.float32)))
    return batch.append_column("log_likelihood", pa.array(-np.arange(n, dtype=np.float64)))


def test_partitions_written_in_any_order_read_back_as_the_files_rows_and_every_row_is_checked_once(
    tmp_path: Path,
) -> None:
    rows, info = _shards(tmp_path)
    width = len(info["mean"])
    rng = np.random.default_rng(0)
    single = rng.standard_normal((NUM_ROWS, width)).astype(np.float32)  # the model's float32
    multiple = rng.standard_normal((NUM_ROWS, M, width)).astype(np.float32)
    out = tmp_path / "out"
    datasets = dataset_names(M)
    fresh_folders(out, datasets)
    (out / "_MANIFEST.json").write_text(
        json.dumps({"sources": info["sources"], "row_columns": row_columns(info)})
    )
    # The writer tasks: runs of 25 consecutive rows of the job's order, finishing in any order.
    bounds = [(0, 25), (25, 50), (50, 75), (75, NUM_ROWS)]
    summaries = {}
    for lo, hi in reversed(bounds):
        batch = _imputed_batch(rows.slice(lo, hi - lo), single[lo:hi], multiple[lo:hi])
        assert batch.column_names == list(IMPUTED_TABLE_COLUMNS)
        summaries[lo] = write_partitions(batch, info=info, directory=str(out))
    summary = pa.concat_tables(summaries.values())
    splits = rows.column("split").to_pylist()
    num_rows = {split: splits.count(split) for split in ("train", "valid", "test")}
    check_partitions(summary, num_rows)
    assert int(pa.compute.sum(summary.column("num_rows")).as_py()) == NUM_ROWS

    # Read back: the file's rows in its order, each the table_maker's row for it.
    order = np.argsort(rows.column("source_row").to_numpy(), kind="stable")
    make = table_maker(rows.take(order), info)
    for name, values in zip(datasets, [single, *np.moveaxis(multiple, 1, 0)], strict=True):
        assert load_imputed_table(out / name).equals(make(values[order])), name
    batches = list(read_imputed_table(out / SINGLE, batch_rows=7))
    assert max(batch.num_rows for batch in batches) <= 7
    assert pa.concat_tables(batches).column("source_row").to_pylist() == list(range(NUM_ROWS))

    # A batch written twice, or one lost, is caught; what a killed writer left is removed.
    twice = pa.concat_tables([summary, summaries[25]])
    with pytest.raises(RuntimeError, match="lost or duplicated rows of split"):
        check_partitions(twice, num_rows)
    lost = pa.concat_tables([summaries[lo] for lo, _ in bounds[1:]])
    with pytest.raises(RuntimeError, match="lost or duplicated rows of split"):
        check_partitions(lost, num_rows)
    stray = out / SINGLE / ".tmp-0123-train-000000000007.parquet"
    stray.write_bytes(b"half")
    keep_only(out, datasets, summary.column("file").to_pylist())
    assert not stray.exists()
    assert load_imputed_table(out / SINGLE).num_rows == NUM_ROWS
    with pytest.raises(RuntimeError, match="reported but not found"):
        keep_only(out, datasets, [*summary.column("file").to_pylist(), "train-000000000999.parquet"])


def test_a_batch_holding_a_row_twice_is_refused_by_the_writer(tmp_path: Path) -> None:
    rows, info = _shards(tmp_path)
    width = len(info["mean"])
    doubled = pa.concat_tables([rows.slice(0, 3), rows.slice(0, 1)])
    batch = _imputed_batch(doubled, np.zeros((4, width)), np.zeros((4, M, width)))
    fresh_folders(tmp_path / "out", dataset_names(M))
    with pytest.raises(RuntimeError, match="holds a row twice"):
        write_partitions(batch, info=info, directory=str(tmp_path / "out"))
    assert COLUMNS  # the table under test is test_pipeline_tabular's
