"""Live per-epoch results on the driver while Ray Train runs.

    Train controller (an actor)                 driver (the caller of run_training)
      ForwardHistory.after_report ── Ray Queue ──> fit_streaming: main thread drains the queue,
      (Ray's ray.train.UserCallback)               EpochDelivery -> on_epoch(entry), in order;
                                                   trainer.fit() runs on a helper thread

Why this bridge and not Ray's mechanism alone: Ray Train V2's supported hook for reported
metrics is `ray.train.UserCallback.after_report`, and it is used here, but Ray runs it inside
the Train controller actor, a separate process, while `TorchTrainer.fit()` blocks the driver
until the whole run ends (it waits on the controller actor's `run`). Ray Train V2 (2.60) has
no driver-side per-report callback or result stream. The caller's `on_epoch` is a driver
closure (an MLflow stage run, a Tune trial's `ray.tune.report`, a test's list) that can neither
be shipped to the controller nor wait for fit() to return, so the callback forwards each
history through a `ray.util.queue.Queue` and the driver hands it over as it arrives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipelines.runtime import start_ray_thread
from pipelines.train_worker import DIVERGED, read_pipeline_state

__all__ = ["EpochDelivery", "fit_streaming", "history_forwarder"]


def history_forwarder(queue: Any) -> Any:
    """A `ray.train.UserCallback` that puts each report's history on `queue` (a Ray Queue).

    It runs in the Train controller after every report whose checkpoint has been persisted; the
    checkpoint's history (not only the last entry) is sent, so epochs restored from an earlier
    run reach the driver too. Ray Train is imported here so importing this module does not.
    """
    from ray.train import UserCallback

    class ForwardHistory(UserCallback):
        def __init__(self, queue: Any):
            self.queue = queue

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            if checkpoint is not None:
                with checkpoint.as_directory() as directory:
                    history, _ = read_pipeline_state(directory)
            else:
                history = [metrics[0]]
            self.queue.put(history)

    return ForwardHistory(queue)


class EpochDelivery:
    """Calls on_epoch once per epoch, in epoch order, whatever order histories arrive in."""

    def __init__(self, on_epoch: Callable[[dict[str, Any]], None] | None):
        self.on_epoch = on_epoch
        self.delivered = 0  # epochs 1..delivered have been handed over
        # The workers' last report when a bound became non-finite; never delivered as an epoch.
        # (fit()'s Result only carries reports that came with a checkpoint.)
        self.diverged: dict[str, Any] | None = None

    def __call__(self, history: list[dict[str, Any]]) -> None:
        for entry in sorted(history, key=lambda e: e["epoch"]):
            if entry.get(DIVERGED):
                self.diverged = dict(entry)
            elif entry["epoch"] == self.delivered + 1:
                if self.on_epoch is not None:
                    self.on_epoch(dict(entry))
                self.delivered += 1


def fit_streaming(trainer: Any, queue: Any, deliver: EpochDelivery) -> Any:
    """trainer.fit() on a helper thread while this thread hands histories to `deliver` as
    they come; returns fit()'s Result, or raises fit()'s error, then the first `deliver` error.

    `deliver` runs on the caller's thread: what on_epoch touches may be thread-bound (Tune's
    report in a trial, MLflow's fluent active run). Train V2's fit() supports running off the
    main thread (that is how Tune runs it). Interrupted (Ctrl-C), this returns at once and
    leaves fit() blocked in Ray: `pipelines.runtime.stop_ray` then knows not to shut Ray down
    under it.
    """
    from ray.util.queue import Empty

    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as error:
            outcome["error"] = error

    thread = start_ray_thread(fit, name="ray-train-fit")
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
