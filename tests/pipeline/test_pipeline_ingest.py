"""Ray Data ingest on a real local Ray cluster: shards, schema, exact content, idempotence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from missiwae.data import load_incomplete_mnist
from pipelines import ingest
from pipelines.config import PipelineConfig
from pipelines.ingest import COLUMNS, MANIFEST, SPLITS, IngestResult, ingest_fingerprint, run_ingest
from pipelines.shards import load_split_numpy, read_shards, read_split

ROWS = {"train": 300, "valid": 100, "test": 100}
NUM_SHARDS = 3


def make_config(run_dir: Path, data_root: Path, **data: Any) -> PipelineConfig:
    values = {"data_dir": str(data_root), "num_train": 300, "num_valid": 100, "num_test": 100, **data}
    return PipelineConfig.from_dict(
        {"run_dir": str(run_dir), "data": values, "ingest": {"num_shards": NUM_SHARDS}}
    )


def shard_mtimes(result: IngestResult) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for paths in result.shards.values() for path in paths}


@pytest.fixture(scope="module")
def ingested(_ray_session, data_root, tmp_path_factory) -> tuple[PipelineConfig, IngestResult]:
    """One ingest shared by the read-only tests (run_ingest starts Ray when it is down)."""
    config = make_config(tmp_path_factory.mktemp("ingest") / "run", data_root)
    return config, run_ingest(config)


def test_writes_num_shards_parquet_files_per_split(ray_cluster, ingested):
    config, result = ingested
    assert result.data_dir == config.run_path / "data"
    assert not result.reused
    for split in SPLITS:
        on_disk = sorted((result.data_dir / split).glob("*.parquet"))
        assert len(on_disk) == NUM_SHARDS
        assert on_disk == result.shards[split]
    assert (result.data_dir / MANIFEST).is_file()


def test_shards_hold_the_documented_schema(ray_cluster, ingested):
    _, result = ingested
    schema = pq.read_schema(result.shards["train"][0])
    assert schema.names == list(COLUMNS)
    assert str(schema.field("row_id").type) == "int64"
    assert str(schema.field("split").type) == "string"
    assert str(schema.field("label").type) == "int64"
    assert str(schema.field("source_row").type) == "int64"
    # Ray's tensor extension: a list column whose shape lives in the extension metadata. Once
    # ray.data is imported, pyarrow reads the extension type itself, else the raw storage.
    for name, item in (("pixels", "uint8"), ("mask", "bool")):
        field = schema.field(name)
        if isinstance(field.type, pa.ExtensionType):
            assert tuple(field.type.shape) == (784,)
            storage = field.type.storage_type
        else:
            assert field.metadata[b"ARROW:extension:metadata"] == b"[784]"
            storage = field.type
        assert str(storage.value_type) == item


def test_ray_data_reads_pixels_and_mask_as_784_wide_arrays(ray_cluster, ingested):
    _, result = ingested
    dataset = read_split(result, "valid")
    batch = next(iter(dataset.iter_batches(batch_size=32, batch_format="numpy")))
    assert batch["pixels"].shape == (32, 784) and batch["pixels"].dtype == np.uint8
    assert batch["mask"].shape == (32, 784) and batch["mask"].dtype == np.bool_
    assert set(batch["split"]) == {"valid"}
    tensors = next(iter(read_split(result, "train", ["pixels", "mask"]).iter_torch_batches(batch_size=16)))
    assert tuple(tensors["pixels"].shape) == (16, 784) and tuple(tensors["mask"].shape) == (16, 784)


def test_a_split_reads_in_the_shards_order_every_time(ray_cluster, ingested):
    """What training materialises, then cuts into the workers' shards: without Ray Data's
    preserve_order the blocks came in the order their reads finished (about one read in three
    put the second shard first on this machine), so a worker trained on other rows."""
    _, result = ingested
    assert len(result.shards["train"]) > 1
    for _ in range(4):
        dataset = read_split(result, "train", ["row_id"])
        assert dataset.context.execution_options.preserve_order
        row_id = np.concatenate([b["row_id"] for b in dataset.materialize().iter_batches(batch_size=None)])
        np.testing.assert_array_equal(row_id, np.arange(ROWS["train"]))


def test_row_counts_match_the_config(ray_cluster, ingested):
    _, result = ingested
    assert result.num_rows == ROWS
    for split in SPLITS:
        assert sum(pq.read_metadata(path).num_rows for path in result.shards[split]) == ROWS[split]


def test_loaded_splits_equal_load_incomplete_mnist_exactly(ray_cluster, ingested):
    config, result = ingested
    for split in SPLITS:
        expected = load_incomplete_mnist(
            split,  # type: ignore[arg-type]
            missing_rate=config.data.missing_rate,
            seed=config.data.seed,
            num_rows=ROWS[split],
            data_dir=config.data.data_dir,
        )
        x, mask, labels, row_id = load_split_numpy(result, split)
        assert x.dtype == np.float32 and mask.dtype == np.bool_ and labels.dtype == np.int64
        np.testing.assert_array_equal(row_id, np.arange(ROWS[split]))
        np.testing.assert_array_equal(x, expected.x.numpy())
        np.testing.assert_array_equal(mask, expected.mask.numpy())
        np.testing.assert_array_equal(labels, expected.labels.numpy())
        # Lineage: each row's index in the split's binarized file, in row_id order.
        source_row = (
            read_shards(result.shards[split], ["row_id", "source_row"]).column("source_row").to_numpy()
        )
        np.testing.assert_array_equal(source_row, expected.source_rows.numpy())  # type: ignore[union-attr]
        assert len(np.unique(source_row)) == ROWS[split]


def test_second_run_with_same_config_reuses_shards_untouched(ray_cluster, ingested):
    config, result = ingested
    before = shard_mtimes(result)
    manifest_mtime = (result.data_dir / MANIFEST).stat().st_mtime_ns
    again = run_ingest(config)
    assert again.reused
    assert again.shards == result.shards and again.num_rows == result.num_rows
    assert shard_mtimes(again) == before
    assert (result.data_dir / MANIFEST).stat().st_mtime_ns == manifest_mtime


def test_changed_missing_rate_rewrites_the_shards(ray_cluster, data_root, tmp_path):
    first = run_ingest(make_config(tmp_path / "run", data_root, missing_rate=0.5))
    changed = make_config(tmp_path / "run", data_root, missing_rate=0.25)
    second = run_ingest(changed)
    assert not second.reused
    assert second.fingerprint != first.fingerprint
    manifest = json.loads((second.data_dir / MANIFEST).read_text())
    assert manifest["fingerprint"] == second.fingerprint
    assert manifest["config"]["data"]["missing_rate"] == 0.25
    _, mask, _, _ = load_split_numpy(second, "train")
    expected = load_incomplete_mnist("train", 0.25, 0, ROWS["train"], data_root)
    np.testing.assert_array_equal(mask, expected.mask.numpy())
    assert abs(1.0 - mask.mean() - 0.25) < 0.02
    assert run_ingest(changed).reused


def test_shards_of_the_previous_layout_are_not_reused(data_root, tmp_path, monkeypatch):
    config = make_config(tmp_path / "run", data_root)
    current = ingest_fingerprint(config)
    monkeypatch.setattr(ingest, "FORMAT_VERSION", ingest.FORMAT_VERSION - 1)  # before source_row
    assert ingest_fingerprint(config) != current


def test_crash_leftovers_are_not_trusted_and_get_cleaned(ray_cluster, data_root, tmp_path):
    config = make_config(tmp_path / "run", data_root)
    result = run_ingest(config)
    # A crash while writing: a half-written temporary split folder, and no manifest yet.
    leftover = result.data_dir / ".tmp-train-0123456789abcdef"
    leftover.mkdir()
    (leftover / "part-00000-0.parquet").write_bytes(b"PAR1 truncated")
    (result.data_dir / MANIFEST).unlink()
    rewritten = run_ingest(config)
    assert not rewritten.reused
    assert not leftover.exists()
    assert (rewritten.data_dir / MANIFEST).is_file()
    assert all(len(paths) == NUM_SHARDS for paths in rewritten.shards.values())
    x, _, _, _ = load_split_numpy(rewritten, "train")
    np.testing.assert_array_equal(
        x, load_incomplete_mnist("train", 0.5, 0, ROWS["train"], data_root).x.numpy()
    )


def test_missing_shard_behind_an_intact_manifest_triggers_a_rewrite(ray_cluster, data_root, tmp_path):
    config = make_config(tmp_path / "run", data_root)
    result = run_ingest(config)
    result.shards["valid"][1].unlink()
    repaired = run_ingest(config)
    assert not repaired.reused
    assert all(path.is_file() for paths in repaired.shards.values() for path in paths)
    assert load_split_numpy(repaired, "valid")[0].shape == (ROWS["valid"], 784)


def test_more_shards_than_rows_is_refused(ray_cluster, data_root, tmp_path):
    config = PipelineConfig.from_dict(
        {
            "run_dir": str(tmp_path / "run"),
            "data": {"data_dir": str(data_root), "num_train": 5, "num_valid": 5, "num_test": 5},
            "ingest": {"num_shards": 6},
        }
    )
    with pytest.raises(ValueError, match="num_shards"):
        run_ingest(config)
    assert not (config.run_path / "data" / MANIFEST).exists()
