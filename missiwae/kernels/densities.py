"""The Gaussian and Student-t log-densities and their closed-form gradients on gathered entries,
with softplus, log1p and the half-step gamma-function differences in vectorised passes.

torch's CPU lgamma, digamma, log1p (so F.softplus) are scalar loops; everything here is built
from log, exp, reciprocal and fused multiply-adds instead, to within a few roundings of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from missiwae.kernels.observed import FusedDensity

_LOG_2PI = math.log(2.0 * math.pi)


def _fast_dtype(params: torch.Tensor, x: torch.Tensor) -> bool:
    """The fused densities run in float32/float64 and never differentiate w.r.t. x."""
    return params.dtype in (torch.float32, torch.float64) and x.dtype == params.dtype and not x.requires_grad


@dataclass(frozen=True)
class GaussianKernel(FusedDensity):
    """`likelihoods.Gaussian.log_prob` on gathered entries: params (L, 2, N) = (loc, raw scale)."""

    min_scale: float

    def applies(self, params: torch.Tensor, x: torch.Tensor) -> bool:
        return _fast_dtype(params, x)

    def log_density(
        self, params: torch.Tensor, x: torch.Tensor, need_grad: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        loc, raw_scale = params.unbind(-2)
        scale = softplus(raw_scale).add_(self.min_scale)
        y = torch.sub(x, loc).div_(scale)
        # log p = −½ y² − log s − ½ log 2π
        log_p = torch.addcmul(torch.log(scale), y, y, value=0.5).neg_().sub_(0.5 * _LOG_2PI)
        return log_p, ((raw_scale, y, scale) if need_grad else ())

    def log_density_grad(
        self, saved: tuple[torch.Tensor, ...], grad: torch.Tensor, out: torch.Tensor
    ) -> None:
        raw_scale, y, scale = saved
        grad_over_scale = grad / scale
        # ∂/∂μ = y / s,  ∂/∂s = (y² − 1) / s, then through softplus' derivative.
        torch.mul(y, grad_over_scale, out=out[:, 0])
        grad_scale = torch.mul(y, y).sub_(1.0).mul_(grad_over_scale)
        softplus_grad(grad_scale, raw_scale, out=out[:, 1])


@dataclass(frozen=True)
class StudentTKernel(FusedDensity):
    """`likelihoods.StudentT.log_prob` on gathered entries: params (L, 3, N) = (loc, raw scale,
    raw df). With s the scale, ν the degrees of freedom, y = (x − μ)/s and u = y²/ν:
        log p = lgamma((ν+1)/2) − lgamma(ν/2) − ½ log(πν) − log s − (ν+1)/2 · log1p(u)
    """

    min_scale: float
    min_df: float

    def applies(self, params: torch.Tensor, x: torch.Tensor) -> bool:
        # The gamma-function differences assume ν ≥ min_df > 0.
        return _fast_dtype(params, x) and self.min_df > 0.0

    def log_density(
        self, params: torch.Tensor, x: torch.Tensor, need_grad: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        loc, raw_scale, raw_df = params.unbind(-2)
        scale = softplus(raw_scale).add_(self.min_scale)
        df = softplus(raw_df).add_(self.min_df)
        y = torch.sub(x, loc).div_(scale)
        log1p_u = log1p_(torch.mul(y, y).div_(df))
        gamma = _half_step_gamma(df, self.min_df, need_grad)
        # lgamma((ν+1)/2) − lgamma(ν/2) − ½ log(πν) − log s − (ν+1)/2 · log1p(u)
        #   = series + ½ [log(square_ratio / (π ν s²)) − (ν+1) log1p(u)]: one logarithm.
        denominator = torch.mul(df, math.pi).mul_(scale).mul_(scale)
        half_log_p = gamma.square_ratio.div_(denominator).log_().sub_(torch.addcmul(log1p_u, df, log1p_u))
        log_p = gamma.series.add_(half_log_p, alpha=0.5)
        if not need_grad:
            return log_p, ()
        assert gamma.digamma_diff is not None
        return log_p, (raw_scale, raw_df, y, scale, df, log1p_u, gamma.digamma_diff)

    def log_density_grad(
        self, saved: tuple[torch.Tensor, ...], grad: torch.Tensor, out: torch.Tensor
    ) -> None:
        """With q = 1/(ν + y²) and ψ the digamma function:
        ∂/∂μ = (ν+1) y q / s,   ∂/∂s = ν (y² − 1) q / s,
        ∂/∂ν = ½ [ψ((ν+1)/2) − ψ(ν/2) − log1p(u) + (y² − 1) q],
        then through softplus' derivative for the raw scale and df.
        """
        raw_scale, raw_df, y, scale, df, log1p_u, digamma_diff = saved
        y_sq = torch.mul(y, y)
        q = torch.add(df, y_sq).reciprocal_()
        y_sq_minus_one_q = y_sq.sub_(1.0).mul_(q)  # (y² − 1) q, reusing y²'s buffer
        grad_over_scale = grad / scale
        torch.addcmul(y, df, y, out=out[:, 0]).mul_(q).mul_(grad_over_scale)
        grad_scale = torch.mul(df, y_sq_minus_one_q).mul_(grad_over_scale)
        softplus_grad(grad_scale, raw_scale, out=out[:, 1])
        grad_df = torch.sub(digamma_diff, log1p_u).add_(y_sq_minus_one_q).mul_(grad).mul_(0.5)
        softplus_grad(grad_df, raw_df, out=out[:, 2])


def log1p_(u: torch.Tensor, plus: torch.Tensor | None = None) -> torch.Tensor:
    """log(1 + u) (+ plus) for u ≥ 0, to ~1 ulp, through `torch.log`; overwrites u and plus.

    torch.log1p (and so F.softplus) runs an unvectorised kernel on some CPUs; log and exp do
    not. w = fl(1 + u) is exact up to δ = (1 + u − w)/w, |δ| ≤ ε/2, and
    log(1 + u) = log w + log(1 + δ) = log w + δ + O(ε²). 1 + u − w = u − (w − 1) is exact.
    """
    w = u + 1.0
    u.sub_(torch.sub(w, 1.0))  # 1 + u − w
    delta = u.div_(w) if plus is None else plus.addcdiv_(u, w)
    return w.log_().add_(delta)


# F.softplus returns raw itself above this (its default threshold).
_SOFTPLUS_THRESHOLD = 20.0


def softplus(raw: torch.Tensor) -> torch.Tensor:
    """F.softplus(raw) = max(raw, 0) + log1p(e^{−|raw|}) (raw above 20), through `log1p_`."""
    positive = torch.relu(raw)
    value = log1p_(torch.add(raw, positive, alpha=-2.0).exp_(), plus=positive)  # e^{−|raw|}
    # Above the threshold F.softplus drops e^{−raw}: float32 loses it to rounding anyway
    # (e^{−20} < ulp(20)/2 = 8ε), float64 needs the switch.
    if math.exp(-_SOFTPLUS_THRESHOLD) < 8.0 * torch.finfo(raw.dtype).eps:
        return value
    return torch.where(raw > _SOFTPLUS_THRESHOLD, raw, value)


def softplus_grad(grad: torch.Tensor, raw: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """grad · d softplus(raw)/d raw into `out`: sigmoid(raw), and exactly 1 where F.softplus
    (threshold 20) returns raw itself, so the gradient is that of the reference densities."""
    return torch.ops.aten.softplus_backward.grad_input(grad, raw, 1.0, _SOFTPLUS_THRESHOLD, grad_input=out)


# Euler numbers E_0, E_2, ..., E_18 (the odd ones are 0), for the series below.
_EULER_NUMBERS = (1, -1, 5, -61, 1385, -50521, 2702765, -199360981, 19391512145, -2404879675441)

# (T, m) per dtype: the series is summed to m terms at t ≥ T, which bounds its truncation
# error by ~4e-8 (float32) and ~2e-16 (float64) relative, below each dtype's rounding.
_HALF_STEP_SERIES = {torch.float32: (4.0, 4), torch.float64: (8.0, 9)}


class _HalfStepGamma(NamedTuple):
    """lgamma((ν+1)/2) − lgamma(ν/2) = ½ log(square_ratio) + series; ψ((ν+1)/2) − ψ(ν/2)."""

    square_ratio: torch.Tensor
    series: torch.Tensor
    digamma_diff: torch.Tensor | None


def half_step_gamma_differences(
    nu: torch.Tensor, min_nu: float, with_digamma: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """lgamma((ν+1)/2) − lgamma(ν/2) and (if with_digamma) ψ((ν+1)/2) − ψ(ν/2), elementwise,
    for ν ≥ min_nu > 0 in float32 or float64: nu (...) -> two tensors of its shape."""
    parts = _half_step_gamma(nu, min_nu, with_digamma)
    return parts.series.add_(parts.square_ratio.log_(), alpha=0.5), parts.digamma_diff


def _half_step_gamma(nu: torch.Tensor, min_nu: float, with_digamma: bool) -> _HalfStepGamma:
    """The differences of `half_step_gamma_differences`, the first one left as a log's argument
    plus a series so that a caller can merge that logarithm with its own.

    torch's CPU lgamma and digamma are scalar loops; this takes a fixed number of vectorised
    passes. With a = ν/2, the recurrences Γ(a+1) = a Γ(a) and
    ψ(a+1) = ψ(a) + 1/a shift a up by n steps, to t = a + n − ¼ ≥ T:
        lgamma(a+½) − lgamma(a) = G(t) − Σ_{i<n} log((a+i+½)/(a+i)),
        ψ(a+½) − ψ(a)           = G'(t) + Σ_{i<n} [1/(a+i) − 1/(a+i+½)],
    and G(t) = lgamma(t+¾) − lgamma(t+¼) has the asymptotic series (Stirling's, with the
    generalised Bernoulli numbers B_{2k+1}(¼) = −(2k+1) E_{2k} / 4^{2k+1}; the odd powers
    cancel because t sits halfway between the two arguments)
        G(t)  = ½ log t + Σ_{k≥1} c_k t^{−2k},      c_k = −E_{2k} / (k 4^{2k+1}),
        G'(t) = 1/(2t) − Σ_{k≥1} 2k c_k t^{−2k−1}.
    n depends only on min_nu: small ν cost more passes, never accuracy.
    """
    threshold, terms = _HALF_STEP_SERIES[nu.dtype]
    steps = max(0, math.ceil(threshold + 0.25 - 0.5 * min_nu))
    # With v = ν + 2i: (a+i+½)/(a+i) = 1 + 1/v and 1/(a+i) − 1/(a+i+½) = 2/(v(v+1)).
    ratio: torch.Tensor | None = None  # Π_{i<n} (1 + 1/v), never overflows
    shift: torch.Tensor | None = None  # Σ_{i<n} 1/(v(v+1))
    v, v_plus_one, inverse = nu, nu + 1.0, torch.empty_like(nu)
    for step in range(steps):
        if step:
            v = v + 2.0 if step == 1 else v.add_(2.0)  # never in place on nu itself
            v_plus_one.add_(2.0)
        torch.reciprocal(v, out=inverse)
        ratio = inverse + 1.0 if ratio is None else ratio.addcmul_(ratio, inverse)
        if with_digamma:
            shift = inverse / v_plus_one if shift is None else shift.addcdiv_(inverse, v_plus_one)
    t = torch.add(nu, 2.0 * steps - 0.5).mul_(0.5)
    inverse_t = torch.reciprocal(t, out=inverse)
    w = inverse_t * inverse_t
    c = [-_EULER_NUMBERS[k] / (k * 4.0 ** (2 * k + 1)) for k in range(1, terms + 1)]
    series = _polynomial(w, [0.0, *c])
    # ½ log t − log Π = ½ log(t / Π²): no square root.
    square_ratio = t if ratio is None else t.div_(ratio.mul_(ratio))
    if not with_digamma:
        return _HalfStepGamma(square_ratio, series, None)
    derivative = _polynomial(w, [0.5, *(-2.0 * k * c_k for k, c_k in enumerate(c, start=1))])
    digamma_diff = derivative.mul_(inverse_t)  # G'(t)
    if shift is not None:
        digamma_diff.add_(shift, alpha=2.0)
    return _HalfStepGamma(square_ratio, series, digamma_diff)


def _polynomial(w: torch.Tensor, coefficients: list[float]) -> torch.Tensor:
    """Σ_k coefficients[k] w^k by Horner's rule (one fused multiply-add pass per degree)."""
    constant = [w.new_full((), value) for value in coefficients]
    result = torch.addcmul(constant[-2], w, constant[-1])
    for value in reversed(constant[:-2]):
        torch.addcmul(value, result, w, out=result)
    return result
