"""The Ray Train worker: one DDP process of `pipelines.train.run_training`.

Each worker reads its shard of "train" (split by Ray Data) and all of "valid" (scoring the rows
with row_id % N == rank), maximises the mean L_K through DDP, and reports one history entry per
epoch; rank 0 attaches a checkpoint: a plain missiwae checkpoint (model.pt + config.json,
`missiwae.training.load_model`) plus `pipeline_state.json` (the history and the restore count).

Early stopping (`train.early_stopping_patience`) follows `missiwae.training.train`: every rank
holds the same all-reduced validation bounds, so all stop together once `plateaued` holds, and
the checkpoint keeps the best validation epoch's weights as `best_model` (what `load_model`
loads) beside the last epoch's (what a restored group continues from).

Randomness: parameters are initialised with `torch.manual_seed(train.seed + rank)` (DDP then
broadcasts rank 0's); importance samples use a generator seeded from (train.seed, rank, epoch),
so a resumed epoch draws the same numbers as an uninterrupted one would. Each worker reads its
shard into memory once and shuffles it with a generator seeded the same way
(`scaling.shard_in_memory`), or streams it through a local shuffle buffer with that seed
(shard_in_memory: false). Which rows land in which shard, and in what order, is fixed: the
split is read in order (`pipelines.shards.read_split`) and split in order
(`pipelines.train.training_data_config`), so one config trains one model.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from missiwae.allocator import retain_freed_memory
from missiwae.atomic import write_json_atomic
from missiwae.config import ModelConfig, TrainConfig
from missiwae.ensemble import poisson_bootstrap_counts
from missiwae.evaluation import DEFENSIVE_MASKS, estimate_log_likelihood_defensive, mean_bound
from missiwae.model import MissIWAE, make_generator
from missiwae.train_step import ascend, make_optimizer
from missiwae.training import (
    EpochStats,
    best_weights,
    load_training_state,
    minibatches,
    non_finite_bound,
    plateaued,
    save_checkpoint,
)

DIVERGED = "diverged"  # in the last report when a bound became NaN or infinite
PIPELINE_STATE_FILE = "pipeline_state.json"  # per-epoch history (+ restore count) in a checkpoint
HISTORY_KEYS = ("epoch", "train_bound", "valid_bound", "seconds", "images_per_second", "restores")
# With evaluate.curve_rows: the epoch's mean log p(x) of the curve's complete test images.
TEST_CURVE_KEY = "test_curve"
VALID_BATCH_SIZE = 500
_SHUFFLE_BUFFER_BATCHES = 8  # Ray Data local shuffle buffer, in training batches
_SHARD_READ_BATCH = 4096  # rows per batch when a worker reads its shard into memory


class BoundModule(nn.Module):
    """forward(x, mask, K, generator) = model.bound(...) (B,): what DDP wraps.

    DDP synchronises gradients of what runs through its own forward, so the bound has to be
    computed by the wrapped module's forward rather than by calling `model.bound` beside it.
    """

    def __init__(self, model: MissIWAE):
        super().__init__()
        self.model = model

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, K: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return self.model.bound(x, mask, K, generator, validate=False)


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """A well-mixed 63-bit seed for (train.seed, worker rank, epoch)."""
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One DDP worker. loop_config: model (ModelConfig), train (TrainConfig), num_threads,
    shard_in_memory (read the training shard once, see ScalingConfig), bootstrap (None, or
    {"seed", "member"}: train on Poisson bootstrap resample `member`, below), test_curve (None, or
    pipelines.train.epoch_test_ll_settings plus "images": after each epoch, `epoch_test_ll`
    goes into the history as TEST_CURVE_KEY), and two TEST ONLY hooks:
    `_fault_injection`, a marker-file path; when set, the last rank kills its process
    (os._exit(1)) once, after its first step of epoch 2, and creates the marker so the restarted
    group does not die again. `_valid_bounds`, a list of floats; when set, epoch e's validation
    bound is its e-th value instead of the measured one (after the all-reduce, so on every
    rank), to put a plateau exactly where a test wants it.

    A bootstrap resample enters as weights: row i's bound counts c_i times in the loss, c_i =
    `missiwae.ensemble.poisson_bootstrap_counts` of its row_id, which is the resample's
    objective (a row drawn c_i times, a row drawn 0 times left out) while every worker keeps
    its equal shard, hence the same number of DDP steps."""
    import ray.train
    import ray.train.torch

    model_config: ModelConfig = loop_config["model"]
    train_config: TrainConfig = loop_config["train"]
    fault_marker: str | None = loop_config.get("_fault_injection")
    scripted_valid: list[float] | None = loop_config.get("_valid_bounds")
    patience = train_config.early_stopping_patience
    torch.set_num_threads(int(loop_config["num_threads"]))
    # This worker process is an entry point: it opts in to the allocator setting, which the
    # library never applies on its own (it changes the whole process), when its working set is
    # fixed: a shard in memory, the same tensors every step. A worker streaming its shard (one
    # too large for memory) keeps the workers' allocator (pipelines.runtime.WORKER_ALLOCATOR_ENV)
    # instead: with freed memory retained, the Arrow batches of a long stream fragmented its heap,
    # and its memory grew with the rows it read (benchmarks/README.md, "Tables at scale").
    if loop_config["shard_in_memory"]:
        retain_freed_memory()
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()

    torch.manual_seed(train_config.seed + rank)
    model = MissIWAE.from_config(model_config).to(device)
    optimizer = make_optimizer(model, train_config.learning_rate)
    history: list[dict[str, Any]] = []
    restores = 0
    best: dict[str, torch.Tensor] | None = None  # weights of the best validation epoch so far
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a restarted worker group, or a re-run of a named run
        with checkpoint.as_directory() as directory:
            best = load_training_state(directory, model, optimizer).get("best_model")
            history, restores = read_pipeline_state(directory)
        restores += 1
    ddp_model = ray.train.torch.prepare_model(BoundModule(model))

    train_shard = ray.train.get_dataset_shard("train")
    valid_shard = ray.train.get_dataset_shard("valid")
    assert train_shard is not None and valid_shard is not None
    batch_size = train_config.batch_size
    bootstrap: dict[str, int] | None = loop_config.get("bootstrap")
    test_curve: dict[str, Any] | None = loop_config.get("test_curve")
    shard = _read_shard(train_shard, bootstrap) if loop_config["shard_in_memory"] else None
    for epoch in range(len(history) + 1, train_config.epochs + 1):
        # Checked before the epoch, as `train` does: a restored run that had already stopped
        # trains nothing more. The history is the same on every rank, so all ranks stop.
        if plateaued(epoch_stats(history), patience):
            break
        started = time.perf_counter()
        ddp_model.train()
        seed = epoch_seed(train_config.seed, rank, epoch)
        generator = make_generator(seed, device)
        bound_sum, num_rows = 0.0, 0.0
        if shard is not None:
            batches: Iterable[dict[str, torch.Tensor]] = (
                {key: column[rows] for key, column in shard.items()}
                for rows in minibatches(shard["pixels"].shape[0], batch_size, make_generator(seed))
            )
        else:
            batches = (
                _with_weights(batch, bootstrap)
                for batch in train_shard.iter_torch_batches(
                    batch_size=batch_size,
                    local_shuffle_buffer_size=batch_size * _SHUFFLE_BUFFER_BATCHES,
                    local_shuffle_seed=seed % 2**32,
                )
            )
        for step, batch in enumerate(batches):
            x, mask = batch["pixels"].to(device, torch.float32), batch["mask"].to(device)
            bound = ddp_model(x, mask, train_config.K, generator)
            if "weight" in batch:  # a bootstrap resample: E[c_i] = 1 keeps the loss's scale
                weight = batch["weight"].to(device)
                bound, rows_seen = bound * weight, float(weight.sum())
            else:
                rows_seen = float(x.shape[0])
            ascend(optimizer, bound)  # DDP averages gradients over workers: equal shards, equal weight
            bound_sum += float(bound.detach().sum())
            num_rows += rows_seen
            if fault_marker and epoch == 2 and step == 0 and rank == world_size - 1:
                _die_once(fault_marker)
        train_seconds = time.perf_counter() - started
        bound_sum, num_rows = _all_reduce_sum([bound_sum, num_rows], device)

        valid_sum, valid_rows = _valid_bound_sum(
            model, valid_shard, train_config.K, rank, world_size, make_generator(seed + 1, device)
        )
        valid_sum, valid_rows = _all_reduce_sum([valid_sum, valid_rows], device)
        valid_bound = valid_sum / max(valid_rows, 1)
        if scripted_valid is not None:
            valid_bound = float(scripted_valid[epoch - 1])
        entry = {
            "epoch": epoch,
            "train_bound": bound_sum / max(num_rows, 1),
            "valid_bound": valid_bound,
            "seconds": time.perf_counter() - started,
            "images_per_second": num_rows / max(train_seconds, 1e-9),
            "restores": restores,
        }
        if non_finite_bound(epoch_stats([entry])[0]) is not None:
            # Every rank holds the same all-reduced sums, so all stop here together; no
            # checkpoint is reported, so the newest one stays the last finite epoch's.
            ray.train.report({**entry, DIVERGED: 1.0}, checkpoint=None)
            return
        if test_curve is not None:
            # Rank 0 scores the images, every rank receives the value (all hold the same history).
            value = epoch_test_ll(model, test_curve) if rank == 0 else 0.0
            entry[TEST_CURVE_KEY] = _all_reduce_sum([value, 0.0], device)[0]
        history.append(entry)
        best = best_weights(model, epoch_stats(history), patience, best)
        if rank == 0:
            with tempfile.TemporaryDirectory() as directory:
                save_checkpoint(
                    directory, model, optimizer, train_config, epoch_stats(history), best_model=best
                )
                write_pipeline_state(directory, history, restores)
                ray.train.report(entry, checkpoint=ray.train.Checkpoint.from_directory(directory))
        else:
            ray.train.report(entry, checkpoint=None)  # a barrier: every rank reports every epoch


def epoch_stats(history: list[dict[str, Any]]) -> list[EpochStats]:
    """The pipeline history as the library's `EpochStats` (what `plateaued` and
    `save_checkpoint` take)."""
    return [EpochStats(e["epoch"], e["train_bound"], e["valid_bound"], e["seconds"]) for e in history]


def _read_shard(train_shard: Any, bootstrap: dict[str, int] | None) -> dict[str, torch.Tensor]:
    """This worker's whole training shard, read once: pixels (N_w, D) uint8 and mask (N_w, D),
    and with `bootstrap` the rows' weights (N_w,) float32.

    Streaming it again every epoch cost a tenth of the epoch on a 1-CPU worker (Arrow to
    torch conversion and the local shuffle buffer, per batch: benchmarks/README.md).
    """
    batches = [
        _with_weights(batch, bootstrap)
        for batch in train_shard.iter_torch_batches(batch_size=_SHARD_READ_BATCH)
    ]
    if not batches:
        raise RuntimeError("this worker's training shard is empty: fewer training rows than workers?")
    return {key: torch.cat([batch[key] for batch in batches]) for key in batches[0]}


def _with_weights(
    batch: dict[str, torch.Tensor], bootstrap: dict[str, int] | None
) -> dict[str, torch.Tensor]:
    """A training batch's pixels and mask, plus with `bootstrap` each row's weight: how many
    times its row_id enters that resample."""
    out = {"pixels": batch["pixels"], "mask": batch["mask"]}
    if bootstrap is not None:
        counts = poisson_bootstrap_counts(batch["row_id"].numpy(), bootstrap["seed"], bootstrap["member"])
        out["weight"] = torch.from_numpy(counts.astype(np.float32))
    return out


@torch.no_grad()
def _valid_bound_sum(
    model: MissIWAE,
    valid_shard: Any,
    K: int,
    rank: int,
    world_size: int,
    generator: torch.Generator,
) -> tuple[float, int]:
    """Sum of L_K over the validation rows this rank owns (row_id % world_size == rank)."""
    model.eval()
    total, count = 0.0, 0
    for batch in valid_shard.iter_torch_batches(batch_size=VALID_BATCH_SIZE):
        mine = batch["row_id"] % world_size == rank
        n = int(mine.sum())
        if n == 0:
            continue
        x = batch["pixels"][mine].to(model.device, torch.float32)
        mask = batch["mask"][mine].to(model.device)
        total += mean_bound(model, x, mask, K, batch_size=VALID_BATCH_SIZE, generator=generator) * n
        count += n
    model.train()
    return total, count


@torch.no_grad()
def epoch_test_ll(model: MissIWAE, curve: dict[str, Any]) -> float:
    """Mean log p(x) of the curve's complete test images `curve["images"]` (R, D) by the
    defensive mixture (`missiwae.evaluation.DEFENSIVE_MASKS` masks at curve["mask_rate"],
    curve["num_samples"] samples), drawn from curve["seed"] every epoch: what changes from one
    epoch to the next is the model, not the draws."""
    device = model.device
    x = torch.as_tensor(curve["images"], dtype=torch.float32, device=device)
    model.eval()
    values = estimate_log_likelihood_defensive(
        model,
        x,
        torch.ones_like(x, dtype=torch.bool),
        curve["num_samples"],
        num_masks=DEFENSIVE_MASKS,
        missing_rate=curve["mask_rate"],
        generator=make_generator(curve["seed"], device),
    )
    model.train()
    return float(values.double().mean())


def _all_reduce_sum(values: list[float], device: torch.device) -> tuple[float, int]:
    """Sum (value, count) over the workers (identity without a process group)."""
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor[0]), round(float(tensor[1]))


def _die_once(marker: str) -> None:
    """Kill this worker process unless `marker` exists (then create it): a test's fault."""
    import ray.train

    path = Path(marker)
    if path.exists():
        return
    # Wait until the controller has committed every checkpoint reported so far: it collects
    # reports when it polls the workers (every 2 s), and a worker that dies before that poll
    # takes the newest checkpoint with it, so the restart would go back one epoch further.
    ray.train.get_all_reported_checkpoints(ray.train.CheckpointConsistencyMode.COMMITTED)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"worker killed itself (pid {os.getpid()})\n")
    os._exit(1)


def write_pipeline_state(directory: str | Path, history: list[dict[str, Any]], restores: int) -> None:
    write_json_atomic(Path(directory) / PIPELINE_STATE_FILE, {"history": history, "restores": restores})


def read_pipeline_state(directory: str | Path) -> tuple[list[dict[str, Any]], int]:
    """(history, restores) from a checkpoint written by `train_loop_per_worker`."""
    state = json.loads((Path(directory) / PIPELINE_STATE_FILE).read_text())
    return list(state["history"]), int(state["restores"])


__all__ = [
    "HISTORY_KEYS",
    "PIPELINE_STATE_FILE",
    "TEST_CURVE_KEY",
    "BoundModule",
    "epoch_seed",
    "epoch_stats",
    "epoch_test_ll",
    "read_pipeline_state",
    "train_loop_per_worker",
    "write_pipeline_state",
]
