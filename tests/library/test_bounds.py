"""The missIWAE bound against closed forms (float64, fixed seeds)."""

from __future__ import annotations

import math

import pytest
import torch

from missiwae.bounds import (
    StreamingLogWeights,
    effective_sample_size,
    log_mean_exp,
    miss_iwae_bound,
)
from missiwae.model import make_generator, standard_normal_log_prob
from tests.library.linear_gaussian import LinearGaussian, example_masks, linear_gaussian_model


@pytest.fixture(scope="module")
def truth() -> LinearGaussian:
    return LinearGaussian(seed=0)


@pytest.fixture(scope="module")
def data(truth: LinearGaussian) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = truth.sample(16, generator)
    return x, example_masks(16, generator)


@pytest.mark.parametrize("K", [1, 5, 50])
def test_bound_equals_log_marginal_when_q_is_the_exact_posterior(truth, data, K):
    x, mask = data
    model = linear_gaussian_model(truth)
    bound = model.bound(x, mask, K, make_generator(K))
    torch.testing.assert_close(bound, truth.log_marginal(x, mask), rtol=0, atol=1e-10)


def test_bound_with_worse_q_rises_with_K_towards_log_marginal(truth, data):
    x, mask = data
    row = 3  # a row with a few observed and a few missing entries
    assert 0 < int(mask[row].sum()) < mask.shape[1]
    model = linear_gaussian_model(truth, shift=0.6, spread=1.6)
    replicas = 4000
    xs, masks = x[row].expand(replicas, -1), mask[row].expand(replicas, -1)
    log_p = float(truth.log_marginal(x[row : row + 1], mask[row : row + 1]))
    means, errors = [], []
    for K in (1, 5, 50, 500):
        bounds = model.bound(xs, masks, K, make_generator(K))
        means.append(float(bounds.mean()))
        errors.append(float(bounds.std()) / math.sqrt(replicas))
    gaps = [log_p - m for m in means]
    # Each step up in K raises E[L_K] by more than four standard errors of the difference...
    for i in range(len(means) - 1):
        assert means[i + 1] - means[i] > 4 * math.hypot(errors[i], errors[i + 1]), (means, errors)
    # ...every bound stays below log p(x_o) (up to Monte Carlo error), and K=500 nearly closes
    # the gap that K=1 leaves.
    assert all(gap > -4 * err for gap, err in zip(gaps, errors, strict=True)), gaps
    assert gaps[0] > 0.3
    assert gaps[-1] < gaps[0] / 20


def test_K1_bound_is_the_elbo(truth, data):
    x, mask = data
    model = linear_gaussian_model(truth, shift=0.4, spread=1.3)
    mu, std = model.posterior(x, mask)
    # Per sample: the K=1 bound is log p(x_o|z) + log p(z) − log q(z|x_o) at the drawn z,
    # computed here independently with torch.distributions.
    samples = model.importance_samples(x, mask, 1, make_generator(0))
    z = samples.z[0]
    loc = z @ truth.loading.T + truth.offset
    log_px = torch.distributions.Normal(loc, truth.sigma).log_prob(x)
    expected = (
        torch.where(mask, log_px, 0.0).sum(-1)
        + torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        - torch.distributions.Normal(mu, std).log_prob(z).sum(-1)
    )
    torch.testing.assert_close(samples.log_w[0], expected, rtol=0, atol=1e-10)
    # In expectation: the closed-form ELBO E_q[log p(x_o|z)] − KL(q || p).
    replicas = 20000
    xs, masks = x.repeat(replicas, 1), mask.repeat(replicas, 1)
    bounds = model.bound(xs, masks, 1, make_generator(1)).view(replicas, -1)
    standard_error = bounds.std(0) / math.sqrt(replicas)
    difference = bounds.mean(0) - truth.elbo(x, mask, mu, std)
    assert (difference.abs() < 4 * standard_error + 1e-12).all(), difference / standard_error


def test_bound_function_is_log_mean_of_weights():
    generator = torch.Generator().manual_seed(0)
    log_px, log_pz, log_qz = (torch.randn(7, 3, generator=generator, dtype=torch.float64) for _ in range(3))
    expected = torch.log(torch.exp(log_px + log_pz - log_qz).mean(0))
    torch.testing.assert_close(miss_iwae_bound(log_px, log_pz, log_qz), expected)


@pytest.mark.parametrize("K", [1, 2, 7])
def test_bound_function_is_log_mean_of_weights_with_its_gradient_for_every_K(K):
    """K = 1 (missVAE) takes a shortcut: the one weight itself; the same value and gradient."""
    log_w = torch.randn(K, 3, dtype=torch.float64, requires_grad=True)
    expected = torch.log(torch.exp(log_w).mean(0))
    (grad,) = torch.autograd.grad(log_mean_exp(log_w).sum(), log_w)
    (expected_grad,) = torch.autograd.grad(expected.sum(), log_w)
    torch.testing.assert_close(log_mean_exp(log_w), expected)
    torch.testing.assert_close(grad, expected_grad)


def test_bound_is_finite_for_extreme_log_weights():
    log_w = torch.tensor([[-1e4, 0.0, 800.0], [-1e4, -3e3, 900.0]], dtype=torch.float32)
    assert torch.isfinite(log_mean_exp(log_w)).all()
    ess = effective_sample_size(log_w)
    assert torch.isfinite(ess).all() and ((ess >= 1) & (ess <= 2)).all()


def test_streaming_weights_match_one_shot_computation():
    generator = torch.Generator().manual_seed(0)
    log_w = 30 * torch.randn(103, 5, generator=generator, dtype=torch.float64)
    streaming = StreamingLogWeights()
    for chunk in log_w.split(17):
        streaming.update(chunk)
    torch.testing.assert_close(streaming.log_mean_exp(), log_mean_exp(log_w))
    torch.testing.assert_close(streaming.effective_sample_size(), effective_sample_size(log_w))


def test_effective_sample_size_is_K_for_equal_weights_and_1_for_one_dominant():
    equal = torch.zeros(10, 2)
    torch.testing.assert_close(effective_sample_size(equal), torch.full((2,), 10.0))
    dominant = torch.full((10, 1), -1e3)
    dominant[4] = 0.0
    torch.testing.assert_close(effective_sample_size(dominant), torch.ones(1))


def test_standard_normal_log_prob_matches_torch_distributions():
    z = torch.randn(4, 6, 3, dtype=torch.float64)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(standard_normal_log_prob(z), expected)


def test_a_proposal_from_part_of_the_observed_entries_still_estimates_log_p_x_o(truth, data):
    from missiwae.evaluation import estimate_log_likelihood

    x, mask = data
    model = linear_gaussian_model(truth)  # q is the exact posterior given what it is shown
    log_p = truth.log_marginal(x, mask)
    same = estimate_log_likelihood(model, x, mask, 7, generator=make_generator(0), proposal_mask=mask)
    default = estimate_log_likelihood(model, x, mask, 7, generator=make_generator(0))
    torch.testing.assert_close(same, default, rtol=0, atol=0)
    # Showing the encoder a random half of the observed entries gives a broader q: the
    # estimate is no longer exact with few samples but converges to log p(x_o) as S grows.
    half = mask & (torch.rand(mask.shape, generator=torch.Generator().manual_seed(3)) < 0.5)
    assert bool((half != mask).any())

    def estimates(num_samples: int, seed: int, replicas: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard error over independent replicas, per row."""
        values = estimate_log_likelihood(
            model,
            x.repeat(replicas, 1),
            mask.repeat(replicas, 1),
            num_samples,
            generator=make_generator(seed),
            proposal_mask=half.repeat(replicas, 1),
        ).view(replicas, -1)
        return values.mean(0), values.std(0) / math.sqrt(replicas)

    differs = (half != mask).any(1)
    one, one_error = estimates(1, 1, replicas=32)
    gap, gap_error = (log_p - one)[differs].sum(), one_error[differs].square().sum().sqrt()
    assert float(gap) > 5 * float(gap_error)  # with S = 1 the broader q leaves a gap
    many, many_error = estimates(5000, 2, replicas=8)
    assert bool(((many - log_p).abs() <= 5 * many_error + 1e-9).all()), (many - log_p, many_error)
    with pytest.raises(ValueError, match="only mark observed entries"):
        estimate_log_likelihood(model, x, mask, 2, proposal_mask=~mask | half)
