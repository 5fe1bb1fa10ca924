"""The defensive mixture likelihood estimator against the linear-Gaussian closed form.

Float64, fixed seeds; every statistical assertion compares means over independent replicas
with a margin of several standard errors, so it neither passes by luck nor fails by noise.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from missiwae.evaluation import (
    defensive_proposal_masks,
    estimate_log_likelihood,
    estimate_log_likelihood_defensive,
    estimate_log_likelihood_mixture,
    samples_per_component,
)
from missiwae.iota import ZeroImputation
from missiwae.likelihoods import Gaussian
from missiwae.model import MissIWAE, make_generator
from tests.library.linear_gaussian import (
    LATENT_DIM,
    NUM_FEATURES,
    LinearDecoder,
    LinearGaussian,
    linear_gaussian_model,
)

NUM_ROWS = 8
NUM_MASKS = 3
MISSING_RATE = 0.5


class StrangerToCompleteRows(nn.Module):
    """The exact posterior given the entries shown, except on rows with every entry shown,
    where q is shifted and overconfident: a zero-ι encoder that never saw a complete image."""

    def __init__(self, truth: LinearGaussian):
        super().__init__()
        self.truth = truth
        self.anchor = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.truth.posterior(x, mask)
        complete = mask.all(-1, keepdim=True)
        return torch.where(complete, mean + 1.0, mean), torch.where(complete, 0.5 * std, std)


def stranger_model(truth: LinearGaussian) -> MissIWAE:
    likelihood = Gaussian()
    decoder = LinearDecoder(truth, likelihood)
    encoder = StrangerToCompleteRows(truth)
    return MissIWAE(encoder, decoder, likelihood, ZeroImputation(), NUM_FEATURES, LATENT_DIM)


MODELS = {"stranger to complete rows": stranger_model, "exact posterior": linear_gaussian_model}


@pytest.fixture(scope="module")
def truth() -> LinearGaussian:
    return LinearGaussian(seed=0)


@pytest.fixture(scope="module")
def complete_rows(truth: LinearGaussian) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Complete rows (as Figure 1 (left) scores them), their mask and R + 1 fixed components."""
    x = truth.sample(NUM_ROWS, torch.Generator().manual_seed(1))
    mask = torch.ones_like(x, dtype=torch.bool)
    components = defensive_proposal_masks(mask, NUM_MASKS, MISSING_RATE, torch.Generator().manual_seed(2))
    return x, mask, components


def replicated(estimate, x, mask, components, replicas: int) -> tuple[float, float]:
    """Mean and standard error, over independent replicas, of Σ_rows (log p(x) − estimate)."""
    xs, masks = x.repeat(replicas, 1), mask.repeat(replicas, 1)
    values = estimate(xs, masks, components.repeat(1, replicas, 1)).view(replicas, -1)
    return float(values.sum(1).mean()), float(values.sum(1).std()) / math.sqrt(replicas)


def test_defensive_masks_start_with_the_observed_entries_and_hide_at_the_missing_rate():
    mask = torch.rand(400, 50, generator=torch.Generator().manual_seed(0)) < 0.7
    components = defensive_proposal_masks(mask, 4, 0.5, torch.Generator().manual_seed(1))
    assert components.shape == (5, 400, 50)
    assert torch.equal(components[0], mask)
    assert not bool((components & ~mask).any())  # only observed entries are ever shown
    kept = components[1:].sum() / (4 * mask.sum())
    assert abs(float(kept) - 0.5) < 0.01  # 56 000 Bernoulli(1/2) draws: sd 0.002
    with pytest.raises(ValueError, match="missing_rate"):
        defensive_proposal_masks(mask, 4, 1.0)


def test_samples_are_split_evenly_over_components():
    assert samples_per_component(10, 4) == [3, 3, 2, 2]
    assert sum(samples_per_component(5000, 11)) == 5000
    with pytest.raises(ValueError, match="at least the number of mixture components"):
        samples_per_component(3, 4)


@pytest.mark.parametrize("name", list(MODELS))
def test_mixture_estimate_converges_to_the_exact_log_marginal(truth, complete_rows, name):
    x, mask, components = complete_rows
    model = MODELS[name](truth)
    log_p = truth.log_marginal(x, mask)
    replicas = 8

    def error(num_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row mean and standard error of log p(x) − estimate, over replicas."""
        values = estimate_log_likelihood_mixture(
            model,
            x.repeat(replicas, 1),
            mask.repeat(replicas, 1),
            components.repeat(1, replicas, 1),
            num_samples,
            generator=make_generator(seed),
        ).view(replicas, -1)
        gap = log_p - values
        return gap.mean(0), gap.std(0) / math.sqrt(replicas)

    few, _ = error(4, 0)
    many, many_error = error(4000, 1)
    assert bool((many.abs() <= 5 * many_error + 1e-9).all()), (many, many_error)
    assert float(many_error.max()) < 0.05  # converged, not merely noisy enough to pass
    assert float(many.abs().sum()) < float(few.sum()) / 10  # and far closer than with 4 samples


@pytest.mark.parametrize("name", list(MODELS))
def test_mixture_expected_error_is_no_worse_than_its_worst_component(truth, complete_rows, name):
    x, mask, components = complete_rows
    model = MODELS[name](truth)
    log_p = truth.log_marginal(x, mask)
    num_samples, replicas = 8, 400

    def mixture(xs, masks, parts):
        return log_p.repeat(replicas) - estimate_log_likelihood_mixture(
            model, xs, masks, parts, num_samples, generator=make_generator(10)
        )

    def component(c: int):
        def estimate(xs, masks, parts):
            return log_p.repeat(replicas) - estimate_log_likelihood(
                model, xs, masks, num_samples, generator=make_generator(11 + c), proposal_mask=parts[c]
            )

        return estimate

    mix, mix_error = replicated(mixture, x, mask, components, replicas)
    alone = [replicated(component(c), x, mask, components, replicas) for c in range(len(components))]
    worst, worst_error = max(alone)
    # log p − E[estimate] ≥ 0 for every proposal (Jensen); the mixture's gap is below the worst
    # component's by more than four standard errors of the difference.
    assert worst - mix > 4 * math.hypot(mix_error, worst_error), (mix, mix_error, alone)
    assert mix > -4 * mix_error


def test_mixture_rescues_the_estimate_when_the_naive_proposal_is_bad(truth, complete_rows):
    """The situation of a zero-ι encoder on complete images: the naive estimate is far off,
    the mixture (with the naive component in it) is close, at the same number of samples."""
    x, mask, _ = complete_rows
    model = stranger_model(truth)
    log_p = truth.log_marginal(x, mask)
    replicas, num_samples = 50, 200
    xs, masks = x.repeat(replicas, 1), mask.repeat(replicas, 1)
    naive = estimate_log_likelihood(model, xs, masks, num_samples, generator=make_generator(20))
    defensive = estimate_log_likelihood_defensive(
        model,
        xs,
        masks,
        num_samples,
        num_masks=NUM_MASKS,
        missing_rate=MISSING_RATE,
        generator=make_generator(21),
    )
    naive_gap = (log_p.repeat(replicas) - naive).view(replicas, -1).sum(1)
    defensive_gap = (log_p.repeat(replicas) - defensive).view(replicas, -1).sum(1)
    difference = naive_gap - defensive_gap
    standard_error = float(difference.std()) / math.sqrt(replicas)
    assert float(difference.mean()) > 5 * standard_error
    assert float(defensive_gap.mean().abs()) < 0.1 * float(naive_gap.mean())


def test_mixture_weights_divide_by_the_mixture_density(truth, complete_rows):
    """The estimate, recomputed independently with torch.distributions from the same draws:
    n_c samples from component c in component order (chunks of one sample: one draw each),
    each weighted by p(x, z) / Σ_c' α_c' q_c'(z)."""
    x, mask, components = complete_rows
    model = stranger_model(truth)
    num_samples = 7  # 3 + 2 + 1 + 1 over the four components: unequal α_c
    estimate = estimate_log_likelihood_mixture(
        model, x, mask, components, num_samples, chunk_size=1, generator=make_generator(5)
    )
    counts = samples_per_component(num_samples, len(components))
    alpha = torch.tensor(counts, dtype=torch.float64) / num_samples
    posteriors = [model.posterior(x, m) for m in components]
    generator = make_generator(5)
    log_w = []
    for c, count in enumerate(counts):
        mu, sigma = posteriors[c]
        for _ in range(count):
            z = mu + sigma * torch.randn((1, *mu.shape), generator=generator, dtype=torch.float64)[0]
            log_joint = torch.distributions.Normal(z @ truth.loading.T + truth.offset, truth.sigma).log_prob(
                x
            ).sum(-1) + torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
            log_q = torch.stack([torch.distributions.Normal(m, s).log_prob(z).sum(-1) for m, s in posteriors])
            log_w.append(log_joint - torch.logsumexp(log_q + alpha.log().view(-1, 1), dim=0))
    expected = torch.logsumexp(torch.stack(log_w), dim=0) - math.log(num_samples)
    torch.testing.assert_close(estimate, expected, rtol=0, atol=1e-9)


def test_mixture_estimate_rejects_components_of_the_wrong_shape(truth, complete_rows):
    x, mask, components = complete_rows
    model = linear_gaussian_model(truth)
    with pytest.raises(ValueError, match=r"\(C, N, D\)"):
        estimate_log_likelihood_mixture(model, x, mask, components[0], 10)
