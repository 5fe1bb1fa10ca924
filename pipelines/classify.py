"""The paper's Table 1 as a Ray fan-out: one classifier training per (imputed dataset, seed).

Input: imputed versions of the training set as Parquet (columns ``row_id`` int64, ``label``
int64, ``pixels`` 784 float32 -- a Ray tensor column or a plain list column) and the complete
test set. Every (dataset, seed) pair is one Ray task calling
:func:`missiwae.classifier.train_classifier`; the arrays go into the object store once and the
tasks share them.

Datasets named ``{multiple_prefix}NN`` are the M multiple (SIR) imputations. They are read both
ways (see :mod:`missiwae.classifier`):

* ``missiwae_multiple`` -- the paper's reading: per seed, one network trained on the union of
  the M imputed copies;
* ``missiwae_multiple_pooled`` -- Rubin-style pooling: per seed, M networks, network m trained
  on copy m, their test predictions averaged. All M networks of a seed share that seed (same
  initial weights, shuffling and validation rows), so they differ only through the imputations.

Every other name (``zero``, ``missforest``, ``missiwae_single``, ``complete``, ...) is a single
dataset. The result holds one row per (dataset, seed) and the Table 1 summary (mean and sd over
seeds) beside the paper's numbers.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import os
import re
import statistics
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from missiwae.classifier import ClassifierConfig, ClassifierResult, pool_predictions, train_classifier
from pipelines.config import PipelineConfig
from pipelines.runtime import ensure_ray
from pipelines.storage import read_parquet_table, write_text_atomic

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

NUM_PIXELS = 784
NUM_CLASSES = 10

# Table 1 of Mattei & Frellsen (2019): (test accuracy, test cross-entropy).
PAPER_TABLE1: dict[str, tuple[float, float]] = {
    "zero": (0.97388, 0.10033),
    "missforest": (0.98049, 0.06446),
    "missiwae_single": (0.98473, 0.05101),
    "missiwae_multiple": (0.98683, 0.05090),
    "complete": (0.98663, 0.04638),
}
PAPER_ORDER: tuple[str, ...] = (
    "zero",
    "missforest",
    "missiwae_single",
    "missiwae_multiple",
    "missiwae_multiple_pooled",
    "complete",
)
LABELS: dict[str, str] = {
    "zero": "Zero imputation",
    "missforest": "missForest",
    "missiwae_single": "missIWAE single imputation",
    "missiwae_multiple": "missIWAE multiple imputation (union)",
    "missiwae_multiple_pooled": "missIWAE multiple imputation (pooled)",
    "complete": "Complete data",
}
_COLUMNS = ("row_id", "label", "pixels")


class ClassifyError(RuntimeError):
    """A classifier training failed; the message names the dataset and the seed."""


# ------------------------------------------------------------------------------ results


@dataclasses.dataclass(frozen=True)
class RunRow:
    """One (dataset, seed) outcome.

    For the pooled reading ``best_epoch`` / ``epochs_run`` are means over the M networks,
    ``seconds`` their sum and ``num_networks`` = M; ``history`` is then empty.
    """

    dataset: str
    seed: int
    test_accuracy: float
    test_cross_entropy: float
    best_epoch: float
    epochs_run: float
    seconds: float  # training time inside the task(s), queueing excluded
    num_networks: int = 1
    history: tuple[dict[str, float], ...] = ()  # per epoch, see ClassifierResult.history

    def record(self) -> dict[str, Any]:
        """The row without its history (what the CSV holds)."""
        out = dataclasses.asdict(self)
        del out["history"]
        return out


@dataclasses.dataclass(frozen=True)
class SummaryRow:
    """Table 1 row: mean and sample sd (ddof=1; NaN for one seed) over seeds."""

    dataset: str
    num_seeds: int
    accuracy_mean: float
    accuracy_sd: float
    cross_entropy_mean: float
    cross_entropy_sd: float
    paper_accuracy: float | None
    paper_cross_entropy: float | None

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ClassifyResult:
    runs: tuple[RunRow, ...]
    summary: tuple[SummaryRow, ...]
    seconds: float  # wall clock of the whole fan-out (reading included)

    def run(self, dataset: str, seed: int) -> RunRow:
        for row in self.runs:
            if row.dataset == dataset and row.seed == seed:
                return row
        raise KeyError(f"no run for dataset {dataset!r}, seed {seed}")

    def row(self, dataset: str) -> SummaryRow:
        for row in self.summary:
            if row.dataset == dataset:
                return row
        raise KeyError(f"no summary row for dataset {dataset!r}")


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


def _is_list(kind: pa.DataType) -> bool:
    return bool(pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind))


def _pixels_to_numpy(column: pa.ChunkedArray, name: str) -> np.ndarray:
    """float32 (N, 784) from a Ray tensor extension column or (nested) list column."""
    parts: list[np.ndarray] = []
    for chunk in column.chunks:
        arr: pa.Array = chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk
        num_rows, row_size = len(arr), 1
        while _is_list(arr.type):
            if arr.null_count:
                raise ValueError(f"dataset {name!r}: the pixels column has null entries")
            lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
            if len(lengths) and (lengths != lengths[0]).any():
                raise ValueError(f"dataset {name!r}: pixel rows of different lengths")
            row_size *= int(lengths[0]) if len(lengths) else 1
            arr = arr.flatten()  # honours slicing offsets, unlike .values
        if not (pa.types.is_floating(arr.type) or pa.types.is_integer(arr.type)):
            raise ValueError(f"dataset {name!r}: unsupported pixels type {column.type}")
        if num_rows and row_size != NUM_PIXELS:
            raise ValueError(f"dataset {name!r}: pixel rows hold {row_size} values, expected {NUM_PIXELS}")
        # Nulls inside become NaN here and are caught by the completeness check.
        values = arr.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        parts.append(values.reshape(num_rows, NUM_PIXELS))
    if not parts:
        return np.zeros((0, NUM_PIXELS), np.float32)
    return np.ascontiguousarray(np.concatenate(parts))


def read_imputed(
    source: Path | str | Sequence[Path | str], name: str = "dataset"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one imputed dataset: ``(x float32 (N, 784), labels int64 (N,), row_id int64 (N,))``
    sorted by row_id. Raises ValueError naming ``name`` on missing columns, duplicate row ids,
    labels outside 0..9 or non-finite pixels (the classifier needs complete data)."""
    tables = []
    for path in _parquet_files(source, name):
        table = read_parquet_table(path)
        missing = [c for c in _COLUMNS if c not in table.column_names]
        if missing:
            raise ValueError(f"dataset {name!r}: {path} lacks column(s) {missing}")
        tables.append(table.select(list(_COLUMNS)))
    table = pa.concat_tables(tables)
    row_id = table.column("row_id").to_numpy().astype(np.int64, copy=False)
    labels = table.column("label").to_numpy().astype(np.int64, copy=False)
    x = _pixels_to_numpy(table.column("pixels"), name)
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


def _gather(refs: Mapping[Any, Any], describe: Mapping[Any, str], max_in_flight: int | None = None) -> dict:
    """ray.get every task, in completion order; on the first failure cancel the rest and raise
    ClassifyError naming the failed task. ``refs``: key -> ObjectRef or a zero-argument callable
    submitting the task (then at most ``max_in_flight`` run at once)."""
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


def _multiple_names(names: Sequence[str], prefix: str) -> list[str]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)")
    return sorted((n for n in names if pattern.fullmatch(n)), key=lambda n: int(n[len(prefix) :]))


def _order(names: Sequence[str]) -> list[str]:
    known = [n for n in PAPER_ORDER if n in names]
    return known + [n for n in names if n not in PAPER_ORDER]


def _summarize(runs: Sequence[RunRow]) -> tuple[SummaryRow, ...]:
    by_dataset: dict[str, list[RunRow]] = {}
    for row in runs:
        by_dataset.setdefault(row.dataset, []).append(row)
    rows = []
    for name in _order(list(by_dataset)):
        group = by_dataset[name]
        acc = [r.test_accuracy for r in group]
        ce = [r.test_cross_entropy for r in group]
        paper = PAPER_TABLE1.get(name)
        rows.append(
            SummaryRow(
                dataset=name,
                num_seeds=len(group),
                accuracy_mean=statistics.fmean(acc),
                accuracy_sd=statistics.stdev(acc) if len(acc) > 1 else math.nan,
                cross_entropy_mean=statistics.fmean(ce),
                cross_entropy_sd=statistics.stdev(ce) if len(ce) > 1 else math.nan,
                paper_accuracy=paper[0] if paper else None,
                paper_cross_entropy=paper[1] if paper else None,
            )
        )
    return tuple(rows)


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
    multiple_prefix: str = "missiwae_multiple_",
    seeds: Sequence[int] | None = None,
    max_in_flight: int | None = None,
) -> ClassifyResult:
    """Train the classifier on every imputed dataset for every seed, as Ray tasks.

    Args:
        config: ``config.classify`` gives num_seeds, epochs, batch_size, learning_rate,
            patience and the per-task resources (cpus_per_task, gpus_per_task).
        datasets: name -> a Parquet directory, file, or list of files (row_id, label, pixels).
            ``{multiple_prefix}NN`` names are the M multiple imputations (read as a union and
            pooled, see the module docstring); at least two of them are expected.
        test: complete test set ``(x float (N, 784), labels int (N,))``.
        seeds: classifier seeds; default ``range(config.classify.num_seeds)``.
        max_in_flight: at most this many tasks submitted at once. None: on a single-node CPU
            cluster the number of cores of this machine (each task trains with one thread;
            Ray advertises more logical CPUs than cores on small machines, and 16 tasks at once
            on 2 cores ran 5x slower than 2 at a time), otherwise all at once.

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
    union_name = multiple_prefix.rstrip("_")
    pooled_name = f"{union_name}_pooled"
    copies = _multiple_names(list(datasets), multiple_prefix)
    singles = [n for n in datasets if n not in copies]
    if copies and (union_name in singles or pooled_name in singles):
        raise ValueError(
            f"{union_name!r}/{pooled_name!r} are produced from {multiple_prefix}NN; do not pass both"
        )

    test_x = np.ascontiguousarray(np.asarray(test[0], dtype=np.float32))
    test_labels = np.asarray(test[1]).astype(np.int64, copy=False)
    _check_arrays(test_x, test_labels, "test")

    ensure_ray()
    # Into the object store once; every task gets references and reads shared memory. Each
    # dataset is read, checked and put before the next is read, so the driver holds one at a time.
    test_x_ref, test_labels_ref = ray.put(test_x), ray.put(test_labels)
    x_refs: dict[str, Any] = {}
    label_refs: dict[str, Any] = {}
    first_copy: tuple[np.ndarray, np.ndarray] | None = None  # (labels, row_id) of copy 00
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
        if copies:
            jobs.append(_Job(union_name, seed, tuple(copies)))
            jobs += [_Job(pooled_name, seed, (name,), pooled=True) for name in copies]

    task = _train_task.options(num_cpus=settings_cfg.cpus_per_task, num_gpus=settings_cfg.gpus_per_task)
    device = "cuda" if settings_cfg.gpus_per_task > 0 else "cpu"

    def submit(job: _Job) -> Any:
        settings = {
            "seed": job.seed,
            "epochs": settings_cfg.epochs,
            "batch_size": settings_cfg.batch_size,
            "learning_rate": settings_cfg.learning_rate,
            "patience": settings_cfg.patience,
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
        {job: submit(job) for job in jobs}, {job: job.describe() for job in jobs}, max_in_flight
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
        members = [outcomes[job] for job in jobs if job.seed == seed and job.pooled]
        if members:
            accuracy, cross_entropy = pool_predictions([r for r, _ in members], test_labels)
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
                )
            )
    order = {name: i for i, name in enumerate(_order([r.dataset for r in runs]))}
    runs.sort(key=lambda r: (order[r.dataset], r.seed))
    return ClassifyResult(runs=tuple(runs), summary=_summarize(runs), seconds=time.perf_counter() - start)


# ------------------------------------------------------------------------------ output


def _fmt(value: float | None, digits: int = 5) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def format_table(result: ClassifyResult) -> str:
    """Table 1 as markdown: mean ± sd over seeds, the paper's numbers beside."""
    lines = [
        "| dataset | method | seeds | test accuracy | test cross-entropy "
        "| paper accuracy | paper cross-entropy |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in result.summary:
        lines.append(
            f"| {row.dataset} | {LABELS.get(row.dataset, row.dataset)} | {row.num_seeds} "
            f"| {_fmt(row.accuracy_mean)} ± {_fmt(row.accuracy_sd)} "
            f"| {_fmt(row.cross_entropy_mean)} ± {_fmt(row.cross_entropy_sd)} "
            f"| {_fmt(row.paper_accuracy)} | {_fmt(row.paper_cross_entropy)} |"
        )
    return "\n".join(lines) + "\n"


def _csv_text(records: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in records)
    return buffer.getvalue()


def write_table(result: ClassifyResult, directory: Path | str) -> dict[str, Path]:
    """Write ``table1.csv`` (summary), ``table1.md`` and ``classify_runs.csv`` (one row per
    dataset and seed) into ``directory``, each atomically (temp file + rename).

    Returns ``{"csv": ..., "markdown": ..., "runs": ...}``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "table1.csv", "markdown": out / "table1.md", "runs": out / "classify_runs.csv"}
    write_text_atomic(paths["csv"], _csv_text([r.record() for r in result.summary]))
    write_text_atomic(paths["markdown"], format_table(result))
    write_text_atomic(paths["runs"], _csv_text([r.record() for r in result.runs]))
    return paths
