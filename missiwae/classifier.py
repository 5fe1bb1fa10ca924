"""Downstream classification of imputed MNIST (the paper's Table 1).

Mattei & Frellsen (2019) judge imputations by training "a two-layer convolutional network with
dropout, similar to Wan et al. (2013)" on imputed versions of the training set and reporting the
test accuracy and test cross-entropy. This module provides that network
(:class:`DropoutConvNet`), a seeded, early-stopped training loop (:func:`train_classifier`) and
the two common readings of *multiple* imputation:

* **union** (the paper's): one network trained on the union of the M imputed copies of the
  training set -- pass the M copies as a list to :func:`train_classifier`; by default with the
  gradient steps of one copy per epoch (``ClassifierConfig.epoch_steps``), so that the union
  is not trained M times longer than the datasets it is compared with;
* **pooling** (Rubin-style): one network per imputed copy, predictions averaged -- train each
  copy separately and pass the results to :func:`pool_predictions`.

Pure torch + numpy.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ClassifierConfig",
    "ClassifierResult",
    "DropoutConvNet",
    "pool_predictions",
    "train_classifier",
]

IMAGE_SIDE = 28
NUM_PIXELS = IMAGE_SIDE * IMAGE_SIDE
NUM_CLASSES = 10
# ClassifierConfig.epoch_steps: an epoch of the training rows' steps, or a pass over all copies.
EPOCH_STEPS = ("rows", "union")
# Evaluation has no backward pass, so bigger batches cost little memory and save Python overhead.
_EVAL_BATCH = 1024


# --------------------------------------------------------------------------- network


class DropoutConvNet(nn.Module):
    """Two-layer convolutional network with dropout (after Wan et al. 2013).

    ``conv5x5(c1) -> ReLU -> maxpool2 -> conv5x5(c2) -> ReLU -> maxpool2 -> fc(hidden) -> ReLU ->
    dropout -> fc(10)``. Padding 2 keeps the 5x5 convolutions size-preserving, so a 28x28 image
    becomes ``c2 x 7 x 7`` after the two poolings.

    Args:
        channels: feature maps of the two convolutions (paper-like default (32, 64)).
        hidden: width of the fully connected ReLU layer.
        dropout: drop probability applied to the hidden layer during training.
        num_classes: number of output logits.
    """

    def __init__(
        self,
        channels: tuple[int, int] = (32, 64),
        hidden: int = 150,
        dropout: float = 0.5,
        num_classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        if len(channels) != 2 or any(_not_positive_int(c) for c in channels):
            raise ValueError(f"channels must be two positive ints, got {channels!r}")
        if _not_positive_int(hidden):
            raise ValueError(f"hidden must be a positive int, got {hidden!r}")
        if _not_positive_int(num_classes):
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = IMAGE_SIDE // 4  # two 2x2 poolings: 28 -> 14 -> 7
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * side * side, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of images given as (B, 784) rows or (B, 1, 28, 28)."""
        if x.ndim == 2 and x.shape[1] == NUM_PIXELS:
            x = x.view(-1, 1, IMAGE_SIDE, IMAGE_SIDE)
        elif x.ndim != 4 or tuple(x.shape[1:]) != (1, IMAGE_SIDE, IMAGE_SIDE):
            raise ValueError(
                f"expected input of shape (B, {NUM_PIXELS}) or (B, 1, {IMAGE_SIDE}, {IMAGE_SIDE}), "
                f"got {tuple(x.shape)}"
            )
        return self.classifier(self.features(x))


def _not_positive_int(value: object) -> bool:
    # bool is an int subclass; True as a width is almost certainly a bug.
    return isinstance(value, bool) or not isinstance(value, int | np.integer) or bool(value < 1)


# ------------------------------------------------------------------- config / result


@dataclass(frozen=True)
class ClassifierConfig:
    """Training settings of :func:`train_classifier`.

    Attributes:
        epochs: maximum number of epochs (early stopping may end sooner).
        epoch_steps: what one epoch is, in gradient steps. ``"rows"`` (default):
            ceil(training rows / batch_size) steps whatever the number of copies, so every
            dataset, one copy or the union of M, gets the same cap on gradient steps
            (``epochs`` of them) and early stopping judges the same compute; M copies are
            then gone through once every M epochs, reshuffled at the end of each pass.
            ``"union"``: one pass over all M copies, M times the steps of one copy.
        batch_size: minibatch size of Adam.
        learning_rate: Adam step size.
        patience: stop after this many epochs without a lower validation cross-entropy.
        seed: drives weight initialisation, dropout, shuffling and the validation split.
        device: torch device to train on.
        validation_fraction: share of the training *rows* held out for early stopping when
            no explicit validation set is given.
        num_threads: torch intra-op threads during training (None = leave as is). Note that
            this setting is process-wide; it is restored afterwards.
        channels, hidden, dropout: architecture of :class:`DropoutConvNet`.
    """

    epochs: int = 50
    batch_size: int = 128
    learning_rate: float = 1e-3
    patience: int = 5
    seed: int = 0
    device: str = "cpu"
    validation_fraction: float = 0.1
    num_threads: int | None = None
    epoch_steps: str = "rows"
    channels: tuple[int, int] = (32, 64)
    hidden: int = 150
    dropout: float = 0.5

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience", "hidden"):
            if _not_positive_int(getattr(self, name)):
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.num_threads is not None and _not_positive_int(self.num_threads):
            raise ValueError(f"num_threads must be a positive int or None, got {self.num_threads!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be positive and finite, got {self.learning_rate!r}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}")
        if self.epoch_steps not in EPOCH_STEPS:
            raise ValueError(f"epoch_steps must be one of {EPOCH_STEPS}, got {self.epoch_steps!r}")
        if len(self.channels) != 2 or any(_not_positive_int(c) for c in self.channels):
            raise ValueError(f"channels must be two positive ints, got {self.channels!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")


@dataclass
class ClassifierResult:
    """Outcome of :func:`train_classifier`, measured with the best (early-stopped) weights.

    Attributes:
        test_accuracy: share of test rows whose most probable class is the label.
        test_cross_entropy: mean negative log-likelihood of the test labels, in nats.
        best_epoch: 1-based epoch with the lowest validation cross-entropy (the weights kept).
        epochs_run: epochs actually trained (<= config.epochs).
        history: one dict per epoch: ``epoch``, ``train_loss`` (mean training cross-entropy,
            dropout on), ``valid_loss``, ``valid_accuracy``, ``num_train_examples`` (examples
            seen that epoch: the training rows, or M copies of them with ``epoch_steps="union"``)
            and ``num_valid_examples``.
        probabilities: float32 (N_test, 10) predicted class probabilities of the best model,
            kept so that several networks' predictions can be pooled.
    """

    test_accuracy: float
    test_cross_entropy: float
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros((0, NUM_CLASSES), np.float32))


# ------------------------------------------------------------------ input checking


def _as_images(x: object, name: str, num_rows: int | None = None) -> np.ndarray:
    """float32 (N, 784) copy-free view of ``x`` when possible; raise ValueError when unusable."""
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if arr.ndim != 2 or arr.shape[1] != NUM_PIXELS:
        raise ValueError(f"{name} must have shape (N, {NUM_PIXELS}), got {arr.shape}")
    if num_rows is not None and arr.shape[0] != num_rows:
        raise ValueError(f"{name} has {arr.shape[0]} rows but there are {num_rows} labels")
    if not np.isfinite(arr).all():
        # The classifier cannot see holes: every missing entry must have been imputed.
        raise ValueError(f"imputed data must be complete: {name} contains NaN or infinite values")
    return arr


def _as_labels(y: object, name: str) -> np.ndarray:
    """int64 (N,) labels in 0..9; raise ValueError otherwise."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be integers in 0..{NUM_CLASSES - 1}, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= NUM_CLASSES):
        raise ValueError(
            f"{name} must be integers in 0..{NUM_CLASSES - 1}, found values in [{arr.min()}, {arr.max()}]"
        )
    return arr.astype(np.int64, copy=False)


def _as_copies(train_sets: Sequence[np.ndarray] | np.ndarray, num_rows: int) -> list[np.ndarray]:
    """The M imputed copies as a list of float32 (N, 784) arrays."""
    if isinstance(train_sets, np.ndarray):
        if train_sets.ndim == 3:  # (M, N, 784): M stacked copies
            sets: list[np.ndarray] = list(train_sets)
        else:
            sets = [train_sets]
    else:
        sets = list(train_sets)
    if not sets:
        raise ValueError("train_sets is empty: pass one imputed training set or a list of M copies")
    return [_as_images(s, f"train_sets[{i}]", num_rows) for i, s in enumerate(sets)]


def _split_rows(num_rows: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train_rows, valid_rows) partition of range(num_rows), both sorted."""
    if num_rows < 2:
        raise ValueError(f"need at least 2 training rows to hold out a validation split, got {num_rows}")
    num_valid = min(max(1, round(fraction * num_rows)), num_rows - 1)
    # A stream distinct from torch's seed use, so changing one does not silently shift the other.
    perm = np.random.Generator(np.random.PCG64([seed, 0xC1A55])).permutation(num_rows)
    return np.sort(perm[num_valid:]), np.sort(perm[:num_valid])


# ------------------------------------------------------------------------- training


def _batches(index: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Minibatches of `index` without end: pass after pass, each a fresh permutation, the last
    batch of a pass shorter when batch_size does not divide it (one copy and one epoch per pass:
    the plain epoch loop, batch for batch)."""
    count = int(index.shape[0])
    while True:
        order = index[torch.randperm(count, generator=generator).to(index.device)]
        for start in range(0, count, batch_size):
            yield order[start : start + batch_size]


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """(mean cross-entropy, accuracy, log-probabilities (N, 10)) in eval mode (dropout off)."""
    model.eval()
    log_probs = torch.cat(
        [F.log_softmax(model(x[i : i + _EVAL_BATCH]), dim=1) for i in range(0, x.shape[0], _EVAL_BATCH)]
    )
    # float64 accumulation: a float32 sum over 10^4-10^5 terms would lose digits.
    nll = -log_probs.gather(1, y[:, None]).double().mean().item()
    accuracy = (log_probs.argmax(dim=1) == y).double().mean().item()
    return nll, accuracy, log_probs


def train_classifier(
    train_sets: list[np.ndarray] | np.ndarray,
    train_labels: np.ndarray,
    test_x: np.ndarray,
    test_labels: np.ndarray,
    config: ClassifierConfig,
    valid: tuple[np.ndarray, np.ndarray] | None = None,
) -> ClassifierResult:
    """Train a :class:`DropoutConvNet` on imputed data, early-stopped on validation cross-entropy.

    Args:
        train_sets: one imputed training set (N, 784), or a list of M imputed copies of the same
            N rows (or an (M, N, 784) array). With M copies the network is trained on their union
            (M x N examples per epoch, labels repeated) -- the paper's use of multiple imputation.
        train_labels: int (N,) labels in 0..9, shared by all copies.
        test_x: complete float (N_test, 784) test images.
        test_labels: int (N_test,) test labels.
        config: training settings.
        valid: optional explicit validation set ``(x (N_valid, 784), labels (N_valid,))``. When
            None, a seeded ``config.validation_fraction`` of the training *rows* is held out from
            every copy, so no imputation of a validation row is ever trained on; the validation
            set is then all M copies of those rows (the same imputation distribution as training).

    Returns:
        :class:`ClassifierResult` of the weights with the lowest validation cross-entropy.

    Raises:
        ValueError: empty ``train_sets``, mismatched shapes, NaN/inf anywhere in the images
            ("imputed data must be complete"), or labels outside 0..9.
        RuntimeError: the validation loss was never finite (training diverged from the start).
    """
    labels = _as_labels(train_labels, "train_labels")
    copies = _as_copies(train_sets, labels.shape[0])
    test_labels_np = _as_labels(test_labels, "test_labels")
    test_np = _as_images(test_x, "test_x", test_labels_np.shape[0])
    if test_labels_np.shape[0] == 0:
        raise ValueError("the test set is empty")
    num_rows, num_copies = labels.shape[0], len(copies)
    if num_rows == 0:
        raise ValueError("train_labels is empty: there is nothing to train on")

    # One concatenated (M*N, 784) array, addressed by flat index copy * N + row: a single copy of
    # the data, and holding a row out of every copy is just dropping its M flat indices.
    all_x = np.concatenate(copies) if num_copies > 1 else copies[0]
    all_y = np.tile(labels, num_copies)
    offsets = (np.arange(num_copies) * num_rows)[:, None]
    if valid is None:
        train_rows, valid_rows = _split_rows(num_rows, config.validation_fraction, config.seed)
        train_index = (offsets + train_rows[None, :]).ravel()
        valid_index = (offsets + valid_rows[None, :]).ravel()
        valid_x_np, valid_y_np = all_x[valid_index], all_y[valid_index]
    else:
        if not isinstance(valid, tuple) or len(valid) != 2:
            raise ValueError("valid must be a tuple (x, labels) or None")
        valid_y_np = _as_labels(valid[1], "valid labels")
        valid_x_np = _as_images(valid[0], "valid x", valid_y_np.shape[0])
        if valid_y_np.shape[0] == 0:
            raise ValueError("the validation set is empty")
        train_index = np.arange(num_copies * num_rows)

    device = torch.device(config.device)
    x_train = torch.from_numpy(np.ascontiguousarray(all_x)).to(device)
    y_train = torch.from_numpy(np.ascontiguousarray(all_y)).to(device)
    train_idx = torch.from_numpy(train_index).to(device)
    x_valid = torch.from_numpy(np.ascontiguousarray(valid_x_np)).to(device)
    y_valid = torch.from_numpy(np.ascontiguousarray(valid_y_np)).to(device)
    x_test = torch.from_numpy(np.ascontiguousarray(test_np)).to(device)
    y_test = torch.from_numpy(np.ascontiguousarray(test_labels_np)).to(device)
    num_train = int(train_idx.shape[0])

    previous_threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    # Shuffling uses its own CPU generator; weight init and dropout draw from the global RNG,
    # which is seeded inside a fork so the caller's random state is left untouched.
    shuffle_gen = torch.Generator(device="cpu").manual_seed(config.seed)
    fork_devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(config.seed)
            model = DropoutConvNet(config.channels, config.hidden, config.dropout).to(device)
            # Fused: one kernel for all parameters (see missiwae.train_step.make_optimizer).
            optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, fused=True)

            history: list[dict[str, float]] = []
            best_loss, best_epoch, best_state = math.inf, 0, None
            epochs_without_improvement = 0
            batches = _batches(train_idx, config.batch_size, shuffle_gen)
            rows_per_epoch = num_train if config.epoch_steps == "union" else num_train // num_copies
            steps_per_epoch = math.ceil(rows_per_epoch / config.batch_size)
            for epoch in range(1, config.epochs + 1):
                model.train()
                loss_sum, seen = 0.0, 0
                for _ in range(steps_per_epoch):
                    batch = next(batches)
                    loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    loss_sum += loss.item() * batch.shape[0]
                    seen += int(batch.shape[0])
                valid_loss, valid_accuracy, _ = _evaluate(model, x_valid, y_valid)
                history.append(
                    {
                        "epoch": epoch,
                        "train_loss": loss_sum / seen,
                        "valid_loss": valid_loss,
                        "valid_accuracy": valid_accuracy,
                        "num_train_examples": seen,
                        "num_valid_examples": int(y_valid.shape[0]),
                    }
                )
                # A NaN loss compares False, so a diverged epoch counts as "no improvement".
                if valid_loss < best_loss:
                    best_loss, best_epoch = valid_loss, epoch
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    epochs_without_improvement = 0
                else:
                    epochs_without_improvement += 1
                    if epochs_without_improvement >= config.patience:
                        break

            if best_state is None:
                raise RuntimeError(
                    "the validation cross-entropy was never finite: training diverged; "
                    "lower the learning rate"
                )
            model.load_state_dict(best_state)
            test_loss, test_accuracy, test_log_probs = _evaluate(model, x_test, y_test)
    finally:
        torch.set_num_threads(previous_threads)

    return ClassifierResult(
        test_accuracy=test_accuracy,
        test_cross_entropy=test_loss,
        best_epoch=best_epoch,
        epochs_run=len(history),
        history=history,
        probabilities=test_log_probs.exp().cpu().numpy().astype(np.float32, copy=False),
    )


# -------------------------------------------------------------------------- pooling


def pool_predictions(results: Sequence[ClassifierResult], test_labels: np.ndarray) -> tuple[float, float]:
    """Rubin-style pooling of several networks (e.g. one per imputed copy): average their
    predicted test probabilities and score the average.

    Args:
        results: results of :func:`train_classifier` on the same test set.
        test_labels: int (N_test,) labels of that test set.

    Returns:
        ``(accuracy, cross_entropy)`` of the averaged probabilities; the cross-entropy is the
        mean negative log-likelihood in nats, each term capped at -log(float32 tiny) ~ 87.3
        because float32 probabilities can underflow to exactly 0.
    """
    if not results:
        raise ValueError("results is empty: pass at least one ClassifierResult")
    labels = _as_labels(test_labels, "test_labels")
    expected = (labels.shape[0], NUM_CLASSES)
    for i, result in enumerate(results):
        if result.probabilities.shape != expected:
            raise ValueError(
                f"results[{i}].probabilities has shape {result.probabilities.shape}, expected {expected}"
            )
    mean_probs = np.mean([r.probabilities.astype(np.float64) for r in results], axis=0)
    accuracy = float(np.mean(mean_probs.argmax(axis=1) == labels))
    p_true = np.maximum(mean_probs[np.arange(labels.shape[0]), labels], np.finfo(np.float32).tiny)
    cross_entropy = float(-np.mean(np.log(p_true)))
    return accuracy, cross_entropy
