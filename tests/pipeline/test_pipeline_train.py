"""Ray Train stage on a real local Ray cluster: DDP on 2 workers, checkpoints, worker death."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from missiwae.model import MissIWAE, make_generator
from missiwae.training import TrainingDiverged, load_model
from pipelines.config import PipelineConfig, ScalingConfig
from pipelines.ingest import run_ingest
from pipelines.shards import IngestResult, load_split_numpy
from pipelines.train import (
    BOOTSTRAP_SEED_OFFSET,
    HISTORY_KEYS,
    SHARD_MEMORY_FRACTION,
    bootstrap_model_dir,
    run_bootstrap_training,
    run_training,
    shards_fit_in_memory,
    training_data_config,
    training_fingerprint,
)
from pipelines.train_worker import (
    PIPELINE_STATE_FILE,
    BoundModule,
    epoch_seed,
    read_pipeline_state,
    train_loop_per_worker,
)


def make_config(run_dir: Path, data_root: Path) -> PipelineConfig:
    return PipelineConfig.from_dict(
        {
            "run_dir": str(run_dir),
            "data": {"data_dir": str(data_root), "num_train": 300, "num_valid": 100, "num_test": 100},
            "ingest": {"num_shards": 2},
            "model": {"hidden": [64, 64], "latent_dim": 8},
            "train": {"K": 5, "batch_size": 50, "epochs": 2, "learning_rate": 3e-3, "seed": 0},
            "scaling": {"num_workers": 2, "cpus_per_worker": 0.5, "max_failures": 2},
            "evaluate": {"num_samples": 50, "batch_size": 100},
        }
    )


@pytest.fixture(scope="module")
def ingest_root(_ray_session, data_root, tmp_path_factory) -> Path:
    """Shards written once; each test copies nothing, it points its run at them."""
    run_dir = tmp_path_factory.mktemp("train") / "shared"
    run_ingest(make_config(run_dir, data_root))
    return run_dir


def ingest_for(run_dir: Path, data_root: Path, shared: Path) -> tuple[PipelineConfig, IngestResult]:
    """A run directory of its own whose ingest reuses the shared shards (same settings)."""
    config = make_config(run_dir, data_root)
    shared_ingest = run_ingest(make_config(shared, data_root))
    assert shared_ingest.reused
    return config, shared_ingest


def test_bound_module_forward_is_the_model_bound():
    torch.manual_seed(0)
    model = MissIWAE.from_config(make_config(Path("unused"), Path("unused")).model)
    x = torch.randint(0, 2, (4, 784)).float()
    mask = torch.rand(4, 784) > 0.5
    through_wrapper = BoundModule(model)(x, mask, 3, make_generator(7))
    direct = model.bound(x, mask, 3, make_generator(7))
    torch.testing.assert_close(through_wrapper, direct)


def test_epoch_seeds_differ_across_ranks_and_epochs():
    seeds = {epoch_seed(0, rank, epoch) for rank in range(2) for epoch in range(1, 4)}
    assert len(seeds) == 6
    assert epoch_seed(0, 1, 2) == epoch_seed(0, 1, 2)


def test_a_ray_train_worker_keeps_freed_memory_only_when_its_shard_is_in_memory():
    """The library never changes the allocator by itself; a worker process, an entry point,
    does when its working set is fixed (a shard in memory). A streaming worker keeps the
    workers' allocator, whose heap does not grow with the rows streamed."""
    tree = ast.parse(inspect.getsource(train_loop_per_worker))
    guarded = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.If)
        and any(
            isinstance(call, ast.Call) and ast.unparse(call.func) == "retain_freed_memory"
            for call in ast.walk(node)
        )
    ]
    assert [ast.unparse(node.test) for node in guarded] == ["loop_config['shard_in_memory']"]
    calls = [
        n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "retain_freed_memory"
    ]
    assert len(calls) == 1  # and nowhere outside that test


def test_the_training_splits_are_materialised_in_blocks_of_the_stated_size(
    ray_cluster, data_root, ingest_root, tmp_path, monkeypatch
):
    """A streaming worker's local shuffle buffer copies whole blocks: their size bounds its
    memory, so the splits are cut to TRAINING_BLOCK_BYTES whatever the size of the table."""
    from pipelines import train as train_stage

    config, ingest = ingest_for(tmp_path / "run", data_root, ingest_root)

    def blocks(datasets: dict[str, Any]) -> dict[str, list[tuple[int, int]]]:
        """split -> (rows, bytes) of each block"""
        return {
            name: [
                (m.num_rows, m.size_bytes)
                for bundle in ds.iter_internal_ref_bundles()
                for m in bundle.metadata
            ]
            for name, ds in datasets.items()
        }

    default = blocks(train_stage._datasets(config, ingest, bootstrap=False))
    target = 32 * 2**10
    monkeypatch.setattr(train_stage, "TRAINING_BLOCK_BYTES", target)
    small = blocks(train_stage._datasets(config, ingest, bootstrap=False))
    for name in ("train", "valid"):
        assert sum(rows for rows, _ in small[name]) == sum(rows for rows, _ in default[name])
        assert len(small[name]) > len(default[name])  # the same rows, cut finer
        # Ray Data cuts a read's output once a block passes the target: a block is at most
        # about the target plus what the last read batch added.
        assert max(size for _, size in small[name]) <= 2 * target, (name, small[name])


_UNINTERRUPTED: dict[str, Any] = {}  # the DDP test's run, compared with the killed-worker run


def test_ddp_training_on_two_workers_improves_the_bound_and_leaves_a_loadable_checkpoint(
    ray_cluster, data_root, ingest_root, tmp_path
):
    config, ingest = ingest_for(tmp_path / "run", data_root, ingest_root)
    seen: list[dict[str, Any]] = []
    result = run_training(config, ingest, on_epoch=seen.append)
    _UNINTERRUPTED["result"] = result

    assert [entry["epoch"] for entry in result.history] == [1, 2]
    assert seen == result.history  # on_epoch: once per epoch, in order
    for entry in result.history:
        assert set(entry) == set(HISTORY_KEYS)
        assert all(math.isfinite(entry[key]) for key in ("train_bound", "valid_bound", "images_per_second"))
        assert entry["train_bound"] < 0 and entry["valid_bound"] < 0
        assert entry["restores"] == 0
    first, second = result.history
    assert second["train_bound"] > first["train_bound"]
    assert second["valid_bound"] > first["valid_bound"]

    assert result.checkpoint_dir == config.run_path / "model"
    saved = json.loads((result.checkpoint_dir / "config.json").read_text())
    assert saved["train"]["K"] == 5 and saved["model"]["hidden"] == [64, 64]
    model = load_model(result.checkpoint_dir)
    x, mask, _, _ = load_split_numpy(ingest, "valid")
    with torch.no_grad():
        bound = model.bound(torch.from_numpy(x), torch.from_numpy(mask), 5, make_generator(0))
    assert bound.shape == (100,) and torch.isfinite(bound).all()

    assert math.isfinite(result.test_log_likelihood) and result.test_log_likelihood < 0
    assert (config.run_path / "ray_train" / result.run_name).is_dir()


def test_every_worker_gets_the_same_rows_in_every_run_whichever_read_finishes_first(ray_cluster):
    """Ray Data hands each block to the worker with the fewest rows so far, as blocks arrive.
    Here the first block arrives last: in arrival order it would go to rank 1 (it does with Ray
    Train's default options), so the rows a rank trains on would follow a race between reads."""
    import ray.data

    def first_block_late(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if batch["id"][0] == 0:
            time.sleep(2)
        return batch

    table = ray.data.range(200, override_num_blocks=2).map_batches(first_block_late, batch_size=None)
    node = ray_cluster.get_runtime_context().get_node_id()
    splits = training_data_config().configure(
        {"train": table}, world_size=2, worker_handles=None, worker_node_ids=[node, node]
    )
    rows: list[list[int]] = [[], []]

    def read(rank: int) -> None:  # the ranks read side by side, as Ray Train's workers do
        for batch in splits[rank]["train"].iter_batches(batch_size=None):
            rows[rank].extend(int(i) for i in batch["id"])

    readers = [threading.Thread(target=read, args=(rank,)) for rank in range(2)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    assert rows == [list(range(100)), list(range(100, 200))]


def test_auto_reads_shards_that_fit_a_quarter_of_each_nodes_memory_and_streams_the_rest() -> None:
    two = ScalingConfig(num_workers=2, cpus_per_worker=0.5)
    laptop = {"CPU": 2.0, "memory": 8e9}
    # Binarized MNIST's 50 000 training rows: both shards on the laptop, 2 x 25 000 x 784 x 10 bytes.
    assert shards_fit_in_memory(50_000, 784, two, [laptop])
    assert not shards_fit_in_memory(10**6, 784, two, [laptop])  # 7.8 GB
    # At the line: the two shards' bytes against the fraction of the node's memory.
    rows = int(SHARD_MEMORY_FRACTION * laptop["memory"] / (784 * 10))
    assert shards_fit_in_memory(rows, 784, two, [laptop])
    assert not shards_fit_in_memory(rows + 2, 784, two, [laptop])
    # A node hosts what its CPUs (and GPUs) allow: 1-CPU nodes hold one shard each.
    small = {"CPU": 1.0, "memory": 4e9}
    one_each = ScalingConfig(num_workers=2, cpus_per_worker=1.0)
    assert shards_fit_in_memory(2 * rows // 2, 784, one_each, [small, small])
    assert not shards_fit_in_memory(2 * rows // 2, 784, two, [small, small])  # 2 per node
    gpu = ScalingConfig(num_workers=8, cpus_per_worker=1.0, use_gpu=True)
    assert shards_fit_in_memory(8 * rows // 2, 784, gpu, [{"CPU": 16.0, "GPU": 1.0, "memory": 4e9}] * 8)
    # A node that can host no worker (a head with no CPU for them) does not count.
    head = {"CPU": 0.0, "memory": 1e6}
    assert shards_fit_in_memory(50_000, 784, two, [head, laptop])
    # A bootstrap member's shard carries its rows' weights too.
    assert not shards_fit_in_memory(rows, 784, two, [laptop], bootstrap=True)


def test_streaming_the_shard_every_epoch_trains_too(ray_cluster, data_root, ingest_root, tmp_path):
    """scaling.shard_in_memory: false (for shards larger than a worker's memory) streams each
    epoch through Ray Data's local shuffle instead of reshuffling a shard read once."""
    config, ingest = ingest_for(tmp_path / "run", data_root, ingest_root)
    streamed = PipelineConfig.from_dict(
        {**config.to_dict(), "scaling": {**config.to_dict()["scaling"], "shard_in_memory": False}}
    )
    result = run_training(streamed, ingest, resume=False)
    first, second = result.history
    assert second["train_bound"] > first["train_bound"]
    assert second["valid_bound"] > first["valid_bound"]


def test_a_worker_dying_mid_run_resumes_from_the_last_checkpoint_and_ends_identical_to_an_uninterrupted_run(
    ray_cluster, data_root, ingest_root, tmp_path
):
    config, ingest = ingest_for(tmp_path / "run", data_root, ingest_root)
    marker = tmp_path / "worker-died"
    result = run_training(config, ingest, _fault_injection=str(marker))

    assert marker.is_file()  # rank 1 did kill itself in epoch 2
    assert [entry["epoch"] for entry in result.history] == [1, 2]  # each epoch exactly once
    assert result.history[0]["restores"] == 0
    assert result.history[1]["restores"] == 1  # epoch 2 ran in a group restored from epoch 1
    assert all(math.isfinite(entry["train_bound"]) for entry in result.history)
    assert math.isfinite(result.test_log_likelihood)
    with torch.no_grad():
        assert math.isfinite(float(load_model(result.checkpoint_dir).bound(*_valid(ingest), 5).mean()))

    # The same run as an uninterrupted one of the same seed, bit for bit: the restored group
    # reads the same rows (Ray Data in order), restores the weights and the optimiser's state,
    # and draws epoch 2's samples from the same seeds.
    clean = _UNINTERRUPTED.get("result") or run_training(
        *ingest_for(tmp_path / "clean", data_root, ingest_root)
    )
    bounds = ("train_bound", "valid_bound")
    assert [[entry[key] for key in bounds] for entry in result.history] == [
        [entry[key] for key in bounds] for entry in clean.history
    ]
    assert result.test_log_likelihood == clean.test_log_likelihood
    killed, uninterrupted = load_model(result.checkpoint_dir), load_model(clean.checkpoint_dir)
    for (name, weight), (_, other) in zip(
        killed.state_dict().items(), uninterrupted.state_dict().items(), strict=True
    ):
        assert torch.equal(weight, other), name
    assert result.history[1]["valid_bound"] > result.history[0]["valid_bound"]  # it kept learning


def _valid(ingest: IngestResult) -> tuple[torch.Tensor, torch.Tensor]:
    x, mask, _, _ = load_split_numpy(ingest, "valid")
    return torch.from_numpy(x), torch.from_numpy(mask)


def test_a_diverging_run_stops_with_an_error_naming_the_epoch_and_publishes_no_model(
    ray_cluster, data_root, ingest_root, tmp_path
):
    """A learning rate of 1e30: the workers stop on the first non-finite bound together, no
    NaN checkpoint is reported, and the stage raises TrainingDiverged (one line for the job)."""
    config, ingest = ingest_for(tmp_path / "run", data_root, ingest_root)
    settings = config.to_dict()
    diverging = PipelineConfig.from_dict({**settings, "train": {**settings["train"], "learning_rate": 1e30}})
    with pytest.raises(TrainingDiverged, match=r"training diverged at epoch 1\b.*learning_rate"):
        run_training(diverging, ingest, resume=False)
    assert not (diverging.run_path / "model").exists()


# Validation bounds the workers see (the `_valid_bounds` test hook; training itself is real):
# improves up to epoch 3, then one worse epoch and one tie (a tie is no improvement), then an
# improvement that a patience of 2 never reaches.
PLATEAU = [-300.0, -250.0, -200.0, -210.0, -200.0, -150.0]
_EARLY_STOPPED: dict[str, Any] = {}  # the early-stopping test's run, resumed by the next test


def _with_train(config: PipelineConfig, **train: Any) -> PipelineConfig:
    settings = config.to_dict()
    return PipelineConfig.from_dict({**settings, "train": {**settings["train"], **train}})


def _checkpoint_states(result: Any) -> dict[int, dict[str, Any]]:
    """The model.pt dicts of the Ray Train checkpoints still kept (the last two), by epoch."""
    states = {}
    for state_file in (result.checkpoint_dir.parent / "ray_train" / result.run_name).rglob(
        PIPELINE_STATE_FILE
    ):
        epochs = len(json.loads(state_file.read_text())["history"])
        states[epochs] = torch.load(state_file.parent / "model.pt", weights_only=True)
    return states


def _same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(first[name], second[name]) for name in first)


def test_early_stopping_stops_every_worker_on_a_plateau_and_publishes_the_best_epochs_weights(
    ray_cluster, data_root, ingest_root, tmp_path
):
    config, ingest = ingest_for(tmp_path / "run", data_root, ingest_root)
    config = _with_train(config, epochs=len(PLATEAU), early_stopping_patience=2)
    seen: list[dict[str, Any]] = []
    result = run_training(config, ingest, on_epoch=seen.append, _valid_bounds=PLATEAU)
    _EARLY_STOPPED.update(result=result, config=config, ingest=ingest)

    # Not after epoch 4 (one epoch without improvement), but after epoch 5 (two), before the cap.
    assert [entry["epoch"] for entry in result.history] == [1, 2, 3, 4, 5]
    assert seen == result.history
    assert [entry["valid_bound"] for entry in result.history] == PLATEAU[:5]
    assert (result.best_epoch, result.stopped_at) == (3, 5)

    # The published model is epoch 3's: the checkpoints of epochs 4 and 5 carry the same
    # best_model, unlike either epoch's own (last) weights, and load_model returns it.
    kept = _checkpoint_states(result)
    assert set(kept) == {4, 5}
    published = load_model(result.checkpoint_dir).state_dict()
    assert _same_weights(published, kept[5]["best_model"])
    assert _same_weights(published, kept[4]["best_model"])
    assert not _same_weights(published, kept[5]["model"])
    assert not _same_weights(published, kept[4]["model"])
    assert math.isfinite(result.test_log_likelihood)


def test_a_resumed_run_that_already_stopped_early_trains_nothing_more(
    ray_cluster, data_root, ingest_root, tmp_path
):
    if not _EARLY_STOPPED:  # run alone: stop one first
        config, ingest = ingest_for(tmp_path / "run", data_root, ingest_root)
        config = _with_train(config, epochs=len(PLATEAU), early_stopping_patience=2)
        _EARLY_STOPPED.update(
            result=run_training(config, ingest, _valid_bounds=PLATEAU), config=config, ingest=ingest
        )
    stopped = _EARLY_STOPPED["result"]
    before = load_model(stopped.checkpoint_dir).state_dict()

    resumed = run_training(_EARLY_STOPPED["config"], _EARLY_STOPPED["ingest"], _valid_bounds=PLATEAU)

    assert resumed.history == stopped.history  # epochs 1..5, no sixth
    assert (resumed.best_epoch, resumed.stopped_at) == (3, 5)
    assert _same_weights(load_model(resumed.checkpoint_dir).state_dict(), before)


def test_without_a_patience_every_epoch_runs_and_the_last_epochs_weights_are_published(
    ray_cluster, data_root, ingest_root, tmp_path
):
    config, ingest = ingest_for(tmp_path / "run", data_root, ingest_root)
    config = _with_train(config, epochs=len(PLATEAU), early_stopping_patience=None)
    result = run_training(config, ingest, _valid_bounds=PLATEAU)

    assert [entry["epoch"] for entry in result.history] == list(range(1, len(PLATEAU) + 1))
    assert (result.best_epoch, result.stopped_at) == (None, None)
    last = torch.load(result.checkpoint_dir / "model.pt", weights_only=True)
    assert "best_model" not in last
    assert _same_weights(load_model(result.checkpoint_dir).state_dict(), last["model"])


def test_a_worker_dying_after_the_best_epoch_still_publishes_the_best_epochs_weights(
    ray_cluster, data_root, ingest_root, tmp_path
):
    """Epoch 1 is the best; a worker dies in epoch 2, and the restored group must carry epoch
    1's weights on from the checkpoint to the epoch where the plateau stops it."""
    config, ingest = ingest_for(tmp_path / "run", data_root, ingest_root)
    config = _with_train(config, epochs=4, early_stopping_patience=2)
    marker = tmp_path / "worker-died"
    result = run_training(
        config, ingest, _fault_injection=str(marker), _valid_bounds=[-100.0, -200.0, -200.0, -50.0]
    )

    assert marker.is_file()
    assert [entry["restores"] for entry in result.history] == [0, 1, 1]
    assert (result.best_epoch, result.stopped_at) == (1, 3)
    kept = _checkpoint_states(result)
    published = load_model(result.checkpoint_dir).state_dict()
    assert _same_weights(published, kept[3]["best_model"])
    assert not _same_weights(published, kept[3]["model"])
    assert not _same_weights(published, kept[2]["model"])


def test_a_bootstrap_batch_weighs_each_row_by_its_poisson_count_and_a_plain_one_has_no_weights():
    from missiwae.ensemble import poisson_bootstrap_counts
    from pipelines.train_worker import _with_weights

    batch = {
        "row_id": torch.arange(100, 164),
        "pixels": torch.ones(64, 3),
        "mask": torch.ones(64, 3, dtype=torch.bool),
    }
    assert set(_with_weights(batch, None)) == {"pixels", "mask"}
    weighted = _with_weights(batch, {"seed": 4, "member": 1})
    expected = poisson_bootstrap_counts(np.arange(100, 164), 4, 1)
    assert torch.equal(weighted["weight"], torch.from_numpy(expected.astype(np.float32)))
    assert weighted["pixels"] is batch["pixels"]


def test_bootstrap_members_each_train_on_their_own_resample_and_publish_loadable_checkpoints(
    ray_cluster, data_root, ingest_root, tmp_path
):
    config, ingest = ingest_for(tmp_path / "run", data_root, ingest_root)
    config = dataclasses.replace(config, impute=dataclasses.replace(config.impute, bootstrap_models=2))
    finished: list[int] = []
    directories = run_bootstrap_training(config, ingest, on_member=lambda b, history: finished.append(b))

    assert directories == [bootstrap_model_dir(config, 0), bootstrap_model_dir(config, 1)]
    assert sorted(finished) == [0, 1]
    names = {training_fingerprint(config, ingest, b) for b in (0, 1)} | {training_fingerprint(config, ingest)}
    assert len(names) == 3  # each member is a Ray Train run of its own, apart from the model on all rows
    models = [load_model(directory) for directory in directories]
    for b, directory in enumerate(directories):
        saved = json.loads((directory / "config.json").read_text())
        assert saved["train"]["seed"] == config.train.seed + BOOTSTRAP_SEED_OFFSET + b
        history, _ = read_pipeline_state(directory)
        assert [entry["epoch"] for entry in history] == [1, 2]
        assert history[1]["valid_bound"] > history[0]["valid_bound"]  # it learns
    first, second = (torch.cat([p.flatten() for p in m.parameters()]) for m in models)
    assert not torch.equal(first, second)
    assert not (config.run_path / "model").exists()  # the members alone: nothing else published
