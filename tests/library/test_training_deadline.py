"""train(deadline=...): the time-boxed runs stop the library's one loop at a minibatch boundary.

The clock is the number of minibatches run so far (each call of `model.bound` ticks it), so
the tests say exactly where training must stop, independent of how fast this machine is.
"""

from __future__ import annotations

import time
import types
from pathlib import Path

import torch

from missiwae import training
from missiwae.model import MissIWAE, make_generator
from missiwae.train_step import TrainStep, make_optimizer
from missiwae.training import WEIGHTS_FILE, EpochStats, train, train_epoch
from tests.library.test_training import _config, _data, _fresh_model, _states_equal

ROWS, BATCH = 120, 32  # _data() and _config(): four minibatches an epoch (32, 32, 32, 24 rows)


def _minibatch_clock(monkeypatch, model: MissIWAE) -> None:
    """training's time.time() returns the number of minibatches the model has trained on."""
    ticks = [0]
    bound = model.bound

    def counting_bound(*args, **kwargs):
        ticks[0] += 1
        return bound(*args, **kwargs)

    monkeypatch.setattr(model, "bound", counting_bound)
    clock = types.SimpleNamespace(time=lambda: float(ticks[0]), perf_counter=time.perf_counter)
    monkeypatch.setattr(training, "time", clock)


def test_a_deadline_stops_at_the_first_minibatch_boundary_and_records_the_cut_epoch(monkeypatch):
    x, mask = _data()
    model = _fresh_model()
    _minibatch_clock(monkeypatch, model)
    seen: list[EpochStats] = []
    history = train(model, x, mask, _config(5), progress=False, on_epoch_end=seen.append, deadline=6.0)
    # Epoch 1 whole (4 minibatches), epoch 2 cut after its 2nd minibatch (the 6th in all).
    assert [h.epoch for h in history] == [1, 2]
    assert [h.rows for h in history] == [ROWS, 2 * BATCH]
    assert seen == history  # the cut epoch is reported like any other
    assert all(torch.isfinite(torch.tensor(h.train_bound)) for h in history)


def test_a_deadline_already_past_still_trains_one_minibatch(monkeypatch):
    x, mask = _data()
    model, untrained = _fresh_model(), _fresh_model()
    _minibatch_clock(monkeypatch, model)
    history = train(model, x, mask, _config(5), progress=False, deadline=-1.0)
    assert [(h.epoch, h.rows) for h in history] == [(1, BATCH)]
    assert not _states_equal(model, untrained)


def test_a_deadline_that_is_not_reached_changes_nothing_and_no_deadline_is_the_plain_loop():
    x, mask = _data()
    config = _config(3)
    plain, far = _fresh_model(), _fresh_model()
    plain_history = train(plain, x, mask, config, progress=False)
    far_history = train(far, x, mask, config, progress=False, deadline=time.time() + 1e6)
    assert _states_equal(plain, far)
    assert [h.train_bound for h in plain_history] == [h.train_bound for h in far_history]
    assert [h.rows for h in plain_history] == [ROWS] * 3

    # Bit for bit the loop train() always ran: train_epoch per epoch with the same streams.
    reference = _fresh_model()
    optimizer = make_optimizer(reference, config.learning_rate)
    shuffle, sample = make_generator(config.seed), make_generator(config.seed + 1)
    bounds = [
        train_epoch(TrainStep(reference, optimizer, x, mask, config.K, sample), config.batch_size, shuffle)
        for _ in range(config.epochs)
    ]
    assert _states_equal(plain, reference)
    assert [h.train_bound for h in plain_history] == bounds


def test_a_checkpoint_whose_history_predates_the_rows_field_still_resumes(tmp_path: Path):
    x, mask = _data()
    train(_fresh_model(), x, mask, _config(1), checkpoint_dir=tmp_path, progress=False)
    path = tmp_path / WEIGHTS_FILE
    state = torch.load(path, map_location="cpu", weights_only=True)
    for entry in state["history"]:
        del entry["rows"]  # as written before EpochStats had it
    torch.save(state, path)
    history = train(_fresh_model(), x, mask, _config(2), checkpoint_dir=tmp_path, progress=False)
    assert [(h.epoch, h.rows) for h in history] == [(1, None), (2, ROWS)]
