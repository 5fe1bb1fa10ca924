"""Simple imputation baselines that missIWAE must beat: zero and per-feature mean.

Also the independent-Bernoulli log-likelihood: the DLVM-free reference for binary data.
"""

from __future__ import annotations

import torch

from missiwae.validation import check_incomplete_batch


def observed_feature_means(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of each feature over its observed entries: (N, D) -> (D,); 0 where none observed."""
    check_incomplete_batch(x, mask)
    counts = mask.sum(0)
    sums = torch.where(mask, x, 0.0).sum(0)
    return torch.where(counts > 0, sums / counts.clamp_min(1), 0.0)


def zero_impute(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Holes filled with 0: (N, D) -> (N, D)."""
    check_incomplete_batch(x, mask)
    return torch.where(mask, x, 0.0)


def mean_impute(x: torch.Tensor, mask: torch.Tensor, feature_means: torch.Tensor) -> torch.Tensor:
    """Holes filled with the per-feature means (from the training data): (N, D) -> (N, D)."""
    check_incomplete_batch(x, mask)
    return torch.where(mask, x, feature_means.to(x.dtype).expand_as(x))


def independent_bernoulli_log_likelihood(
    train_x: torch.Tensor,
    train_mask: torch.Tensor,
    x: torch.Tensor,
    mask: torch.Tensor,
    pseudo_count: float = 1.0,
) -> torch.Tensor:
    """log p(x_o) per row (N,) under independent per-pixel Bernoullis fitted to observed pixels.

    The pseudo-count keeps pixels never seen on (or off) from giving -inf.
    """
    check_incomplete_batch(train_x, train_mask)
    check_incomplete_batch(x, mask)
    ones = torch.where(train_mask, train_x, 0.0).sum(0)
    counts = train_mask.sum(0)
    p = (ones + pseudo_count) / (counts + 2.0 * pseudo_count)
    x_observed = torch.where(mask, x, 0.0)
    log_p = x_observed * torch.log(p) + (1.0 - x_observed) * torch.log1p(-p)
    return torch.where(mask, log_p, 0.0).sum(-1)
