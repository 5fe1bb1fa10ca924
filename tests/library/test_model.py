"""The model's contract: shapes, numerics at the edges, ι, and clear errors on bad input."""

from __future__ import annotations

import pytest
import torch

from missiwae.config import ModelConfig
from missiwae.iota import LearnedImputation, OracleImputation, ZeroImputation
from missiwae.likelihoods import Bernoulli, Gaussian, StudentT
from missiwae.model import MissIWAE, make_generator


def _model(**overrides) -> MissIWAE:
    torch.manual_seed(0)
    settings = {"latent_dim": 6, "hidden": (16,), **overrides}
    return MissIWAE.from_config(ModelConfig(**settings))


def _batch(rows: int = 6, features: int = 784, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = (torch.rand(rows, features, generator=generator) < 0.3).float()
    mask = torch.rand(rows, features, generator=generator) < 0.5
    mask[0], mask[1] = False, True
    return x, mask


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
@pytest.mark.parametrize("observation", ["bernoulli", "gaussian", "student_t"])
@pytest.mark.parametrize("imputation", ["zero", "learned", "oracle"])
def test_bound_and_gradients_are_finite_for_all_missing_and_all_observed_rows(
    architecture, observation, imputation
):
    model = _model(architecture=architecture, observation=observation, imputation=imputation)
    x, mask = _batch()
    bound = model.bound(x, mask, 4, make_generator(0))
    assert bound.shape == (6,)
    assert torch.isfinite(bound).all()
    (-bound.mean()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_nan_in_missing_entries_is_ignored_without_poisoning_gradients():
    model = _model()
    x, mask = _batch()
    x_with_holes = torch.where(mask, x, torch.nan)
    bound = model.bound(x_with_holes, mask, 3, make_generator(0))
    reference = model.bound(x, mask, 3, make_generator(0))
    torch.testing.assert_close(bound, reference)
    (-bound.mean()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bound_is_finite_for_saturated_decoder_outputs():
    model = _model()
    x, mask = _batch()
    last = list(model.decoder.modules())[-1]
    assert isinstance(last, torch.nn.Linear)
    with torch.no_grad():
        last.bias.fill_(1e4)  # logits of 1e4: log p(x=0) = -1e4, finite
    bound = model.bound(x, mask, 5, make_generator(0))
    assert torch.isfinite(bound).all()


def test_likelihood_only_counts_observed_entries():
    model = _model()
    x, mask = _batch()
    flipped = torch.where(mask, x, 1.0 - x)  # change every missing entry
    torch.testing.assert_close(
        model.bound(x, mask, 3, make_generator(0)), model.bound(flipped, mask, 3, make_generator(0))
    )


def test_oracle_iota_reads_the_missing_entries_and_zero_iota_does_not():
    x, mask = _batch()
    flipped = torch.where(mask, x, 1.0 - x)
    zero, oracle = _model(imputation="zero"), _model(imputation="oracle")
    torch.testing.assert_close(zero.posterior(x, mask)[0], zero.posterior(flipped, mask)[0])
    assert not torch.allclose(oracle.posterior(x, mask)[0], oracle.posterior(flipped, mask)[0])
    with pytest.raises(ValueError, match="oracle"):
        oracle.bound(torch.where(mask, x, torch.nan), mask, 2)


def test_learned_iota_fills_holes_with_a_trained_constant():
    iota = LearnedImputation(3)
    with torch.no_grad():
        iota.fill_value.copy_(torch.tensor([0.1, 0.2, 0.3]))
    x = torch.tensor([[5.0, 6.0, 7.0]])
    mask = torch.tensor([[True, False, False]])
    torch.testing.assert_close(iota(x, mask), torch.tensor([[5.0, 0.2, 0.3]]))
    torch.testing.assert_close(ZeroImputation()(x, mask), torch.tensor([[5.0, 0.0, 0.0]]))
    torch.testing.assert_close(OracleImputation()(x, mask), x)
    model = _model(imputation="learned")
    xb, maskb = _batch()
    (-model.bound(xb, maskb, 2).mean()).backward()
    assert isinstance(model.iota, LearnedImputation)
    grad = model.iota.fill_value.grad
    assert grad is not None and grad.abs().sum() > 0


def test_observation_models_match_torch_distributions():
    generator = torch.Generator().manual_seed(0)
    params = torch.randn(5, 3, 7, generator=generator, dtype=torch.float64)
    x = torch.randn(5, 7, generator=generator, dtype=torch.float64)
    binary = (x > 0).double()
    torch.testing.assert_close(
        Bernoulli().log_prob(params, binary),
        torch.distributions.Bernoulli(logits=params[:, 0]).log_prob(binary),
    )
    gaussian = Gaussian()
    torch.testing.assert_close(
        gaussian.log_prob(params, x),
        torch.distributions.Normal(params[:, 0], gaussian.scale(params)).log_prob(x),
    )
    student = StudentT()
    torch.testing.assert_close(
        student.log_prob(params, x),
        torch.distributions.StudentT(student.df(params), params[:, 0], student.scale(params)).log_prob(x),
    )


@pytest.mark.parametrize("likelihood", [Bernoulli(), Gaussian(), StudentT()])
def test_observation_model_samples_have_the_model_mean(likelihood):
    params = torch.tensor([[[0.7, -1.2]], [[0.3, 0.9]], [[0.5, 2.0]]], dtype=torch.float64)
    params = params.permute(1, 0, 2)[:, : likelihood.num_params]  # (1, P, 2)
    draws = likelihood.sample(params.expand(200000, -1, -1), make_generator(0))
    mean = likelihood.mean(params)[0]
    torch.testing.assert_close(draws.mean(0), mean, rtol=0, atol=0.02)
    again = likelihood.sample(params.expand(10, -1, -1), make_generator(3))
    torch.testing.assert_close(again, likelihood.sample(params.expand(10, -1, -1), make_generator(3)))


def test_samples_from_the_generative_model_have_the_data_shape():
    model = _model()
    samples = model.sample(5, make_generator(0))
    assert samples.shape == (5, 784)
    assert set(samples.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize(
    ("x", "mask", "error", "message"),
    [
        (torch.zeros(784), torch.ones(784, dtype=torch.bool), ValueError, "shape"),
        (torch.zeros(2, 784), torch.ones(2, 784), TypeError, "boolean"),
        (torch.zeros(2, 784), torch.ones(3, 784, dtype=torch.bool), ValueError, "mask shape"),
        (torch.zeros(2, 10), torch.ones(2, 10, dtype=torch.bool), ValueError, "expects 784"),
        (torch.full((2, 784), torch.nan), torch.ones(2, 784, dtype=torch.bool), ValueError, "observed"),
        (torch.zeros(2, 784, dtype=torch.long), torch.ones(2, 784, dtype=torch.bool), TypeError, "floating"),
    ],
)
def test_bad_input_gets_an_error_naming_the_problem(x, mask, error, message):
    with pytest.raises(error, match=message):
        _model().bound(x, mask, 2)


@pytest.mark.parametrize("K", [0, -1])
def test_K_below_one_is_rejected(K):
    x, mask = _batch()
    with pytest.raises(ValueError, match="K"):
        _model().bound(x, mask, K)
