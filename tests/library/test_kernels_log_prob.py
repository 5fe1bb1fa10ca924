"""missiwae.kernels' p_θ(x_o | z) paths equal the plain masked sum of the models' reference
densities, values and gradients (float64), and so do the special functions they are built from."""

from __future__ import annotations

import pytest
import torch

from missiwae.kernels import (
    half_step_gamma_differences,
    log1p_,
    masked_bernoulli_log_prob,
    softplus,
    softplus_grad,
)
from missiwae.likelihoods import Bernoulli, Gaussian, ObservationModel, StudentT


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
def test_masked_bernoulli_log_prob_equals_the_plain_masked_sum(num_features):
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


def test_bernoulli_log_prob_observed_goes_through_the_fused_function_and_equals_the_plain_sum(monkeypatch):
    """Every float32/float64 batch, K = 1 ones too, takes the fused Function (faster than the
    plain masked sum at K = 1 as well: benchmarks/README.md), and gives the definition's numbers."""
    import missiwae.kernels.observed as observed_module

    calls: list[int] = []
    fused = observed_module.masked_bernoulli_log_prob

    def counting(*args: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return fused(*args)

    monkeypatch.setattr(observed_module, "masked_bernoulli_log_prob", counting)
    params, x, mask = batch(784, 1)
    model = Bernoulli()
    observed = model.log_prob_observed(params, torch.where(mask, x, 0.0), mask)
    assert calls
    torch.testing.assert_close(observed, plain_masked_sum(model, params, x, mask), rtol=1e-12, atol=1e-10)


# --- Student-t and Gaussian: the fused observed-entry Function ---------------------------------


def continuous_batch(num_params: int, K: int = 3, B: int = 6, D: int = 9, seed: int = 0, raw: float = 1.0):
    """params (K, B, P, D), x (B, D) zero-filled where missing, mask (B, D) with an all-missing
    row 0 and an all-observed row 1 (float64)."""
    generator = torch.Generator().manual_seed(seed)
    params = raw * torch.randn(K, B, num_params, D, generator=generator, dtype=torch.float64)
    mask = torch.rand(B, D, generator=generator) < 0.5
    mask[0], mask[1] = False, True
    x = torch.where(mask, 2.0 * torch.randn(B, D, generator=generator, dtype=torch.float64), 0.0)
    return params, x, mask


def torch_distribution(model: ObservationModel, params: torch.Tensor) -> torch.distributions.Distribution:
    if isinstance(model, StudentT):
        return torch.distributions.StudentT(model.df(params), params[..., 0, :], model.scale(params))
    assert isinstance(model, Gaussian)
    return torch.distributions.Normal(params[..., 0, :], model.scale(params))


CONTINUOUS = [
    Gaussian(),
    StudentT(),
    Gaussian(min_scale=0.25),
    StudentT(min_scale=1e-6, min_df=0.05),
    StudentT(min_scale=0.5, min_df=20.0),
]
CONTINUOUS_IDS = ["gaussian", "student_t", "gaussian_min_scale", "student_t_small_df", "student_t_large_df"]


def uses_fused_function(value: torch.Tensor) -> bool:
    """Whether the autograd graph of `value` goes through the fused Function (under a view)."""
    nodes = [value.grad_fn]
    while nodes:
        node = nodes.pop()
        if node is None:
            continue
        if "ObservedLogDensitySum" in type(node).__name__:
            return True
        nodes.extend(next_node for next_node, _ in node.next_functions)
    return False


@pytest.mark.parametrize("model", CONTINUOUS, ids=CONTINUOUS_IDS)
@pytest.mark.parametrize("raw", [1.0, 4.0])
def test_fused_continuous_log_prob_equals_the_reference_density_and_torch_distributions(model, raw):
    params, x, mask = continuous_batch(model.num_params, raw=raw, D=37)
    fast, fast_grad = value_and_grad(lambda p: model.log_prob_observed(p, x, mask), params)
    plain, plain_grad = value_and_grad(lambda p: plain_masked_sum(model, p, x, mask), params)
    reference, reference_grad = value_and_grad(
        lambda p: torch.where(mask, torch_distribution(model, p).log_prob(x), 0.0).sum(-1), params
    )
    assert uses_fused_function(model.log_prob_observed(params.clone().requires_grad_(), x, mask))
    torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-11)
    torch.testing.assert_close(fast_grad, plain_grad, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(fast, reference, rtol=1e-12, atol=1e-11)
    torch.testing.assert_close(fast_grad, reference_grad, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("model", CONTINUOUS, ids=CONTINUOUS_IDS)
def test_fused_continuous_log_prob_passes_gradcheck(model):
    params, x, mask = continuous_batch(model.num_params, K=2, B=4, D=5, seed=3)
    leaf = params.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda p: model.log_prob_observed(p, x, mask), (leaf,))


@pytest.mark.parametrize("model", CONTINUOUS[:2], ids=CONTINUOUS_IDS[:2])
def test_rows_with_nothing_observed_get_exactly_zero_and_no_gradient(model):
    params, x, mask = continuous_batch(model.num_params, D=20, seed=4)
    leaf = params.clone().requires_grad_()
    value = model.log_prob_observed(leaf, x, mask)
    (grad,) = torch.autograd.grad(value.sum(), leaf)
    assert torch.equal(value[:, 0], torch.zeros_like(value[:, 0]))
    assert torch.equal(grad[:, 0], torch.zeros_like(grad[:, 0]))
    # missing entries of the other rows get no gradient either
    assert torch.equal(grad * ~mask.unsqueeze(-2), torch.zeros_like(grad))
    # and a batch with nothing observed at all is all zeros
    nothing = torch.zeros_like(mask)
    leaf = params.clone().requires_grad_()
    empty = model.log_prob_observed(leaf, torch.zeros_like(x), nothing)
    (grad,) = torch.autograd.grad(empty.sum(), leaf)
    assert torch.equal(empty, torch.zeros_like(empty)) and torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("model", CONTINUOUS[:2], ids=CONTINUOUS_IDS[:2])
def test_every_entry_observed_equals_the_unmasked_sum(model):
    params, _, _ = continuous_batch(model.num_params, D=16, seed=5)
    mask = torch.ones(6, 16, dtype=torch.bool)
    x = torch.randn(6, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    fast, fast_grad = value_and_grad(lambda p: model.log_prob_observed(p, x, mask), params)
    plain, plain_grad = value_and_grad(lambda p: model.log_prob(p, x).sum(-1), params)
    torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-11)
    torch.testing.assert_close(fast_grad, plain_grad, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("model", CONTINUOUS, ids=CONTINUOUS_IDS)
def test_fused_continuous_log_prob_is_exact_for_extreme_raw_parameters_and_residuals(model):
    """Raw scale and df of ±30 (softplus saturating on both sides, and past F.softplus'
    threshold of 20), residuals |x − μ| up to 1e6: finite, and equal to the reference."""
    params, x, mask = continuous_batch(model.num_params, K=2, D=30, seed=6)
    extremes = torch.tensor([-30.0, -20.5, -1.0, 0.0, 19.5, 20.0, 20.5, 30.0], dtype=torch.float64)
    generator = torch.Generator().manual_seed(6)
    for p in range(1, model.num_params):
        pick = torch.randint(0, len(extremes), params[..., p, :].shape, generator=generator)
        params[..., p, :] = extremes[pick]
    residual = torch.tensor([0.0, 1e-8, 3.0, -50.0, 1e3, -1e6], dtype=torch.float64)
    pick = torch.randint(0, len(residual), x.shape, generator=generator)
    x = torch.where(mask, params[0, :, 0, :] + residual[pick], 0.0)
    fast, fast_grad = value_and_grad(lambda p: model.log_prob_observed(p, x, mask), params)
    plain, plain_grad = value_and_grad(lambda p: plain_masked_sum(model, p, x, mask), params)
    assert torch.isfinite(fast).all() and torch.isfinite(fast_grad).all()
    torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(fast_grad, plain_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("model", CONTINUOUS[:2], ids=CONTINUOUS_IDS[:2])
def test_fused_continuous_log_prob_float32_agrees_with_float64(model):
    params, x, mask = continuous_batch(model.num_params, K=4, B=8, D=200, seed=7)
    reference, reference_grad = value_and_grad(lambda p: model.log_prob_observed(p, x, mask), params)
    single, single_grad = value_and_grad(
        lambda p: model.log_prob_observed(p, x.float(), mask), params.float()
    )
    # float32 rounding of sums of ~100 terms of size ~3, and of per-entry gradients.
    torch.testing.assert_close(single.double(), reference, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(single_grad.double(), reference_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", CONTINUOUS[:2], ids=CONTINUOUS_IDS[:2])
def test_generic_gather_path_still_equals_the_plain_masked_sum(model):
    """Tensors the fused Function does not take (x with a gradient, float16 never reaches it)
    go through the differentiable gather of the observed entries, with the same numbers."""
    params, x, mask = continuous_batch(model.num_params, D=21, seed=8)
    x_leaf = x.clone().requires_grad_()
    value = model.log_prob_observed(params, x_leaf, mask)
    assert not uses_fused_function(value)
    torch.testing.assert_close(value, plain_masked_sum(model, params, x, mask), rtol=1e-12, atol=1e-11)


@pytest.mark.parametrize("model", CONTINUOUS[:2], ids=CONTINUOUS_IDS[:2])
def test_fused_continuous_log_prob_without_grad_mode_gives_the_same_values(model):
    params, x, mask = continuous_batch(model.num_params, D=25, seed=9)
    with torch.no_grad():
        quiet = model.log_prob_observed(params, x, mask)
    loud = model.log_prob_observed(params.clone().requires_grad_(), x, mask)
    torch.testing.assert_close(quiet, loud.detach(), rtol=1e-14, atol=1e-13)


def test_fused_function_refuses_second_derivatives_instead_of_returning_wrong_ones():
    model = StudentT()
    params, x, mask = continuous_batch(3, K=2, B=3, D=4)
    leaf = params.clone().requires_grad_()
    (grad,) = torch.autograd.grad(model.log_prob_observed(leaf, x, mask).sum(), leaf, create_graph=True)
    with pytest.raises(RuntimeError):
        grad.sum().backward()


@pytest.mark.parametrize("min_nu", [3.0, 0.01, 0.7, 20.0])
def test_half_step_gamma_differences_equal_torch_lgamma_and_digamma(min_nu):
    """lgamma((ν+1)/2) − lgamma(ν/2) and ψ((ν+1)/2) − ψ(ν/2) in float64 to ~1e-13 relative (the
    range where torch's own difference of two lgammas/digammas is itself that exact), and in
    float32 to within its rounding of the float64 value."""
    generator = torch.Generator().manual_seed(0)
    nu = min_nu + torch.cat(
        [
            torch.zeros(1, dtype=torch.float64),
            torch.logspace(-10, 2.5, 400, dtype=torch.float64),
            20 * torch.rand(600, generator=generator, dtype=torch.float64),
        ]
    )
    lgamma_diff = torch.lgamma((nu + 1) / 2) - torch.lgamma(nu / 2)
    digamma_diff = torch.digamma((nu + 1) / 2) - torch.digamma(nu / 2)
    ours_lgamma, ours_digamma = half_step_gamma_differences(nu, min_nu)
    assert ours_digamma is not None
    torch.testing.assert_close(ours_lgamma, lgamma_diff, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(ours_digamma, digamma_diff, rtol=1e-12, atol=0.0)
    single_lgamma, single_digamma = half_step_gamma_differences(nu.float(), min_nu)
    assert single_digamma is not None
    # a few float32 ulps (ε = 1.2e-7) of the float64 value at the float32 input
    nu32 = nu.float().double()
    torch.testing.assert_close(
        single_lgamma.double(), torch.lgamma((nu32 + 1) / 2) - torch.lgamma(nu32 / 2), rtol=5e-7, atol=5e-7
    )
    torch.testing.assert_close(
        single_digamma.double(), torch.digamma((nu32 + 1) / 2) - torch.digamma(nu32 / 2), rtol=5e-7, atol=0.0
    )
    lgamma_only, nothing = half_step_gamma_differences(nu, min_nu, with_digamma=False)
    assert nothing is None
    torch.testing.assert_close(lgamma_only, ours_lgamma, rtol=0.0, atol=0.0)


def test_half_step_gamma_differences_stay_exact_for_huge_df():
    """Far past where torch's own difference cancels (ν = 1e8), the series is still exact:
    lgamma((ν+1)/2) − lgamma(ν/2) = ½ log(ν/2) − 1/(4ν) + O(ν⁻³), ψ difference = 1/ν + 1/(2ν²) + O(ν⁻⁴)."""
    nu = torch.tensor([1e6, 1e8, 1e12], dtype=torch.float64)
    lgamma_diff, digamma_diff = half_step_gamma_differences(nu, 3.0)
    torch.testing.assert_close(lgamma_diff, 0.5 * torch.log(nu / 2) - 1 / (4 * nu), rtol=1e-15, atol=0.0)
    torch.testing.assert_close(digamma_diff, 1 / nu + 1 / (2 * nu**2), rtol=1e-15, atol=0.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_softplus_without_log1p_equals_torch_softplus_to_rounding(dtype):
    """The fused densities' softplus (log and exp only) is F.softplus: relative error of a couple
    of ulps everywhere, down to raw = −700 (where softplus ≈ e^raw), and raw itself past 20."""
    low = -700.0 if dtype == torch.float64 else -85.0
    raw = torch.cat(
        [torch.linspace(low, 60.0, 4001, dtype=torch.float64), torch.tensor([19.99, 20.0, 20.01, 0.0, 1e-12])]
    ).to(dtype)
    ours, reference = softplus(raw), torch.nn.functional.softplus(raw)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(ours, reference, rtol=4 * eps, atol=0.0)
    assert torch.equal(ours[raw > 20], raw[raw > 20])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_softplus_grad_equals_the_gradient_of_torch_softplus(dtype):
    """The closed-form backward of the fused densities' softplus is autograd's through
    F.softplus, exactly 1 past its threshold of 20 included."""
    raw = torch.cat(
        [torch.linspace(-80.0, 60.0, 4001, dtype=torch.float64), torch.tensor([19.99, 20.0, 20.01, 0.0])]
    ).to(dtype)
    grad = torch.linspace(-2.0, 3.0, raw.numel(), dtype=dtype)
    leaf = raw.clone().requires_grad_()
    (reference,) = torch.autograd.grad((torch.nn.functional.softplus(leaf) * grad).sum(), leaf)
    ours = softplus_grad(grad, raw, out=torch.empty_like(raw))
    torch.testing.assert_close(ours, reference, rtol=2 * torch.finfo(dtype).eps, atol=0.0)
    assert torch.equal(ours[raw > 20], grad[raw > 20])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_log1p_through_log_equals_torch_log1p_to_rounding(dtype):
    """log1p_ (with and without the added term) is torch.log1p to a couple of ulps, from
    u = 0 and u far below ε up to u = 1e30."""
    u = torch.cat([torch.zeros(1), torch.logspace(-30, 30, 3001, dtype=torch.float64)]).to(dtype)
    plus = torch.linspace(0.0, 5.0, u.numel(), dtype=dtype)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(log1p_(u.clone()), torch.log1p(u), rtol=2 * eps, atol=0.0)
    torch.testing.assert_close(
        log1p_(u.clone(), plus=plus.clone()), torch.log1p(u) + plus, rtol=2 * eps, atol=0.0
    )


@pytest.mark.parametrize("model", CONTINUOUS[:2], ids=CONTINUOUS_IDS[:2])
def test_generic_gather_path_gradient_equals_the_plain_masked_sum(model):
    """The differentiable gather (taken when x itself needs a gradient) has the definition's
    gradients with respect to params and x."""
    params, x, mask = continuous_batch(model.num_params, D=21, seed=10)
    weights = torch.linspace(-1.0, 2.0, params.shape[0] * params.shape[1], dtype=torch.float64)

    def grads(fn):
        p, x_leaf = params.clone().requires_grad_(), x.clone().requires_grad_()
        value = fn(p, x_leaf)
        return value.detach(), *torch.autograd.grad((value.flatten() * weights).sum(), [p, x_leaf])

    fast = grads(lambda p, x_leaf: model.log_prob_observed(p, x_leaf, mask))
    plain = grads(lambda p, x_leaf: torch.where(mask, model.log_prob(p, x_leaf), 0.0).sum(-1))
    for ours, reference in zip(fast, plain, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-11)


def test_observed_log_prob_sum_leaves_other_layouts_to_the_caller():
    """No fast path for a mask that is not a (B, D) bool matching params: None, and the model
    evaluates its definition."""
    from missiwae.kernels import GaussianKernel, observed_log_prob_sum

    params, x, mask = continuous_batch(2, D=7, seed=11)
    model = Gaussian()
    float_mask = mask.double()
    assert observed_log_prob_sum(GaussianKernel(1e-3), model.log_prob, params, x, float_mask) is None
    assert observed_log_prob_sum(None, model.log_prob, params, x[None], mask[None]) is None
    value = model.log_prob_observed(params, x, float_mask.bool()[None])
    torch.testing.assert_close(value, plain_masked_sum(model, params, x, mask), rtol=1e-12, atol=1e-11)
