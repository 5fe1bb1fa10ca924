"""The paper's Table 1 as a Ray fan-out: one classifier training per (imputed dataset, seed).

Input: imputed versions of the training set as Parquet (columns ``row_id`` int64, ``label``
int64, ``pixels`` 784 float32 -- a Ray tensor column or a plain list column; other columns,
such as the lineage columns ``source_row`` and ``mask``, are ignored) and the complete test set.
Every (dataset, seed) pair is one Ray task calling
:func:`missiwae.classifier.train_classifier`; the arrays go into the object store once and the
tasks share them.

Datasets named ``{prefix}NN``, for each prefix of ``multiple_prefixes``, are a family of M
multiple (SIR) imputations: ``missiwae_multiple_NN`` from the one model, and with
impute.bootstrap_models > 1 ``missiwae_ensemble_NN`` from the bootstrap ensemble. Each family is
read both ways (see :mod:`missiwae.classifier`), e.g. for ``missiwae_multiple_``:

* ``missiwae_multiple`` -- the paper's reading: per seed, one network trained on the union of
  the M imputed copies;
* ``missiwae_multiple_pooled`` -- Rubin-style pooling: per seed, M networks, network m trained
  on copy m, their test predictions averaged. All M networks of a seed share that seed (same
  initial weights, shuffling and validation rows), so they differ only through the imputations.

Every other name (``zero``, ``missforest``, ``missiwae_single``, ``complete``, ...) is a single
dataset. The result holds one row per (dataset, seed) and the Table 1 summary (mean and sd over
seeds) beside the paper's numbers; those result types and the Table 1 files live in
:mod:`pipelines.table1` and are re-exported here, the stage's public face.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from missiwae.classifier import ClassifierConfig, ClassifierResult, pool_predictions, train_classifier
from missiwae.mnist_files import NUM_PIXELS
from missiwae.pooling import rubin
from pipelines.config import PipelineConfig
from pipelines.shards import read_table, tensor_matrix
from pipelines.table1 import (
    PAPER_ORDER,
    PAPER_TABLE1,
    ClassifyResult,
    RunRow,
    SummaryRow,
    format_table,
    paper_order,
    summarize,
    write_table,
)

__all__ = [
    "PAPER_ORDER",
    "PAPER_TABLE1",
    "ClassifyError",
    "ClassifyResult",
    "RunRow",
    "SummaryRow",
    "format_table",
    "read_imputed",
    "run_classification",
    "write_table",
]

NUM_CLASSES = 10
# What training reads of an imputed dataset; its lineage columns (source_row, mask) are not
# needed, so a user's table of just these three columns is accepted as well.
_COLUMNS = ("row_id", "label", "pixels")


class ClassifyError(RuntimeError):
    """A classifier training failed; the message names the dataset and the seed."""


# ------------------------------------------------------------------------------ reading


def _parquet_files(source: Path | str | Sequence[Path | str], name: str) -> list[Path]:
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith((".", "_")))
        elif path.is_file():
            files = [path]
        else:
            raise FileNotFoundError(f"dataset {name!r}: {path} does not exist")
    else:
        files = [Path(p) for p in source]
        for path in files:
            if not path.is_file():
                raise FileNotFoundError(f"dataset {name!r}: {path} is not a file")
    if not files:
        raise FileNotFoundError(f"dataset {name!r}: no Parquet files in {source}")
    return files


def read_imputed(
    source: Path | str | Sequence[Path | str], name: str = "dataset"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one imputed dataset: ``(x float32 (N, 784), labels int64 (N,), row_id int64 (N,))``
    sorted by row_id. Raises ValueError naming ``name`` on missing columns, duplicate row ids,
    labels outside 0..9 or non-finite pixels (the classifier needs complete data)."""
    tables = []
    for path in _parquet_files(source, name):
        table = read_table(path)
        missing = [c for c in _COLUMNS if c not in table.column_names]
        if missing:
            raise ValueError(f"dataset {name!r}: {path} lacks column(s) {missing}")
        tables.append(table.select(list(_COLUMNS)))
    table = pa.concat_tables(tables)
    row_id = table.column("row_id").to_numpy().astype(np.int64, copy=False)
    labels = table.column("label").to_numpy().astype(np.int64, copy=False)
    x = tensor_matrix(table.column("pixels"), np.float32, what=f"dataset {name!r}")
    if len(x) and x.shape[1] != NUM_PIXELS:
        raise ValueError(f"dataset {name!r}: pixel rows hold {x.shape[1]} values, expected {NUM_PIXELS}")
    order = np.argsort(row_id, kind="stable")
    row_id, labels, x = row_id[order], labels[order], x[order]
    if len(row_id) == 0:
        raise ValueError(f"dataset {name!r} is empty")
    if (np.diff(row_id) == 0).any():
        raise ValueError(f"dataset {name!r}: duplicate row_id values")
    _check_arrays(x, labels, name)
    return x, labels, row_id


def _check_arrays(x: np.ndarray, labels: np.ndarray, name: str) -> None:
    if x.ndim != 2 or x.shape[1] != NUM_PIXELS or x.shape[0] != labels.shape[0]:
        raise ValueError(
            f"dataset {name!r}: expected ({labels.shape[0]}, {NUM_PIXELS}) pixels, got {x.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"dataset {name!r}: labels outside 0..{NUM_CLASSES - 1}")
    bad = ~np.isfinite(x)
    if bad.any():
        raise ValueError(
            f"dataset {name!r} is not complete: {int(bad.sum())} NaN/inf pixel values in "
            f"{int(bad.any(axis=1).sum())} rows (every missing pixel must be imputed)"
        )


# ---------------------------------------------------------------------------- Ray task


# max_retries=1: a crashed worker (WorkerCrashedError, node loss) is retried once. Exceptions
# raised by the training itself are not retried (retry_exceptions=False): they are
# deterministic, and come back as RayTaskError.
@ray.remote(max_retries=1)
def _train_task(
    labels: np.ndarray,
    test_x: np.ndarray,
    test_labels: np.ndarray,
    settings: dict[str, Any],
    keep_probabilities: bool,
    *train_sets: np.ndarray,
) -> tuple[ClassifierResult, float]:
    """One classifier training; ``train_sets`` are the copies whose union is trained on."""
    from missiwae.allocator import retain_freed_memory

    retain_freed_memory()  # this task is the entry point: it opts in, the library does not
    start = time.perf_counter()
    with warnings.catch_warnings():
        # Arrays from the object store are read-only views; the training never writes to them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        result = train_classifier(list(train_sets), labels, test_x, test_labels, ClassifierConfig(**settings))
    if not keep_probabilities:
        result.probabilities = np.zeros((0, NUM_CLASSES), np.float32)
    return result, time.perf_counter() - start


@dataclasses.dataclass(frozen=True)
class _Job:
    """What one task trains: ``output`` is the table row it feeds, ``inputs`` the dataset names."""

    output: str
    seed: int
    inputs: tuple[str, ...]
    pooled: bool = False

    def describe(self) -> str:
        if self.pooled:
            return f"dataset {self.inputs[0]!r} (for {self.output!r}), seed {self.seed}"
        if len(self.inputs) > 1:
            return f"dataset {self.output!r} (union of {', '.join(self.inputs)}), seed {self.seed}"
        return f"dataset {self.output!r}, seed {self.seed}"


def _error_text(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    return f"{type(exc).__name__}: {exc}"


def _gather(
    refs: Mapping[Any, Any],
    describe: Mapping[Any, str],
    max_in_flight: int | None = None,
    on_done: Callable[[int, int], None] | None = None,
) -> dict:
    """ray.get every task, in completion order; on the first failure cancel the rest and raise
    ClassifyError naming the failed task. ``refs``: key -> ObjectRef or a zero-argument callable
    submitting the task (then at most ``max_in_flight`` run at once). ``on_done(done, total)``
    after each task's result is in."""
    queue = list(refs.items())
    limit = len(queue) if max_in_flight is None else max(1, max_in_flight)
    in_flight: dict[Any, Any] = {}  # ObjectRef -> key
    results: dict[Any, Any] = {}
    try:
        while queue or in_flight:
            while queue and len(in_flight) < limit:
                key, ref = queue.pop(0)
                in_flight[ref() if callable(ref) else ref] = key
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in done:
                key = in_flight.pop(ref)
                try:
                    results[key] = ray.get(ref)
                    if on_done is not None:
                        on_done(len(results), len(refs))
                except ray.exceptions.RayError as exc:
                    raise ClassifyError(
                        f"classifier training failed for {describe[key]}: {_error_text(exc)}"
                    ) from exc
    except BaseException:
        for ref in in_flight:
            with contextlib.suppress(Exception):  # best effort: it may have finished meanwhile
                ray.cancel(ref)
        raise
    return results


# ---------------------------------------------------------------------------- fan-out


def _rubin_accuracy(accuracies: Sequence[float], num_test: int) -> tuple[float, float]:
    """(FMI, 95% interval width) of the test accuracy pooled over M networks by Rubin's rules,
    each network's accuracy a binomial proportion over `num_test` images: U_m = a_m (1 - a_m) / n."""
    estimates = np.asarray(accuracies, dtype=np.float64)
    pooled = rubin(estimates, estimates * (1.0 - estimates) / num_test)
    lower, upper = pooled.interval(0.95)
    return float(pooled.fmi[0]), float(upper[0] - lower[0])


def _multiple_names(names: Sequence[str], prefix: str) -> list[str]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)")
    return sorted((n for n in names if pattern.fullmatch(n)), key=lambda n: int(n[len(prefix) :]))


def _default_in_flight(gpus_per_task: float) -> int | None:
    """This machine's cores when the cluster is this one node running CPU tasks, else None."""
    if gpus_per_task > 0 or sum(1 for node in ray.nodes() if node.get("Alive")) > 1:
        return None
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_classification(
    config: PipelineConfig,
    datasets: Mapping[str, Sequence[Path] | Path],
    test: tuple[np.ndarray, np.ndarray],
    *,
    multiple_prefixes: Sequence[str] = ("missiwae_multiple_", "missiwae_ensemble_"),
    seeds: Sequence[int] | None = None,
    max_in_flight: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> ClassifyResult:
    """Train the classifier on every imputed dataset for every seed, as Ray tasks.

    Args:
        config: ``config.classify`` gives num_seeds, epochs, batch_size, learning_rate,
            patience, epoch_steps and the per-task resources (cpus_per_task, gpus_per_task).
        datasets: name -> a Parquet directory, file, or list of files (row_id, label, pixels).
            ``{prefix}NN`` names, prefix in ``multiple_prefixes``, are a family of M multiple
            imputations (read as a union and pooled, see the module docstring); at least two
            per family are expected.
        test: complete test set ``(x float (N, 784), labels int (N,))``.
        seeds: classifier seeds; default ``range(config.classify.num_seeds)``.
        max_in_flight: at most this many tasks submitted at once. None: on a single-node CPU
            cluster the number of cores of this machine (each task trains with one thread;
            Ray advertises more logical CPUs than cores on small machines, and 16 tasks at once
            on 2 cores ran 5x slower than 2 at a time), otherwise all at once.
        on_progress: called on the driver as ``on_progress(done, total)`` each time a
            classifier training finishes (a progress bar's hook).

    Returns:
        :class:`ClassifyResult`: one :class:`RunRow` per (dataset, seed), the summary in the
        paper's order (zero, missforest, missiwae_single, missiwae_multiple,
        missiwae_multiple_pooled, complete, then other names).

    Raises:
        ValueError: a dataset is unreadable or incomplete (NaN pixels), the message naming it.
        ClassifyError: a task failed (after one retry for a crashed worker), naming the
            dataset and the seed.
    """
    start = time.perf_counter()
    settings_cfg = config.classify
    seed_list = list(range(settings_cfg.num_seeds)) if seeds is None else [int(s) for s in seeds]
    if not seed_list or len(set(seed_list)) != len(seed_list):
        raise ValueError(f"seeds must be distinct and non-empty, got {seed_list}")
    if not datasets:
        raise ValueError("no datasets to classify")
    families = {  # union name -> its copies' names
        prefix.rstrip("_"): copies
        for prefix in multiple_prefixes
        if (copies := _multiple_names(list(datasets), prefix))
    }
    copies = [name for family in families.values() for name in family]
    singles = [n for n in datasets if n not in copies]
    for union_name in families:
        if union_name in singles or f"{union_name}_pooled" in singles:
            raise ValueError(
                f"{union_name!r}/{union_name}_pooled are produced from {union_name}_NN; do not pass both"
            )

    test_x = np.ascontiguousarray(np.asarray(test[0], dtype=np.float32))
    test_labels = np.asarray(test[1]).astype(np.int64, copy=False)
    _check_arrays(test_x, test_labels, "test")

    # Looked up at call time, as the other stages do (a test may stand in for it meanwhile).
    from pipelines.runtime import ensure_ray

    ensure_ray()
    # Into the object store once; every task gets references and reads shared memory. Each
    # dataset is read, checked and put before the next is read, so the driver holds one at a time.
    test_x_ref, test_labels_ref = ray.put(test_x), ray.put(test_labels)
    x_refs: dict[str, Any] = {}
    label_refs: dict[str, Any] = {}
    first_copy: tuple[np.ndarray, np.ndarray] | None = None  # (labels, row_id) of the first copy
    for name in [*singles, *copies]:
        x, labels, row_id = read_imputed(datasets[name], name)
        if name in copies:
            if first_copy is None:
                first_copy = (labels, row_id)
                label_refs[name] = ray.put(labels)
            elif np.array_equal(labels, first_copy[0]) and np.array_equal(row_id, first_copy[1]):
                label_refs[name] = label_refs[copies[0]]
            else:
                raise ValueError(
                    f"dataset {name!r}: row_id/label differ from {copies[0]!r}; the copies must align"
                )
        else:
            label_refs[name] = ray.put(labels)
        x_refs[name] = ray.put(x)
        del x

    jobs: list[_Job] = []
    for seed in seed_list:
        jobs += [_Job(name, seed, (name,)) for name in singles]
        for union_name, family in families.items():
            jobs.append(_Job(union_name, seed, tuple(family)))
            jobs += [_Job(f"{union_name}_pooled", seed, (name,), pooled=True) for name in family]

    task = _train_task.options(num_cpus=settings_cfg.cpus_per_task, num_gpus=settings_cfg.gpus_per_task)
    device = "cuda" if settings_cfg.gpus_per_task > 0 else "cpu"

    def submit(job: _Job) -> Any:
        settings = {
            "seed": job.seed,
            "epochs": settings_cfg.epochs,
            "batch_size": settings_cfg.batch_size,
            "learning_rate": settings_cfg.learning_rate,
            "patience": settings_cfg.patience,
            "epoch_steps": settings_cfg.epoch_steps,
            "num_threads": 1,
            "device": device,
        }
        return lambda: task.remote(
            label_refs[job.inputs[0]],
            test_x_ref,
            test_labels_ref,
            settings,
            job.pooled,
            *[x_refs[name] for name in job.inputs],
        )

    if max_in_flight is None:
        max_in_flight = _default_in_flight(settings_cfg.gpus_per_task)
    outcomes = _gather(
        {job: submit(job) for job in jobs}, {job: job.describe() for job in jobs}, max_in_flight, on_progress
    )

    runs: list[RunRow] = []
    for seed in seed_list:
        for job in jobs:
            if job.seed != seed or job.pooled:
                continue
            result, seconds = outcomes[job]
            runs.append(
                RunRow(
                    dataset=job.output,
                    seed=seed,
                    test_accuracy=result.test_accuracy,
                    test_cross_entropy=result.test_cross_entropy,
                    best_epoch=float(result.best_epoch),
                    epochs_run=float(result.epochs_run),
                    seconds=seconds,
                    num_networks=1,
                    history=tuple(result.history),
                )
            )
        for union_name in families:
            pooled_name = f"{union_name}_pooled"
            members = [outcomes[job] for job in jobs if job.seed == seed and job.output == pooled_name]
            accuracy, cross_entropy = pool_predictions([r for r, _ in members], test_labels)
            rubin_fmi, rubin_width = _rubin_accuracy([r.test_accuracy for r, _ in members], len(test_labels))
            runs.append(
                RunRow(
                    dataset=pooled_name,
                    seed=seed,
                    test_accuracy=accuracy,
                    test_cross_entropy=cross_entropy,
                    best_epoch=statistics.fmean(r.best_epoch for r, _ in members),
                    epochs_run=statistics.fmean(r.epochs_run for r, _ in members),
                    seconds=sum(s for _, s in members),
                    num_networks=len(members),
                    accuracy_fmi=rubin_fmi,
                    accuracy_interval_width=rubin_width,
                )
            )
    order = {name: i for i, name in enumerate(paper_order([r.dataset for r in runs]))}
    runs.sort(key=lambda r: (order[r.dataset], r.seed))
    return ClassifyResult(runs=tuple(runs), summary=summarize(runs), seconds=time.perf_counter() - start)
