"""Held-out evaluation: the log-likelihood estimate and imputation accuracy.

log p(x_o) ≈ log (1/S) Σ_s p_θ(x_o | z_s) p(z_s) / q(z_s | x_o), z_s ~ q: the missIWAE bound
with K = S large (5000 by convention). It is a stochastic lower bound in expectation that
tightens as S grows. With an all-True mask it is the complete-data log-likelihood.

Any q is a valid proposal: with `proposal_mask` the encoder sees only part of the observed
entries. That matters for an encoder trained with zero ι on incomplete data: handed a complete
image it sees an input unlike any it was trained on (no zeroed holes), and its q can be far
worse than the q of a masked copy of the same image.
"""

from __future__ import annotations

import torch

from missiwae.bounds import StreamingLogWeights
from missiwae.model import MissIWAE
from missiwae.validation import check_positive


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
