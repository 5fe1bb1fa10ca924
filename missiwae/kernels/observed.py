"""Σ_{j observed} log p(x_j | z) evaluated on the observed entries only, and the Bernoulli
masked sum without a log1p per entry.

`observed_log_prob_sum` is the one entry point `missiwae.likelihoods` calls; it returns None
where no fast path applies, and the model then evaluates its own definition.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch.autograd.function import once_differentiable


class BernoulliKernel:
    """Marks a Bernoulli model whose params[..., 0, :] are logits (`masked_bernoulli_log_prob`)."""


class FusedDensity(ABC):
    """A per-entry log-density with a closed-form gradient, for `_ObservedLogDensitySum`.

    The methods see the gathered observed entries only: params (L, P, N), x (N,).
    """

    @abstractmethod
    def applies(self, params: torch.Tensor, x: torch.Tensor) -> bool:
        """Whether `log_density` handles these tensors (dtype, constructor arguments)."""

    @abstractmethod
    def log_density(
        self, params: torch.Tensor, x: torch.Tensor, need_grad: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """log p(x_j | params_j) (L, N), and what `log_density_grad` needs (if need_grad)."""

    @abstractmethod
    def log_density_grad(
        self, saved: tuple[torch.Tensor, ...], grad: torch.Tensor, out: torch.Tensor
    ) -> None:
        """Writes grad · ∂ log p / ∂ params (L, P, N) into `out`; grad (L, N)."""


Kernel = BernoulliKernel | FusedDensity


def observed_log_prob_sum(
    kernel: Kernel | None,
    log_prob: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    params: torch.Tensor,
    x: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor | None:
    """Σ_{j observed} log_prob(params, x)_j: params (..., P, D), x and mask broadcast -> (...,),
    or None where no fast path applies (the caller then evaluates the masked sum itself).

    In order: the Bernoulli Function for float logits covering x and mask's shape; else, for
    params (..., B, P, D) with x and mask (B, D), the density on the observed entries only
    (gathered, then summed per row), through the model's fused Function when its dtypes allow
    and through `log_prob` on the gathered entries otherwise. A row with nothing observed gets
    exactly 0, never NaN.
    """
    if isinstance(kernel, BernoulliKernel) and _bernoulli_applies(params[..., 0, :], x, mask):
        return masked_bernoulli_log_prob(params[..., 0, :], x, mask)
    if not _gatherable(params, x, mask):
        return None
    observed = _ObservedEntries(mask, params.shape[-2])
    if isinstance(kernel, FusedDensity) and kernel.applies(params, x):
        flat = params.reshape(-1, observed.grid_size)  # a view when params is contiguous
        need_grad = torch.is_grad_enabled() and params.requires_grad
        totals = _ObservedLogDensitySum.apply(flat, x.reshape(-1)[observed.flat], observed, kernel, need_grad)
        return totals.view(*params.shape[:-3], mask.shape[0])
    per_entry = log_prob(observed.gather(params), x.reshape(-1)[observed.flat])  # (..., N_o)
    totals = per_entry.new_zeros((*per_entry.shape[:-1], mask.shape[0]))
    return totals.index_add(-1, observed.rows, per_entry)


def _bernoulli_applies(logits: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> bool:
    if logits.dtype not in (torch.float32, torch.float64) or x.dtype != logits.dtype:
        return False
    return torch.broadcast_shapes(logits.shape, x.shape, mask.shape) == logits.shape


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


class _ObservedLogDensitySum(torch.autograd.Function):
    """Σ_{j observed in row b} log p(x_j | params_j) for flat params (L, B·P·D) -> (L, B).

    Gathers the observed entries (L, P, N_o), evaluates the kernel's density, sums each row's
    consecutive entries with `segment_reduce` (cheaper than `index_add` for this layout) and,
    backward, scatters the kernel's closed-form gradient into a zero (L, B·P·D) grid.
    """

    @staticmethod
    def forward(
        ctx: Any,
        flat: torch.Tensor,
        x: torch.Tensor,
        observed: _ObservedEntries,
        kernel: FusedDensity,
        need_grad: bool,
    ) -> torch.Tensor:
        num_lead = flat.shape[0]
        gathered = flat.index_select(-1, observed.index).view(num_lead, observed.num_params, observed.count)
        log_density, saved = kernel.log_density(gathered, x, need_grad)
        lengths = observed.lengths.expand(num_lead, -1).contiguous()
        totals = torch.segment_reduce(log_density, "sum", lengths=lengths, axis=1, unsafe=True)
        ctx.observed, ctx.kernel, ctx.grid_shape = observed, kernel, flat.shape
        ctx.save_for_backward(*saved)
        return totals

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None]:
        observed: _ObservedEntries = ctx.observed
        num_lead = grad.shape[0]
        per_entry = grad.index_select(-1, observed.rows)  # (L, N_o): each entry gets its row's grad
        out = grad.new_empty((num_lead, observed.num_params, observed.count))
        ctx.kernel.log_density_grad(ctx.saved_tensors, per_entry, out)
        index = observed.index.expand(num_lead, -1)
        grad_flat = grad.new_zeros(ctx.grid_shape).scatter_(-1, index, out.view(num_lead, -1))
        return grad_flat, None, None, None, None


# ------------------------------------------------------------------------------ Bernoulli

# 64 factors in (1, 2] multiply to at most 2^64, far inside float32's range (2^128).
_PRODUCT_BLOCK = 64


def masked_bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_j m_j [x_j l_j − softplus(l_j)] over the last axis: logits (..., D), x and mask
    broadcastable to it (mask bool, True = observed) -> (...,). Equal to
    `torch.where(mask, x * l − softplus(l), 0).sum(-1)`, with its gradient.

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
