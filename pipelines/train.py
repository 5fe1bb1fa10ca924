"""Ray Train: data-parallel missIWAE (DDP) over the ingest shards, with checkpoints and resume.

    driver                          Ray Train controller           N workers (DDP, gloo on CPU)
    run_training ── TorchTrainer ──> restarts failed groups ───────> train_loop_per_worker:
      │                              from the last checkpoint          shard of "train" (split),
      │ <── per-epoch history ─────  _ForwardHistory (after_report)    all of "valid" (each rank
      │     (on_epoch, live)                                           scores row_id % N == rank),
      ├─ copy last checkpoint -> {run_dir}/model/  (atomic)            −mean L_K through DDP,
      └─ test log-likelihood (missiwae.evaluation)                     rank 0 saves a checkpoint

The math is the library's: `MissIWAE.bound` (wrapped in `BoundModule` so DDP sees a forward),
`missiwae.training.save_checkpoint` / `load_training_state`, `missiwae.evaluation`. The
checkpoint directory is a plain missiwae checkpoint (model.pt + config.json, loadable by
`missiwae.training.load_model`) plus `pipeline_state.json` (the per-epoch history below).

Resume, twice over: inside one `run_training`, a dead worker makes the controller restart the
group (`scaling.max_failures` times) and the loop continues after the last checkpointed epoch;
across calls, the Ray Train run is named after a fingerprint of the settings, and Train V2
restores a run of the same name from `{run_dir}/ray_train/<name>`, so re-running the same
config after a crash continues where it stopped (`resume=False` starts over).

Randomness: parameters are initialised with `torch.manual_seed(train.seed + rank)` (DDP then
broadcasts rank 0's); importance samples use a generator seeded from (train.seed, rank, epoch),
so a resumed epoch draws the same numbers as an uninterrupted one would. Each worker reads its
shard into memory once and shuffles it with a generator seeded the same way
(`scaling.shard_in_memory`); which rows Ray Data puts in which shard is not reproducible, nor is
the order of the streaming path (shard_in_memory: false).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from missiwae.allocator import retain_freed_memory
from missiwae.config import ConfigError, ModelConfig, TrainConfig, to_dict
from missiwae.evaluation import estimate_log_likelihood, mean_bound
from missiwae.model import MissIWAE, make_generator
from missiwae.training import (
    EpochStats,
    load_model,
    load_training_state,
    make_optimizer,
    minibatches,
    save_checkpoint,
)
from pipelines.config import PipelineConfig
from pipelines.ingest import IngestResult, load_split_numpy, read_split

PIPELINE_STATE_FILE = "pipeline_state.json"  # per-epoch history (+ restore count) in a checkpoint
HISTORY_KEYS = ("epoch", "train_bound", "valid_bound", "seconds", "images_per_second", "restores")
VALID_BATCH_SIZE = 500
_SHUFFLE_BUFFER_BATCHES = 8  # Ray Data local shuffle buffer, in training batches
_SHARD_READ_BATCH = 4096  # rows per batch when a worker reads its shard into memory


@dataclasses.dataclass(frozen=True)
class TrainResult:
    checkpoint_dir: Path  # {run_dir}/model: a missiwae checkpoint (missiwae.training.load_model)
    history: list[dict[str, Any]]  # one entry per epoch, HISTORY_KEYS
    test_log_likelihood: float  # mean log p(x_o) over the test split, evaluate.num_samples samples
    seconds: float
    run_name: str = ""  # the Ray Train run under {run_dir}/ray_train


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


def training_fingerprint(config: PipelineConfig, ingest: IngestResult) -> str:
    """sha256 of everything that decides what training produces: the Ray Train run's name."""
    payload = {
        "ingest": ingest.fingerprint,
        "model": to_dict(config.model),
        "train": to_dict(config.train),
        "num_workers": config.scaling.num_workers,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------------ worker


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One DDP worker. loop_config: model (ModelConfig), train (TrainConfig), num_threads,
    shard_in_memory (read the training shard once, see ScalingConfig), and `_fault_injection` —
    TEST ONLY: a marker-file path; when set, the last rank kills its process (os._exit(1)) once,
    after its first step of epoch 2, and creates the marker so the restarted group does not die
    again."""
    import ray.train
    import ray.train.torch

    model_config: ModelConfig = loop_config["model"]
    train_config: TrainConfig = loop_config["train"]
    fault_marker: str | None = loop_config.get("_fault_injection")
    torch.set_num_threads(int(loop_config["num_threads"]))
    retain_freed_memory()
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()

    torch.manual_seed(train_config.seed + rank)
    model = MissIWAE.from_config(model_config).to(device)
    optimizer = make_optimizer(model, train_config.learning_rate)
    history: list[dict[str, Any]] = []
    restores = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a restarted worker group, or a re-run of a named run
        with checkpoint.as_directory() as directory:
            load_training_state(directory, model, optimizer)
            history, restores = read_pipeline_state(directory)
        restores += 1
    ddp_model = ray.train.torch.prepare_model(BoundModule(model))

    train_shard = ray.train.get_dataset_shard("train")
    valid_shard = ray.train.get_dataset_shard("valid")
    assert train_shard is not None and valid_shard is not None
    batch_size = train_config.batch_size
    shard = _read_shard(train_shard) if loop_config["shard_in_memory"] else None
    for epoch in range(len(history) + 1, train_config.epochs + 1):
        started = time.perf_counter()
        ddp_model.train()
        seed = epoch_seed(train_config.seed, rank, epoch)
        generator = make_generator(seed, device)
        bound_sum, num_rows = 0.0, 0
        if shard is not None:
            batches: Iterable[dict[str, torch.Tensor]] = (
                {"pixels": shard[0][rows], "mask": shard[1][rows]}
                for rows in minibatches(shard[0].shape[0], batch_size, make_generator(seed))
            )
        else:
            batches = train_shard.iter_torch_batches(
                batch_size=batch_size,
                local_shuffle_buffer_size=batch_size * _SHUFFLE_BUFFER_BATCHES,
                local_shuffle_seed=seed % 2**32,
            )
        for step, batch in enumerate(batches):
            x, mask = batch["pixels"].to(device, torch.float32), batch["mask"].to(device)
            bound = ddp_model(x, mask, train_config.K, generator)
            loss = -bound.mean()  # DDP averages gradients over workers: equal shards, equal weight
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bound_sum += float(bound.detach().sum())
            num_rows += x.shape[0]
            if fault_marker and epoch == 2 and step == 0 and rank == world_size - 1:
                _die_once(fault_marker)
        train_seconds = time.perf_counter() - started
        bound_sum, num_rows = _all_reduce_sum([bound_sum, num_rows], device)

        valid_sum, valid_rows = _valid_bound_sum(
            model, valid_shard, train_config.K, rank, world_size, make_generator(seed + 1, device)
        )
        valid_sum, valid_rows = _all_reduce_sum([valid_sum, valid_rows], device)
        entry = {
            "epoch": epoch,
            "train_bound": bound_sum / max(num_rows, 1),
            "valid_bound": valid_sum / max(valid_rows, 1),
            "seconds": time.perf_counter() - started,
            "images_per_second": num_rows / max(train_seconds, 1e-9),
            "restores": restores,
        }
        history.append(entry)
        if rank == 0:
            with tempfile.TemporaryDirectory() as directory:
                stats = [
                    EpochStats(e["epoch"], e["train_bound"], e["valid_bound"], e["seconds"]) for e in history
                ]
                save_checkpoint(directory, model, optimizer, train_config, stats)
                write_pipeline_state(directory, history, restores)
                ray.train.report(entry, checkpoint=ray.train.Checkpoint.from_directory(directory))
        else:
            ray.train.report(entry, checkpoint=None)  # a barrier: every rank reports every epoch


def _read_shard(train_shard: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """This worker's whole training shard, read once: pixels (N_w, D) uint8 and mask (N_w, D).

    Streaming it again every epoch cost a tenth of the epoch on a 1-CPU worker (Arrow to
    torch conversion and the local shuffle buffer, per batch: benchmarks/README.md).
    """
    pixels, masks = [], []
    for batch in train_shard.iter_torch_batches(batch_size=_SHARD_READ_BATCH):
        pixels.append(batch["pixels"])
        masks.append(batch["mask"])
    if not pixels:
        raise RuntimeError("this worker's training shard is empty: fewer training rows than workers?")
    return torch.cat(pixels), torch.cat(masks)


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
    state = {"history": history, "restores": restores}
    (Path(directory) / PIPELINE_STATE_FILE).write_text(json.dumps(state, indent=2))


def read_pipeline_state(directory: str | Path) -> tuple[list[dict[str, Any]], int]:
    """(history, restores) from a checkpoint written by `train_loop_per_worker`."""
    state = json.loads((Path(directory) / PIPELINE_STATE_FILE).read_text())
    return list(state["history"]), int(state["restores"])


# ------------------------------------------------------------------------------ driver


def _history_forwarder() -> Any:
    """A `ray.train.UserCallback` that sends each checkpoint's history to a queue on the driver.

    It runs inside the Train controller (an actor), after every report whose checkpoint has
    been persisted; built lazily so importing this module does not import Ray Train.
    """
    from ray.train import UserCallback

    class _ForwardHistory(UserCallback):
        def __init__(self, queue: Any):
            self.queue = queue

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            if checkpoint is not None:
                with checkpoint.as_directory() as directory:
                    history, _ = read_pipeline_state(directory)
            else:
                history = [metrics[0]]
            self.queue.put(history)

    return _ForwardHistory


class _Deliver:
    """Calls on_epoch once per epoch, in epoch order, whatever order histories arrive in."""

    def __init__(self, on_epoch: Callable[[dict[str, Any]], None] | None):
        self.on_epoch = on_epoch
        self.delivered = 0  # epochs 1..delivered have been handed over

    def __call__(self, history: list[dict[str, Any]]) -> None:
        for entry in sorted(history, key=lambda e: e["epoch"]):
            if entry["epoch"] == self.delivered + 1:
                if self.on_epoch is not None:
                    self.on_epoch(dict(entry))
                self.delivered += 1


def run_training(
    config: PipelineConfig,
    ingest: IngestResult,
    *,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    resume: bool = True,
    _fault_injection: str | None = None,
) -> TrainResult:
    """Train with Ray Train (DDP over `scaling.num_workers` workers), keep the last checkpoint in
    `{run_dir}/model`, and estimate the test log-likelihood on the driver.

    `on_epoch(entry)` is called on the driver once per epoch, in order, while training runs
    (entries of epochs restored from an earlier run come first). `_fault_injection` is for
    tests only (see `train_loop_per_worker`).
    """
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    from pipelines.runtime import ensure_ray

    started = time.perf_counter()
    if config.train.epochs < 1:
        raise ConfigError("train.epochs must be >= 1 for the training stage")
    ensure_ray()
    run_path = config.run_path
    storage = run_path / "ray_train"
    name = f"missiwae-{training_fingerprint(config, ingest)[:16]}"
    if not resume:
        shutil.rmtree(storage / name, ignore_errors=True)
    scaling = config.scaling
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = 1
    queue = Queue(actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "model": config.model,
            "train": config.train,
            "num_threads": max(1, int(scaling.cpus_per_worker)),
            "shard_in_memory": scaling.shard_in_memory,
            "_fault_injection": _fault_injection,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=scaling.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[_history_forwarder()(queue)],
        ),
        # Materialised once here: each epoch then streams blocks from the object store instead
        # of re-running Parquet read tasks on every worker (seconds each on a busy 2-core box).
        datasets={
            "train": read_split(ingest, "train", columns=["pixels", "mask"]).materialize(),
            "valid": read_split(ingest, "valid", columns=["row_id", "pixels", "mask"]).materialize(),
        },
        # Each worker streams its own part of "train"; every worker reads all of "valid" and
        # scores the rows it owns (an exact partition, unlike an equal split that drops rows).
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    deliver = _Deliver(on_epoch)
    try:
        result = _fit_streaming(trainer, queue, deliver)
    finally:
        queue.shutdown(force=True)
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {name} finished without a checkpoint")

    model_dir = run_path / "model"
    _copy_checkpoint(result.checkpoint, model_dir)
    history, _ = read_pipeline_state(model_dir)
    history = [{key: entry[key] for key in HISTORY_KEYS} for entry in history]
    deliver(history)  # epochs whose live delivery was missed

    test_ll = evaluate_test_log_likelihood(config, ingest, model_dir)
    return TrainResult(
        checkpoint_dir=model_dir,
        history=history,
        test_log_likelihood=test_ll,
        seconds=time.perf_counter() - started,
        run_name=name,
    )


def _fit_streaming(trainer: Any, queue: Any, deliver: _Deliver) -> Any:
    """trainer.fit() in a thread while this thread hands histories to `deliver` as they come.

    The callbacks run here, on the caller's thread (MLflow's active run is per thread).
    Train V2's fit() supports running off the main thread (that is how Tune runs it).
    """
    from ray.util.queue import Empty

    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    callback_error: BaseException | None = None
    while True:
        alive = thread.is_alive()
        try:
            history = queue.get(timeout=0.5) if alive else queue.get_nowait()
        except Empty:
            if alive:
                continue
            break
        if callback_error is None:
            try:
                deliver(history)
            except BaseException as error:  # keep draining; re-raised once training is over
                callback_error = error
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    if callback_error is not None:
        raise callback_error
    return outcome["result"]


def _copy_checkpoint(checkpoint: Any, target: Path) -> None:
    """Materialise a Ray checkpoint at `target`, atomically (temporary sibling, then renames)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for leftover in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    temporary = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
    old = target.with_name(f".{target.name}.tmp-old-{uuid.uuid4().hex}")
    try:
        checkpoint.to_directory(str(temporary))
        if target.exists():
            os.replace(target, old)
        os.replace(temporary, target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def evaluate_test_log_likelihood(
    config: PipelineConfig, ingest: IngestResult, model_dir: Path, *, complete: bool = False
) -> float:
    """Mean importance-sampled log p(x_o) over the test split (evaluate.num_samples samples);
    `complete=True`: log p(x) of the complete test images (every pixel observed), the paper's
    Figure 1 (left) measure, comparable across models trained with and without missing data."""
    device = "cuda" if config.scaling.use_gpu and torch.cuda.is_available() else "cpu"
    model = load_model(model_dir, device)
    x, mask, _, _ = load_split_numpy(ingest, "test")
    if complete:
        mask = np.ones_like(mask)
    per_row = estimate_log_likelihood(
        model,
        torch.from_numpy(x).to(device),
        torch.from_numpy(mask).to(device),
        config.evaluate.num_samples,
        batch_size=config.evaluate.batch_size,
        generator=make_generator(config.evaluate.seed, device),
    )
    return float(per_row.mean())


__all__ = [
    "HISTORY_KEYS",
    "BoundModule",
    "TrainResult",
    "evaluate_test_log_likelihood",
    "read_pipeline_state",
    "run_training",
    "train_loop_per_worker",
    "training_fingerprint",
]
