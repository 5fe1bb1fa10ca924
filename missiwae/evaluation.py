"""Held-out evaluation: the log-likelihood estimate and imputation accuracy.

log p(x_o) ≈ log (1/S) Σ_s p_θ(x_o | z_s) p(z_s) / q(z_s | x_o), z_s ~ q: the missIWAE bound
with K = S large (5000 by convention). It is a stochastic lower bound in expectation that
tightens as S grows. With an all-True mask it is the complete-data log-likelihood.

Any q is a valid proposal: with `proposal_mask` the encoder sees only part of the observed
entries. That matters for an encoder trained with zero ι on incomplete data: handed a complete
image it sees an input unlike any it was trained on (no zeroed holes), and its q can be far
worse than the q of a masked copy of the same image.

Which q, then, for every model alike? The defensive mixture (Hesterberg 1995; Owen & Zhou 2000)
of the naive proposal with R masked ones,

    q_mix(z) = Σ_c α_c q(z | ι(x ⊙ m_c)),   m_0 = the observed entries, m_1..m_R random masks
                                             at the training missing rate (within the observed),

weighted by its own density: log w = log p_θ(x_o | z) + log p(z) − log q_mix(z), where
log q_mix(z) = logsumexp_c (log α_c + log q_c(z)). Samples are drawn stratified, n_c from each
component with α_c = n_c / S (the deterministic mixture of Veach & Guibas' balance heuristic):
E[(1/S) Σ w] = p(x_o) exactly, and since q_mix ≥ α_c q_c, no weight is larger than 1/α_c times
the weight component c alone would give it, so one bad component cannot ruin the estimate.
"""

from __future__ import annotations

import math

import torch

from missiwae.bounds import StreamingLogWeights
from missiwae.model import MissIWAE, standard_normal_log_prob
from missiwae.validation import check_positive

# R, the random masks of the defensive mixture (R + 1 components with the naive proposal):
# the number both reports give every model.
DEFENSIVE_MASKS = 4


@torch.no_grad()
def estimate_log_likelihood(
    model: MissIWAE,
    x: torch.Tensor,
    mask: torch.Tensor,
    num_samples: int = 5000,
    *,
    batch_size: int = 100,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
    proposal_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-row estimate of log p_θ(x_o): x, mask (N, D) -> (N,), on x's device.

    Rows are processed `batch_size` at a time and samples `chunk_size` at a time, so memory is
    bounded by one (chunk, batch, P, D) block whatever N and `num_samples` are. `proposal_mask`
    (N, D) bool, a subset of `mask`: the entries the encoder sees (default: all of `mask`).
    """
    check_positive("num_samples", num_samples)
    check_positive("batch_size", batch_size)
    model.check_batch(x, mask)
    if proposal_mask is not None:
        model.check_batch(x, proposal_mask)
    was_training = model.training
    model.eval()
    estimates = []
    for start in range(0, x.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        weights = StreamingLogWeights()
        proposal = None if proposal_mask is None else proposal_mask[rows]
        for chunk in model.importance_sample_chunks(
            x[rows], mask[rows], num_samples, chunk_size, generator, proposal_mask=proposal
        ):
            weights.update(chunk.log_w)
        estimates.append(weights.log_mean_exp())
    model.train(was_training)
    return torch.cat(estimates)


def defensive_proposal_masks(
    mask: torch.Tensor, num_masks: int, missing_rate: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The mixture's components: mask (N, D) -> (1 + num_masks, N, D) bool.

    Component 0 is `mask` itself (the naive proposal); component r hides each observed entry
    with probability `missing_rate`, independently (MCAR, as the training masks were drawn).
    """
    if num_masks < 0:
        raise ValueError(f"num_masks must be >= 0, got {num_masks}")
    if not 0.0 <= missing_rate < 1.0:
        raise ValueError(f"missing_rate must be in [0, 1), got {missing_rate}")
    keep = torch.rand((num_masks, *mask.shape), generator=generator, device=mask.device) >= missing_rate
    return torch.cat([mask.unsqueeze(0), mask & keep])


def diagonal_normal_log_prob(z: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag sigma²) summed over the last axis: z (..., B, d), mu, sigma (B, d) -> (..., B)."""
    return standard_normal_log_prob((z - mu) / sigma) - torch.log(sigma).sum(-1)


def samples_per_component(num_samples: int, num_components: int) -> list[int]:
    """n_c: `num_samples` split as evenly as possible, the remainder to the first components."""
    if num_samples < num_components:
        raise ValueError(
            f"num_samples ({num_samples}) must be at least the number of mixture components "
            f"({num_components})"
        )
    base, extra = divmod(num_samples, num_components)
    return [base + (c < extra) for c in range(num_components)]


@torch.no_grad()
def estimate_log_likelihood_mixture(
    model: MissIWAE,
    x: torch.Tensor,
    mask: torch.Tensor,
    proposal_masks: torch.Tensor,
    num_samples: int = 5000,
    *,
    batch_size: int = 100,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-row estimate of log p_θ(x_o) under the mixture proposal: x, mask (N, D) -> (N,).

    `proposal_masks` (C, N, D) bool, each a subset of `mask`: component c is q(z | ι(x ⊙ m_c)),
    with n_c = `samples_per_component`(S, C) samples and mixture weight α_c = n_c / S. Each
    sample's weight is the model's weight under its own component, log w_c, turned into the
    mixture's: log w = log w_c + log q_c(z) − log q_mix(z).
    """
    check_positive("num_samples", num_samples)
    check_positive("batch_size", batch_size)
    model.check_batch(x, mask)
    if proposal_masks.dim() != 3 or proposal_masks.shape[1:] != mask.shape:
        raise ValueError(f"proposal_masks must be (C, N, D) with (N, D) = {tuple(mask.shape)}")
    counts = samples_per_component(num_samples, proposal_masks.shape[0])
    log_alpha = torch.tensor([math.log(n / num_samples) for n in counts], device=x.device, dtype=x.dtype)
    was_training = model.training
    model.eval()
    estimates = []
    for start in range(0, x.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        masks = proposal_masks[:, rows]
        posteriors = [model.posterior(x[rows], m) for m in masks]
        mu = torch.stack([p[0] for p in posteriors])  # (C, B, d)
        sigma = torch.stack([p[1] for p in posteriors])
        weights = StreamingLogWeights()
        for c, count in enumerate(counts):
            for chunk in model.importance_sample_chunks(
                x[rows], mask[rows], count, chunk_size, generator, proposal_mask=masks[c]
            ):
                # log q_c'(z) for every component c': (C, n, B), from the (n, B, d) samples.
                log_q = diagonal_normal_log_prob(chunk.z.unsqueeze(0), mu.unsqueeze(1), sigma.unsqueeze(1))
                log_q_mix = torch.logsumexp(log_q + log_alpha.view(-1, 1, 1), dim=0)
                weights.update(chunk.log_w + log_q[c] - log_q_mix)
        estimates.append(weights.log_mean_exp())
    model.train(was_training)
    return torch.cat(estimates)


def estimate_log_likelihood_defensive(
    model: MissIWAE,
    x: torch.Tensor,
    mask: torch.Tensor,
    num_samples: int = 5000,
    *,
    num_masks: int,
    missing_rate: float,
    batch_size: int = 100,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """log p_θ(x_o) per row (N,) under the defensive mixture of the naive proposal and
    `num_masks` proposals from random masks at `missing_rate` (the same for every model)."""
    proposal_masks = defensive_proposal_masks(mask, num_masks, missing_rate, generator)
    return estimate_log_likelihood_mixture(
        model,
        x,
        mask,
        proposal_masks,
        num_samples,
        batch_size=batch_size,
        chunk_size=chunk_size,
        generator=generator,
    )


@torch.no_grad()
def mean_bound(
    model: MissIWAE,
    x: torch.Tensor,
    mask: torch.Tensor,
    K: int,
    *,
    batch_size: int = 500,
    generator: torch.Generator | None = None,
) -> float:
    """The average missIWAE bound L_K over the rows of (x, mask) (the validation metric)."""
    model.check_batch(x, mask)
    total = 0.0
    for start in range(0, x.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        total += float(model.bound(x[rows], mask[rows], K, generator, validate=False).sum())
    return total / x.shape[0]


def imputation_accuracy(imputed: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> float:
    """Fraction of missing entries (mask False) whose binary imputed value equals the truth.

    `imputed` may hold probabilities: they are thresholded at 1/2 (the paper's rule).
    """
    if imputed.shape != truth.shape or mask.shape != truth.shape:
        raise ValueError("imputed, truth and mask must have the same shape")
    missing = ~mask
    num_missing = int(missing.sum())
    if num_missing == 0:
        raise ValueError("no missing entries: imputation accuracy is undefined")
    predicted = imputed[missing] > 0.5
    return float((predicted == (truth[missing] > 0.5)).float().mean())
