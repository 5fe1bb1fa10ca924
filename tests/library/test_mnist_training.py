"""Real data: a small missIWAE on static binarized MNIST with 50% of pixels missing (MCAR).

A few thousand images and a couple of epochs on 2 CPU cores: enough to show that training on
the incomplete data itself works, not to reach the paper's numbers.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from missiwae.baselines import (
    independent_bernoulli_log_likelihood,
    mean_impute,
    observed_feature_means,
    zero_impute,
)
from missiwae.config import ModelConfig, TrainConfig
from missiwae.data import IncompleteDataset, load_incomplete_mnist
from missiwae.evaluation import estimate_log_likelihood, imputation_accuracy, mean_bound
from missiwae.imputation import impute_multiple, impute_single
from missiwae.mnist_files import BinarizedSplit
from missiwae.model import MissIWAE, make_generator
from missiwae.training import EpochStats, load_model, train

K = 5


@pytest.fixture(scope="module")
def splits(data_root) -> dict[str, IncompleteDataset]:
    sizes: dict[BinarizedSplit, int] = {"train": 4000, "valid": 500, "test": 300}
    return {
        split: load_incomplete_mnist(split, missing_rate=0.5, seed=0, num_rows=rows, data_dir=data_root)
        for split, rows in sizes.items()
    }


@pytest.fixture(scope="module")
def trained(splits, tmp_path_factory) -> tuple[MissIWAE, float, list[EpochStats], str]:
    torch.manual_seed(0)
    model = MissIWAE.from_config(ModelConfig(latent_dim=20, hidden=(200,)))
    valid = splits["valid"]
    untrained_bound = mean_bound(model, valid.x, valid.mask, K, generator=make_generator(0))
    checkpoint = str(tmp_path_factory.mktemp("checkpoint"))
    history = train(
        model,
        splits["train"].x,
        splits["train"].mask,
        TrainConfig(K=K, epochs=2, batch_size=50, learning_rate=3e-3, seed=0),
        valid=(valid.x, valid.mask),
        checkpoint_dir=checkpoint,
        progress=False,
    )
    return model, untrained_bound, history, checkpoint


def test_validation_bound_improves_with_training(trained):
    _, untrained_bound, history, _ = trained
    bounds = [untrained_bound] + [entry.valid_bound for entry in history]
    assert all(b is not None for b in bounds)
    assert all(later > earlier for earlier, later in itertools.pairwise(bounds)), bounds


def test_test_log_likelihood_beats_independent_bernoulli_pixels(trained, splits):
    model = trained[0]
    train_split, test = splits["train"], splits["test"]
    log_likelihood = estimate_log_likelihood(model, test.x, test.mask, 500, generator=make_generator(0))
    baseline = independent_bernoulli_log_likelihood(train_split.x, train_split.mask, test.x, test.mask)
    assert torch.isfinite(log_likelihood).all()
    assert float(log_likelihood.mean()) > float(baseline.mean()) + 5.0, (
        float(log_likelihood.mean()),
        float(baseline.mean()),
    )
    # The complete-data log-likelihood of the same images is lower: more pixels to explain.
    complete = estimate_log_likelihood(
        model, test.x, torch.ones_like(test.mask), 200, generator=make_generator(1)
    )
    assert float(complete.mean()) < float(log_likelihood.mean())


def test_snis_imputation_beats_zero_and_pixel_mean_imputation(trained, splits):
    model = trained[0]
    train_split, test = splits["train"], splits["test"]
    x_held = test.x_observed  # NaN in the holes: the truth is not available to the imputer
    imputed = impute_single(model, x_held, test.mask, 200, generator=make_generator(0)).imputed
    ours = imputation_accuracy(imputed, test.x, test.mask)
    zero = imputation_accuracy(zero_impute(x_held, test.mask), test.x, test.mask)
    means = observed_feature_means(train_split.x, train_split.mask)
    pixel_mean = imputation_accuracy(mean_impute(x_held, test.mask, means), test.x, test.mask)
    assert ours > max(zero, pixel_mean) + 0.01, (ours, zero, pixel_mean)
    assert torch.equal(imputed[test.mask], test.x[test.mask])


def test_multiple_imputations_agree_with_the_data_more_than_chance(trained, splits):
    model = trained[0]
    test = splits["test"]
    copies = impute_multiple(model, test.x_observed, test.mask, 3, 100, generator=make_generator(0))
    for copy in copies.imputations:
        assert torch.equal(copy[test.mask], test.x[test.mask])
        assert imputation_accuracy(copy, test.x, test.mask) > 0.8
    assert (copies.effective_sample_size >= 1).all()


def test_checkpoint_reloads_to_the_same_model(trained, splits):
    model, _, _, checkpoint = trained
    reloaded = load_model(checkpoint)
    test = splits["test"]
    torch.testing.assert_close(
        reloaded.bound(test.x[:20], test.mask[:20], K, make_generator(3)),
        model.bound(test.x[:20], test.mask[:20], K, make_generator(3)),
    )
