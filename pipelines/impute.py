"""Ray Data batch imputation: SNIS single and SIR multiple imputation over the ingest shards.

For each split in ``impute_stage.splits`` (default: train) one Ray Data job

    read_parquet(shards) -> repartition(whole batches per block, strict)
        -> map_batches(ImputeActor, ActorPoolStrategy(size=num_actors), num_cpus, num_gpus)

runs the trained model over the rows (the job and its actor: pipelines/impute_job.py, shared
with the tabular stage). Every actor loads the checkpoint once and, per batch, computes the
Rao-Blackwellised SNIS estimate P(x_j = 1 | x_o) with L = ``impute.num_samples``
importance samples (single imputation) and M = ``impute.num_imputations`` SIR draws (multiple
imputation), plus the effective sample size and per-row accuracy counts. Then these Parquet
datasets are written, one directory each, in the imputed layout of pipelines/shards.py:
``row_id``, ``label``, ``source_row`` (the row of the binarized MNIST file) int64, ``pixels``
(784,) float32 and ``mask`` (784,) bool, True = observed (Ray tensor columns, like the ingest
shards; plain pyarrow reads them as list columns)::

    {run_dir}/imputed/{split}/missiwae_single/        observed pixels, holes = P(x_j = 1 | x_o)
                              missiwae_multiple_00/   observed pixels, holes = one SIR draw (0/1)
                              ...  missiwae_multiple_{M-1:02d}/
                              zero/                   holes = 0
                              missforest/             missForest (skipped with enabled: false)
                              complete/               the true pixels
                              _MANIFEST.json          fingerprint, row counts, metrics, seconds,
                                                      lineage (below)

Observed pixels are copied from the data in every dataset; the model never sees the true value
of a hole (they are NaN when it runs, except for the oracle ι, whose whole point is to read them).

Lineage: every row carries its mask and ``source_row``
(``pipelines.shards.read_imputed_rows`` reads a dataset back in source order), and the manifest
names what produced it: ``checkpoint`` (``path`` relative to run_dir when inside it, ``sha256``
of model.pt + config.json, ``config`` = the checkpoint's model/train settings), ``config`` (the
whole resolved pipeline config) and ``inputs`` (the ingest shards and their ``inputs_sha256``).

Input contract, randomness and what is guaranteed (bit-equal numbers across actor counts):
see pipelines/impute_job.py.

Progress: ``run_imputation(..., on_progress=f)`` calls ``f(done_rows, total_rows)`` while the
jobs run (every ~0.5 s when the count grew; the rows of all splits together, a reused split
counted at once), through impute_job's ``row_progress`` counter; it changes no number.

Atomicity and reuse (the mechanism: pipelines/publish.py). A split is written into
``imputed/.staging/{split}-<uuid>/`` (datasets first, the manifest last) and appears at
``imputed/{split}`` by a rename, so a crash never leaves a visible half-written dataset; a
previous complete output stays in place until the new one replaces it. A re-run whose
fingerprint (impute + missforest settings, the checkpoint's bytes, the input files' bytes, the
device kind, the torch version) matches an intact manifest reuses the output without starting Ray.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from missiwae.config import to_dict
from missiwae.mnist_files import NUM_PIXELS
from pipelines.config import PipelineConfig
from pipelines.impute_job import (
    INPUT_COLUMNS,
    SINGLE,
    ProgressCallback,
    imputation_dataset,
    row_progress,
    run_surviving_node_loss,
)
from pipelines.missforest_job import missforest_task, missing_accuracy
from pipelines.publish import (
    CHECKPOINT_FILES,
    MANIFEST,
    Publisher,
    checkpoint_sha256,
    checkpoints_key,
    fingerprint,
    hash_files,
)
from pipelines.shards import (
    IMPUTED_COLUMNS,
    batch_matrix,
    check_columns,
    dataset_files,
    imputed_columns,
    imputed_dir,
    imputed_table,
    parquet_size,
    read_shards,
    tensor_matrix,
)

if TYPE_CHECKING:
    import ray.data

# Bump when the output layout, the seeding scheme or the schema changes: old manifests then
# stop matching and the split is recomputed. 2: the lineage columns source_row and mask.
FORMAT_VERSION = 2
MULTIPLE_PREFIX = "missiwae_multiple_"
ENSEMBLE_PREFIX = "missiwae_ensemble_"  # the bootstrap ensemble's M proper imputations (B > 1)
ZERO, MISSFOREST, COMPLETE = "zero", "missforest", "complete"
OUTPUT_COLUMNS = IMPUTED_COLUMNS
_LOCK = ".impute.lock"


@dataclasses.dataclass(frozen=True)
class ImputeResult:
    """What the imputation stage produced.

    datasets: name -> directory of Parquet files (the imputed layout) for the split the
        classifier trains on: "train" when it is imputed, else the first imputed split.
        Names: missiwae_single, missiwae_multiple_00.., missiwae_ensemble_00.. (when
        impute.bootstrap_models > 1), zero, missforest (when enabled), complete.
    splits: every imputed split -> its name -> directory map.
    metrics: "{split}/accuracy/{name}" (fraction of missing pixels right at threshold 1/2;
        "missiwae_multiple" and "missiwae_ensemble" are the means over their M copies),
        "{split}/ess_mean",
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


def dataset_names(num_imputations: int, missforest: bool = True, ensemble: bool = False) -> list[str]:
    """The datasets one split gets, in writing order."""
    names = [SINGLE, *(f"{MULTIPLE_PREFIX}{m:02d}" for m in range(num_imputations))]
    if ensemble:
        names += [f"{ENSEMBLE_PREFIX}{m:02d}" for m in range(num_imputations)]
    names.append(ZERO)
    if missforest:
        names.append(MISSFOREST)
    return [*names, COMPLETE]


# ------------------------------------------------------------------------------ entry point


def run_imputation(
    config: PipelineConfig,
    shards: Mapping[str, Sequence[Path]],
    checkpoint_dir: Path,
    *,
    ensemble_dirs: Sequence[Path] = (),
    on_progress: ProgressCallback | None = None,
    _fault_injection: str | None = None,
) -> ImputeResult:
    """Impute every split of ``config.impute_stage.splits``; see the module docstring.

    Args:
        config: ``impute`` (L, M, batch_size, chunk_size, seed), ``impute_stage`` (actors and
            their resources, splits), ``missforest`` and ``run_dir``.
        shards: split -> Parquet files of the ingest layout (row_id, label, source_row, pixels,
            mask).
        checkpoint_dir: a missiwae checkpoint (``missiwae.training.load_model``).
        ensemble_dirs: the B bootstrap members' checkpoints when impute.bootstrap_models > 1
            (``pipelines.train.run_bootstrap_training``); their SIR draws become the
            ``missiwae_ensemble_NN`` datasets.
        on_progress: called as ``on_progress(done_rows, total_rows)`` with the rows imputed so
            far over all splits (non-decreasing, ending at total_rows); from a driver thread.
        _fault_injection: TEST ONLY, a marker-file path: the first actor to start its second
            batch creates the marker and kills its process (see ``ImputeActor``).
    """
    checkpoint_dir = Path(checkpoint_dir)
    ensemble_dirs = [Path(path) for path in ensemble_dirs]
    if len(ensemble_dirs) != (config.impute.bootstrap_models if config.impute.bootstrap_models > 1 else 0):
        raise ValueError(
            f"impute.bootstrap_models={config.impute.bootstrap_models} needs that many member "
            f"checkpoints (none for 1), got {len(ensemble_dirs)}"
        )
    for split in config.impute_stage.splits:
        files = shards.get(split)
        if not files:
            raise ValueError(f"no input shards for split {split!r} (got splits {sorted(shards)})")
        for path in files:
            if not Path(path).is_file():
                raise FileNotFoundError(f"input shard of split {split!r} not found: {path}")
        check_columns(files, INPUT_COLUMNS, "shards of an older ingest layout; re-run the ingest stage")
    checkpoint = _checkpoint_entry(config, checkpoint_dir)
    members = [_checkpoint_entry(config, path) for path in ensemble_dirs]
    out = publisher(config)
    result_splits: dict[str, dict[str, Path]] = {}
    metrics: dict[str, float] = {}
    seconds: dict[str, float] = {}
    reused: dict[str, bool] = {}
    split_rows = {split: parquet_size(shards[split])[0] for split in config.impute_stage.splits}
    total_rows, rows_before = sum(split_rows.values()), 0  # rows_before: splits already done
    with out.locked():  # a second run on the same run_dir waits, then reuses
        for split in config.impute_stage.splits:
            files = sorted(Path(p) for p in shards[split])
            inputs_hash = hash_files(files)
            digest = _fingerprint(
                config, split, inputs_hash, [checkpoint["sha256"], *(m["sha256"] for m in members)]
            )
            split_dir = out.root / split
            manifest = out.reusable(split_dir / MANIFEST, digest, functools.partial(_intact, split_dir))
            reused[split] = manifest is not None
            if manifest is None:
                lineage = {"checkpoint": checkpoint, "ensemble": members, "inputs_sha256": inputs_hash}
                progress = _offset_progress(on_progress, rows_before, total_rows)
                manifest = _impute_split(
                    config,
                    split,
                    files,
                    (checkpoint_dir, ensemble_dirs),
                    digest,
                    out,
                    lineage,
                    _fault_injection,
                    progress,
                )
            elif on_progress is not None:
                on_progress(rows_before + split_rows[split], total_rows)  # reused: all at once
            rows_before += split_rows[split]
            result_splits[split] = {name: split_dir / name for name in manifest["datasets"]}
            metrics.update({k: float(v) for k, v in manifest["metrics"].items()})
            seconds.update({k: float(v) for k, v in manifest["seconds"].items()})
    primary = "train" if "train" in result_splits else config.impute_stage.splits[0]
    return ImputeResult(dict(result_splits[primary]), metrics, seconds, result_splits, reused)


def _offset_progress(
    on_progress: ProgressCallback | None, rows_before: int, total_rows: int
) -> ProgressCallback | None:
    """A split's progress callback reporting to `on_progress` over all splits: the split's
    done rows plus `rows_before`, against `total_rows`."""
    if on_progress is None:
        return None
    return lambda done, _split_total: on_progress(rows_before + done, total_rows)


def publisher(config: PipelineConfig) -> Publisher:
    """Where this stage publishes: {run_dir}/imputed/{split}, staged under imputed/.staging."""
    return Publisher(imputed_dir(config), _LOCK, "the imputed split {!r}")


def _impute_split(
    config: PipelineConfig,
    split: str,
    files: list[Path],
    checkpoints: tuple[Path, list[Path]],
    digest: str,
    out: Publisher,
    lineage: dict[str, Any],
    fault_marker: str | None = None,
    on_progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Compute one split into a staging directory and publish it; returns the manifest
    (`checkpoints`: the model's and the bootstrap members'; `lineage`: their checkpoint,
    ensemble and inputs_sha256 entries, see the module docstring; `on_progress(done_rows,
    split_rows)` while the job runs)."""
    import ray.data

    from pipelines.runtime import ensure_ray

    ensure_ray()
    checkpoint_dir, ensemble_dirs = checkpoints
    started = time.perf_counter()
    out.sweep([split])  # left by a crashed run: never complete by construction
    missforest_ref = None
    with out.stage(split) as staged:
        try:
            # missForest runs as one Ray task beside the actor pool; it needs the whole split.
            if config.missforest.enabled:
                row_id, label, source_row, pixels, mask = read_inputs(files)  # (N,) x3, (N, D) x2
                x_nan = np.where(mask, pixels.astype(np.float32), np.float32(np.nan))
                task = ray.remote(missforest_task).options(num_cpus=config.impute_stage.cpus_per_actor)
                missforest_ref = task.remote(x_nan, to_dict(config.missforest), config.impute.seed)

            clock = time.perf_counter()
            with row_progress(on_progress, parquet_size(files)[0]) as counter:
                imputed = run_surviving_node_loss(
                    lambda: imputation_dataset(
                        config,
                        files,
                        checkpoint_dir,
                        ensemble_dirs=ensemble_dirs,
                        fault_marker=fault_marker,
                        progress=counter,
                    ).materialize(),
                    f"the {split} split's imputation job",
                )
            job_seconds = time.perf_counter() - clock
            stats = _summarise(imputed, config.impute.num_imputations, bool(ensemble_dirs))

            missforest_seconds = 0.0
            missforest_x: np.ndarray | None = None
            if missforest_ref is not None:
                missforest_x, missforest_seconds = ray.get(missforest_ref)

            clock = time.perf_counter()
            names = dataset_names(
                config.impute.num_imputations, config.missforest.enabled, bool(ensemble_dirs)
            )
            for name in names:
                if name == MISSFOREST:
                    assert missforest_x is not None
                    table = imputed_table(row_id, label, source_row, missforest_x, mask)
                    dataset = ray.data.from_arrow(table)
                else:
                    dataset = imputed.map_batches(_Extract(name), batch_format="numpy", batch_size=None)
                _write_dataset(dataset, staged.path / name)
            write_seconds = time.perf_counter() - clock
        except BaseException:
            if missforest_ref is not None:
                ray.cancel(missforest_ref)  # no-op once it has finished
            raise

        metrics = {f"{split}/{key}": value for key, value in stats.items()}
        metrics[f"{split}/rows_per_second"] = stats["num_rows"] / job_seconds
        if missforest_x is not None:
            metrics[f"{split}/accuracy/{MISSFOREST}"] = missing_accuracy(missforest_x, pixels, mask)
        manifest = {
            "format_version": FORMAT_VERSION,
            "fingerprint": digest,
            "split": split,
            "datasets": names,
            "files": {name: sorted(p.name for p in (staged.path / name).glob("*.parquet")) for name in names},
            "columns": list(OUTPUT_COLUMNS),
            "num_rows": int(stats["num_rows"]),
            "metrics": metrics,
            "seconds": {
                f"{split}/impute_job": job_seconds,
                f"{split}/missforest": missforest_seconds,
                f"{split}/write": write_seconds,
                f"{split}/total": time.perf_counter() - started,
            },
            "config": config.to_dict(),  # the resolved settings; impute, missforest... inside
            "checkpoint": lineage["checkpoint"],
            "checkpoint_dir": str(checkpoint_dir),
            "ensemble": lineage["ensemble"],  # the bootstrap members' checkpoints, [] for B = 1
            "inputs": [str(p) for p in files],
            "inputs_sha256": lineage["inputs_sha256"],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        staged.manifest = manifest  # written last, then the split is swapped into place
    return manifest


class _Extract:
    """map_batches function: the imputation job's output -> one dataset (the imputed layout)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        name = self.name
        pixels = batch_matrix(batch["pixels"], np.uint8).astype(np.float32)
        if name == SINGLE:
            values = batch_matrix(batch[SINGLE], np.float32)
        elif name.startswith((MULTIPLE_PREFIX, ENSEMBLE_PREFIX)):
            prefix = MULTIPLE_PREFIX if name.startswith(MULTIPLE_PREFIX) else ENSEMBLE_PREFIX
            copies = np.asarray(batch[prefix.rstrip("_")])
            values = copies[:, int(name.removeprefix(prefix))].astype(np.float32)
        elif name == ZERO:
            values = np.where(batch_matrix(batch["mask"], np.bool_), pixels, np.float32(0))
        elif name == COMPLETE:
            values = pixels
        else:
            raise ValueError(f"unknown dataset name {name!r}")
        mask = batch_matrix(batch["mask"], np.bool_)
        return imputed_columns(batch["row_id"], batch["label"], batch["source_row"], values, mask)


def _summarise(imputed: ray.data.Dataset, num_imputations: int, ensemble: bool = False) -> dict[str, float]:
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
    draws = [MULTIPLE_PREFIX, *([ENSEMBLE_PREFIX] if ensemble else [])]
    columns += [_correct_column(prefix) for prefix in draws[1:]]
    totals = {"num_missing": 0, "correct_single": 0, "correct_zero": 0}
    correct = {prefix: np.zeros(num_imputations, dtype=np.int64) for prefix in draws}
    ess_sum, num_rows = 0.0, 0
    actors: set[str] = set()
    batches: set[int] = set()
    for batch in imputed.select_columns(columns).iter_batches(batch_format="numpy", batch_size=None):
        for key in totals:
            totals[key] += int(np.sum(batch[key]))
        for prefix in draws:
            correct[prefix] += np.asarray(batch[_correct_column(prefix)]).sum(axis=0)
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
        for prefix in draws:
            stats[f"accuracy/{prefix.rstrip('_')}"] = float(correct[prefix].mean()) / missing
            for m, count in enumerate(correct[prefix]):
                stats[f"accuracy/{prefix}{m:02d}"] = int(count) / missing
        stats[f"accuracy/{ZERO}"] = totals["correct_zero"] / missing
    return stats


def _correct_column(prefix: str) -> str:
    """The job's per-row count column of a family of draws: correct_multiple, correct_ensemble."""
    return f"correct_{prefix.removeprefix('missiwae_').rstrip('_')}"


# ------------------------------------------------------------------------------ reading, writing


def read_inputs(
    files: Sequence[Path],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The input shards in the driver (plain pyarrow), in file then row order.

    Returns row_id int64 (N,), label int64 (N,), source_row int64 (N,), pixels uint8 (N, D),
    mask bool (N, D).
    """
    table = read_shards(files, INPUT_COLUMNS, order_by=None)
    what = "the shards " + ", ".join(Path(p).name for p in files)
    return (
        table.column("row_id").to_numpy().astype(np.int64),
        table.column("label").to_numpy().astype(np.int64),
        table.column("source_row").to_numpy().astype(np.int64),
        tensor_matrix(table.column("pixels"), np.uint8, what=what, name="pixels"),
        tensor_matrix(table.column("mask"), np.bool_, what=what, name="mask"),
    )


def read_dataset(directory: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One imputed dataset, sorted by row_id: row_id int64 (N,), label int64 (N,), pixels float32 (N, D).

    (With its lineage, mask and source rows, in source order: ``pipelines.shards.read_imputed_rows``.)
    """
    table = read_shards(dataset_files(directory), ["row_id", "label", "pixels"])
    return (
        table.column("row_id").to_numpy().astype(np.int64),
        table.column("label").to_numpy().astype(np.int64),
        tensor_matrix(table.column("pixels"), np.float32, what=f"dataset {directory}"),
    )


def _write_dataset(dataset: ray.data.Dataset, directory: Path) -> None:
    """Write one dataset as Parquet into `directory` (inside the staging area)."""
    dataset.write_parquet(str(directory))


# ------------------------------------------------------------------------ fingerprint, manifest


def _checkpoint_entry(config: PipelineConfig, checkpoint_dir: Path) -> dict[str, Any]:
    """The manifest's name for the checkpoint: its path (relative to run_dir when inside it),
    the sha256 the fingerprint hashes, and its model/train settings (config.json)."""
    import json

    path = checkpoint_dir.resolve()
    shown = path.relative_to(config.run_path) if path.is_relative_to(config.run_path) else path
    return {
        "path": str(shown),
        "sha256": checkpoint_sha256(checkpoint_dir),
        "files": list(CHECKPOINT_FILES),
        "config": json.loads((checkpoint_dir / "config.json").read_text()),
    }


def _device(config: PipelineConfig) -> str:
    return "cuda" if config.impute_stage.gpus_per_actor > 0 else "cpu"


def _fingerprint(config: PipelineConfig, split: str, inputs_hash: str, checkpoint_hashes: list[str]) -> str:
    """sha256 of what decides the output's content (not the actor count: see module docstring);
    `checkpoint_hashes`: the model's, then the bootstrap members'."""
    import torch

    return fingerprint(
        {
            "format_version": FORMAT_VERSION,
            "split": split,
            "impute": to_dict(config.impute),
            # n_jobs changes how the forests are scheduled, not what they impute
            "missforest": {k: v for k, v in to_dict(config.missforest).items() if k != "n_jobs"},
            "device": _device(config),  # CPU and CUDA random streams differ
            "torch": torch.__version__,
            "checkpoint": checkpoints_key(checkpoint_hashes),
            "inputs": inputs_hash,
        }
    )


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


__all__ = [
    "COMPLETE",
    "ENSEMBLE_PREFIX",
    "MANIFEST",
    "MISSFOREST",
    "MULTIPLE_PREFIX",
    "SINGLE",
    "ZERO",
    "ImputeResult",
    "dataset_names",
    "publisher",
    "read_dataset",
    "read_inputs",
    "run_imputation",
]
