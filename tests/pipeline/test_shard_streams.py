"""Reading shards as streams without Ray: the ordered merge of sorted streams and a split read
a batch at a time in row_id order (pipelines/shards.py), which the test log-likelihood uses so
the driver never holds a split."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.shards import (
    IngestResult,
    iter_split_batches,
    load_split_numpy,
    merge_in_order,
    shard_table,
    tensor_matrix,
)


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

    opened: list[int] = []

    def opener(s: int, keys: np.ndarray) -> Any:
        def open_stream() -> Any:
            opened.append(s)
            return stream(keys)

        return open_stream

    keys_of = [np.flatnonzero(owner == s) for s in range(num_streams)]
    streams = [(int(keys[0]) if len(keys) else num_rows, opener(s, keys)) for s, keys in enumerate(keys_of)]
    batches = list(merge_in_order(streams, batch_rows))
    assert all(1 <= batch.num_rows <= batch_rows for batch in batches)
    merged = [key for batch in batches for key in batch.column("key").to_pylist()]
    assert merged == list(range(num_rows))
    assert sorted(opened) == list(range(num_streams))


def test_a_stream_is_opened_only_when_the_merge_reaches_its_first_key() -> None:
    # 50 streams of 10 consecutive keys each: the merge never holds more than two open at once.
    live: set[int] = set()
    most = 0

    def stream(s: int) -> Any:
        nonlocal most
        live.add(s)
        most = max(most, len(live))
        keys = np.arange(10 * s, 10 * s + 10)
        yield keys, pa.table({"key": keys})
        live.discard(s)

    streams = [(10 * s, functools.partial(stream, s)) for s in reversed(range(50))]
    merged = pa.concat_tables(list(merge_in_order(streams, batch_rows=7)))
    assert merged.column("key").to_pylist() == list(range(500))
    assert most <= 2


def _ingest_of(files: list[Path]) -> IngestResult:
    return IngestResult(
        data_dir=files[0].parent, shards={"test": files}, num_rows={}, reused=False, seconds=0.0
    )


@pytest.mark.parametrize("batch_rows", [1, 4, 7, 100])
def test_a_split_streams_in_row_id_order_in_exact_batches_whatever_the_shards_order(
    tmp_path: Path, batch_rows: int
) -> None:
    # 23 rows over three shards listed out of order, one empty, each of several row groups:
    # the batches are the rows load_split_numpy returns, batch_rows at a time.
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((23, 5)).astype(np.float32)
    mask = rng.random((23, 5)) > 0.4
    table = shard_table("test", np.zeros(23), pixels, mask, source_row=np.arange(23))
    files = []
    for name, rows in (("a", slice(15, 23)), ("b", slice(0, 0)), ("c", slice(0, 15))):
        pq.write_table(
            table.slice(rows.start, rows.stop - rows.start), tmp_path / f"{name}.parquet", row_group_size=4
        )
        files.append(tmp_path / f"{name}.parquet")
    ingest = _ingest_of(files)

    batches = list(iter_split_batches(ingest, "test", ["pixels", "mask"], batch_rows))

    assert [b.num_rows for b in batches[:-1]] == [batch_rows] * (len(batches) - 1)
    assert 1 <= batches[-1].num_rows <= batch_rows
    assert all(b.column_names == ["pixels", "mask"] for b in batches)
    whole = pa.concat_tables(batches)
    x, m, _, _ = load_split_numpy(ingest, "test")
    np.testing.assert_array_equal(tensor_matrix(whole.column("pixels"), np.float32), x)
    np.testing.assert_array_equal(tensor_matrix(whole.column("mask"), np.bool_, name="mask"), m)


def test_a_shard_whose_row_ids_do_not_ascend_is_named(tmp_path: Path) -> None:
    table = shard_table(
        "test", np.zeros(6), np.zeros((6, 2), np.float32), np.ones((6, 2), bool), source_row=np.arange(6)
    )
    pq.write_table(table.take([0, 1, 2, 5, 4, 3]), tmp_path / "shuffled.parquet")
    with pytest.raises(ValueError, match=r"shuffled\.parquet: the shard's row_id column does not ascend"):
        list(iter_split_batches(_ingest_of([tmp_path / "shuffled.parquet"]), "test", ["pixels"], 4))


def test_the_streamed_test_log_likelihood_draws_the_random_stream_of_one_call_over_the_whole_split(
    tmp_path: Path,
) -> None:
    # 10 test rows in two shards, batches of 4: the streamed mean is the mean of one
    # estimate_log_likelihood call over the whole split with the same seed, row for row.
    import torch

    from missiwae.config import ModelConfig
    from missiwae.evaluation import estimate_log_likelihood
    from missiwae.model import MissIWAE, make_generator
    from missiwae.training import save_checkpoint
    from pipelines.config import load_pipeline_config
    from pipelines.train import evaluate_test_log_likelihood

    rng = np.random.default_rng(1)
    pixels = rng.standard_normal((10, 5)).astype(np.float32)
    mask = rng.random((10, 5)) > 0.3
    mask[:, 0] = True
    table = shard_table("test", np.zeros(10), pixels * mask, mask, source_row=np.arange(10))
    pq.write_table(table.slice(6), tmp_path / "late.parquet")
    pq.write_table(table.slice(0, 6), tmp_path / "early.parquet")
    ingest = _ingest_of([tmp_path / "late.parquet", tmp_path / "early.parquet"])
    torch.manual_seed(0)
    model = MissIWAE.from_config(
        ModelConfig(num_features=5, latent_dim=2, hidden=(3,), observation="gaussian")
    )
    save_checkpoint(tmp_path / "model", model, None, None, [])
    config = load_pipeline_config(
        "smoke", ["evaluate.batch_size=4", "evaluate.num_samples=7", "evaluate.seed=3"]
    )

    for complete in (False, True):
        streamed = evaluate_test_log_likelihood(config, ingest, tmp_path / "model", complete=complete)
        whole = estimate_log_likelihood(
            model,
            torch.from_numpy(pixels * mask),
            torch.ones(10, 5, dtype=torch.bool) if complete else torch.from_numpy(mask),
            7,
            batch_size=4,
            generator=make_generator(3),
        )
        assert streamed == pytest.approx(float(whole.double().mean()), rel=1e-6)
