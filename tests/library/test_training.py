"""The training loop: seeding, checkpoints, resume, atomic writes."""

from __future__ import annotations

import pytest
import torch

from missiwae.config import ModelConfig, TrainConfig
from missiwae.model import MissIWAE
from missiwae.training import WEIGHTS_FILE, EpochStats, TrainingDiverged, load_model, train


def _data(rows: int = 120, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = (torch.rand(rows, 784, generator=generator) < 0.2).float()
    return x, torch.rand(rows, 784, generator=generator) < 0.5


def _fresh_model() -> MissIWAE:
    torch.manual_seed(0)
    return MissIWAE.from_config(ModelConfig(latent_dim=4, hidden=(16,), imputation="learned"))


def _config(epochs: int) -> TrainConfig:
    return TrainConfig(K=3, batch_size=32, epochs=epochs, learning_rate=1e-2, seed=7)


def _states_equal(a: MissIWAE, b: MissIWAE) -> bool:
    return all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_same_seed_gives_the_same_trained_model():
    x, mask = _data()
    first, second = _fresh_model(), _fresh_model()
    train(first, x, mask, _config(2), progress=False)
    train(second, x, mask, _config(2), progress=False)
    assert _states_equal(first, second)


def test_resumed_training_matches_an_uninterrupted_run(tmp_path):
    x, mask = _data()
    valid = _data(40, seed=1)
    straight = _fresh_model()
    straight_history = train(straight, x, mask, _config(3), valid=valid, progress=False)
    interrupted = _fresh_model()
    train(interrupted, x, mask, _config(1), valid=valid, checkpoint_dir=tmp_path, progress=False)
    resumed = _fresh_model()  # a new process would start from fresh weights
    history = train(resumed, x, mask, _config(3), valid=valid, checkpoint_dir=tmp_path, progress=False)
    assert [h.epoch for h in history] == [1, 2, 3]
    assert _states_equal(straight, resumed)
    assert [h.valid_bound for h in history] == [h.valid_bound for h in straight_history]
    assert _states_equal(load_model(tmp_path), resumed)


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    x, mask = _data()
    model = _fresh_model()
    train(model, x, mask, _config(1), checkpoint_dir=tmp_path, progress=False)
    saved = load_model(tmp_path)

    def broken_save(obj, path):
        with open(path, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        train(model, x, mask, _config(2), checkpoint_dir=tmp_path, progress=False)
    monkeypatch.undo()
    assert _states_equal(load_model(tmp_path), saved)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", WEIGHTS_FILE]


def test_a_corrupt_checkpoint_gets_an_error_naming_the_file(tmp_path):
    x, mask = _data()
    train(_fresh_model(), x, mask, _config(1), checkpoint_dir=tmp_path, progress=False)
    (tmp_path / WEIGHTS_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=WEIGHTS_FILE):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_model(tmp_path / "elsewhere")


def test_training_rejects_bad_data_before_it_starts():
    x, mask = _data()
    with pytest.raises(TypeError, match="boolean"):
        train(_fresh_model(), x, mask.float(), _config(1), progress=False)
    with pytest.raises(ValueError, match="observed"):
        train(_fresh_model(), torch.where(mask, torch.nan, x), mask, _config(1), progress=False)


def test_a_huge_learning_rate_stops_training_with_an_error_naming_the_epoch(tmp_path):
    x, mask = _data()
    config = TrainConfig(K=3, batch_size=32, epochs=3, learning_rate=1e30, seed=7)
    with pytest.raises(TrainingDiverged, match=r"diverged at epoch 1: the training bound is (nan|-?inf)"):
        train(
            _fresh_model(), x, mask, config, valid=_data(40, seed=1), checkpoint_dir=tmp_path, progress=False
        )
    assert not (tmp_path / WEIGHTS_FILE).exists()  # no non-finite checkpoint was written


def test_divergence_keeps_the_last_finite_checkpoint(tmp_path):
    """Weights turned NaN after epoch 2 (as a diverging step would) stop training at epoch 3;
    the checkpoint on disk stays epoch 2's, and the error is a one-line user error."""
    x, mask = _data()
    model = _fresh_model()

    def poison(stats: EpochStats) -> None:
        if stats.epoch == 2:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
            saved.append(load_model(tmp_path))

    saved: list[MissIWAE] = []
    with pytest.raises(TrainingDiverged, match="epoch 3") as raised:
        train(model, x, mask, _config(4), checkpoint_dir=tmp_path, progress=False, on_epoch_end=poison)
    assert isinstance(raised.value, ValueError)  # what the command line prints as one line, exit 2
    assert "the checkpoint of epoch 2, the last finite one" in str(raised.value)
    state = torch.load(tmp_path / WEIGHTS_FILE, weights_only=True)
    assert [entry["epoch"] for entry in state["history"]] == [1, 2]
    assert _states_equal(load_model(tmp_path), saved[0])
