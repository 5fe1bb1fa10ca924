"""The optimised p_θ(x_o | z) paths equal the plain masked sum, values and gradients (float64)."""

from __future__ import annotations

import pytest
import torch

from missiwae.likelihoods import Bernoulli, Gaussian, ObservationModel, StudentT, masked_bernoulli_log_prob


def plain_masked_sum(model: ObservationModel, params: torch.Tensor, x: torch.Tensor, mask: torch.Tensor):
    """The definition: Σ_{j observed} log p(x_j | z), every entry computed, then masked."""
    return torch.where(mask, model.log_prob(params, torch.where(mask, x, 0.0)), 0.0).sum(-1)


def batch(num_features: int, num_params: int, scale: float = 3.0, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    K, B = 4, 6
    params = scale * torch.randn(K, B, num_params, num_features, generator=generator, dtype=torch.float64)
    mask = torch.rand(B, num_features, generator=generator) < 0.5
    mask[0] = False  # a row with nothing observed
    mask[1] = True  # a row with everything observed
    x = (torch.rand(B, num_features, generator=generator) < 0.5).double()
    return params, x.masked_fill(~mask, float("nan")), mask


def value_and_grad(fn, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    params = params.clone().requires_grad_()
    value = fn(params)
    weights = torch.linspace(-1.0, 2.0, value.numel(), dtype=value.dtype).view_as(value)
    (grad,) = torch.autograd.grad((value * weights).sum(), params)
    return value.detach(), grad


@pytest.mark.parametrize("num_features", [5, 64, 784, 130])
def test_masked_bernoulli_log_prob_equals_the_plain_masked_sum(num_features, monkeypatch):
    import missiwae.likelihoods as likelihoods

    monkeypatch.setattr(likelihoods, "_FUSED_MIN_ENTRIES", 1)  # the fused Function at any size
    params, x, mask = batch(num_features, 1)
    model = Bernoulli()
    fast, fast_grad = value_and_grad(
        lambda p: model.log_prob_observed(p, torch.where(mask, x, 0.0), mask), params
    )
    plain, plain_grad = value_and_grad(lambda p: plain_masked_sum(model, p, x, mask), params)
    torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(fast_grad, plain_grad, rtol=1e-12, atol=1e-12)
    assert torch.equal(fast[:, 0], torch.zeros_like(fast[:, 0]))  # nothing observed: exactly 0


def test_masked_bernoulli_log_prob_is_finite_and_exact_for_extreme_logits():
    logits = torch.tensor([[[-1000.0, -50.0, 0.0, 50.0, 1000.0]]], dtype=torch.float64)
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    mask = torch.ones(1, 5, dtype=torch.bool)
    value = masked_bernoulli_log_prob(logits, x, mask)
    # x l − softplus(l) per entry, written out (log1p(e^-50) = 1.9287...e-22).
    terms = [-1000.0, -1.9287498479639178e-22, -0.6931471805599453, -1.9287498479639178e-22, -1000.0]
    expected = sum(terms)
    assert torch.isfinite(value).all()
    torch.testing.assert_close(value, torch.tensor([[expected]], dtype=torch.float64), rtol=1e-15, atol=1e-12)


def test_masked_bernoulli_log_prob_float32_agrees_with_float64():
    params, x, mask = batch(784, 1, scale=6.0, seed=3)
    logits = params[..., 0, :]
    reference = masked_bernoulli_log_prob(logits, x, mask)
    single = masked_bernoulli_log_prob(logits.float(), x.float(), mask).double()
    # float32 rounding of a sum of ~400 terms of size ~6: well under 1e-3 absolute.
    torch.testing.assert_close(single, reference, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("model", [Gaussian(), StudentT()], ids=["gaussian", "student_t"])
def test_observed_only_log_prob_equals_the_plain_masked_sum(model):
    params, x, mask = batch(50, model.num_params, scale=1.0, seed=1)
    x = torch.where(mask, torch.randn(x.shape, dtype=torch.float64), float("nan"))
    fast, fast_grad = value_and_grad(
        lambda p: model.log_prob_observed(p, torch.where(mask, x, 0.0), mask), params
    )
    plain, plain_grad = value_and_grad(lambda p: plain_masked_sum(model, p, x, mask), params)
    torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(fast_grad, plain_grad, rtol=1e-12, atol=1e-12)
    assert torch.equal(fast[:, 0], torch.zeros_like(fast[:, 0]))


def test_bernoulli_fast_path_matches_torch_distributions():
    params, x, mask = batch(784, 1, seed=2)
    logits = params[..., 0, :]
    x_filled = torch.where(mask, x, 0.0)
    reference = torch.where(mask, torch.distributions.Bernoulli(logits=logits).log_prob(x_filled), 0.0).sum(
        -1
    )
    torch.testing.assert_close(masked_bernoulli_log_prob(logits, x, mask), reference, rtol=1e-12, atol=1e-9)
    # the closed-form gradient is that of x l − softplus(l)
    leaf = logits.clone().requires_grad_()
    (grad,) = torch.autograd.grad(masked_bernoulli_log_prob(leaf, x, mask).sum(), leaf)
    torch.testing.assert_close(grad, torch.where(mask, x_filled - torch.sigmoid(logits), 0.0).expand_as(grad))


def test_bernoulli_uses_the_fused_function_on_large_tensors_and_still_equals_the_plain_sum(monkeypatch):
    """Above the size threshold Bernoulli.log_prob_observed goes through the fused Function
    (below it, the plain masked sum): both sides of the switch give the definition's numbers."""
    import missiwae.likelihoods as likelihoods

    calls: list[int] = []
    fused = likelihoods.masked_bernoulli_log_prob

    def counting(*args: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return fused(*args)

    monkeypatch.setattr(likelihoods, "masked_bernoulli_log_prob", counting)
    params, x, mask = batch(784, 1)
    model = Bernoulli()
    plain = plain_masked_sum(model, params, x, mask)
    small = model.log_prob_observed(params, torch.where(mask, x, 0.0), mask)
    assert not calls
    monkeypatch.setattr(likelihoods, "_FUSED_MIN_ENTRIES", 1)
    large = model.log_prob_observed(params, torch.where(mask, x, 0.0), mask)
    assert calls
    torch.testing.assert_close(small, plain, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(large, plain, rtol=1e-12, atol=1e-10)
