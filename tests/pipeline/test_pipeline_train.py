"""Ray Train stage on a real local Ray cluster: DDP on 2 workers, checkpoints, worker death."""

from __future__ import annotations

import ast
import inspect
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from missiwae.evaluation import estimate_log_likelihood
from missiwae.model import MissIWAE, make_generator
from missiwae.training import load_model
from pipelines.config import PipelineConfig
from pipelines.ingest import run_ingest
from pipelines.shards import IngestResult, load_split_numpy
from pipelines.train import HISTORY_KEYS, run_training
from pipelines.train_worker import BoundModule, epoch_seed, train_loop_per_worker


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


def test_each_ray_train_worker_opts_in_to_the_allocator_setting():
    """The library never changes the allocator by itself; a worker process, an entry point, does."""
    tree = ast.parse(inspect.getsource(train_loop_per_worker))
    calls = {ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    assert "retain_freed_memory" in calls


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


def test_a_worker_dying_mid_run_resumes_from_the_last_checkpoint_and_ends_as_good_as_an_uninterrupted_run(
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

    # As good as an uninterrupted run of the same seed: the test log-likelihoods differ by less
    # than the noise of the estimate (3 standard errors of the difference over the test rows).
    # Ray Data's row order is not reproducible, so two runs never agree bit for bit.
    clean = _UNINTERRUPTED.get("result") or run_training(
        *ingest_for(tmp_path / "clean", data_root, ingest_root)
    )
    killed_rows = _test_log_likelihoods(result.checkpoint_dir, ingest)
    clean_rows = _test_log_likelihoods(clean.checkpoint_dir, ingest)
    noise = 3 * math.sqrt(float(killed_rows.var() + clean_rows.var()) / len(clean_rows))
    gap = abs(float(killed_rows.mean() - clean_rows.mean()))
    print(
        f"test log-likelihood: killed {killed_rows.mean():.2f}, uninterrupted {clean_rows.mean():.2f}, "
        f"|gap| {gap:.2f} <= 3 SE {noise:.2f}"
    )
    assert gap <= noise
    assert result.history[1]["valid_bound"] > result.history[0]["valid_bound"]  # it kept learning


def _test_log_likelihoods(checkpoint_dir: Path, ingest: IngestResult) -> torch.Tensor:
    """log p(x_o) of every test row (S = 200, fixed seed): (N,)."""
    x, mask, _, _ = load_split_numpy(ingest, "test")
    model = load_model(checkpoint_dir)
    return estimate_log_likelihood(
        model, torch.from_numpy(x), torch.from_numpy(mask), 200, generator=make_generator(0)
    ).double()


def _valid(ingest: IngestResult) -> tuple[torch.Tensor, torch.Tensor]:
    x, mask, _, _ = load_split_numpy(ingest, "valid")
    return torch.from_numpy(x), torch.from_numpy(mask)
