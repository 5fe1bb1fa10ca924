"""SNIS and SIR against closed forms, and the imputation invariants."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
from scipy import stats
from torch import nn

from missiwae.config import ModelConfig
from missiwae.imputation import impute_multiple, impute_single, snis_expectation
from missiwae.iota import ZeroImputation
from missiwae.likelihoods import Bernoulli
from missiwae.model import MissIWAE, make_generator
from tests.library.linear_gaussian import LinearGaussian, linear_gaussian_model


@pytest.fixture(scope="module")
def truth() -> LinearGaussian:
    return LinearGaussian(seed=0)


def test_snis_mean_converges_to_the_closed_form_conditional_mean(truth):
    generator = torch.Generator().manual_seed(2)
    x = truth.sample(200, generator)
    mask = torch.rand(x.shape, generator=generator) < 0.5
    # A deliberately poor proposal, so the self-normalised weights do the work.
    model = linear_gaussian_model(truth, shift=0.5, spread=1.5)
    exact = truth.conditional_mean(x, mask)
    variance = truth.conditional_mean_variance(x, mask)
    missing = ~mask
    rms_errors = []
    for L in (10, 100, 1000, 10000):
        result = snis_expectation(model, x, mask, L, generator=make_generator(L), chunk_size=700)
        error = (result.estimate - exact)[missing]
        rms_errors.append(float(error.pow(2).mean().sqrt()))
        # The SNIS error is about sqrt(variance / ESS): standardised errors are O(1).
        ess = result.effective_sample_size.unsqueeze(1).expand_as(x)[missing]
        standardised = error / (variance[missing] / ess).sqrt()
        assert float(standardised.pow(2).mean().sqrt()) < 2.0, L
    assert all(b < a for a, b in itertools.pairwise(rms_errors)), rms_errors
    assert rms_errors[-1] < rms_errors[0] / 10


def test_snis_with_a_custom_statistic_estimates_it(truth):
    generator = torch.Generator().manual_seed(3)
    x = truth.sample(50, generator)
    mask = torch.rand(x.shape, generator=generator) < 0.5
    model = linear_gaussian_model(truth)
    # h(x) = x: sampled x_m instead of the Rao-Blackwellised mean; same limit, more noise.
    result = snis_expectation(model, x, mask, 20000, h=lambda full: full, generator=make_generator(0))
    exact = truth.conditional_mean(x, mask)
    torch.testing.assert_close(result.estimate[~mask], exact[~mask], rtol=0, atol=0.05)
    torch.testing.assert_close(result.estimate[mask], x[mask])


class _ConstantEncoder(nn.Module):
    def __init__(self, mean: float, std: float):
        super().__init__()
        self.mean = nn.Parameter(torch.tensor([mean], dtype=torch.float64))
        self.std = std

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = self.mean.expand(x.shape[0], 1)
        return mu, torch.full_like(mu, self.std)


class _LinearLogits(nn.Module):
    def __init__(self, slopes: torch.Tensor, offsets: torch.Tensor):
        super().__init__()
        self.slopes, self.offsets = slopes, offsets

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z * self.slopes + self.offsets).unsqueeze(1)  # (N, 1, D)


def test_sir_draws_follow_the_exact_discrete_posterior():
    # Four binary features driven by one latent: p(x_m | x_o) over the 4 outcomes of the two
    # missing features is an exact 1-D integral, done here by quadrature.
    slopes = torch.tensor([2.0, -1.5, 1.8, 1.2], dtype=torch.float64)
    offsets = torch.tensor([0.3, -0.2, -0.5, 0.4], dtype=torch.float64)
    model = MissIWAE(
        _ConstantEncoder(0.3, 1.2), _LinearLogits(slopes, offsets), Bernoulli(), ZeroImputation(), 4, 1
    )
    x_o = torch.tensor([1.0, 0.0], dtype=torch.float64)
    grid = torch.linspace(-12, 12, 40001, dtype=torch.float64)
    logits = grid[:, None] * slopes + offsets
    log_p = x_o * logits[:, :2] - torch.nn.functional.softplus(logits[:, :2])
    prior = torch.exp(-0.5 * grid**2 + log_p.sum(1))
    p1 = torch.sigmoid(logits[:, 2:])
    outcomes = [(0, 0), (0, 1), (1, 0), (1, 1)]
    joint = torch.stack(
        [
            (prior * (p1[:, 0] if a else 1 - p1[:, 0]) * (p1[:, 1] if b else 1 - p1[:, 1])).sum()
            for a, b in outcomes
        ]
    )
    exact = joint / joint.sum()

    rows = 4000
    x = torch.cat([x_o, torch.zeros(2, dtype=torch.float64)]).expand(rows, -1).contiguous()
    mask = torch.tensor([True, True, False, False]).expand(rows, -1).contiguous()
    result = impute_multiple(model, x, mask, 2, 400, chunk_size=64, generator=make_generator(5))
    assert torch.equal(result.imputations[:, :, :2], x[:, :2].expand(2, -1, -1))
    for copy in result.imputations:
        codes = (2 * copy[:, 2] + copy[:, 3]).long()
        counts = torch.bincount(codes, minlength=4).double()
        _, p_value = stats.chisquare(counts.numpy(), (exact * rows).numpy())
        assert p_value > 1e-3, (counts / rows, exact)
    assert not torch.equal(result.imputations[0], result.imputations[1])


def _small_mnist_model(seed: int = 0) -> MissIWAE:
    torch.manual_seed(seed)
    return MissIWAE.from_config(ModelConfig(latent_dim=8, hidden=(32,)))


def _binary_batch(rows: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = (torch.rand(rows, 784, generator=generator) < 0.2).float()
    mask = torch.rand(rows, 784, generator=generator) < 0.5
    mask[0], mask[1] = False, True  # nothing observed; everything observed
    return x, mask


def test_imputation_never_changes_observed_entries():
    model = _small_mnist_model()
    x, mask = _binary_batch()
    x_with_holes = torch.where(mask, x, torch.nan)  # what a user holds: NaN where missing
    single = impute_single(model, x_with_holes, mask, 50, chunk_size=7, batch_size=5)
    thresholded = impute_single(model, x_with_holes, mask, 50, threshold=0.5)
    multiple = impute_multiple(model, x_with_holes, mask, 3, 50, chunk_size=7, batch_size=5)
    for imputed in (single.imputed, thresholded.imputed, *multiple.imputations):
        assert torch.equal(imputed[mask], x[mask])
        assert torch.isfinite(imputed).all()
    assert set(thresholded.imputed[~mask].unique().tolist()) <= {0.0, 1.0}
    assert set(multiple.imputations[:, ~mask].unique().tolist()) <= {0.0, 1.0}
    assert ((single.imputed[~mask] > 0) & (single.imputed[~mask] < 1)).all()


def test_same_seed_gives_identical_imputations():
    model = _small_mnist_model()
    x, mask = _binary_batch()
    first = impute_multiple(model, x, mask, 2, 64, chunk_size=10, generator=make_generator(1))
    again = impute_multiple(model, x, mask, 2, 64, chunk_size=10, generator=make_generator(1))
    other = impute_multiple(model, x, mask, 2, 64, chunk_size=10, generator=make_generator(2))
    assert torch.equal(first.imputations, again.imputations)
    assert not torch.equal(first.imputations, other.imputations)
    single = impute_single(model, x, mask, 64, generator=make_generator(1))
    single_again = impute_single(model, x, mask, 64, generator=make_generator(1))
    assert torch.equal(single.imputed, single_again.imputed)


def test_effective_sample_size_lies_between_one_and_L():
    model = _small_mnist_model()
    x, mask = _binary_batch()
    result = impute_single(model, x, mask, 100, chunk_size=30)
    assert ((result.effective_sample_size >= 1 - 1e-4) & (result.effective_sample_size <= 100 + 1e-3)).all()
    # Nothing observed: every weight is p(z)/q(z); still a finite, defined imputation.
    assert torch.isfinite(result.log_likelihood).all()


@pytest.mark.parametrize("bad", [0, -3])
def test_L_below_one_is_rejected(bad):
    model = _small_mnist_model()
    x, mask = _binary_batch()
    with pytest.raises(ValueError, match="importance samples"):
        impute_single(model, x, mask, bad)
    with pytest.raises(ValueError, match="importance samples"):
        impute_multiple(model, x, mask, 2, bad)
    with pytest.raises(ValueError, match="num_imputations"):
        impute_multiple(model, x, mask, 0, 10)


_PEAK_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, torch
    from missiwae.config import ModelConfig
    from missiwae.imputation import impute_multiple, impute_single
    from missiwae.model import MissIWAE
    torch.set_num_threads(1)
    L, kind = int(sys.argv[1]), sys.argv[2]
    model = MissIWAE.from_config(ModelConfig(latent_dim=20, hidden=(64,)))
    x = (torch.rand(100, 784) < 0.2).float()
    mask = torch.rand(100, 784) < 0.5
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if kind == "single":
        impute_single(model, x, mask, L, chunk_size=50)
    else:
        impute_multiple(model, x, mask, 5, L, chunk_size=50)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_kb": before, "after_kb": after}))
    """
)


@pytest.mark.slow  # two subprocesses each, seconds: outside make test-fast, inside make test
@pytest.mark.parametrize("kind", ["single", "multiple"])
def test_imputation_memory_is_flat_in_L(kind):
    peaks = {}
    for L in (100, 4000):
        output = subprocess.run(
            [sys.executable, "-c", _PEAK_MEMORY_SCRIPT, str(L), kind],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        peaks[L] = json.loads(output.splitlines()[-1])["after_kb"]
    # Unchunked, L = 4000 would need 4000 x 100 x 784 float32 logits alone: 1.25 GB.
    unchunked_kb = 4000 * 100 * 784 * 4 / 1024
    growth_kb = peaks[4000] - peaks[100]
    assert growth_kb < 0.05 * unchunked_kb, (peaks, math.floor(unchunked_kb))
