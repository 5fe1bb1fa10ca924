"""Ray Data batch imputation: SNIS single and SIR multiple imputation over the ingest shards.

For each split in ``impute_stage.splits`` (default: train) one Ray Data job

    read_parquet(shards) -> repartition(batch_size rows per block, strict)
        -> map_batches(ImputeActor, ActorPoolStrategy(size=num_actors), num_cpus, num_gpus)

runs the trained model over the rows. Every actor loads the checkpoint once and, per batch,
computes the Rao-Blackwellised SNIS estimate P(x_j = 1 | x_o) with L = ``impute.num_samples``
importance samples (single imputation) and M = ``impute.num_imputations`` SIR draws (multiple
imputation), plus the effective sample size and per-row accuracy counts. Then these Parquet
datasets are written, one directory each, with columns ``row_id`` int64, ``label`` int64 and
``pixels`` (784,) float32 (a Ray tensor column, like the ingest shards; plain pyarrow reads it
as a list column)::

    {run_dir}/imputed/{split}/missiwae_single/        observed pixels, holes = P(x_j = 1 | x_o)
                              missiwae_multiple_00/   observed pixels, holes = one SIR draw (0/1)
                              ...  missiwae_multiple_{M-1:02d}/
                              zero/                   holes = 0
                              missforest/             missForest (skipped with enabled: false)
                              complete/               the true pixels
                              _MANIFEST.json          fingerprint, row counts, metrics, seconds

Observed pixels are copied from the data in every dataset; the model never sees the true value
of a hole (they are NaN when it runs, except for the oracle ι, whose whole point is to read them).

Input contract (the ingest stage): Parquet files with columns row_id int64, label int64,
pixels (784,) uint8 = the TRUE pixels, mask (784,) bool/uint8 with True = observed, as Ray
tensor columns or (fixed-size) list columns; other columns (``split``) are ignored.

Randomness, and what is guaranteed. Each batch is imputed with two torch generators seeded from
(impute.seed, row_id of the batch's first row, stream), stream 0 for SNIS and 1 for SIR, so the
single imputation does not change with M. The batch layout is pinned: the input files are read
in sorted order with Ray Data's ``preserve_order``, and a strict streaming repartition cuts the
rows into blocks of exactly ``impute.batch_size`` rows (the last one shorter), each of which is
exactly one batch. So the numbers depend on (input rows and their order, checkpoint, impute.*,
CPU vs GPU, torch version) and NOT on the number of actors, which actor gets which batch, or Ray's
scheduling; the tests check bit-equality across actor counts. They do change with
``impute.batch_size`` (the batch is the unit of the random streams).

Atomicity and reuse. A split is written into ``imputed/.staging/{split}-<uuid>/`` (datasets
first, the manifest last) and appears at ``imputed/{split}`` by a rename, so a crash never
leaves a visible half-written dataset; a previous complete output stays in place until the new
one replaces it. A re-run whose fingerprint (impute + missforest settings, the checkpoint's
bytes, the input files' bytes, the device kind, the torch version) matches an intact manifest
reuses the output without starting Ray.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from missiwae.config import to_dict
from pipelines.config import PipelineConfig
from pipelines.storage import (
    OutputError,
    ensure_writable,
    exclusive,
    output_error,
    read_manifest,
    read_parquet_table,
    swap_into_place,
    write_json_atomic,
)

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

NUM_PIXELS = 784
MANIFEST = "_MANIFEST.json"
# Bump when the output layout, the seeding scheme or the schema changes: old manifests then
# stop matching and the split is recomputed.
FORMAT_VERSION = 1
SINGLE = "missiwae_single"
MULTIPLE_PREFIX = "missiwae_multiple_"
ZERO, MISSFOREST, COMPLETE = "zero", "missforest", "complete"
INPUT_COLUMNS = ("row_id", "label", "pixels", "mask")
OUTPUT_COLUMNS = ("row_id", "label", "pixels")
_STAGING = ".staging"
_LOCK = ".impute.lock"
_SNIS_STREAM, _SIR_STREAM = 0, 1
WAIT_FOR_ACTORS_S = 600  # the actor pool must be up within this time (model load included)
# A dead actor is restarted and its batch retried on it (at-least-once; the output is still one
# row per input row because a batch's output only counts once its task returns). Bounded, so a
# batch that kills every actor it touches fails the job instead of looping.
ACTOR_MAX_RESTARTS = 3


@dataclasses.dataclass(frozen=True)
class ImputeResult:
    """What the imputation stage produced.

    datasets: name -> directory of Parquet files (row_id, label, pixels) for the split the
        classifier trains on: "train" when it is imputed, else the first imputed split.
        Names: missiwae_single, missiwae_multiple_00.., zero, missforest (when enabled), complete.
    splits: every imputed split -> its name -> directory map.
    metrics: "{split}/accuracy/{name}" (fraction of missing pixels right at threshold 1/2;
        "missiwae_multiple" is the mean over the M copies), "{split}/ess_mean",
        "{split}/rows_per_second" (the Ray Data job, actor start-up included),
        "{split}/num_rows", "{split}/num_batches", "{split}/num_actors_used",
        "{split}/missing_fraction".
    seconds: "{split}/impute_job", "{split}/missforest", "{split}/write", "{split}/total", as
        measured when the output was computed (a reused split reports its original times).
    reused: split -> True when an intact output with the same fingerprint was reused.
    """

    datasets: dict[str, Path]
    metrics: dict[str, float]
    seconds: dict[str, float]
    splits: dict[str, dict[str, Path]] = dataclasses.field(default_factory=dict)
    reused: dict[str, bool] = dataclasses.field(default_factory=dict)


def dataset_names(num_imputations: int, missforest: bool = True) -> list[str]:
    """The datasets one split gets, in writing order."""
    names = [SINGLE, *(f"{MULTIPLE_PREFIX}{m:02d}" for m in range(num_imputations)), ZERO]
    if missforest:
        names.append(MISSFOREST)
    return [*names, COMPLETE]


# ------------------------------------------------------------------------------ entry point


def imputed_dir(config: PipelineConfig) -> Path:
    """{run_dir}/imputed: the stage's output, one folder per split (each with its MANIFEST)."""
    return config.run_path / "imputed"


def run_imputation(
    config: PipelineConfig,
    shards: Mapping[str, Sequence[Path]],
    checkpoint_dir: Path,
    *,
    _fault_injection: str | None = None,
) -> ImputeResult:
    """Impute every split of ``config.impute_stage.splits``; see the module docstring.

    Args:
        config: ``impute`` (L, M, batch_size, chunk_size, seed), ``impute_stage`` (actors and
            their resources, splits), ``missforest`` and ``run_dir``.
        shards: split -> Parquet files of the ingest layout (row_id, label, pixels, mask).
        checkpoint_dir: a missiwae checkpoint (``missiwae.training.load_model``).
        _fault_injection: TEST ONLY, a marker-file path: the first actor to start its second
            batch creates the marker and kills its process (see ``ImputeActor``).
    """
    checkpoint_dir = Path(checkpoint_dir)
    for split in config.impute_stage.splits:
        files = shards.get(split)
        if not files:
            raise ValueError(f"no input shards for split {split!r} (got splits {sorted(shards)})")
        for path in files:
            if not Path(path).is_file():
                raise FileNotFoundError(f"input shard of split {split!r} not found: {path}")
    checkpoint_hash = _hash_files([checkpoint_dir / "model.pt", checkpoint_dir / "config.json"])
    out_root = imputed_dir(config)
    ensure_writable(out_root)
    result_splits: dict[str, dict[str, Path]] = {}
    metrics: dict[str, float] = {}
    seconds: dict[str, float] = {}
    reused: dict[str, bool] = {}
    with exclusive(out_root / _LOCK):  # a second run on the same run_dir waits, then reuses
        for split in config.impute_stage.splits:
            files = sorted(Path(p) for p in shards[split])
            fingerprint = _fingerprint(config, split, files, checkpoint_hash)
            manifest = read_manifest(out_root / split / MANIFEST)
            was_reused = manifest is not None and manifest.get("fingerprint") == fingerprint
            if not (was_reused and manifest is not None and _intact(out_root / split, manifest)):
                was_reused = False
                manifest = _impute_split(
                    config, split, files, checkpoint_dir, fingerprint, out_root, _fault_injection
                )
            assert manifest is not None
            result_splits[split] = {name: out_root / split / name for name in manifest["datasets"]}
            metrics.update({k: float(v) for k, v in manifest["metrics"].items()})
            seconds.update({k: float(v) for k, v in manifest["seconds"].items()})
            reused[split] = was_reused
    primary = "train" if "train" in result_splits else config.impute_stage.splits[0]
    return ImputeResult(dict(result_splits[primary]), metrics, seconds, result_splits, reused)


def _impute_split(
    config: PipelineConfig,
    split: str,
    files: list[Path],
    checkpoint_dir: Path,
    fingerprint: str,
    out_root: Path,
    fault_marker: str | None = None,
) -> dict[str, Any]:
    """Compute one split into a staging directory and rename it into place; returns the manifest."""
    import ray

    from pipelines.runtime import ensure_ray

    ensure_ray()
    started = time.perf_counter()
    staging_root = out_root / _STAGING
    _remove_staging(staging_root, split)  # left by a crashed run: never complete by construction
    staging = staging_root / f"{split}-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    missforest_ref = None
    try:
        # missForest runs as one Ray task beside the actor pool; it needs the whole split.
        if config.missforest.enabled:
            row_id, label, pixels, mask = read_inputs(files)  # (N,), (N,), (N, 784) x2
            x_nan = np.where(mask, pixels.astype(np.float32), np.float32(np.nan))
            task = ray.remote(_missforest_task).options(num_cpus=config.impute_stage.cpus_per_actor)
            missforest_ref = task.remote(x_nan, to_dict(config.missforest), config.impute.seed)

        clock = time.perf_counter()
        imputed = _imputation_dataset(config, files, checkpoint_dir, fault_marker).materialize()
        job_seconds = time.perf_counter() - clock
        stats = _summarise(imputed, config.impute.num_imputations)

        missforest_seconds = 0.0
        missforest_x: np.ndarray | None = None
        if missforest_ref is not None:
            missforest_x, missforest_seconds = ray.get(missforest_ref)

        clock = time.perf_counter()
        names = dataset_names(config.impute.num_imputations, config.missforest.enabled)
        for name in names:
            if name == MISSFOREST:
                assert missforest_x is not None
                dataset = _from_arrays(row_id, label, missforest_x)
            else:
                dataset = imputed.map_batches(_Extract(name), batch_format="numpy", batch_size=None)
            _write_dataset(dataset, staging / name)
        write_seconds = time.perf_counter() - clock

        metrics = {f"{split}/{key}": value for key, value in stats.items()}
        metrics[f"{split}/rows_per_second"] = stats["num_rows"] / job_seconds
        if missforest_x is not None:
            metrics[f"{split}/accuracy/{MISSFOREST}"] = _accuracy(missforest_x, pixels, mask)
        seconds = {
            f"{split}/impute_job": job_seconds,
            f"{split}/missforest": missforest_seconds,
            f"{split}/write": write_seconds,
            f"{split}/total": time.perf_counter() - started,
        }
        manifest = {
            "format_version": FORMAT_VERSION,
            "fingerprint": fingerprint,
            "split": split,
            "datasets": names,
            "files": {name: sorted(p.name for p in (staging / name).glob("*.parquet")) for name in names},
            "columns": list(OUTPUT_COLUMNS),
            "num_rows": int(stats["num_rows"]),
            "metrics": metrics,
            "seconds": seconds,
            "config": {
                "impute": to_dict(config.impute),
                "impute_stage": to_dict(config.impute_stage),
                "missforest": to_dict(config.missforest),
            },
            "checkpoint_dir": str(checkpoint_dir),
            "inputs": [str(p) for p in files],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json_atomic(staging / MANIFEST, manifest)  # last: marks the split complete
        trash = staging_root / f"old-{split}-{uuid.uuid4().hex}"
        swap_into_place(staging, out_root / split, trash)
    except BaseException as error:
        if missforest_ref is not None:
            ray.cancel(missforest_ref)  # no-op once it has finished
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError) and not isinstance(error, OutputError):
            raise output_error(error, f"the imputed split {split!r}", out_root) from error
        raise
    return manifest


# ------------------------------------------------------------------------------- Ray Data job


def _imputation_dataset(
    config: PipelineConfig, files: list[Path], checkpoint_dir: Path, fault_marker: str | None = None
) -> ray.data.Dataset:
    """The lazy Ray Data job: ordered read, fixed-size blocks, the actor pool."""
    import ray.data

    stage, impute = config.impute_stage, config.impute
    with _job_context():  # a Dataset keeps a copy of the context it was built under
        dataset = ray.data.read_parquet([str(p) for p in files]).select_columns(list(INPUT_COLUMNS))
        # Blocks of exactly batch_size rows (the last one shorter): each block is one batch,
        # so the batch layout, hence every random stream, is independent of the actor count.
        # With at least num_actors blocks every actor gets work.
        dataset = dataset.repartition(target_num_rows_per_block=impute.batch_size, strict=True)
        return dataset.map_batches(
            ImputeActor,
            fn_constructor_kwargs={
                "checkpoint_dir": str(checkpoint_dir),
                "num_samples": impute.num_samples,
                "num_imputations": impute.num_imputations,
                "chunk_size": impute.chunk_size,
                "seed": impute.seed,
                "device": _device(config),
                "fault_marker": fault_marker,
            },
            batch_size=impute.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=stage.num_actors),
            num_cpus=stage.cpus_per_actor,
            num_gpus=stage.gpus_per_actor if stage.gpus_per_actor > 0 else None,
            max_restarts=ACTOR_MAX_RESTARTS,
            max_task_retries=ACTOR_MAX_RESTARTS,
        )


class ImputeActor:
    """Callable class for ``map_batches``: the model is loaded once per actor.

    Input batch: row_id (B,), label (B,), pixels (B, 784) true 0/1 values, mask (B, 784) True =
    observed. Output batch: row_id, label, pixels (uint8), mask (bool) passed through;
    missiwae_single (B, 784) float32; missiwae_multiple (B, M, 784) uint8; ess (B,) float32;
    num_missing, correct_single, correct_zero (B,) int64; correct_multiple (B, M) int64;
    actor (B,) str and batch_start (B,) int64 (debugging: who imputed what, in which batch).

    ``fault_marker`` is for tests only: the first actor (of all) to begin its second batch
    creates that file and kills its own process (os._exit), so Ray restarts it and retries the
    batch; the marker makes sure it happens once.
    """

    def __init__(
        self,
        checkpoint_dir: str,
        num_samples: int,
        num_imputations: int,
        chunk_size: int | None,
        seed: int,
        device: str = "cpu",
        fault_marker: str | None = None,
    ) -> None:
        import ray

        from missiwae.allocator import retain_freed_memory
        from missiwae.training import load_model

        retain_freed_memory()
        self.device = device
        self.model = load_model(checkpoint_dir, device=device)
        self.num_samples, self.num_imputations = num_samples, num_imputations
        self.chunk_size, self.seed = chunk_size, seed
        self.actor_id = ray.get_runtime_context().get_actor_id() or f"pid-{os.getpid()}"
        self.fault_marker, self.calls = fault_marker, 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from missiwae.imputation import impute_multiple, impute_single
        from missiwae.model import make_generator

        self.calls += 1
        if self.fault_marker and self.calls == 2:
            _die_once(self.fault_marker)
        row_id = np.asarray(batch["row_id"], dtype=np.int64)
        pixels = as_matrix(batch["pixels"], np.uint8)
        mask = as_matrix(batch["mask"], np.bool_)
        num_rows = len(row_id)
        start = int(row_id[0])
        x_true = torch.from_numpy(pixels.astype(np.float32)).to(self.device)
        observed = torch.tensor(mask, device=self.device)  # a copy: Ray's batch is read-only
        # The model sees NaN in the holes: the truth cannot leak (the oracle ι must read it).
        x = x_true if self.model.uses_oracle else x_true.masked_fill(~observed, float("nan"))
        single = impute_single(
            self.model,
            x,
            observed,
            self.num_samples,
            chunk_size=self.chunk_size,
            generator=make_generator(batch_seed(self.seed, start, _SNIS_STREAM), self.device),
        )
        multiple = impute_multiple(
            self.model,
            x,
            observed,
            self.num_imputations,
            self.num_samples,
            chunk_size=self.chunk_size,
            generator=make_generator(batch_seed(self.seed, start, _SIR_STREAM), self.device),
        )
        single_x = single.imputed.float().cpu().numpy()
        # (M, B, D) -> (B, M, D); SIR draws of binary pixels are exactly 0 or 1.
        multiple_x = multiple.imputations.permute(1, 0, 2).round().to(torch.uint8).cpu().numpy()
        missing = ~mask
        truth = pixels > 0
        return {
            "row_id": row_id,
            "label": np.asarray(batch["label"], dtype=np.int64),
            "pixels": pixels,
            "mask": mask,
            SINGLE: single_x.astype(np.float32),
            "missiwae_multiple": multiple_x,
            "ess": single.effective_sample_size.float().cpu().numpy(),
            "num_missing": missing.sum(axis=1).astype(np.int64),
            "correct_single": (missing & ((single_x > 0.5) == truth)).sum(axis=1).astype(np.int64),
            "correct_multiple": (missing[:, None] & ((multiple_x > 0) == truth[:, None])).sum(axis=2),
            "correct_zero": (missing & ~truth).sum(axis=1).astype(np.int64),
            "actor": np.array([self.actor_id] * num_rows),
            "batch_start": np.full(num_rows, start, dtype=np.int64),
        }


def _die_once(marker: str) -> None:
    """Kill this actor's process unless `marker` exists; create it atomically first (O_EXCL),
    so of several actors racing here exactly one dies."""
    try:
        handle = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(handle, f"imputation actor killed itself (pid {os.getpid()})\n".encode())
    os.close(handle)
    os._exit(1)


def batch_seed(seed: int, first_row_id: int, stream: int) -> int:
    """A 63-bit torch seed from (seed, first row id of the batch, stream) via SeedSequence."""
    entropy = [seed % 2**64, first_row_id % 2**64, stream]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class _Extract:
    """map_batches function: the imputation job's output -> one dataset (row_id, label, pixels)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        name = self.name
        pixels = as_matrix(batch["pixels"], np.uint8).astype(np.float32)
        if name == SINGLE:
            values = as_matrix(batch[SINGLE], np.float32)
        elif name.startswith(MULTIPLE_PREFIX):
            copies = np.asarray(batch["missiwae_multiple"])
            values = copies[:, int(name.removeprefix(MULTIPLE_PREFIX))].astype(np.float32)
        elif name == ZERO:
            values = np.where(as_matrix(batch["mask"], np.bool_), pixels, np.float32(0))
        elif name == COMPLETE:
            values = pixels
        else:
            raise ValueError(f"unknown dataset name {name!r}")
        return {
            "row_id": np.asarray(batch["row_id"], dtype=np.int64),
            "label": np.asarray(batch["label"], dtype=np.int64),
            "pixels": np.ascontiguousarray(values, dtype=np.float32),
        }


def _summarise(imputed: ray.data.Dataset, num_imputations: int) -> dict[str, float]:
    """Sum the per-row counts of the materialised job output (small columns only)."""
    columns = [
        "num_missing",
        "correct_single",
        "correct_multiple",
        "correct_zero",
        "ess",
        "actor",
        "batch_start",
    ]
    totals = {"num_missing": 0, "correct_single": 0, "correct_zero": 0}
    correct_multiple = np.zeros(num_imputations, dtype=np.int64)
    ess_sum, num_rows = 0.0, 0
    actors: set[str] = set()
    batches: set[int] = set()
    for batch in imputed.select_columns(columns).iter_batches(batch_format="numpy", batch_size=None):
        for key in totals:
            totals[key] += int(np.sum(batch[key]))
        correct_multiple += np.asarray(batch["correct_multiple"]).sum(axis=0)
        ess_sum += float(np.sum(batch["ess"], dtype=np.float64))
        num_rows += len(batch["ess"])
        actors.update(str(a) for a in batch["actor"])
        batches.update(int(b) for b in batch["batch_start"])
    stats: dict[str, float] = {
        "num_rows": float(num_rows),
        "num_batches": float(len(batches)),
        "num_actors_used": float(len(actors)),
        "missing_fraction": totals["num_missing"] / max(num_rows * NUM_PIXELS, 1),
        "ess_mean": ess_sum / max(num_rows, 1),
    }
    missing = totals["num_missing"]
    if missing:  # accuracy on missing pixels is undefined without any
        stats[f"accuracy/{SINGLE}"] = totals["correct_single"] / missing
        stats["accuracy/missiwae_multiple"] = float(correct_multiple.mean()) / missing
        for m, correct in enumerate(correct_multiple):
            stats[f"accuracy/{MULTIPLE_PREFIX}{m:02d}"] = int(correct) / missing
        stats[f"accuracy/{ZERO}"] = totals["correct_zero"] / missing
    return stats


# ---------------------------------------------------------------------------------- missForest


def _missforest_task(x_nan: np.ndarray, settings: dict[str, Any], seed: int) -> tuple[np.ndarray, float]:
    """One Ray task: missForest on the whole split (N, 784) with NaN holes; (imputed, seconds).

    With settings["n_jobs"] != 1 the forests of each sweep fan out from this task to Ray
    actors (Ray's joblib backend), so a cluster fits up to hundreds of columns at once.
    """
    import contextlib

    import joblib

    from missiwae.missforest import MissForest

    n_jobs = int(settings.get("n_jobs", 1))
    backend: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if n_jobs != 1:
        from ray.util.joblib import register_ray

        register_ray()
        # The pool's actors take no CPU of their own (Ray's default), so SPREAD is what puts
        # them on every node rather than all beside this task.
        backend = joblib.parallel_config(backend="ray", ray_remote_args={"scheduling_strategy": "SPREAD"})
    started = time.perf_counter()
    imputer = MissForest(
        max_iter=settings["max_iter"],
        n_estimators=settings["n_estimators"],
        max_samples=settings["max_samples"],
        n_jobs=n_jobs,
        random_state=seed % 2**32,
    )
    with backend:
        imputed = np.asarray(imputer.fit_transform(x_nan), dtype=np.float32)
    return imputed, time.perf_counter() - started


def _accuracy(imputed: np.ndarray, pixels: np.ndarray, mask: np.ndarray) -> float:
    import torch

    from missiwae.evaluation import imputation_accuracy

    return imputation_accuracy(
        torch.from_numpy(np.array(imputed, np.float32)),
        torch.from_numpy(pixels.astype(np.float32)),
        torch.from_numpy(np.array(mask, np.bool_)),
    )


# ------------------------------------------------------------------------------ reading, writing


def read_inputs(files: Sequence[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The input shards in the driver (plain pyarrow), in file then row order.

    Returns row_id int64 (N,), label int64 (N,), pixels uint8 (N, 784), mask bool (N, 784).
    """
    import pyarrow as pa

    table = pa.concat_tables([read_parquet_table(p, columns=list(INPUT_COLUMNS)) for p in files])
    return (
        table.column("row_id").to_numpy().astype(np.int64),
        table.column("label").to_numpy().astype(np.int64),
        column_matrix(table.column("pixels"), np.uint8),
        column_matrix(table.column("mask"), np.bool_),
    )


def read_dataset(directory: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One imputed dataset, sorted by row_id: row_id int64 (N,), label int64 (N,), pixels float32 (N, 784)."""
    import pyarrow as pa

    files = sorted(Path(directory).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no Parquet files in {directory}")
    table = pa.concat_tables([read_parquet_table(p, columns=list(OUTPUT_COLUMNS)) for p in files])
    row_id = table.column("row_id").to_numpy().astype(np.int64)
    order = np.argsort(row_id, kind="stable")
    label = table.column("label").to_numpy().astype(np.int64)
    pixels = column_matrix(table.column("pixels"), np.float32)
    return row_id[order], label[order], pixels[order]


def column_matrix(column: pa.ChunkedArray, dtype: Any) -> np.ndarray:
    """(N, 784) from a Ray tensor-extension column or a (fixed-size / large) list column."""
    import pyarrow as pa

    parts = []
    for chunk in column.chunks:
        storage = chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk
        values = storage.flatten().to_numpy(zero_copy_only=False)
        parts.append(values.reshape(len(chunk), -1) if len(chunk) else values.reshape(0, NUM_PIXELS))
    if not parts:
        return np.zeros((0, NUM_PIXELS), dtype=dtype)
    return np.concatenate(parts).astype(dtype, copy=False)


def as_matrix(values: np.ndarray, dtype: Any) -> np.ndarray:
    """A (B, 784) array from a numpy batch column: 2-D already (tensor columns) or an object
    array of per-row arrays (list columns)."""
    array = np.asarray(values)
    if array.dtype == object:
        array = np.stack(list(array)) if len(array) else np.zeros((0, NUM_PIXELS))
    if array.ndim != 2:
        raise ValueError(f"expected a (rows, pixels) column, got shape {array.shape}")
    return array.astype(dtype, copy=False)


def _from_arrays(row_id: np.ndarray, label: np.ndarray, pixels: np.ndarray) -> ray.data.Dataset:
    import pyarrow as pa
    import ray.data
    from ray.data.extensions import ArrowTensorArray

    table = pa.table(
        {
            "row_id": pa.array(row_id.astype(np.int64)),
            "label": pa.array(label.astype(np.int64)),
            "pixels": ArrowTensorArray.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)),
        }
    )
    return ray.data.from_arrow(table)


def _write_dataset(dataset: ray.data.Dataset, directory: Path) -> None:
    """Write one dataset as Parquet into `directory` (inside the staging area)."""
    dataset.write_parquet(str(directory))


# ------------------------------------------------------------------------ fingerprint, manifest


def _device(config: PipelineConfig) -> str:
    return "cuda" if config.impute_stage.gpus_per_actor > 0 else "cpu"


def _fingerprint(config: PipelineConfig, split: str, files: list[Path], checkpoint_hash: str) -> str:
    """sha256 of what decides the output's content (not the actor count: see module docstring)."""
    import torch

    payload = {
        "format_version": FORMAT_VERSION,
        "split": split,
        "impute": to_dict(config.impute),
        # n_jobs changes how the forests are scheduled, not what they impute
        "missforest": {k: v for k, v in to_dict(config.missforest).items() if k != "n_jobs"},
        "device": _device(config),  # CPU and CUDA random streams differ
        "torch": torch.__version__,
        "checkpoint": checkpoint_hash,
        "inputs": _hash_files(files),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _hash_files(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _intact(directory: Path, manifest: dict[str, Any]) -> bool:
    """Every dataset directory holds exactly the manifest's files."""
    try:
        for name in manifest["datasets"]:
            on_disk = sorted(p.name for p in (directory / name).glob("*.parquet"))
            if not on_disk or on_disk != sorted(manifest["files"][name]):
                return False
        return isinstance(manifest["metrics"], dict) and isinstance(manifest["seconds"], dict)
    except (KeyError, TypeError, OSError):
        return False


def _remove_staging(staging_root: Path, split: str) -> None:
    for leftover in [*staging_root.glob(f"{split}-*"), *staging_root.glob(f"old-{split}-*")]:
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def _job_context() -> Iterator[None]:
    """Settings for the datasets built inside (each Dataset keeps a copy of the current
    DataContext); the driver's context is restored after.

    preserve_order: blocks reach the repartition and the writers in input order, which pins
    the batch layout. wait_for_min_actors_s: the pool waits for all its actors before the first
    batch is dispatched (otherwise the first actor up may take every batch of a small job), and
    a pool the cluster cannot place fails with a timeout instead of running short-handed.
    """
    from ray.data import DataContext

    context = DataContext.get_current()
    previous = (context.execution_options.preserve_order, context.wait_for_min_actors_s)
    context.execution_options.preserve_order = True
    context.wait_for_min_actors_s = WAIT_FOR_ACTORS_S
    try:
        yield
    finally:
        context.execution_options.preserve_order, context.wait_for_min_actors_s = previous


__all__ = [
    "COMPLETE",
    "MANIFEST",
    "MISSFOREST",
    "MULTIPLE_PREFIX",
    "SINGLE",
    "ZERO",
    "ImputeActor",
    "ImputeResult",
    "as_matrix",
    "batch_seed",
    "column_matrix",
    "dataset_names",
    "read_dataset",
    "read_inputs",
    "run_imputation",
]
