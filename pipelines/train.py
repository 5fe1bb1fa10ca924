"""Ray Train: data-parallel missIWAE (DDP) over the ingest shards, with checkpoints and resume.

    driver                          Ray Train controller           N workers (DDP, gloo on CPU)
    run_training ── TorchTrainer ──> restarts failed groups ───────> train_loop_per_worker:
      │                              from the last checkpoint          shard of "train" (split),
      │ <── per-epoch history ─────  ForwardHistory (after_report)     all of "valid" (each rank
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

Early stopping (`train.early_stopping_patience`, as in `missiwae.training.train`): the workers
stop together once the validation bound has not improved for that many epochs (`train.epochs`
is the cap), the history ends at that epoch (`TrainResult.stopped_at`), and `{run_dir}/model`
holds the best validation epoch's weights (`TrainResult.best_epoch`), which `load_model` loads.

The bootstrap ensemble (impute.bootstrap_models = B > 1, proper multiple imputation):
`start_bootstrap_training` runs B more Ray Train runs at once, run b on Poisson bootstrap
resample b of the training rows (row weights, so every worker keeps its equal shard), each
published at {run_dir}/bootstrap/model_{b:02d}; pipelines/impute.py draws the M imputations
from them.

The worker loop and the checkpoint's pipeline state live in `pipelines.train_worker` (with how
each worker seeds its randomness), the live per-epoch bridge in `pipelines.epoch_stream`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import queue
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from missiwae.config import ConfigError, to_dict
from missiwae.evaluation import estimate_log_likelihood
from missiwae.model import make_generator
from missiwae.training import check_finite, epochs_since_best, load_model, plateaued
from pipelines.config import PipelineConfig, ScalingConfig
from pipelines.epoch_stream import EpochDelivery, fit_streaming, history_forwarder
from pipelines.publish import fingerprint
from pipelines.runtime import ensure_ray, start_ray_thread
from pipelines.shards import IngestResult, iter_split_batches, read_split, tensor_matrix
from pipelines.storage import TEMP_PREFIX, swap_into_place
from pipelines.train_worker import (
    DIVERGED,
    HISTORY_KEYS,
    TEST_CURVE_KEY,
    epoch_stats,
    read_pipeline_state,
    train_loop_per_worker,
)

# Bootstrap member b starts from seed train.seed + BOOTSTRAP_SEED_OFFSET + b: its initialisation
# and importance samples are independent of the model on all rows' (train.seed).
BOOTSTRAP_SEED_OFFSET = 1000


@dataclasses.dataclass(frozen=True)
class TrainResult:
    checkpoint_dir: Path  # {run_dir}/model: a missiwae checkpoint (missiwae.training.load_model)
    history: list[dict[str, Any]]  # one entry per epoch, HISTORY_KEYS
    test_log_likelihood: float  # mean log p(x_o) over the test split, evaluate.num_samples samples
    seconds: float
    run_name: str = ""  # the Ray Train run under {run_dir}/ray_train
    # Early stopping (train.early_stopping_patience): the epoch whose weights are in
    # checkpoint_dir (None without a patience: the last epoch's), and the epoch at which the
    # validation bound had not improved for `patience` epochs, where training stopped (the
    # history's last; None without a patience or when the epoch cap came first).
    best_epoch: int | None = None
    stopped_at: int | None = None


def training_fingerprint(config: PipelineConfig, ingest: IngestResult, member: int | None = None) -> str:
    """sha256 of everything that decides what training produces: the Ray Train run's name.
    `member`: bootstrap member b (run_bootstrap_training), else the model on all rows."""
    payload: dict[str, Any] = {
        "ingest": ingest.fingerprint,
        "model": to_dict(config.model),
        "train": to_dict(config.train),
        "num_workers": config.scaling.num_workers,
    }
    if member is not None:
        payload["bootstrap_member"] = member
    if config.evaluate.curve_rows and member is None:  # the history then holds the test curve
        payload["test_curve"] = epoch_test_ll_settings(config)
    return fingerprint(payload)


def epoch_test_ll_settings(config: PipelineConfig) -> dict[str, Any]:
    """What decides the test curve's values (evaluate.curve_*): rows, samples, mask rate, seed."""
    evaluate = config.evaluate
    return {
        "rows": evaluate.curve_rows,
        "num_samples": evaluate.curve_samples,
        "mask_rate": evaluate.curve_mask_rate,
        "seed": evaluate.seed,
    }


def epoch_test_ll_images(config: PipelineConfig, ingest: IngestResult) -> np.ndarray | None:
    """The test curve's images for the workers: the first evaluate.curve_rows test rows' true
    pixels (R, D) float32 in row_id order, or None without a curve. Every model of a sweep gets
    the same images: their order does not depend on the missing rate."""
    rows = config.evaluate.curve_rows
    if not rows:
        return None
    batch = next(iter_split_batches(ingest, "test", ["pixels"], rows))
    return tensor_matrix(batch.column("pixels"), np.float32, what="split 'test'", name="pixels")


def bootstrap_model_dir(config: PipelineConfig, member: int) -> Path:
    """Where bootstrap member b's checkpoint is published: {run_dir}/bootstrap/model_{b:02d}."""
    return config.run_path / "bootstrap" / f"model_{member:02d}"


# ------------------------------------------------------------------------------ driver


def run_training(
    config: PipelineConfig,
    ingest: IngestResult,
    *,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    resume: bool = True,
    _fault_injection: str | None = None,
    _valid_bounds: list[float] | None = None,
) -> TrainResult:
    """Train with Ray Train (DDP over `scaling.num_workers` workers), keep the last checkpoint in
    `{run_dir}/model`, and estimate the test log-likelihood on the driver.

    `on_epoch(entry)` is called on the driver once per epoch, in order, while training runs
    (entries of epochs restored from an earlier run come first). `_fault_injection` and
    `_valid_bounds` are for tests only (see `train_loop_per_worker`).
    """
    started = time.perf_counter()
    model_dir, history, name = _fit(
        config,
        ingest,
        _datasets(config, ingest, bootstrap=False),
        on_epoch=on_epoch,
        resume=resume,
        _fault_injection=_fault_injection,
        _valid_bounds=_valid_bounds,
    )
    test_ll = evaluate_test_log_likelihood(config, ingest, model_dir)
    best_epoch, stopped_at = early_stopping_outcome(history, config.train.early_stopping_patience)
    return TrainResult(
        checkpoint_dir=model_dir,
        history=history,
        test_log_likelihood=test_ll,
        seconds=time.perf_counter() - started,
        run_name=name,
        best_epoch=best_epoch,
        stopped_at=stopped_at,
    )


def run_bootstrap_training(
    config: PipelineConfig,
    ingest: IngestResult,
    *,
    on_member: Callable[[int, list[dict[str, Any]]], None] | None = None,
) -> list[Path]:
    """Train the B = impute.bootstrap_models members of the bootstrap ensemble
    (missiwae.ensemble) as B Ray Train runs at once; returns their checkpoint directories in
    member order (bootstrap_model_dir). `start_bootstrap_training`, then its `wait`."""
    return start_bootstrap_training(config, ingest, on_member=on_member)()


def start_bootstrap_training(
    config: PipelineConfig,
    ingest: IngestResult,
    *,
    on_member: Callable[[int, list[dict[str, Any]]], None] | None = None,
) -> Callable[[], list[Path]]:
    """Start the B members' Ray Train runs, all at once, and return `wait`: it blocks until
    every member has finished and returns their checkpoint directories, member order, or
    raises the first member's error.

    Member b trains on Poisson bootstrap resample b of the training rows (weights keyed by
    (train.seed, b, row_id): see train_loop_per_worker) from its own initialisation
    (train.seed + BOOTSTRAP_SEED_OFFSET + b), with the model, epochs and early stopping of the
    model on all rows, which can train meanwhile (pipelines/full.py does). Each run resumes like
    run_training's. `on_member(b, history)` is called as each member finishes (from its
    thread). The runs share the cluster's CPUs with each other and with that model.
    """
    members = range(config.impute.bootstrap_models)
    datasets = _datasets(config, ingest, bootstrap=True)  # read once; every run splits its own view
    done: queue.Queue[tuple[int, BaseException | None]] = queue.Queue()

    def train_member(b: int) -> None:
        try:
            _, history, _ = _fit(config, ingest, datasets, member=b)
            if on_member is not None:
                on_member(b, history)
            done.put((b, None))
        except BaseException as error:  # handed to `wait`, raised on the caller's thread
            done.put((b, error))

    # Train V2's fit() blocks on its controller actor; one thread per member lets the B
    # controllers run at once (off the main thread fit skips its Ctrl-C handler, as under
    # Tune). A Ctrl-C of the job must not wait for them (see start_ray_thread).
    for b in members:
        start_ray_thread(functools.partial(train_member, b), name=f"bootstrap-{b}")

    def wait() -> list[Path]:
        for _ in members:
            b, error = done.get()
            if error is not None:  # its own type, so the console treats it as the job's own
                error.add_note(f"(in bootstrap member {b} of {len(members)})")
                raise error
        return [bootstrap_model_dir(config, b) for b in members]

    return wait


def _datasets(config: PipelineConfig, ingest: IngestResult, *, bootstrap: bool) -> dict[str, Any]:
    """The Ray Datasets a run trains on, materialised once: each epoch then streams blocks from
    the object store instead of re-running Parquet read tasks on every worker (seconds each on
    a busy 2-core box). A bootstrap member also needs the training rows' row_id (its weights)."""
    if config.train.epochs < 1:
        raise ConfigError("train.epochs must be >= 1 for the training stage")
    ensure_ray()  # before Ray Data, which would otherwise start a Ray of its own
    train_columns = ["row_id", "pixels", "mask"] if bootstrap else ["pixels", "mask"]
    datasets = {
        "train": read_split(ingest, "train", columns=train_columns),
        "valid": read_split(ingest, "valid", columns=["row_id", "pixels", "mask"]),
    }
    for dataset in datasets.values():
        dataset.context.target_max_block_size = TRAINING_BLOCK_BYTES  # this dataset's own context
    return {name: dataset.materialize() for name, dataset in datasets.items()}


# The blocks the training splits are materialised in. A worker streaming its shard copies whole
# blocks into its local shuffle buffer (Ray Data concatenates them there), so its memory is a
# block plus the buffer: with Ray Data's default of 128 MiB blocks, a worker of the 5-million-row
# table held 135 MiB of Arrow buffers. Blocks of a fixed, smaller size bound it whatever the table.
TRAINING_BLOCK_BYTES = 32 * 2**20


# scaling.shard_in_memory "auto": the workers read their shards into memory when, on every node,
# the shards of all the workers it can host take at most this fraction of the memory Ray gives it.
SHARD_MEMORY_FRACTION = 0.25


def shards_fit_in_memory(
    num_rows: int,
    num_features: int,
    scaling: ScalingConfig,
    nodes: list[dict[str, float]],
    *,
    bootstrap: bool = False,
) -> bool:
    """Whether `num_rows` training rows of `num_features` model columns, split over
    `scaling.num_workers` workers, fit in memory on every node of `nodes` (each node's Ray
    resources: "CPU", "memory" in bytes, "GPU").

    A node hosts at most as many workers as its CPUs (and GPUs, with use_gpu) allow; their
    shards, read into memory, take 2 x (4 + 1) bytes per row and model column (float32 values
    and a bool mask, twice while the read batches are concatenated), plus a float32 weight per
    row for a bootstrap member. Nodes that can host no worker are left out."""
    per_worker_rows = math.ceil(num_rows / scaling.num_workers)
    bytes_per_row = 2 * (num_features * (4 + 1) + (4 if bootstrap else 0))
    for node in nodes:
        hosted = math.floor(node.get("CPU", 0.0) / scaling.cpus_per_worker + 1e-9)
        if scaling.use_gpu:
            hosted = min(hosted, math.floor(node.get("GPU", 0.0)))
        hosted = min(hosted, scaling.num_workers)
        if hosted < 1:
            continue
        if hosted * per_worker_rows * bytes_per_row > SHARD_MEMORY_FRACTION * node.get("memory", 0.0):
            return False
    return True


def training_data_config() -> Any:
    """How Ray Train hands the splits to the workers: each worker streams its own part of
    "train"; every worker reads all of "valid" and scores the rows it owns (an exact partition,
    unlike an equal split that drops rows).

    preserve_order: Ray Data's splitter gives each block to the worker with the fewest rows so
    far, in the order blocks arrive, and by default prefers blocks stored on the worker's node;
    in order, it takes the blocks in the dataset's order (`pipelines.shards.read_split` reads
    them so), so which rows a worker trains on, and so the trained model, is the same in every
    run of the same config and data.
    """
    import ray.train

    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = True
    return ray.train.DataConfig(datasets_to_split=["train"], execution_options=options)


def resolve_shard_in_memory(config: PipelineConfig, ingest: IngestResult, *, bootstrap: bool) -> bool:
    """scaling.shard_in_memory, with "auto" decided by :func:`shards_fit_in_memory` on the
    running cluster's live nodes."""
    choice = config.scaling.shard_in_memory
    if choice != "auto":
        return bool(choice)
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    rows, features = ingest.num_rows["train"], config.model.num_features
    return shards_fit_in_memory(rows, features, config.scaling, nodes, bootstrap=bootstrap)


def _fit(
    config: PipelineConfig,
    ingest: IngestResult,
    datasets: dict[str, Any],
    *,
    member: int | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    resume: bool = True,
    _fault_injection: str | None = None,
    _valid_bounds: list[float] | None = None,
) -> tuple[Path, list[dict[str, Any]], str]:
    """One Ray Train run, its last checkpoint published: (checkpoint dir, history, run name).
    `member` None: the model on all rows, at {run_dir}/model; b: bootstrap member b."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    ensure_ray()
    run_path = config.run_path
    storage = run_path / "ray_train"
    name = f"missiwae-{training_fingerprint(config, ingest, member)[:16]}"
    train_config, bootstrap = config.train, None
    if member is not None:
        train_config = dataclasses.replace(
            train_config, seed=train_config.seed + BOOTSTRAP_SEED_OFFSET + member
        )
        bootstrap = {"seed": config.train.seed, "member": member}
    if not resume:
        shutil.rmtree(storage / name, ignore_errors=True)
    scaling = config.scaling
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = 1
    queue = Queue(actor_options={"num_cpus": 0})  # history: controller -> driver (epoch_stream)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "model": config.model,
            "train": train_config,
            "num_threads": max(1, int(scaling.cpus_per_worker)),
            "shard_in_memory": resolve_shard_in_memory(config, ingest, bootstrap=member is not None),
            "bootstrap": bootstrap,
            # Bootstrap members only feed imputations: no test curve for them.
            "test_curve": None
            if member is not None or not config.evaluate.curve_rows
            else {**epoch_test_ll_settings(config), "images": epoch_test_ll_images(config, ingest)},
            "_fault_injection": _fault_injection,
            "_valid_bounds": _valid_bounds,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=scaling.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[history_forwarder(queue)],
        ),
        datasets=datasets,
        dataset_config=training_data_config(),
    )
    deliver = EpochDelivery(on_epoch)
    try:
        result = fit_streaming(trainer, queue, deliver)
    except KeyboardInterrupt:
        # fit() is still inside Ray (fit_streaming returned at once) and its controller still
        # reports to the queue: killing the queue would fail the controller, and Ray would print
        # that failure over the job's last line. Both end with the process (runtime.stop_ray).
        raise
    except BaseException:
        queue.shutdown(force=True)
        raise
    queue.shutdown(force=True)
    _raise_if_diverged(deliver.diverged, storage / name)
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {name} finished without a checkpoint")

    model_dir = run_path / "model" if member is None else bootstrap_model_dir(config, member)
    _copy_checkpoint(result.checkpoint, model_dir)
    history, _ = read_pipeline_state(model_dir)
    history = [
        {key: entry[key] for key in (*HISTORY_KEYS, TEST_CURVE_KEY) if key in HISTORY_KEYS or key in entry}
        for entry in history
    ]
    deliver(history)  # epochs whose live delivery was missed
    return model_dir, history, name


def early_stopping_outcome(
    history: list[dict[str, Any]], patience: int | None
) -> tuple[int | None, int | None]:
    """(best_epoch, stopped_at) of a finished run's history, by the rule the workers applied:
    both None without a patience; stopped_at None when the bound never plateaued (the run went
    to `train.epochs`)."""
    if patience is None or not history:
        return None, None
    best_epoch = len(history) - epochs_since_best([entry["valid_bound"] for entry in history])
    stopped_at = len(history) if plateaued(epoch_stats(history), patience) else None
    return best_epoch, stopped_at


def _raise_if_diverged(last_report: dict[str, Any] | None, checkpoints: Path) -> None:
    """`TrainingDiverged` (one line: the epoch, what is kept, lower the learning rate) when the
    workers stopped on a NaN or infinite bound."""
    if not last_report or not last_report.get(DIVERGED):
        return
    check_finite(epoch_stats([last_report])[0], checkpoints)


def _copy_checkpoint(checkpoint: Any, target: Path) -> None:
    """Materialise a Ray checkpoint at `target`, atomically (temporary sibling, then renames)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for leftover in target.parent.glob(f"{TEMP_PREFIX}{target.name}-*"):  # a crashed copy's
        shutil.rmtree(leftover, ignore_errors=True)
    temporary = target.with_name(f"{TEMP_PREFIX}{target.name}-{uuid.uuid4().hex}")
    try:
        checkpoint.to_directory(str(temporary))
        swap_into_place(temporary, target, trash=target.with_name(f"{temporary.name}-old"))
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def evaluate_test_log_likelihood(
    config: PipelineConfig, ingest: IngestResult, model_dir: Path, *, complete: bool = False
) -> float:
    """Mean importance-sampled log p(x_o) over the test split (evaluate.num_samples samples);
    `complete=True`: log p(x) of the complete test images (every pixel observed), the paper's
    Figure 1 (left) measure, comparable across models trained with and without missing data.

    The split streams through in row_id order, evaluate.batch_size rows at a time, so the driver
    holds one batch, not the split (a table's test split grows with the table); the random
    stream is the one a single call over the whole split would draw."""
    device = "cuda" if config.scaling.use_gpu and torch.cuda.is_available() else "cpu"
    model = load_model(model_dir, device)
    generator = make_generator(config.evaluate.seed, device)
    total, count = 0.0, 0
    for batch in iter_split_batches(ingest, "test", ["pixels", "mask"], config.evaluate.batch_size):
        x = tensor_matrix(batch.column("pixels"), np.float32, what="split 'test'", name="pixels")
        mask = tensor_matrix(batch.column("mask"), np.bool_, what="split 'test'", name="mask")
        if complete:
            mask = np.ones_like(mask)
        per_row = estimate_log_likelihood(
            model,
            torch.from_numpy(x).to(device),
            torch.from_numpy(mask).to(device),
            config.evaluate.num_samples,
            batch_size=config.evaluate.batch_size,
            generator=generator,
        )
        total += float(per_row.double().sum())
        count += len(per_row)
    return total / count


__all__ = [
    "HISTORY_KEYS",  # the keys of TrainResult.history (defined by pipelines.train_worker)
    "SHARD_MEMORY_FRACTION",
    "TrainResult",
    "bootstrap_model_dir",
    "early_stopping_outcome",
    "evaluate_test_log_likelihood",
    "resolve_shard_in_memory",
    "run_bootstrap_training",
    "run_training",
    "shards_fit_in_memory",
    "start_bootstrap_training",
    "training_data_config",
    "training_fingerprint",
]
