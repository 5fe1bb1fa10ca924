"""The Ray Data imputation stage on a real local cluster, real MNIST rows and a briefly trained model.

One imputation job (2 actors) is shared by most tests; the rest run one more job each.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from missiwae.config import ImputeConfig, ModelConfig, TrainConfig
from missiwae.data import load_incomplete_mnist, load_static_binarized_mnist
from missiwae.evaluation import imputation_accuracy
from missiwae.mnist_files import DataError
from missiwae.model import MissIWAE
from missiwae.training import load_model, save_checkpoint, train
from pipelines import impute, impute_job
from pipelines.config import ImputeStageConfig, MissForestConfig, PipelineConfig
from pipelines.impute import (
    MANIFEST,
    ImputeResult,
    dataset_names,
    read_dataset,
    read_inputs,
    run_imputation,
)
from pipelines.impute_job import (
    NODE_LOSS_RETRIES,
    ImputeActor,
    batch_seed,
    lost_a_node,
    run_surviving_node_loss,
)
from pipelines.publish import hash_files
from pipelines.shards import batch_matrix, read_imputed_rows, tensor_matrix

NUM_TRAIN, NUM_IMPUTE = 2000, 200
FIRST_ROW = NUM_TRAIN  # row ids 2000..2199: not 0-based, and the random streams follow them
L, M, BATCH = 20, 3, 50


@dataclasses.dataclass(frozen=True)
class Inputs:
    shards: dict[str, list[Path]]
    checkpoint: Path
    row_id: np.ndarray  # (N,)
    label: np.ndarray  # (N,)
    pixels: np.ndarray  # (N, 784) uint8, the truth
    mask: np.ndarray  # (N, 784) bool, True = observed
    source_row: np.ndarray  # (N,) the rows of the binarized MNIST train file, not sorted


def ingest_table(
    row_id: np.ndarray,
    label: np.ndarray,
    pixels: np.ndarray,
    mask: np.ndarray,
    source_row: np.ndarray | None = None,
) -> pa.Table:
    """The ingest stage's layout: Ray tensor columns for pixels (uint8 truth) and mask (bool);
    source_row defaults to row_id."""
    from ray.data.extensions import ArrowTensorArray

    return pa.table(
        {
            "row_id": pa.array(row_id.astype(np.int64)),
            "split": pa.array(["train"] * len(row_id), type=pa.string()),
            "label": pa.array(label.astype(np.int64)),
            "source_row": pa.array(np.asarray(row_id if source_row is None else source_row, np.int64)),
            "pixels": ArrowTensorArray.from_numpy(np.ascontiguousarray(pixels.astype(np.uint8))),
            "mask": ArrowTensorArray.from_numpy(np.ascontiguousarray(mask.astype(bool))),
        }
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("impute_inputs"), data_root)


def make_inputs(root: Path, data_root: Path) -> Inputs:
    """A model trained for 5 epochs on 2000 real rows (seconds), and 200 other rows as 2 Parquet shards."""
    data = load_incomplete_mnist("train", num_rows=NUM_TRAIN + NUM_IMPUTE, data_dir=data_root)
    torch.manual_seed(0)
    model = MissIWAE.from_config(ModelConfig())
    checkpoint = root / "checkpoint"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy 2-core box: 1 thread ~5 s, 2 threads up to a minute
    try:
        train(
            model,
            data.x[:NUM_TRAIN],
            data.mask[:NUM_TRAIN],
            TrainConfig(K=5, batch_size=32, epochs=5, learning_rate=3e-3, seed=0),
            checkpoint_dir=checkpoint,
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    pixels = data.x[NUM_TRAIN:].numpy().astype(np.uint8)
    mask = data.mask[NUM_TRAIN:].numpy()
    label = data.labels[NUM_TRAIN:].numpy()
    assert data.source_rows is not None
    source_row = data.source_rows[NUM_TRAIN:].numpy()
    row_id = np.arange(FIRST_ROW, FIRST_ROW + NUM_IMPUTE, dtype=np.int64)
    files = []
    for part, rows in enumerate(np.array_split(np.arange(NUM_IMPUTE), 2)):
        path = root / "data" / "train" / f"part-{part:05d}-0.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        table = ingest_table(row_id[rows], label[rows], pixels[rows], mask[rows], source_row[rows])
        pq.write_table(table, path)
        files.append(path)
    return Inputs({"train": files}, checkpoint, row_id, label, pixels, mask, source_row)


def make_config(run_dir: Path, **changes: Any) -> PipelineConfig:
    config = PipelineConfig(
        run_dir=str(run_dir),
        impute=ImputeConfig(num_samples=L, num_imputations=M, batch_size=BATCH, seed=0),
        impute_stage=ImputeStageConfig(num_actors=2, cpus_per_actor=0.5),
        missforest=MissForestConfig(enabled=True, n_estimators=3, max_iter=1),
    )
    return dataclasses.replace(config, **changes)


_FIRST_RUN: dict[str, tuple[PipelineConfig, ImputeResult]] = {}


@pytest.fixture
def first_run(
    ray_cluster: Any, inputs: Inputs, tmp_path_factory: pytest.TempPathFactory
) -> tuple[PipelineConfig, ImputeResult]:
    """The shared 2-actor run, computed by the first test that asks (ray_cluster is per test)."""
    if "run" not in _FIRST_RUN:
        config = make_config(tmp_path_factory.mktemp("impute_run"))
        _FIRST_RUN["run"] = (config, run_imputation(config, inputs.shards, inputs.checkpoint))
    return _FIRST_RUN["run"]


def snapshot(directory: Path) -> dict[str, int]:
    """Every file under `directory` -> its modification time in ns (what a rewrite changes)."""
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in directory.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------- invariants


def test_every_dataset_is_complete_and_keeps_the_observed_pixels(first_run, inputs: Inputs) -> None:
    config, result = first_run
    names = dataset_names(M, missforest=True)
    assert list(result.datasets) == names
    assert result.reused == {"train": False}
    assert result.splits == {"train": result.datasets}
    observed = inputs.mask
    for name, directory in result.datasets.items():
        assert directory == config.run_path / "imputed" / "train" / name
        row_id, label, pixels = read_dataset(directory)
        assert pixels.dtype == np.float32 and pixels.shape == (NUM_IMPUTE, 784), name
        assert not np.isnan(pixels).any(), name
        np.testing.assert_array_equal(row_id, inputs.row_id, err_msg=name)
        np.testing.assert_array_equal(label, inputs.label, err_msg=name)
        np.testing.assert_array_equal(
            pixels[observed], inputs.pixels[observed].astype(np.float32), err_msg=name
        )
        assert ((pixels >= 0) & (pixels <= 1)).all(), name
    holes = ~observed
    _, _, single = read_dataset(result.datasets["missiwae_single"])
    assert single[holes].min() > 0 and single[holes].max() < 1  # posterior probabilities
    copies = [read_dataset(result.datasets[f"missiwae_multiple_{m:02d}"])[2] for m in range(M)]
    for m, copy in enumerate(copies):
        assert set(np.unique(copy[holes])) == {0.0, 1.0}, m
        for other in copies[:m]:
            assert (copy[holes] != other[holes]).mean() > 0.01  # distinct draws
    np.testing.assert_array_equal(read_dataset(result.datasets["zero"])[2][holes], 0.0)
    np.testing.assert_array_equal(
        read_dataset(result.datasets["complete"])[2], inputs.pixels.astype(np.float32)
    )
    _, _, forest = read_dataset(result.datasets["missforest"])
    assert set(np.unique(forest[holes])) <= {0.0, 1.0}


def test_every_dataset_carries_its_lineage_in_source_order(first_run, inputs: Inputs, data_root) -> None:
    _, result = first_run
    order = np.argsort(inputs.source_row)
    assert not np.array_equal(order, np.arange(NUM_IMPUTE))  # source order is another order
    file_x, file_labels = load_static_binarized_mnist("train", data_root)
    for name, directory in result.datasets.items():
        values, mask, labels, source_rows = read_imputed_rows(directory)
        assert values.dtype == np.float32 and mask.dtype == np.bool_, name
        np.testing.assert_array_equal(source_rows, inputs.source_row[order], err_msg=name)
        np.testing.assert_array_equal(mask, inputs.mask[order], err_msg=name)
        np.testing.assert_array_equal(labels, file_labels[source_rows], err_msg=name)
        # Traced back to the binarized file: observed cells are that file's pixels.
        np.testing.assert_array_equal(values[mask], file_x[source_rows][mask], err_msg=name)
        _, _, by_row_id = read_dataset(directory)
        np.testing.assert_array_equal(values, by_row_id[order], err_msg=name)
    complete = read_imputed_rows(result.datasets["complete"])
    np.testing.assert_array_equal(complete.values, file_x[complete.source_rows])


def test_readers_name_outputs_of_the_older_layout(inputs: Inputs, tmp_path: Path) -> None:
    old = tmp_path / "old_shard.parquet"
    pq.write_table(
        ingest_table(inputs.row_id, inputs.label, inputs.pixels, inputs.mask).drop_columns(["source_row"]),
        old,
    )
    with pytest.raises(DataError, match="re-run the ingest stage"):
        run_imputation(make_config(tmp_path / "run"), {"train": [old]}, inputs.checkpoint)
    dataset = tmp_path / "old_dataset"
    dataset.mkdir()
    columns = {"row_id": pa.array(inputs.row_id), "label": pa.array(inputs.label)}
    pq.write_table(pa.table(columns), dataset / "part-0.parquet")
    with pytest.raises(DataError, match="re-run the imputation stage"):
        read_imputed_rows(dataset)
    with pytest.raises(FileNotFoundError):
        read_imputed_rows(tmp_path / "run")


def test_metrics_and_accuracy(first_run, inputs: Inputs) -> None:
    _, result = first_run
    metrics = result.metrics
    truth, mask = torch.from_numpy(inputs.pixels.astype(np.float32)), torch.from_numpy(inputs.mask)
    for name in ("missiwae_single", "zero", "missforest", "missiwae_multiple_00"):
        imputed = torch.from_numpy(read_dataset(result.datasets[name])[2])
        assert metrics[f"train/accuracy/{name}"] == pytest.approx(
            imputation_accuracy(imputed, truth, mask), rel=1e-6
        )
    multiple = [metrics[f"train/accuracy/missiwae_multiple_{m:02d}"] for m in range(M)]
    assert metrics["train/accuracy/missiwae_multiple"] == pytest.approx(np.mean(multiple))
    # A briefly trained model already beats filling the holes with the majority value.
    assert metrics["train/accuracy/missiwae_single"] > metrics["train/accuracy/zero"] + 0.01
    assert 1.0 <= metrics["train/ess_mean"] <= L
    assert metrics["train/num_rows"] == NUM_IMPUTE
    assert metrics["train/num_batches"] == NUM_IMPUTE // BATCH
    assert metrics["train/num_actors_used"] == 2  # both actors of the pool got batches
    assert metrics["train/rows_per_second"] > 0
    assert metrics["train/missing_fraction"] == pytest.approx(1 - inputs.mask.mean())
    assert set(result.seconds) == {f"train/{k}" for k in ("impute_job", "missforest", "write", "total")}


def test_manifest_is_written(first_run, inputs: Inputs) -> None:
    config, result = first_run
    manifest = json.loads((config.run_path / "imputed" / "train" / MANIFEST).read_text())
    assert manifest["datasets"] == list(result.datasets)
    assert manifest["metrics"] == result.metrics
    assert manifest["num_rows"] == NUM_IMPUTE
    assert not list((config.run_path / "imputed" / ".staging").iterdir())
    # Lineage: the checkpoint (outside run_dir here, so an absolute path) and the config.
    checkpoint = manifest["checkpoint"]
    assert checkpoint["path"] == str(inputs.checkpoint.resolve())
    assert checkpoint["sha256"] == hash_files(
        [inputs.checkpoint / "model.pt", inputs.checkpoint / "config.json"]
    )
    assert checkpoint["config"]["train"]["K"] == 5 and "model" in checkpoint["config"]
    assert manifest["config"] == config.to_dict()
    assert manifest["columns"] == ["row_id", "label", "source_row", "pixels", "mask"]


def constant_model_checkpoint(source: Path, target: Path, value: int) -> Path:
    """The checkpoint at `source` with its decoder's last layer made constant: P(x_j = 1 | z) is
    1 (value 1) or 0 (value 0) for every pixel and z, so each of its SIR draws fills every hole
    with `value` -- a member whose draws are recognisable."""
    model = load_model(source)
    last = [module for module in model.decoder.modules() if isinstance(module, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(50.0 if value else -50.0)
    save_checkpoint(target, model, None, None, [])
    return target


def test_the_bootstrap_ensembles_draws_come_from_its_members_in_order_beside_the_one_models(
    first_run, inputs: Inputs, tmp_path: Path
) -> None:
    """impute.bootstrap_models = B: member b gives split_draws(M, B)[b] of the M
    missiwae_ensemble_NN copies, in member order; the one model's datasets stay bit-equal."""
    config, result = first_run
    ones = constant_model_checkpoint(inputs.checkpoint, tmp_path / "ones", 1)
    zeros = constant_model_checkpoint(inputs.checkpoint, tmp_path / "zeros", 0)
    ensemble_config = make_config(
        tmp_path / "run", impute=dataclasses.replace(config.impute, bootstrap_models=2)
    )
    with pytest.raises(ValueError, match="needs that many member checkpoints"):
        run_imputation(ensemble_config, inputs.shards, inputs.checkpoint)
    again = run_imputation(ensemble_config, inputs.shards, inputs.checkpoint, ensemble_dirs=[ones, zeros])

    assert list(again.datasets) == dataset_names(M, missforest=True, ensemble=True)
    holes = ~inputs.mask
    # M = 3 over B = 2: members draw [2, 1]; the first's draws fill every hole with 1s.
    for name, fill in (("missiwae_ensemble_00", 1), ("missiwae_ensemble_01", 1), ("missiwae_ensemble_02", 0)):
        x = read_dataset(again.datasets[name])[2]
        assert np.all(x[holes] == fill), name
        assert np.array_equal(x[~holes], inputs.pixels[~holes].astype(np.float32)), name
    ensemble_accuracy = [again.metrics[f"train/accuracy/missiwae_ensemble_{m:02d}"] for m in range(M)]
    assert again.metrics["train/accuracy/missiwae_ensemble"] == pytest.approx(np.mean(ensemble_accuracy))
    for name in ("missiwae_single", *(f"missiwae_multiple_{m:02d}" for m in range(M))):
        assert np.array_equal(read_dataset(again.datasets[name])[2], read_dataset(result.datasets[name])[2])
    manifest = json.loads((ensemble_config.run_path / "imputed" / "train" / MANIFEST).read_text())
    assert [entry["path"] for entry in manifest["ensemble"]] == [str(ones.resolve()), str(zeros.resolve())]
    # Other members (here: in the other order) are another output, not a reuse.
    swapped = run_imputation(ensemble_config, inputs.shards, inputs.checkpoint, ensemble_dirs=[zeros, ones])
    assert swapped.reused == {"train": False}
    assert np.all(read_dataset(swapped.datasets["missiwae_ensemble_00"])[2][holes] == 0)


def test_rerun_reuses_the_output(first_run, inputs: Inputs) -> None:
    config, result = first_run
    split_dir = config.run_path / "imputed" / "train"
    before = snapshot(split_dir)
    # The actor count does not change the numbers, so it does not change the fingerprint either.
    stage = dataclasses.replace(config.impute_stage, num_actors=1)
    again = run_imputation(dataclasses.replace(config, impute_stage=stage), inputs.shards, inputs.checkpoint)
    assert again.reused == {"train": True}
    assert again.datasets == result.datasets
    assert again.metrics == result.metrics
    assert snapshot(split_dir) == before


def test_crash_mid_write_leaves_no_visible_output(first_run, inputs: Inputs, monkeypatch) -> None:
    config, _ = first_run
    imputed_dir = config.run_path / "imputed"
    before = snapshot(imputed_dir / "train")
    original = impute._write_dataset
    calls = []

    def failing_writer(dataset: Any, directory: Path) -> None:
        calls.append(directory)
        if len(calls) == 3:  # two datasets are already written in full
            raise OSError("disk full (simulated)")
        original(dataset, directory)

    monkeypatch.setattr(impute, "_write_dataset", failing_writer)
    changed = make_config(config.run_path, impute=dataclasses.replace(config.impute, seed=1))
    changed = dataclasses.replace(changed, missforest=MissForestConfig(enabled=False))
    with pytest.raises(OSError, match="simulated"):
        run_imputation(changed, inputs.shards, inputs.checkpoint)
    assert len(calls) == 3 and all(".staging" in str(path) for path in calls)
    # Nothing of the failed run is visible; the previous complete output is untouched.
    assert sorted(p.name for p in imputed_dir.iterdir() if not p.name.startswith(".")) == ["train"]
    assert not list((imputed_dir / ".staging").iterdir())
    assert snapshot(imputed_dir / "train") == before
    monkeypatch.undo()
    assert run_imputation(config, inputs.shards, inputs.checkpoint).reused == {"train": True}


def test_numbers_do_not_depend_on_the_actor_count(first_run, inputs: Inputs, tmp_path: Path) -> None:
    _, result = first_run
    config = make_config(tmp_path / "one_actor", missforest=MissForestConfig(enabled=False))
    config = dataclasses.replace(config, impute_stage=ImputeStageConfig(num_actors=1, cpus_per_actor=0.5))
    alone = run_imputation(config, inputs.shards, inputs.checkpoint)
    assert alone.metrics["train/num_actors_used"] == 1
    assert "missforest" not in alone.datasets
    for name in dataset_names(M, missforest=False):
        np.testing.assert_array_equal(
            read_dataset(alone.datasets[name])[2], read_dataset(result.datasets[name])[2], err_msg=name
        )


def test_numbers_do_not_depend_on_how_many_batches_a_block_holds(
    first_run, inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first run's blocks hold one batch each (4 batches, 2 actors); here one block holds
    all four, and the batches inside it keep their first rows, so their random streams."""
    _, result = first_run
    monkeypatch.setattr(impute_job, "BLOCKS_PER_ACTOR", 1)
    config = make_config(tmp_path / "one_block", missforest=MissForestConfig(enabled=False))
    config = dataclasses.replace(config, impute_stage=ImputeStageConfig(num_actors=1, cpus_per_actor=0.5))
    assert impute_job.rows_per_block(BATCH, NUM_IMPUTE, 10**6, 1) == NUM_IMPUTE
    whole = run_imputation(config, inputs.shards, inputs.checkpoint)
    for name in dataset_names(M, missforest=False):
        np.testing.assert_array_equal(
            read_dataset(whole.datasets[name])[2], read_dataset(result.datasets[name])[2], err_msg=name
        )


def test_progress_counts_the_rows_imputed_up_to_the_split_without_changing_the_numbers(
    first_run, inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One actor, so the batches finish one after another: every report is a whole number of
    batches, the counts only grow, the last is the split's row count, and the datasets are the
    2-actor run's bit for bit."""
    monkeypatch.setattr(impute_job, "POLL_S", 0.02)  # the job is short: poll often
    _, result = first_run
    config = make_config(tmp_path / "progress", missforest=MissForestConfig(enabled=False))
    config = dataclasses.replace(config, impute_stage=ImputeStageConfig(num_actors=1, cpus_per_actor=0.5))
    seen: list[tuple[int, int]] = []
    counted = run_imputation(
        config, inputs.shards, inputs.checkpoint, on_progress=lambda done, total: seen.append((done, total))
    )
    done = [d for d, _ in seen]
    assert {total for _, total in seen} == {NUM_IMPUTE}
    assert done == sorted(set(done)) and done[-1] == NUM_IMPUTE, seen
    assert all(d % BATCH == 0 for d in done), seen
    for name in dataset_names(M, missforest=False):
        np.testing.assert_array_equal(
            read_dataset(counted.datasets[name])[2], read_dataset(result.datasets[name])[2], err_msg=name
        )
    # A reused split is counted at once, without a job.
    seen.clear()
    assert run_imputation(
        config, inputs.shards, inputs.checkpoint, on_progress=lambda *a: seen.append(a)
    ).reused == {"train": True}
    assert seen == [(NUM_IMPUTE, NUM_IMPUTE)]


# --------------------------------------------------------------------------- units (no Ray job)


def test_a_block_is_whole_batches_of_about_the_target_size_and_every_actor_gets_several() -> None:
    target, per_actor = impute_job.BLOCK_TARGET_BYTES, impute_job.BLOCKS_PER_ACTOR
    # 1 KiB rows, batches of 1,000 rows: the target holds 33 batches.
    assert impute_job.rows_per_block(1000, 10**8, 1024 * 10**8, 2) == 1000 * (target // (1000 * 1024))
    # A small job: 40 batches over 5 actors get BLOCKS_PER_ACTOR blocks each, whatever the size.
    assert impute_job.rows_per_block(1000, 40_000, 40_000, 5) == 1000 * (40 // (5 * per_actor))
    # Never less than one batch: rows wider than the target, or fewer batches than actors.
    assert impute_job.rows_per_block(1000, 10**6, 10**6 * 2 * target, 2) == 1000
    assert impute_job.rows_per_block(1000, 3_000, 3_000, 8) == 1000
    assert impute_job.rows_per_block(1000, 0, 0, 2) == 1000


def test_actor_never_reads_the_truth_in_the_holes(inputs: Inputs) -> None:
    checkpoint = str(inputs.checkpoint)
    members = [checkpoint, checkpoint]  # a bootstrap ensemble's draws must not read it either
    actor = ImputeActor(
        checkpoint, num_samples=L, num_imputations=M, chunk_size=None, seed=0, ensemble_dirs=members
    )
    rows = slice(0, 8)
    batch = {
        "row_id": inputs.row_id[rows],
        "label": inputs.label[rows],
        "source_row": inputs.source_row[rows],
        "pixels": inputs.pixels[rows],
        "mask": inputs.mask[rows],
    }
    flipped = dict(batch, pixels=np.where(inputs.mask[rows], inputs.pixels[rows], 1 - inputs.pixels[rows]))
    out, out_flipped = actor(batch), actor(flipped)
    holes = ~inputs.mask[rows]
    # Only the holes of the input differ, and no output does.
    np.testing.assert_array_equal(out["missiwae_single"], out_flipped["missiwae_single"])
    np.testing.assert_array_equal(out["missiwae_multiple"], out_flipped["missiwae_multiple"])
    np.testing.assert_array_equal(out["missiwae_ensemble"], out_flipped["missiwae_ensemble"])
    np.testing.assert_array_equal(out["ess"], out_flipped["ess"])
    assert out["missiwae_multiple"].shape == (8, M, 784)
    assert (out["num_missing"] == holes.sum(axis=1)).all()
    np.testing.assert_array_equal(out["source_row"], inputs.source_row[rows])  # lineage passed through
    # Same batch, same numbers; another first row id, other random streams.
    np.testing.assert_array_equal(actor(batch)["missiwae_single"], out["missiwae_single"])
    shifted = actor(dict(batch, row_id=batch["row_id"] + 1))
    assert not np.array_equal(shifted["missiwae_single"], out["missiwae_single"])


def test_manifest_names_a_checkpoint_inside_run_dir_relative_to_it(inputs: Inputs, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(inputs.checkpoint, tmp_path / "checkpoints" / "final")
    entry = impute._checkpoint_entry(make_config(tmp_path), tmp_path / "checkpoints" / "final")
    assert entry["path"] == str(Path("checkpoints") / "final")
    assert (
        entry["sha256"] == impute._checkpoint_entry(make_config(tmp_path / "x"), inputs.checkpoint)["sha256"]
    )


def test_batch_seed_separates_streams() -> None:
    seeds = {batch_seed(s, r, k) for s in (0, 1) for r in (0, 50, 2**40) for k in (0, 1)}
    assert len(seeds) == 12 and all(0 <= s < 2**63 for s in seeds)
    assert batch_seed(-1, 0, 0) == batch_seed(-1, 0, 0)


def test_pixel_columns_of_every_encoding(tmp_path: Path) -> None:
    values = np.arange(3 * 784, dtype=np.uint8).reshape(3, 784) % 2
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), 784)
    listed = pa.array(list(values), type=pa.list_(pa.uint8()))
    for column in (fixed, listed):
        np.testing.assert_array_equal(tensor_matrix(pa.chunked_array([column]), np.uint8), values)
    per_row = np.empty(3, dtype=object)  # what Ray Data's numpy batches hold for list columns
    for i, row in enumerate(values):
        per_row[i] = row
    np.testing.assert_array_equal(batch_matrix(per_row, np.uint8), values)
    np.testing.assert_array_equal(batch_matrix(values, np.float32), values.astype(np.float32))
    path = tmp_path / "shard.parquet"
    table = ingest_table(np.arange(3), np.zeros(3), values, values.astype(bool), np.array([9, 4, 7]))
    pq.write_table(table, path)
    row_id, label, source_row, pixels, mask = read_inputs([path])
    np.testing.assert_array_equal(row_id, np.arange(3))
    np.testing.assert_array_equal(source_row, [9, 4, 7])
    np.testing.assert_array_equal(label, np.zeros(3))
    np.testing.assert_array_equal(pixels, values)
    assert mask.dtype == np.bool_ and (mask == values.astype(bool)).all()


def test_missing_split_is_an_error(inputs: Inputs, tmp_path: Path) -> None:
    config = make_config(tmp_path, impute_stage=ImputeStageConfig(splits=("valid",)))
    with pytest.raises(ValueError, match="valid"):
        run_imputation(config, inputs.shards, inputs.checkpoint)


def test_missforest_fanned_out_to_ray_actors_imputes_exactly_what_one_sequential_task_does(
    ray_cluster: Any, inputs: Inputs
) -> None:
    import ray

    from pipelines.missforest_job import missforest_task

    pixels, mask = inputs.pixels[:60, 300:340], inputs.mask[:60, 300:340]
    x_nan = np.where(mask, pixels.astype(np.float32), np.float32(np.nan))
    settings = {"n_estimators": 3, "max_iter": 1, "max_samples": None}
    task = ray.remote(missforest_task).options(num_cpus=0.5)

    def pool_actors() -> set[str]:
        # from the GCS (the test cluster runs no dashboard, which ray.util.state would need)
        actors = ray._private.state.actors().values()
        return {a["ActorID"] for a in actors if a["ActorClassName"].endswith("PoolActor")}

    before = pool_actors()
    sequential, _ = ray.get(task.remote(x_nan, {**settings, "n_jobs": 1}, 0))
    fanned_out, _ = ray.get(task.remote(x_nan, {**settings, "n_jobs": 2}, 0))
    pool = pool_actors() - before
    assert len(pool) >= 2  # the forests really ran in a pool of Ray actors
    assert not np.isnan(fanned_out).any()
    np.testing.assert_array_equal(fanned_out, sequential)


def test_a_job_that_lost_a_ray_node_runs_again_and_any_other_error_propagates_at_once() -> None:
    """The imputation job is rerun when Ray lost a process or node under it (a multi-node run
    lost Ray Data's Parquet footer reader with the node), never for a bug or bad input."""
    from ray.exceptions import ActorDiedError, RayTaskError, UnserializableException

    lost = RayTaskError("ListFiles", "Traceback ...", ActorDiedError()).as_instanceof_cause()
    assert lost_a_node(lost) and not lost_a_node(ValueError("bad rows"))
    # What the two-node test's driver got: the listing task's error, not deserializable.
    text = "ray.exceptions.RayTaskError: ray::ListFiles()\n...\nray.exceptions.ActorDiedError: The actor died"
    assert lost_a_node(UnserializableException(text))
    assert not lost_a_node(UnserializableException("ray.exceptions.RayTaskError: ValueError: bad rows"))
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise lost
        return "imputed"

    assert run_surviving_node_loss(flaky, "the job") == "imputed" and len(calls) == 2

    def broken() -> str:
        calls.append(1)
        raise ValueError("bad rows")

    calls.clear()
    with pytest.raises(ValueError, match="bad rows"):
        run_surviving_node_loss(broken, "the job")
    assert len(calls) == 1

    def always_lost() -> str:
        calls.append(1)
        raise lost

    calls.clear()
    with pytest.raises(ActorDiedError):
        run_surviving_node_loss(always_lost, "the job")
    assert len(calls) == 1 + NODE_LOSS_RETRIES
