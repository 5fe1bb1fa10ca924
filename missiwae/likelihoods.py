"""Observation models p_θ(x | z), one class each.

The decoder f_θ(z) returns raw parameters of shape (..., P, D): P parameter maps over D features.
Each model turns them into a factorised distribution over the D entries and offers

- `log_prob(params, x)`              (..., D)  per-entry log p(x_j | z)
- `log_prob_observed(params, x, m)`  (...,)    log p_θ(x_o | z) = Σ_{j observed} log p(x_j | z)
- `mean(params)`                     (..., D)  E[x_j | z] (Rao-Blackwellised SNIS uses it)
- `sample(params, generator)`        (..., D)  x ~ p_θ(x | z)

Only observed entries enter p_θ(x_o | z): that is the whole trick of the missIWAE bound.
Missing entries of `x` must hold finite placeholders (the model zero-fills them) because a
NaN there would poison the gradient through the masked sum.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from missiwae.config import Observation

_LOG_2PI = math.log(2.0 * math.pi)


class ObservationModel(ABC):
    """A factorised p_θ(x | z) parameterised by the decoder's raw output."""

    num_params: int

    @abstractmethod
    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-entry log-density. params (..., P, D), x broadcastable to (..., D) -> (..., D)."""

    @abstractmethod
    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[x | z]. params (..., P, D) -> (..., D)."""

    @abstractmethod
    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One draw x ~ p_θ(x | z). params (..., P, D) -> (..., D)."""

    def log_prob_observed(self, params: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log p_θ(x_o | z): params (..., P, D), x and mask (B, D) broadcast -> (...,).

        A row with nothing observed gets exactly 0 (the empty product), never NaN. With x and
        mask of shape (B, D) and params (..., B, P, D), the densities are computed on the
        observed entries only (gathered, then summed per row): the costly per-entry work of a
        Student-t or Gaussian shrinks with the missing rate. Models with a closed-form
        gradient (`_FusedDensity`) do the gather, density, row sums and gradient scatter in
        one autograd Function.
        """
        if not _gatherable(params, x, mask):
            return torch.where(mask, self.log_prob(params, x), 0.0).sum(-1)
        observed = _ObservedEntries(mask, params.shape[-2])
        if isinstance(self, _FusedDensity) and self.fused_density_applies(params, x):
            lead = params.shape[:-3]
            flat = params.reshape(-1, observed.grid_size)  # a view when params is contiguous
            need_grad = torch.is_grad_enabled() and params.requires_grad
            totals = _ObservedLogDensitySum.apply(
                flat, x.reshape(-1)[observed.flat], observed, self, need_grad
            )
            return totals.view(*lead, mask.shape[0])
        per_entry = self.log_prob(observed.gather(params), x.reshape(-1)[observed.flat])  # (..., N_o)
        totals = per_entry.new_zeros((*per_entry.shape[:-1], mask.shape[0]))
        return totals.index_add(-1, observed.rows, per_entry)


def _gatherable(params: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> bool:
    """True for the layout the model uses: params (..., B, P, D), x and mask (B, D)."""
    return (
        mask.ndim == 2
        and mask.dtype == torch.bool
        and x.shape == mask.shape
        and params.ndim >= 3
        and params.shape[-3] == mask.shape[0]
        and params.shape[-1] == mask.shape[1]
    )


class _ObservedEntries:
    """Where the observed entries of a (B, D) mask sit in params (..., B, P, D), built once per call.

    A contiguous params block (B, P, D) keeps parameter p of entry (b, j) at flat offset
    b·P·D + p·D + j, so `index` (P·N_o,) reads all P maps of the N_o observed entries
    straight from the flat view, parameter-major: no copy of the whole (..., B, P, D) grid.
    """

    def __init__(self, mask: torch.Tensor, num_params: int) -> None:
        num_rows, num_features = mask.shape
        self.num_params = num_params
        self.grid_size = num_rows * num_params * num_features
        self.flat = mask.reshape(-1).nonzero().squeeze(1)  # (N_o,) offsets in the (B·D) grid
        self.rows = torch.div(self.flat, num_features, rounding_mode="floor")
        self.lengths = mask.sum(-1)  # (B,) observed entries per row, for the segment sums
        entry = self.flat + self.rows * ((num_params - 1) * num_features)  # offset of p = 0
        maps = torch.arange(num_params, device=mask.device) * num_features
        self.index = (maps.unsqueeze(1) + entry).reshape(-1)  # (P·N_o,)

    @property
    def count(self) -> int:
        return self.flat.numel()

    def gather(self, params: torch.Tensor) -> torch.Tensor:
        """params (..., B, P, D) -> (..., P, N_o), differentiable (the generic path)."""
        flat = params.reshape(*params.shape[:-3], self.grid_size)
        return flat.index_select(-1, self.index).unflatten(-1, (self.num_params, self.count))


class _FusedDensity(ABC):
    """A per-entry log-density with a closed-form gradient, for `_ObservedLogDensitySum`.

    Both methods see the gathered observed entries only: params (L, P, N), x (N,).
    """

    @abstractmethod
    def fused_density_applies(self, params: torch.Tensor, x: torch.Tensor) -> bool:
        """Whether `fused_log_density` handles these tensors (dtype, constructor arguments)."""

    @abstractmethod
    def fused_log_density(
        self, params: torch.Tensor, x: torch.Tensor, need_grad: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """log p(x_j | params_j) (L, N), and what `fused_log_density_grad` needs (if need_grad)."""

    @abstractmethod
    def fused_log_density_grad(
        self, saved: tuple[torch.Tensor, ...], grad: torch.Tensor, out: torch.Tensor
    ) -> None:
        """Writes grad · ∂ log p / ∂ params (L, P, N) into `out`; grad (L, N)."""


class _ObservedLogDensitySum(torch.autograd.Function):
    """Σ_{j observed in row b} log p(x_j | params_j) for flat params (L, B·P·D) -> (L, B).

    Gathers the observed entries (L, P, N_o), evaluates the model's density, sums each row's
    consecutive entries (`segment_reduce`, ~4x cheaper than `index_add` here) and, backward,
    scatters the model's closed-form gradient into a zero (L, B·P·D) grid.
    """

    @staticmethod
    def forward(
        ctx: Any,
        flat: torch.Tensor,
        x: torch.Tensor,
        observed: _ObservedEntries,
        model: _FusedDensity,
        need_grad: bool,
    ) -> torch.Tensor:
        num_lead = flat.shape[0]
        gathered = flat.index_select(-1, observed.index).view(num_lead, observed.num_params, observed.count)
        log_density, saved = model.fused_log_density(gathered, x, need_grad)
        lengths = observed.lengths.expand(num_lead, -1).contiguous()
        totals = torch.segment_reduce(log_density, "sum", lengths=lengths, axis=1, unsafe=True)
        ctx.observed, ctx.model, ctx.grid_shape = observed, model, flat.shape
        ctx.save_for_backward(*saved)
        return totals

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None]:
        observed: _ObservedEntries = ctx.observed
        num_lead = grad.shape[0]
        per_entry = grad.index_select(-1, observed.rows)  # (L, N_o): each entry gets its row's grad
        out = grad.new_empty((num_lead, observed.num_params, observed.count))
        ctx.model.fused_log_density_grad(ctx.saved_tensors, per_entry, out)
        index = observed.index.expand(num_lead, -1)
        grad_flat = grad.new_zeros(ctx.grid_shape).scatter_(-1, index, out.view(num_lead, -1))
        return grad_flat, None, None, None, None


def _fast_dtype(params: torch.Tensor, x: torch.Tensor) -> bool:
    """The fused densities run in float32/float64 and never differentiate w.r.t. x."""
    return params.dtype in (torch.float32, torch.float64) and x.dtype == params.dtype and not x.requires_grad


class Bernoulli(ObservationModel):
    """Binary data: params[..., 0, :] are logits."""

    num_params = 1

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        logits = params[..., 0, :]
        # x·l − log(1 + e^l): exact for x ∈ {0, 1} and stable for any logit.
        return x * logits - F.softplus(logits)

    def log_prob_observed(self, params: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The same Σ_{j observed} [x_j l_j − softplus(l_j)], through `masked_bernoulli_log_prob`."""
        logits = params[..., 0, :]
        if logits.dtype not in (torch.float32, torch.float64) or x.dtype != logits.dtype:
            return super().log_prob_observed(params, x, mask)
        if torch.broadcast_shapes(logits.shape, x.shape, mask.shape) != logits.shape:
            return super().log_prob_observed(params, x, mask)
        return masked_bernoulli_log_prob(logits, x, mask)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params[..., 0, :])

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        probs = self.mean(params)
        uniform = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=probs.dtype)
        return (uniform < probs).to(probs.dtype)


# 64 factors in (1, 2] multiply to at most 2^64, far inside float32's range (2^128).
_PRODUCT_BLOCK = 64


def masked_bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_j m_j [x_j l_j − softplus(l_j)] over the last axis: logits (..., D), x and mask
    broadcastable to it (mask bool, True = observed) -> (...,). Equal to
    `torch.where(mask, x * l − softplus(l), 0).sum(-1)`, with its gradient, but faster on CPUs.

    softplus(l) = max(l, 0) + log(1 + e^{−|l|}), and Σ_j m_j log(1 + e_j) = Σ_blocks log Π_j
    (1 + m_j e_j): each factor is in (1, 2], so a block of 64 cannot overflow and one log per
    block replaces one log1p per entry (the costly, unvectorised part of torch's softplus). The
    backward pass is the closed form m (x − sigmoid(l)); no (K, B, D) temporaries are kept
    beyond the logits.
    """
    return _MaskedBernoulliLogProb.apply(logits, x, mask)


class _MaskedBernoulliLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Through a uint8 view: torch's bool kernels are scalar loops, uint8 ones are vectorised.
        weight = mask.view(torch.uint8).to(logits.dtype)  # (…, D) 1 = observed
        # m·x, with NaN or inf placeholders in the holes cleared first
        weighted_x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0) * weight
        # Σ m (x l − max(l, 0)), the part of the log-density without a logarithm.
        buffer = torch.relu(logits).mul_(weight)
        linear = torch.mul(logits, weighted_x).sub_(buffer).sum(-1)
        # Σ m log(1 + e^{−|l|}) through block products; the masked factors are exactly 1.
        factors = torch.abs(logits, out=buffer).neg_().exp_().mul_(weight).add_(1.0)
        # Whole blocks as a strided view (no copy), then the remainder as one short block.
        whole = factors.shape[-1] // _PRODUCT_BLOCK * _PRODUCT_BLOCK
        log_terms = torch.log(factors[..., whole:].prod(-1))
        if whole:
            blocks = factors.unfold(-1, _PRODUCT_BLOCK, _PRODUCT_BLOCK).prod(-1)
            log_terms += torch.log(blocks).sum(-1)
        ctx.save_for_backward(logits, weighted_x, weight)
        return linear - log_terms

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logits, weighted_x, weight = ctx.saved_tensors
        # d/dl of m (x l − softplus(l)) = m x − m σ(l).
        grad_logits = torch.sigmoid(logits).mul_(weight)
        grad_logits = torch.sub(weighted_x, grad_logits, out=grad_logits).mul_(grad.unsqueeze(-1))
        return grad_logits, None, None


class Gaussian(ObservationModel, _FusedDensity):
    """Continuous data: params (loc, raw scale); scale = softplus(raw) + min_scale."""

    num_params = 2

    def __init__(self, min_scale: float = 1e-3) -> None:
        self.min_scale = min_scale

    def scale(self, params: torch.Tensor) -> torch.Tensor:
        return F.softplus(params[..., 1, :]) + self.min_scale

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        loc, scale = params[..., 0, :], self.scale(params)
        return -0.5 * ((x - loc) / scale) ** 2 - torch.log(scale) - 0.5 * _LOG_2PI

    def fused_density_applies(self, params: torch.Tensor, x: torch.Tensor) -> bool:
        return _fast_dtype(params, x)

    def fused_log_density(
        self, params: torch.Tensor, x: torch.Tensor, need_grad: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """`log_prob` on gathered entries: params (L, 2, N), x (N,) -> (L, N)."""
        loc, raw_scale = params.unbind(-2)
        scale = _softplus(raw_scale).add_(self.min_scale)
        y = torch.sub(x, loc).div_(scale)
        # log p = −½ y² − log s − ½ log 2π
        log_p = torch.addcmul(torch.log(scale), y, y, value=0.5).neg_().sub_(0.5 * _LOG_2PI)
        return log_p, ((raw_scale, y, scale) if need_grad else ())

    def fused_log_density_grad(
        self, saved: tuple[torch.Tensor, ...], grad: torch.Tensor, out: torch.Tensor
    ) -> None:
        raw_scale, y, scale = saved
        grad_over_scale = grad / scale
        # ∂/∂μ = y / s,  ∂/∂s = (y² − 1) / s, then through softplus' derivative.
        torch.mul(y, grad_over_scale, out=out[:, 0])
        grad_scale = torch.mul(y, y).sub_(1.0).mul_(grad_over_scale)
        _softplus_grad(grad_scale, raw_scale, out=out[:, 1])

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return params[..., 0, :]

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        loc, scale = params[..., 0, :], self.scale(params)
        noise = torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
        return loc + scale * noise


class StudentT(ObservationModel, _FusedDensity):
    """Heavy-tailed continuous data: params (loc, raw scale, raw df).

    df = min_df + softplus(raw): with min_df = 3 the mean and variance always exist, so the
    SNIS mean imputation is well defined (as in the MIWAE paper's Student-t decoder).
    """

    num_params = 3

    def __init__(self, min_scale: float = 1e-3, min_df: float = 3.0) -> None:
        self.min_scale = min_scale
        self.min_df = min_df

    def scale(self, params: torch.Tensor) -> torch.Tensor:
        return F.softplus(params[..., 1, :]) + self.min_scale

    def df(self, params: torch.Tensor) -> torch.Tensor:
        return F.softplus(params[..., 2, :]) + self.min_df

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The reference density; `fused_log_density` computes the same numbers faster."""
        loc, scale, df = params[..., 0, :], self.scale(params), self.df(params)
        y = (x - loc) / scale
        return (
            torch.lgamma(0.5 * (df + 1.0))
            - torch.lgamma(0.5 * df)
            - 0.5 * torch.log(df * math.pi)
            - torch.log(scale)
            - 0.5 * (df + 1.0) * torch.log1p(y**2 / df)
        )

    def fused_density_applies(self, params: torch.Tensor, x: torch.Tensor) -> bool:
        # The gamma-function differences assume ν ≥ min_df > 0.
        return _fast_dtype(params, x) and self.min_df > 0.0

    def fused_log_density(
        self, params: torch.Tensor, x: torch.Tensor, need_grad: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """`log_prob` on gathered entries: params (L, 3, N), x (N,) -> (L, N).

        With s the scale, ν the degrees of freedom, y = (x − μ)/s and u = y²/ν:
            log p = lgamma((ν+1)/2) − lgamma(ν/2) − ½ log(πν) − log s − (ν+1)/2 · log1p(u)
        """
        loc, raw_scale, raw_df = params.unbind(-2)
        scale = _softplus(raw_scale).add_(self.min_scale)
        df = _softplus(raw_df).add_(self.min_df)
        y = torch.sub(x, loc).div_(scale)
        log1p_u = _log1p_(torch.mul(y, y).div_(df))
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

    def fused_log_density_grad(
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
        _softplus_grad(grad_scale, raw_scale, out=out[:, 1])
        grad_df = torch.sub(digamma_diff, log1p_u).add_(y_sq_minus_one_q).mul_(grad).mul_(0.5)
        _softplus_grad(grad_df, raw_df, out=out[:, 2])

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return params[..., 0, :]

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        loc, scale, df = params[..., 0, :], self.scale(params), self.df(params)
        normal = torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
        # torch's gamma sampler takes no generator: seed a forked global RNG from ours so the
        # draw stays a deterministic function of `generator`.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=loc.device).item())
        devices = [loc.device] if loc.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            chi2 = torch.distributions.Chi2(df).sample()
        return loc + scale * normal / torch.sqrt(chi2 / df)


def _log1p_(u: torch.Tensor, plus: torch.Tensor | None = None) -> torch.Tensor:
    """log(1 + u) (+ plus) for u ≥ 0, to ~1 ulp, through `torch.log`; overwrites u and plus.

    torch.log1p and F.softplus run SLEEF's AVX-512 log1p, which on the project's 2-core CPU
    machine (torch 2.14) takes ~9 ns per float instead of ~0.8 until something in the process
    calls torch.lgamma, atan2 or a fractional pow (the old Student-t path did, so its
    softplus looked cheap); torch.log and exp (MKL) cost ~1 ns either way.
    w = fl(1 + u) is exact up to δ = (1 + u − w)/w, |δ| ≤ ε/2, and
    log(1 + u) = log w + log(1 + δ) = log w + δ + O(ε²). 1 + u − w = u − (w − 1) is exact.
    """
    w = u + 1.0
    u.sub_(torch.sub(w, 1.0))  # 1 + u − w
    delta = u.div_(w) if plus is None else plus.addcdiv_(u, w)
    return w.log_().add_(delta)


# F.softplus returns raw itself above this (its default threshold).
_SOFTPLUS_THRESHOLD = 20.0


def _softplus(raw: torch.Tensor) -> torch.Tensor:
    """F.softplus(raw) = max(raw, 0) + log1p(e^{−|raw|}) (raw above 20), without SLEEF's log1p."""
    positive = torch.relu(raw)
    value = _log1p_(torch.add(raw, positive, alpha=-2.0).exp_(), plus=positive)  # e^{−|raw|}
    # Above the threshold F.softplus drops e^{−raw}: float32 loses it to rounding anyway
    # (e^{−20} < ulp(20)/2 = 8ε), float64 needs the switch.
    if math.exp(-_SOFTPLUS_THRESHOLD) < 8.0 * torch.finfo(raw.dtype).eps:
        return value
    return torch.where(raw > _SOFTPLUS_THRESHOLD, raw, value)


def _softplus_grad(grad: torch.Tensor, raw: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
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

    torch's CPU lgamma and digamma are scalar loops (~5 and ~15 ns per entry); this takes a
    fixed number of vectorised passes. With a = ν/2, the recurrences Γ(a+1) = a Γ(a) and
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


class Mixed(ObservationModel):
    """A product over column groups, each with its own model: p(x | z) = Π_g p_g(x_{G_g} | z).

    `column_types[j]` names the model of column j (e.g. bernoulli for 0/1 columns, gaussian for
    the rest). The decoder emits P = max_g P_g parameter maps over all D columns; group g reads
    the first P_g maps of its own columns (maps a group does not use get no gradient). Every
    method is per entry, so log_prob_observed is the sum of the groups' log p(x_o | z).
    """

    def __init__(self, column_types: Sequence[Observation]) -> None:
        if not column_types:
            raise ValueError("Mixed needs at least one column type")
        self.column_types = tuple(column_types)
        names = sorted(set(self.column_types))
        self.groups: list[tuple[ObservationModel, list[int]]] = [
            (observation_model(name), [j for j, t in enumerate(self.column_types) if t == name])
            for name in names
        ]
        self.num_params = max(model.num_params for model, _ in self.groups)
        order = [j for _, columns in self.groups for j in columns]
        # Group outputs are concatenated in group order; this puts them back in column order.
        self._inverse = [0] * len(order)
        for position, column in enumerate(order):
            self._inverse[column] = position

    def _combine(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts, dim=-1)[..., self._inverse]

    def _params(self, params: torch.Tensor, model: ObservationModel, columns: list[int]) -> torch.Tensor:
        return params[..., : model.num_params, :][..., columns]

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._combine(
            [model.log_prob(self._params(params, model, cols), x[..., cols]) for model, cols in self.groups]
        )

    def log_prob_observed(self, params: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Σ_g log p_g(x_{o ∩ G_g} | z): each group's own (fast) observed-entry sum."""
        totals = [
            model.log_prob_observed(self._params(params, model, cols), x[..., cols], mask[..., cols])
            for model, cols in self.groups
        ]
        return torch.stack(totals).sum(0)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self._combine([model.mean(self._params(params, model, cols)) for model, cols in self.groups])

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self._combine(
            [model.sample(self._params(params, model, cols), generator) for model, cols in self.groups]
        )


def observation_model(name: Observation, column_types: Sequence[Observation] = ()) -> ObservationModel:
    """The observation model a config names; `column_types` (one per column) makes it Mixed.

    A column_types list naming a single model is that model, not a one-group Mixed.
    """
    models: dict[str, type[ObservationModel]] = {
        "bernoulli": Bernoulli,
        "gaussian": Gaussian,
        "student_t": StudentT,
    }
    for each in (name, *column_types):
        if each not in models:
            raise ValueError(f"unknown observation model {each!r}; choose from {sorted(models)}")
    if len(set(column_types)) > 1:
        return Mixed(column_types)
    return models[column_types[0] if column_types else name]()
