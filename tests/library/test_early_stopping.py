"""Early stopping: training stops once the validation bound plateaus, not before, and keeps the
best validation epoch's weights. The validation bound is scripted (a fake `mean_bound`), so the
plateau is exactly where the test puts it; the training itself is real."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from missiwae import training
from missiwae.config import ConfigError, ModelConfig, TrainConfig
from missiwae.model import MissIWAE
from missiwae.training import EpochStats, epochs_since_best, load_model, train

# Improves for three epochs, then stays below epoch 3's -85.0 for three, then improves again.
VALIDATION = [-100.0, -90.0, -85.0, -85.5, -86.0, -85.1, -84.0, -84.5, -84.2]


def _data(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = (torch.rand(rows, 784, generator=generator) < 0.2).float()
    return x, torch.rand(rows, 784, generator=generator) < 0.5


def _fresh_model() -> MissIWAE:
    torch.manual_seed(0)
    return MissIWAE.from_config(ModelConfig(latent_dim=4, hidden=(16,)))


def _config(patience: int | None) -> TrainConfig:
    epochs = len(VALIDATION)
    return TrainConfig(K=2, batch_size=32, epochs=epochs, seed=7, early_stopping_patience=patience)


@pytest.fixture
def scripted_validation(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Replace the validation bound by VALIDATION, one value per epoch."""
    values: Iterator[float] = iter(VALIDATION)
    monkeypatch.setattr(training, "mean_bound", lambda *args, **kwargs: next(values))
    return VALIDATION


def _train_recording(
    model: MissIWAE, config: TrainConfig, checkpoint_dir: Path | None = None
) -> tuple[list[EpochStats], dict[int, dict[str, torch.Tensor]]]:
    """Train and return the history and each epoch's weights, as they were at its end."""
    weights: dict[int, dict[str, torch.Tensor]] = {}

    def record(stats: EpochStats) -> None:
        weights[stats.epoch] = {k: v.clone() for k, v in model.state_dict().items()}

    x, mask = _data(64, 0)
    valid = _data(16, 1)
    history = train(
        model,
        x,
        mask,
        config,
        valid=valid,
        checkpoint_dir=checkpoint_dir,
        progress=False,
        on_epoch_end=record,
    )
    return history, weights


def _equal(model: MissIWAE, weights: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())


def test_epochs_since_best_counts_the_epochs_after_the_strict_maximum():
    assert epochs_since_best([-3.0]) == 0
    assert epochs_since_best([-3.0, -2.0, -1.0]) == 0
    assert epochs_since_best([-3.0, -1.0, -2.0, -1.0]) == 2  # equalling the best is no improvement
    assert epochs_since_best(VALIDATION[:6]) == 3


def test_training_stops_after_patience_epochs_on_a_plateau(scripted_validation, tmp_path):
    model = _fresh_model()
    history, weights = _train_recording(model, _config(patience=3), checkpoint_dir=tmp_path)
    # Epochs 4, 5, 6 do not beat epoch 3: training ends after epoch 6, of a cap of 9.
    assert [h.epoch for h in history] == [1, 2, 3, 4, 5, 6]
    assert [h.valid_bound for h in history] == scripted_validation[:6]
    # The model, and the checkpoint `load_model` reads, hold the best epoch's weights.
    assert _equal(model, weights[3]) and not _equal(model, weights[6])
    assert _equal(load_model(tmp_path), weights[3])
    # Running it again resumes into a finished run: nothing more is trained.
    again = _fresh_model()
    x, mask = _data(64, 0)
    resumed = train(again, x, mask, _config(3), valid=_data(16, 1), checkpoint_dir=tmp_path, progress=False)
    assert len(resumed) == 6
    assert _equal(again, weights[3])


def test_training_does_not_stop_before_the_plateau_is_patience_epochs_long(scripted_validation):
    model = _fresh_model()
    history, weights = _train_recording(model, _config(patience=4))
    # Epoch 7 improves after three flat epochs, fewer than 4: training runs to the cap, and the
    # best epoch is then 7 (8 and 9 are below it).
    assert len(history) == len(scripted_validation)
    assert _equal(model, weights[7])


def test_without_patience_training_runs_every_epoch_and_keeps_the_last_weights(scripted_validation):
    model = _fresh_model()
    history, weights = _train_recording(model, _config(patience=None))
    assert len(history) == len(scripted_validation)
    assert _equal(model, weights[len(scripted_validation)])


def test_early_stopping_needs_validation_rows_and_a_positive_patience():
    with pytest.raises(ValueError, match="needs validation rows"):
        train(_fresh_model(), *_data(64, 0), _config(patience=2), progress=False)
    with pytest.raises(ConfigError, match="early_stopping_patience"):
        _config(patience=0)
