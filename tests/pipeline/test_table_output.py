"""The imputed table's format without Ray: the workers' partitions, the exactly-once check, and
the reader that gives a folder back in the file's row order (pipelines/table_output.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from pipelines.table_output import (
    IMPUTED_TABLE_COLUMNS,
    SINGLE,
    check_partitions,
    dataset_names,
    expected_rows,
    fresh_folders,
    keep_only,
    load_imputed_table,
    read_imputed_table,
    row_checksum,
    row_columns,
    table_maker,
    write_partitions,
)
from tests.pipeline.test_pipeline_tabular import COLUMNS, shard_rows, write_csv

NUM_ROWS, M = 90, 2


def _shards(tmp_path: Path) -> tuple[pa.Table, dict[str, Any]]:
    """A 90-row table's shard rows (OUTPUT_SOURCE_COLUMNS, in the job's order: split after
    split) and the ingest manifest's ``table`` entry."""
    write_csv(tmp_path / "t.csv", num_rows=NUM_ROWS)
    return shard_rows(tmp_path / "t.csv", tmp_path, "data.label_column=target", order_by=None)


def _imputed_batch(rows: pa.Table, single: np.ndarray, multiple: np.ndarray) -> pa.Table:
    """What the imputation actors hand the writer (IMPUTED_TABLE_COLUMNS) for `rows`."""
    from pipelines.shards import tensor_array

    n = rows.num_rows
    batch = rows.append_column("single", tensor_array(single.astype(np.float32)))
    batch = batch.append_column("multiple", tensor_array(multiple.astype(np.float32)))
    batch = batch.append_column("ess", pa.array(np.full(n, 3.0, np.float32)))
    return batch.append_column("log_likelihood", pa.array(-np.arange(n, dtype=np.float64)))


def _expected(rows: pa.Table) -> dict[str, tuple[int, int]]:
    splits = np.asarray(rows.column("split").to_pylist())
    source_row = rows.column("source_row").to_numpy()
    return {
        split: (int((splits == split).sum()), row_checksum(source_row[splits == split]))
        for split in ("train", "valid", "test")
    }


@pytest.mark.parametrize("interleaved", [False, True], ids=["runs", "interleaved"])
def test_partitions_written_in_any_order_read_back_as_the_files_rows_and_every_row_is_checked_once(
    tmp_path: Path, interleaved: bool
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
    # The writer tasks' batches, finishing in any order: runs of consecutive rows of the job's
    # order, or (as when Ray Data packs row groups of several shard files into one read) rows
    # whose ranges interleave: batch k holds rows k, k + 4, k + 8 ...
    if interleaved:
        batches = [np.arange(k, NUM_ROWS, 4) for k in range(4)]
    else:
        batches = [np.arange(lo, min(lo + 25, NUM_ROWS)) for lo in range(0, NUM_ROWS, 25)]
    summaries = []
    for taken in reversed(batches):
        batch = _imputed_batch(rows.take(taken), single[taken], multiple[taken])
        assert batch.column_names == list(IMPUTED_TABLE_COLUMNS)
        summaries.append(write_partitions(batch, info=info, directory=str(out)))
    summary = pa.concat_tables(summaries)
    expected = _expected(rows)
    check_partitions(summary, expected)
    assert int(pa.compute.sum(summary.column("num_rows")).as_py()) == NUM_ROWS

    # Read back: the file's rows in its order, each the table_maker's row for it.
    order = np.argsort(rows.column("source_row").to_numpy(), kind="stable")
    make = table_maker(rows.take(order), info)
    for name, values in zip(datasets, [single, *np.moveaxis(multiple, 1, 0)], strict=True):
        assert load_imputed_table(out / name).equals(make(values[order])), name
    read = list(read_imputed_table(out / SINGLE, batch_rows=7))
    assert max(batch.num_rows for batch in read) <= 7
    assert pa.concat_tables(read).column("source_row").to_pylist() == list(range(NUM_ROWS))

    # A batch written twice, or one lost, is caught; what a killed writer left is removed.
    twice = pa.concat_tables([summary, summaries[1]])
    with pytest.raises(RuntimeError, match="wrote a partition twice"):
        check_partitions(twice, expected)
    lost = pa.concat_tables(summaries[1:])
    with pytest.raises(RuntimeError, match="lost or duplicated rows of split"):
        check_partitions(lost, expected)
    stray = out / SINGLE / ".tmp-0123-train-000000000007.parquet"
    stray.write_bytes(b"half")
    keep_only(out, datasets, summary.column("file").to_pylist())
    assert not stray.exists()
    assert load_imputed_table(out / SINGLE).num_rows == NUM_ROWS
    with pytest.raises(RuntimeError, match="reported but not found"):
        keep_only(out, datasets, [*summary.column("file").to_pylist(), "train-000000000999.parquet"])


def test_a_row_lost_and_another_written_twice_is_caught_though_the_counts_agree(tmp_path: Path) -> None:
    rows, info = _shards(tmp_path)
    width = len(info["mean"])
    train = np.flatnonzero(np.asarray(rows.column("split").to_pylist()) == "train")
    # Two batches of the train rows: the second holds the first's last row instead of its own last.
    halves = [train[: len(train) // 2], train[len(train) // 2 :]]
    halves[1] = np.concatenate([halves[1][:-1], halves[0][-1:]])
    out = tmp_path / "out"
    fresh_folders(out, dataset_names(M))
    summary = pa.concat_tables(
        [
            write_partitions(
                _imputed_batch(
                    rows.take(taken), np.zeros((len(taken), width)), np.zeros((len(taken), M, width))
                ),
                info=info,
                directory=str(out),
            )
            for taken in halves
        ]
    )
    expected = {"train": _expected(rows)["train"]}
    assert int(pa.compute.sum(summary.column("num_rows")).as_py()) == expected["train"][0]
    with pytest.raises(RuntimeError, match="with other row indices"):
        check_partitions(summary, expected)


def test_the_expected_rows_are_the_shard_files_counts_and_checksums(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    for name, values in (("a", [0, 5, 9]), ("b", [2, 3])):
        pq.write_table(
            pa.table({"source_row": pa.array(values, pa.int64())}),
            tmp_path / f"{name}.parquet",
            row_group_size=2,
        )
    expected = expected_rows({"train": [tmp_path / "a.parquet", tmp_path / "b.parquet"], "test": []})
    assert expected == {"train": (5, row_checksum(np.array([0, 2, 3, 5, 9]))), "test": (0, 0)}
    assert row_checksum(np.array([0, 1])) != row_checksum(np.array([0, 0]))
    assert row_checksum(np.array([3, 1, 2])) == row_checksum(np.array([1, 2, 3]))


def test_a_batch_holding_a_row_twice_is_refused_by_the_writer(tmp_path: Path) -> None:
    rows, info = _shards(tmp_path)
    width = len(info["mean"])
    doubled = pa.concat_tables([rows.slice(0, 3), rows.slice(0, 1)])
    batch = _imputed_batch(doubled, np.zeros((4, width)), np.zeros((4, M, width)))
    fresh_folders(tmp_path / "out", dataset_names(M))
    with pytest.raises(RuntimeError, match="holds a row twice"):
        write_partitions(batch, info=info, directory=str(tmp_path / "out"))
    assert COLUMNS  # the table under test is test_pipeline_tabular's
