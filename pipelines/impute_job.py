"""The imputation job: one Ray Data actor pool over ingest shards, images and tables alike.

    read_parquet(shards) -> repartition(rows_per_block: whole batches per block, strict)
        -> map_batches(ImputeActor, ActorPoolStrategy(size=num_actors), num_cpus, num_gpus)

Every actor loads the checkpoint once; per batch it computes the Rao-Blackwellised SNIS estimate
E[x_m | x_o] with L importance samples (single imputation) and M SIR draws (multiple
imputation), seeded by (impute.seed, the batch's first row id, stream). The stages around it
(pipelines/impute.py for MNIST, pipelines/tabular.py for a user's table) write what it returns.

Input contract (the ingest stage, images): Parquet files with columns row_id int64, label int64,
source_row int64 (the row in the source file, passed through as lineage), pixels (784,) uint8 =
the TRUE pixels, mask (784,) bool/uint8 with True = observed, as Ray tensor columns or
(fixed-size) list columns; other columns (``split``) are ignored.

Randomness, and what is guaranteed. Each batch is imputed with two torch generators seeded from
(impute.seed, row_id of the batch's first row, stream), stream 0 for SNIS and 1 for SIR, so the
single imputation does not change with M. The batch layout is pinned: the input files are read
in sorted order with Ray Data's ``preserve_order``, and a strict streaming repartition cuts the
rows into blocks of a whole number of batches (:func:`rows_per_block`; the last block shorter),
so every batch starts at a multiple of ``impute.batch_size`` in the input. So the numbers depend
on (input rows and their order, checkpoint, impute.*, CPU vs GPU, torch version) and NOT on the
number of actors, the block size, which actor gets which batch, or Ray's scheduling; the tests
check bit-equality across actor counts and block sizes. They do change with
``impute.batch_size`` (the batch is the unit of the random streams).
A table's shards (pipelines/tabular.py) give standardised float ``pixels``, and their
``source_row`` seeds the batches instead of ``row_id`` (images keep ``row_id``: their numbers
predate the lineage column and stay as they were).

Progress (:func:`row_progress`). The job runs inside one ``materialize()`` / ``iter_batches()``
call, so the driver cannot count batches itself: a :class:`RowCounter` actor (no CPU) is passed
to every ImputeActor, which adds its batch's rows after computing it (fire-and-forget
``.remote()``, never waited on: the batches and their numbers are untouched), and a driver
thread polls it every ``POLL_S`` seconds for a callback ``on_progress(done_rows, total_rows)``.
A batch retried after its actor died may be counted twice; the count is clamped to the total.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from pipelines.config import PipelineConfig
from pipelines.shards import batch_matrix, parquet_size, tensor_array, tensor_matrix

if TYPE_CHECKING:
    import ray.data

_LOG = logging.getLogger(__name__)
SINGLE = "missiwae_single"  # the image job's single-imputation column (and dataset name)
INPUT_COLUMNS = ("row_id", "label", "source_row", "pixels", "mask")
# A table's batches also carry what its writer needs (pipelines.table_output's OUTPUT_SOURCE_COLUMNS).
TABLE_INPUT_COLUMNS = ("source_row", "split", "pixels", "mask", "source")
TABLE_PASSTHROUGH = ("source_row", "split", "mask", "source")
_SNIS_STREAM, _SIR_STREAM = 0, 1
_ENSEMBLE_STREAM = 2  # bootstrap member b draws from stream 2 + b
WAIT_FOR_ACTORS_S = 600  # the actor pool must be up within this time (model load included)
# A dead actor is restarted and its batch retried on it (at-least-once; the output is still one
# row per input row because a batch's output only counts once its task returns). Bounded, so a
# batch that kills every actor it touches fails the job instead of looping.
ACTOR_MAX_RESTARTS = 3
# How many times a whole imputation job runs again when Ray lost a process or a node under it:
# the imputation actors restart on their own (ACTOR_MAX_RESTARTS), but Ray Data's own helpers do
# not (read_parquet's footer readers, an actor pool on the lost node). Every batch is seeded by
# its own first row, so a rerun gives the same numbers.
NODE_LOSS_RETRIES = 2
POLL_S = 0.5  # how often the driver asks the RowCounter (a bar's refresh rate)
# At the end of a job, how long the driver waits for the actors' last increments (sent just
# before their batches returned) to reach the counter.
_FINAL_COUNT_WAIT_S = 10.0
_READ_TIMEOUT_S = 5.0
ProgressCallback = Callable[[int, int], None]  # (done_rows, total_rows)


def imputation_dataset(
    config: PipelineConfig,
    files: Sequence[Path],
    checkpoint_dir: Path,
    *,
    ensemble_dirs: Sequence[Path] = (),
    table: bool = False,
    table_writer: Callable[[Any], Any] | None = None,
    rows_per_write: int = 100_000,
    fault_marker: str | None = None,
    progress: Any = None,
) -> ray.data.Dataset:
    """The lazy Ray Data job over the shards `files`: ordered read, fixed-size blocks, the pool
    of :class:`ImputeActor` (``table``: a user's table, see the actor; it runs on CPUs).
    ``table_writer``: for a table, Ray Data tasks then call it on batches of at most
    `rows_per_write` rows of the actors' output (Arrow tables; which rows, and in which order,
    is Ray Data's choice), and the job's rows are what it returns
    (pipelines.table_output.write_partitions: the workers write the output).
    ``ensemble_dirs``: the B bootstrap members' checkpoints (impute.bootstrap_models > 1), whose
    SIR draws make the proper multiple imputations (see the actor); empty for B = 1.
    ``progress``: a RowCounter actor handle the actors count their rows on (:func:`row_progress`)."""
    import ray.data

    from pipelines.runtime import ensure_ray

    ensure_ray()
    stage, impute = config.impute_stage, config.impute
    columns = TABLE_INPUT_COLUMNS if table else INPUT_COLUMNS
    gpus = stage.gpus_per_actor if stage.gpus_per_actor > 0 and not table else None
    with _job_context():  # a Dataset keeps a copy of the context it was built under
        dataset = ray.data.read_parquet([str(p) for p in files]).select_columns(list(columns))
        total_rows, total_bytes = parquet_size(files)
        block_rows = rows_per_block(impute.batch_size, total_rows, total_bytes, stage.num_actors)
        dataset = dataset.repartition(target_num_rows_per_block=block_rows, strict=True)
        dataset = dataset.map_batches(
            ImputeActor,
            fn_constructor_kwargs={
                "checkpoint_dir": str(checkpoint_dir),
                "ensemble_dirs": [str(path) for path in ensemble_dirs],
                "num_samples": impute.num_samples,
                "num_imputations": impute.num_imputations,
                "chunk_size": impute.chunk_size,
                "seed": impute.seed,
                "device": "cuda" if gpus else "cpu",
                "fault_marker": fault_marker,
                "table": table,
                "progress": progress,
            },
            batch_size=impute.batch_size,
            batch_format="pyarrow" if table else "numpy",  # a table's cells stay in their types
            compute=ray.data.ActorPoolStrategy(size=stage.num_actors),
            num_cpus=stage.cpus_per_actor,
            num_gpus=gpus,
            max_restarts=ACTOR_MAX_RESTARTS,
            max_task_retries=ACTOR_MAX_RESTARTS,
        )
        if table_writer is not None:
            dataset = dataset.map_batches(
                table_writer, batch_size=rows_per_write, batch_format="pyarrow", num_cpus=stage.cpus_per_actor
            )
        return dataset


# The imputation job's blocks (rows_per_block). The driver keeps state for every block Ray Data
# runs, and each block costs scheduling: with one 4,096-row batch per block, a 50-million-row
# table (12,207 blocks) grew the driver by hundreds of MiB (benchmarks/README.md, "Tables at
# scale"). So a block holds as many batches as fit BLOCK_TARGET_BYTES of input, but no fewer than
# BLOCKS_PER_ACTOR blocks per actor, so a small job still spreads over its pool.
BLOCK_TARGET_BYTES = 32 * 2**20
BLOCKS_PER_ACTOR = 4


def rows_per_block(batch_size: int, total_rows: int, total_bytes: int, num_actors: int) -> int:
    """Rows in each block of the imputation job: a whole number of batches (so every batch
    starts at a multiple of `batch_size`, and its random stream does not depend on the block
    size), about BLOCK_TARGET_BYTES of the input's `total_bytes` over `total_rows`, at least one
    batch, and small enough that the `num_actors` actors get BLOCKS_PER_ACTOR blocks each."""
    batch_bytes = batch_size * total_bytes / max(total_rows, 1)
    by_size = int(BLOCK_TARGET_BYTES // max(batch_bytes, 1.0))
    by_actors = -(-total_rows // batch_size) // (BLOCKS_PER_ACTOR * max(num_actors, 1))
    return batch_size * max(1, min(by_size, by_actors))


T = TypeVar("T")


def lost_a_node(error: BaseException | None) -> bool:
    """Whether `error`, or an error it wraps (Ray's RayTaskError carries the remote one as
    `cause`; an UnserializableException only its text), is Ray's report of a process or node
    that died: not a bug, not bad input."""
    from ray import exceptions

    lost = (
        exceptions.ActorDiedError,
        exceptions.ActorUnavailableError,
        exceptions.NodeDiedError,
        exceptions.ObjectLostError,
        exceptions.WorkerCrashedError,
    )
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, lost):
            return True
        if isinstance(error, exceptions.UnserializableException):
            # Ray could not bring the remote error back (it did so when the node of Ray Data's
            # Parquet footer reader was lost under its listing task): only its text names it.
            return any(f"ray.exceptions.{kind.__name__}" in str(error) for kind in lost)
        seen.add(id(error))
        error = getattr(error, "cause", None) or error.__cause__
    return False


def run_surviving_node_loss(job: Callable[[], T], what: str) -> T:
    """`job()`, run again (NODE_LOSS_RETRIES times at most) when it fails because Ray lost a
    process or a node (:func:`lost_a_node`); any other error propagates at once. `job` must
    start from nothing each time (no partial output kept from a failed attempt)."""
    for attempt in range(NODE_LOSS_RETRIES + 1):
        try:
            return job()
        except Exception as error:
            if attempt == NODE_LOSS_RETRIES or not lost_a_node(error):
                raise
            _LOG.warning("%s lost a Ray process or node (%s); running it again", what, type(error).__name__)
    raise AssertionError("unreachable")


class ImputeActor:
    """Callable class for ``map_batches``, images and tables alike: the model is loaded once
    per actor; each batch gets the SNIS single imputation (L samples) and M SIR draws, seeded
    by (seed, the batch's first row id, stream) -- the table's ``source_row``, else ``row_id``.

    Images (``table=False``). In: row_id (B,), label (B,), source_row (B,), pixels (B, D) the
    true 0/1 values, mask (B, D) True = observed. Out: row_id, label, source_row, pixels (uint8),
    mask (bool) passed through;
    missiwae_single (B, D) float32; missiwae_multiple (B, M, D) uint8; ess (B,) float32;
    num_missing, correct_single, correct_zero (B,) int64; correct_multiple (B, M) int64;
    actor (B,) str and batch_start (B,) int64 (debugging: who imputed what, in which batch).

    Tables (``table=True``; no truth, so no counts, and never the oracle ι): Arrow batches in
    and out, so the file's cells keep their types. In: TABLE_INPUT_COLUMNS: source_row (B,),
    split, pixels (B, D) standardised, mask (B, D), source (the file's cells). Out: the
    TABLE_PASSTHROUGH columns as they came, single (B, D) and multiple (B, M, D) float32 in
    standardised units (tensor columns), ess (B,) float32 and log_likelihood (B,) float64.

    The bootstrap ensemble (``ensemble_dirs``, B models): member b adds
    ``missiwae.ensemble.split_draws(M, B)[b]`` SIR draws from its own random stream
    (2 + b), in member order: the M proper imputations. Images get them beside the one
    model's as ``missiwae_ensemble`` (B, M, D) uint8 and ``correct_ensemble`` (B, M); a table's
    ``multiple`` is then the ensemble's (the one model's draws are not written). The single
    imputation, ESS and log-likelihood stay the model on all rows'.

    ``progress``: a RowCounter actor handle, or None; the actor adds each batch's row count
    to it after computing the batch (module docstring).

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
        table: bool = False,
        progress: Any = None,
        ensemble_dirs: Sequence[str] = (),
    ) -> None:
        import ray

        from missiwae.allocator import retain_freed_memory
        from missiwae.training import load_model

        retain_freed_memory()
        self.device, self.table = device, table
        self.model = load_model(checkpoint_dir, device=device)
        self.members = [load_model(path, device=device) for path in ensemble_dirs]
        self.num_samples, self.num_imputations = num_samples, num_imputations
        self.chunk_size, self.seed = chunk_size, seed
        self.actor_id = ray.get_runtime_context().get_actor_id() or f"pid-{os.getpid()}"
        self.fault_marker, self.calls = fault_marker, 0
        self.progress = progress

    def __call__(self, batch: Any) -> Any:
        import torch

        self.calls += 1
        if self.fault_marker and self.calls == 2:
            _die_once(self.fault_marker)
        if self.table:  # an Arrow table
            first = batch.column("source_row").to_numpy().astype(np.int64)
            mask = tensor_matrix(batch.column("mask"), np.bool_, what="the table's shards", name="mask")
            pixels = tensor_matrix(batch.column("pixels"), np.float32, what="the table's shards")
        else:
            first = np.asarray(batch["row_id"], dtype=np.int64)
            mask = batch_matrix(batch["mask"], np.bool_)
            pixels = batch_matrix(batch["pixels"], np.uint8)
        x_true = torch.from_numpy(pixels.astype(np.float32)).to(self.device)
        observed = torch.tensor(mask, device=self.device)  # a copy: Ray's batch is read-only
        # The model sees NaN in the holes: the truth cannot leak (the oracle ι must read it).
        oracle = self.model.uses_oracle and not self.table
        x = x_true if oracle else x_true.masked_fill(~observed, float("nan"))
        start = int(first[0])
        single, multiple = self._impute(x, observed, start)
        ensemble = self._ensemble_draws(x, observed, start) if self.members else None
        if self.progress is not None:
            self.progress.add.remote(len(first))  # fire-and-forget: never waits on the counter
        if self.table:
            import pyarrow as pa

            draws = multiple.imputations if ensemble is None else ensemble
            out = batch.select(list(TABLE_PASSTHROUGH))
            for name, column in (
                ("single", tensor_array(single.imputed.float().cpu().numpy())),
                ("multiple", tensor_array(draws.permute(1, 0, 2).float().cpu().numpy())),  # (B, M, D)
                ("ess", pa.array(single.effective_sample_size.float().cpu().numpy())),
                ("log_likelihood", pa.array(single.log_likelihood.double().cpu().numpy())),
            ):
                out = out.append_column(name, column)
            return out
        out = self._image_output(batch, first, pixels, mask, single, multiple.imputations)
        if ensemble is not None:
            draws_x = _binary_draws(ensemble)
            out["missiwae_ensemble"] = draws_x
            out["correct_ensemble"] = _correct_draws(draws_x, pixels, mask)
        return out

    def _impute(self, x: Any, observed: Any, start: int) -> tuple[Any, Any]:
        """SNIS (stream 0) and SIR (stream 1) for one batch; x (B, D) with NaN in the holes."""
        from missiwae.imputation import impute_multiple, impute_single
        from missiwae.model import make_generator

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
        return single, multiple

    def _ensemble_draws(self, x: Any, observed: Any, start: int) -> Any:
        """The bootstrap members' SIR draws (M, B, D): member b's split_draws(M, B)[b] of them,
        from stream 2 + b."""
        import torch

        from missiwae.ensemble import split_draws
        from missiwae.imputation import impute_multiple
        from missiwae.model import make_generator

        draws = [
            impute_multiple(
                member,
                x,
                observed,
                count,
                self.num_samples,
                chunk_size=self.chunk_size,
                generator=make_generator(batch_seed(self.seed, start, _ENSEMBLE_STREAM + b), self.device),
            ).imputations
            for b, (member, count) in enumerate(
                zip(self.members, split_draws(self.num_imputations, len(self.members)), strict=True)
            )
            if count
        ]
        return torch.cat(draws, dim=0)

    def _image_output(
        self,
        batch: dict[str, np.ndarray],
        row_id: np.ndarray,
        pixels: np.ndarray,
        mask: np.ndarray,
        single: Any,
        imputations: Any,
    ) -> dict[str, np.ndarray]:
        num_rows = len(row_id)
        single_x = single.imputed.float().cpu().numpy()
        multiple_x = _binary_draws(imputations)
        missing = ~mask
        truth = pixels > 0
        return {
            "row_id": row_id,
            "label": np.asarray(batch["label"], dtype=np.int64),
            "source_row": np.asarray(batch["source_row"], dtype=np.int64),
            "pixels": pixels,
            "mask": mask,
            SINGLE: single_x.astype(np.float32),
            "missiwae_multiple": multiple_x,
            "ess": single.effective_sample_size.float().cpu().numpy(),
            "num_missing": missing.sum(axis=1).astype(np.int64),
            "correct_single": (missing & ((single_x > 0.5) == truth)).sum(axis=1).astype(np.int64),
            "correct_multiple": _correct_draws(multiple_x, pixels, mask),
            "correct_zero": (missing & ~truth).sum(axis=1).astype(np.int64),
            "actor": np.array([self.actor_id] * num_rows),
            "batch_start": np.full(num_rows, int(row_id[0]), dtype=np.int64),
        }


def _binary_draws(imputations: Any) -> np.ndarray:
    """SIR draws of binary pixels (M, B, D), exactly 0 or 1, as (B, M, D) uint8."""
    import torch

    return imputations.permute(1, 0, 2).round().to(torch.uint8).cpu().numpy()


def _correct_draws(draws: np.ndarray, pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(B, M) int64: the holes each of the M draws (B, M, D) got right against the true pixels."""
    truth = pixels > 0
    return (~mask[:, None] & ((draws > 0) == truth[:, None])).sum(axis=2).astype(np.int64)


class RowCounter:
    """The rows imputed so far, counted by the ImputeActors (a Ray actor: ``ray.remote``)."""

    def __init__(self) -> None:
        self.rows = 0

    def add(self, num_rows: int) -> None:
        self.rows += num_rows

    def get(self) -> int:
        return self.rows


@contextlib.contextmanager
def row_progress(on_progress: ProgressCallback | None, total_rows: int) -> Iterator[Any]:
    """Within the block, report the rows imputed so far: yields a RowCounter actor handle for
    :func:`imputation_dataset` (None, and nothing started, without `on_progress`). A thread
    polls it every POLL_S seconds and calls ``on_progress(done, total_rows)`` each time the
    count grows (so strictly increasing, at most total_rows); after a successful block it
    waits for the actors' last increments and reports the final count if it grew."""
    if on_progress is None:
        yield None
        return
    import ray

    counter: Any = ray.remote(num_cpus=0)(RowCounter).remote()
    reporter = _Reporter(counter, on_progress, total_rows)
    thread = threading.Thread(target=reporter.poll_until_stopped, name="impute-progress", daemon=True)
    thread.start()
    try:
        yield counter
        reporter.stop.set()
        thread.join()
        reporter.finish()
    finally:
        reporter.stop.set()
        thread.join()
        with contextlib.suppress(Exception):  # never mask the job's own error (Ray may be down)
            ray.kill(counter)


class _Reporter:
    """The driver side of :func:`row_progress`: reads the counter, reports growth only."""

    def __init__(self, counter: Any, on_progress: ProgressCallback, total_rows: int) -> None:
        self.counter, self.on_progress, self.total_rows = counter, on_progress, total_rows
        self.reported = 0
        self.stop = threading.Event()

    def read(self) -> int:
        """The counter's rows (clamped), or the last reported count when the counter does not
        answer: progress is cosmetic, the job's own errors surface from the job itself."""
        import ray

        try:
            return min(int(ray.get(self.counter.get.remote(), timeout=_READ_TIMEOUT_S)), self.total_rows)
        except Exception:
            return self.reported

    def report(self, done: int) -> None:
        if done > self.reported:
            self.reported = done
            self.on_progress(done, self.total_rows)

    def poll_until_stopped(self) -> None:
        while not self.stop.wait(POLL_S):
            self.report(self.read())

    def finish(self) -> None:
        deadline = time.monotonic() + _FINAL_COUNT_WAIT_S
        done = self.read()
        while done < self.total_rows and time.monotonic() < deadline:
            time.sleep(0.05)
            done = self.read()
        self.report(done)


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
    "ACTOR_MAX_RESTARTS",
    "BLOCKS_PER_ACTOR",
    "BLOCK_TARGET_BYTES",
    "NODE_LOSS_RETRIES",
    "SINGLE",
    "TABLE_INPUT_COLUMNS",
    "TABLE_PASSTHROUGH",
    "ImputeActor",
    "ProgressCallback",
    "RowCounter",
    "batch_seed",
    "imputation_dataset",
    "lost_a_node",
    "row_progress",
    "rows_per_block",
    "run_surviving_node_loss",
]
