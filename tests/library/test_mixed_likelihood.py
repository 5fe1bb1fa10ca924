"""Mixed observation model: a product over column groups, each with its own likelihood."""

from __future__ import annotations

import pytest
import torch

from missiwae.config import ConfigError, ModelConfig, Observation
from missiwae.likelihoods import Bernoulli, Gaussian, Mixed, StudentT, observation_model
from missiwae.model import MissIWAE, make_generator

TYPES: tuple[Observation, ...] = (
    "gaussian",
    "bernoulli",
    "student_t",
    "bernoulli",
    "gaussian",
    "student_t",
    "gaussian",
)
MODELS = {"bernoulli": Bernoulli(), "gaussian": Gaussian(), "student_t": StudentT()}


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """params (K=4, B=5, P=3, D=7), x (B, D) with 0/1 in the bernoulli columns, mask (B, D)."""
    generator = torch.Generator().manual_seed(seed)
    params = torch.randn(4, 5, 3, len(TYPES), generator=generator, dtype=torch.float64)
    x = torch.randn(5, len(TYPES), generator=generator, dtype=torch.float64)
    for j, name in enumerate(TYPES):
        if name == "bernoulli":
            x[:, j] = (x[:, j] > 0).double()
    mask = torch.rand(5, len(TYPES), generator=generator) < 0.6
    mask[0], mask[1] = False, True  # an all-missing and an all-observed row
    return params, x, mask


def test_mixed_log_prob_is_the_sum_of_each_group_model_on_its_columns() -> None:
    params, x, mask = _inputs()
    mixed = Mixed(TYPES)
    assert mixed.num_params == 3
    per_entry = mixed.log_prob(params, x)
    for j, name in enumerate(TYPES):
        model = MODELS[name]
        expected = model.log_prob(params[..., : model.num_params, j : j + 1], x[:, j : j + 1])[..., 0]
        torch.testing.assert_close(per_entry[..., j], expected)
    expected_observed = sum(
        MODELS[name].log_prob_observed(
            params[..., : MODELS[name].num_params, :][..., cols], x[:, cols], mask[:, cols]
        )
        for name in set(TYPES)
        for cols in [[j for j, t in enumerate(TYPES) if t == name]]
    )
    observed = mixed.log_prob_observed(params, x, mask)
    assert observed.shape == (4, 5)
    torch.testing.assert_close(observed, expected_observed)
    assert torch.equal(observed[:, 0], torch.zeros(4, dtype=torch.float64))  # nothing observed


def test_mixed_mean_and_samples_follow_each_column_type() -> None:
    params, _, _ = _inputs(1)
    mixed = Mixed(TYPES)
    mean = mixed.mean(params)
    draws = mixed.sample(params, make_generator(0))
    assert mean.shape == draws.shape == (4, 5, len(TYPES))
    for j, name in enumerate(TYPES):
        torch.testing.assert_close(mean[..., j], MODELS[name].mean(params[..., j : j + 1])[..., 0])
        if name == "bernoulli":
            assert ((mean[..., j] > 0) & (mean[..., j] < 1)).all()
            assert set(draws[..., j].unique().tolist()) <= {0.0, 1.0}
        else:
            assert torch.equal(mean[..., j], params[..., 0, j])  # the location map
    torch.testing.assert_close(draws, mixed.sample(params, make_generator(0)))


def test_column_types_pick_the_model_and_a_single_type_is_not_mixed() -> None:
    assert isinstance(observation_model("gaussian", ("bernoulli", "gaussian")), Mixed)
    assert isinstance(observation_model("gaussian", ("student_t", "student_t")), StudentT)
    assert isinstance(observation_model("student_t"), StudentT)
    with pytest.raises(ValueError, match="unknown observation model 'poisson'"):
        observation_model("gaussian", ("gaussian", "poisson"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="column_types names 2 columns"):
        ModelConfig(num_features=3, column_types=("gaussian", "bernoulli"))


def test_mixed_model_bound_and_gradients_are_finite() -> None:
    torch.manual_seed(0)
    config = ModelConfig(num_features=len(TYPES), latent_dim=2, hidden=(8,), column_types=TYPES)
    model = MissIWAE.from_config(config)
    _, x, mask = _inputs()
    bound = model.bound(x.float(), mask, 3, make_generator(0))
    assert bound.shape == (5,) and torch.isfinite(bound).all()
    (-bound.mean()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
