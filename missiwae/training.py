"""One-process training: Adam on −mean L_K over minibatches (tests, notebooks, each Ray worker).

`train_epoch` is the unit a distributed worker calls on its own shard; `train` adds seeding,
validation, checkpoints and resume around it, early stopping on the validation bound, and the
divergence check: a non-finite bound stops training with `TrainingDiverged`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from missiwae.atomic import atomic_file, write_text_atomic
from missiwae.config import ConfigError, ModelConfig, TrainConfig, from_dict, to_dict
from missiwae.evaluation import mean_bound
from missiwae.model import MissIWAE, make_generator
from missiwae.train_step import TrainStep, make_optimizer

WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "config.json"


class TrainingDiverged(ValueError):
    """The bound became NaN or infinite: the settings (most often the learning rate) made
    training diverge. A ValueError, so the command line prints it as one line (exit status 2);
    the checkpoint on disk is the last epoch whose bounds were finite."""


@dataclasses.dataclass
class EpochStats:
    epoch: int  # 1-based
    train_bound: float  # mean L_K over the epoch's minibatches (as optimised)
    valid_bound: float | None  # mean L_K on the validation rows, after the epoch
    seconds: float
    # Training rows the epoch saw: fewer than N when `train`'s deadline cut it short. None in
    # the history of a checkpoint written before this field existed (those epochs were whole).
    rows: int | None = None


def minibatches(
    num_rows: int, batch_size: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> Iterator[torch.Tensor]:
    """Row indices of one shuffled epoch, `batch_size` at a time (the last batch may be smaller),
    on `device`. The permutation is drawn on the CPU (the same for every device) and moved in
    one copy: a copy per minibatch would make the CPU wait for the GPU at every step."""
    order = torch.randperm(num_rows, generator=generator).to(device)
    yield from order.split(batch_size)


def train_epoch(
    step: TrainStep,
    batch_size: int,
    shuffle_generator: torch.Generator,
    progress: Callable[[Iterator[torch.Tensor]], Iterator[torch.Tensor]] | None = None,
    deadline: float | None = None,
) -> float:
    """One pass over the step's training rows (x, mask) (N, D) in minibatches of `batch_size`,
    shuffled by `shuffle_generator`; returns the mean bound of its minibatches.

    `step` holds the model, optimiser, data, K and sampling generator (an eager `TrainStep`,
    or one replayed from a CUDA graph). With `deadline` (a wall-clock time, `time.time()`) the
    pass stops at the first minibatch boundary at or after it, after one minibatch at least.
    """
    step.model.train()
    x = step.x
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    count = 0
    batches = minibatches(x.shape[0], batch_size, shuffle_generator, x.device)
    for index in progress(batches) if progress else batches:
        total += step(index)
        count += index.numel()
        # Read the clock only when asked: without a deadline the loop is the one it always was.
        if deadline is not None and time.time() >= deadline:
            break
    return float(total) / max(count, 1)


def epochs_since_best(valid_bounds: Sequence[float]) -> int:
    """Epochs after the one with the highest validation bound (the first, on ties): 0 when the
    last epoch is the best. Improving means strictly higher."""
    best = max(range(len(valid_bounds)), key=lambda i: (valid_bounds[i], -i))
    return len(valid_bounds) - 1 - best


def _valid_bounds(history: Sequence[EpochStats]) -> list[float] | None:
    """The validation bound of every epoch, or None when an epoch had none (nothing to stop on)."""
    bounds = [entry.valid_bound for entry in history]
    return None if not bounds or None in bounds else [float(b) for b in bounds if b is not None]


def plateaued(history: Sequence[EpochStats], patience: int | None) -> bool:
    """Early stopping: the validation bound has not improved for `patience` epochs."""
    bounds = _valid_bounds(history)
    return patience is not None and bounds is not None and epochs_since_best(bounds) >= patience


def best_weights(
    model: torch.nn.Module,
    history: Sequence[EpochStats],
    patience: int | None,
    best: dict[str, torch.Tensor] | None,
) -> dict[str, torch.Tensor] | None:
    """What to keep as `best_model` after the last epoch of `history`: with early stopping on
    and that epoch the best so far (strictly), a copy of `model`'s weights; else `best`."""
    bounds = _valid_bounds(history)
    if patience is None or bounds is None or epochs_since_best(bounds) != 0:
        return best
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def non_finite_bound(stats: EpochStats) -> str | None:
    """The name ("training", "validation") of the first of the epoch's bounds that is NaN or infinite."""
    bounds = {"training": stats.train_bound, "validation": stats.valid_bound}
    return next((name for name, b in bounds.items() if b is not None and not math.isfinite(b)), None)


def check_finite(stats: EpochStats, checkpoint_dir: str | Path | None) -> None:
    """Raise `TrainingDiverged` naming the epoch when one of its bounds is NaN or infinite."""
    name = non_finite_bound(stats)
    if name is None:
        return
    bound = stats.train_bound if name == "training" else stats.valid_bound
    kept = ""
    if checkpoint_dir is not None:
        last = stats.epoch - 1
        kept = f"; {checkpoint_dir} keeps " + (
            f"the checkpoint of epoch {last}, the last finite one" if last else "no checkpoint"
        )
    raise TrainingDiverged(
        f"training diverged at epoch {stats.epoch}: the {name} bound is {bound}{kept}; "
        "lower train.learning_rate"
    )


def _counting(
    progress: Callable[[Iterator[torch.Tensor]], Iterator[torch.Tensor]] | None, counter: list[int]
) -> Callable[[Iterator[torch.Tensor]], Iterator[torch.Tensor]]:
    """A `train_epoch` progress hook that adds each minibatch's rows to counter[0] as it hands
    the minibatch over: `train_epoch` trains on every one it is handed, so counter[0] ends as
    the rows the epoch saw, however early a deadline cut it."""

    def wrap(batches: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        for index in progress(batches) if progress else batches:
            counter[0] += index.numel()
            yield index

    return wrap


def train(
    model: MissIWAE,
    x: torch.Tensor,
    mask: torch.Tensor,
    config: TrainConfig,
    *,
    valid: tuple[torch.Tensor, torch.Tensor] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    on_epoch_end: Callable[[EpochStats], None] | None = None,
    deadline: float | None = None,
) -> list[EpochStats]:
    """Train `model` in place for `config.epochs` epochs; returns the per-epoch history.

    With `config.early_stopping_patience` (needs `valid`), training stops once the validation
    bound has not improved for that many epochs, `config.epochs` being the cap, and `model`
    ends with the weights of its best validation epoch; the checkpoint keeps those as well
    (`best_model`, what `load_model` loads) beside the last epoch's, which resume continues.

    An epoch whose training or validation bound is NaN or infinite raises `TrainingDiverged`
    naming it, before its checkpoint is written: the one on disk stays the last finite one.

    With `checkpoint_dir`, a checkpoint is written atomically after every epoch and, when
    `resume` is set and one exists there, training continues after its last epoch with the
    same optimiser state and random streams (so a resumed run matches an uninterrupted one).

    With `deadline` (a wall-clock time, `time.time()`), training stops at the first minibatch
    boundary at or after it, though never before this call has run one minibatch. The cut
    epoch is validated, checkpointed and recorded like any other, with the rows it saw in
    `EpochStats.rows` (a resumed run counts it as done). Time-boxed runs set `config.epochs`
    as an upper bound and let the deadline end training.

    With `config.cuda_graph` (on CUDA) every full-size step is replayed from a CUDA graph
    (`missiwae.train_step`): the same numbers as the eager step, one launch instead of hundreds.
    """
    model.check_batch(x, mask)
    if valid is not None:
        model.check_batch(*valid)
    patience = config.early_stopping_patience
    if patience is not None and valid is None:
        raise ValueError("train.early_stopping_patience needs validation rows (valid=...)")
    device = torch.device(config.device)
    model.to(device)
    x, mask = x.to(device), mask.to(device)
    if valid is not None:
        valid = (valid[0].to(device), valid[1].to(device))
    optimizer = make_optimizer(model, config.learning_rate, capturable=config.cuda_graph)
    shuffle_generator = make_generator(config.seed)
    sample_generator = make_generator(config.seed + 1, device)
    valid_generator = make_generator(config.seed + 2, device)
    history: list[EpochStats] = []
    best: dict[str, torch.Tensor] | None = None  # weights of the best validation epoch so far
    if checkpoint_dir is not None and resume and (Path(checkpoint_dir) / WEIGHTS_FILE).exists():
        state = load_training_state(checkpoint_dir, model, optimizer)
        shuffle_generator.set_state(state["shuffle_rng"])
        sample_generator.set_state(state["sample_rng"])
        valid_generator.set_state(state["valid_rng"])
        history = [EpochStats(**entry) for entry in state["history"]]
        best = state.get("best_model")
        for group in optimizer.param_groups:  # the saved groups carry the saving run's setting
            group["capturable"] = config.cuda_graph
    step = TrainStep(
        model,
        optimizer,
        x,
        mask,
        config.K,
        sample_generator,
        cuda_graph=config.cuda_graph,
        batch_size=config.batch_size,
    )
    first_epoch = len(history) + 1
    for epoch in range(first_epoch, config.epochs + 1):
        if deadline is not None and epoch > first_epoch and time.time() >= deadline:
            break
        if plateaued(history, patience):
            break
        started = time.perf_counter()
        num_batches = -(-x.shape[0] // config.batch_size)
        bar = _progress_bar(epoch, config.epochs, num_batches) if progress else None
        rows = [0]
        train_bound = train_epoch(step, config.batch_size, shuffle_generator, _counting(bar, rows), deadline)
        valid_bound = None
        if valid is not None:
            model.eval()
            valid_bound = mean_bound(model, *valid, config.K, generator=valid_generator)
        stats = EpochStats(epoch, train_bound, valid_bound, time.perf_counter() - started, rows[0])
        check_finite(stats, checkpoint_dir)
        history.append(stats)
        best = best_weights(model, history, patience, best)
        if checkpoint_dir is not None:
            save_checkpoint(
                checkpoint_dir,
                model,
                optimizer,
                config,
                history,
                {
                    "shuffle_rng": shuffle_generator.get_state(),
                    "sample_rng": sample_generator.get_state(),
                    "valid_rng": valid_generator.get_state(),
                },
                best_model=best,
            )
        if on_epoch_end is not None:
            on_epoch_end(stats)
    if best is not None:
        model.load_state_dict(best)
    model.eval()
    return history


def _progress_bar(
    epoch: int, epochs: int, num_batches: int
) -> Callable[[Iterator[torch.Tensor]], Iterator[torch.Tensor]]:
    from tqdm.auto import tqdm

    def wrap(batches: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        bar = tqdm(batches, total=num_batches, desc=f"epoch {epoch}/{epochs}", leave=False, unit="batch")
        return iter(bar)

    return wrap


def save_checkpoint(
    directory: str | Path,
    model: MissIWAE,
    optimizer: torch.optim.Optimizer | None,
    train_config: TrainConfig | None,
    history: list[EpochStats],
    rng_states: dict[str, torch.Tensor] | None = None,
    *,
    best_model: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write model.pt (state dicts, history, RNG states) and config.json, each atomically.

    `best_model`: the weights of the best validation epoch (early stopping), which `load_model`
    prefers to the last epoch's `model` weights (those stay for resume)."""
    if model.config is None:
        raise ValueError("only models built with MissIWAE.from_config can be checkpointed")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {
        "model": model.state_dict(),
        "history": [dataclasses.asdict(entry) for entry in history],
        **(rng_states or {}),
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if best_model is not None:
        state["best_model"] = best_model
    config = {"model": to_dict(model.config)}
    if train_config is not None:
        config["train"] = to_dict(train_config)
    with atomic_file(directory / WEIGHTS_FILE) as temporary:
        torch.save(state, temporary)
    write_text_atomic(directory / CONFIG_FILE, json.dumps(config, indent=2))


def read_checkpoint_state(directory: str | Path) -> dict[str, Any]:
    """The dict saved in `directory`/model.pt (weights, optimiser state, history, RNG states),
    read with `weights_only=True`; a missing file is a FileNotFoundError and an unreadable one
    a ValueError, each naming the file. The one place a checkpoint is read from disk."""
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which one
        raise ValueError(f"checkpoint {path} cannot be read: {error}") from error


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> MissIWAE:
    """Rebuild a trained model from a checkpoint directory (config.json + model.pt)."""
    config_path = Path(directory) / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"no checkpoint config at {config_path}")
    try:
        saved = json.loads(config_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"checkpoint config {config_path} is not valid JSON ({error})") from error
    if not isinstance(saved, dict) or "model" not in saved:
        raise ValueError(f"checkpoint config {config_path} has no 'model' section")
    try:
        model_config = from_dict(ModelConfig, saved["model"])
    except ConfigError as error:
        raise ConfigError(f"checkpoint config {config_path}: {error}") from error
    model = MissIWAE.from_config(model_config)
    state = read_checkpoint_state(directory)
    if isinstance(state, dict) and "best_model" in state:  # early stopping: the best epoch's
        state = {**state, "model": state["best_model"]}
    _load_weights(model, state, directory)
    return model.to(device).eval()


def load_training_state(
    directory: str | Path, model: MissIWAE, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Load weights and optimiser state in place; return the rest (history, RNG states)."""
    state = read_checkpoint_state(directory)
    _load_weights(model, state, directory)
    path = Path(directory) / WEIGHTS_FILE
    if "optimizer" not in state:
        raise ValueError(f"checkpoint {path} holds no optimiser state to resume from")
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (KeyError, RuntimeError, ValueError) as error:
        raise ValueError(f"checkpoint {path}: optimiser state does not fit the model ({error})") from error
    return state


def _load_weights(model: MissIWAE, state: dict[str, Any], directory: str | Path) -> None:
    """Load state["model"] into `model`; a checkpoint of another configuration is a ValueError
    that says so (torch's own message lists every mismatched tensor)."""
    path = Path(directory) / WEIGHTS_FILE
    weights = state.get("model") if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise ValueError(f"checkpoint {path} holds no model weights (not a missiwae checkpoint?)")
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        first = " ".join(str(error).split())[:300]
        raise ValueError(
            f"checkpoint {path} was written for another model configuration than {model.config}: {first}"
        ) from error
