"""Single imputation by SNIS and multiple imputation by SIR (paper, Section 4).

With (z_l, x_m^(l)) ~ p_θ(x_m | x_o, z) q_γ(z | x_o), l = 1..L, and weights

    w_l = r_l / Σ_j r_j,   r_l = p_θ(x_o | z_l) p(z_l) / q_γ(z_l | x_o),

    E[h(x_m) | x_o] ≈ Σ_l w_l h(x_m^(l))                      (eq. 5, SNIS)

and multiple imputation draws each copy from the particles with probabilities w_l (SIR).
For h(x) = x the inner expectation is known in closed form, E[x_m | z_l] = mean(f_θ(z_l)), and
using it (Rao-Blackwellisation) removes the sampling noise of x_m^(l); that is the default.
For binary data the mean is the posterior probability P(x_j = 1 | x_o).

All functions stream over L in chunks (`chunk_size` importance samples at a time), so memory
stays flat in L. Observed entries are copied from x bit for bit: imputation never changes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from missiwae.bounds import StreamingLogWeights
from missiwae.model import MissIWAE
from missiwae.validation import check_positive

# h: the complete-data sample (C, B, D), observed entries from x, missing from p(x_m | z_l) ->
# any per-row statistic (C, B, *S).
Statistic = Callable[[torch.Tensor], torch.Tensor]


@dataclasses.dataclass
class SNISResult:
    estimate: torch.Tensor  # (B, *S): Σ_l w_l h(x^(l)) (or E[x | x_o] when h is None)
    effective_sample_size: torch.Tensor  # (B,) in [1, L]
    log_likelihood: torch.Tensor  # (B,) log (1/L) Σ_l r_l, the estimate of log p(x_o)


@dataclasses.dataclass
class SingleImputation:
    imputed: torch.Tensor  # (B, D): x where observed, the SNIS estimate where missing
    effective_sample_size: torch.Tensor  # (B,)
    log_likelihood: torch.Tensor  # (B,)


@dataclasses.dataclass
class MultipleImputation:
    imputations: torch.Tensor  # (M, B, D): x where observed, SIR draws where missing
    effective_sample_size: torch.Tensor  # (B,)


@torch.no_grad()
def snis_expectation(
    model: MissIWAE,
    x: torch.Tensor,
    mask: torch.Tensor,
    num_samples: int,
    h: Statistic | None = None,
    *,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
) -> SNISResult:
    """E[h(x) | x_o] by self-normalised importance sampling with L = `num_samples` samples.

    x (B, D), mask (B, D) bool (True = observed). h=None gives the Rao-Blackwellised
    conditional mean E[x | x_o] (B, D), computed from the decoder's means.
    """
    weights = StreamingLogWeights()
    weighted_sum: torch.Tensor | None = None  # Σ_l (r_l / Σ_j r_j) h_l over the samples so far
    for chunk in model.importance_sample_chunks(x, mask, num_samples, chunk_size, generator):
        if h is None:
            values = model.likelihood.mean(chunk.params)
        else:
            draws = model.likelihood.sample(chunk.params, generator)
            values = h(torch.where(mask, x, draws))
        previous = weights.log_normaliser() if weights.num_samples else None
        weights.update(chunk.log_w)
        log_normaliser = weights.log_normaliser()
        chunk_weights = torch.exp(chunk.log_w - log_normaliser)  # (C, B)
        contribution = torch.einsum("cb,cb...->b...", chunk_weights, values)
        if weighted_sum is None or previous is None:
            weighted_sum = contribution
        else:
            # Renormalise what was summed so far to the grown normaliser.
            rescale = torch.exp(previous - log_normaliser)
            weighted_sum = weighted_sum * rescale.view(-1, *[1] * (weighted_sum.ndim - 1)) + contribution
    assert weighted_sum is not None
    return SNISResult(weighted_sum, weights.effective_sample_size(), weights.log_mean_exp())


def impute_single(
    model: MissIWAE,
    x: torch.Tensor,
    mask: torch.Tensor,
    num_samples: int,
    *,
    threshold: float | None = None,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
) -> SingleImputation:
    """Single imputation: E[x_m | x_o] by SNIS, written into the holes of x (N, D).

    With `threshold` (binary data) the imputed entries are 1 where P(x_j = 1 | x_o) > threshold,
    else 0: 1/2 gives the paper's imputation-accuracy rule. Rows go `batch_size` at a time.
    """
    check_positive("number of importance samples", num_samples)
    model.check_batch(x, mask)  # before x.shape is read: x may not even be a tensor
    parts = []
    for rows in _row_batches(x.shape[0], batch_size):
        result = snis_expectation(
            model, x[rows], mask[rows], num_samples, chunk_size=chunk_size, generator=generator
        )
        estimate = result.estimate
        if threshold is not None:
            estimate = (estimate > threshold).to(x.dtype)
        imputed = torch.where(mask[rows], x[rows], estimate.to(x.dtype))
        parts.append(SingleImputation(imputed, result.effective_sample_size, result.log_likelihood))
    return SingleImputation(
        torch.cat([part.imputed for part in parts]),
        torch.cat([part.effective_sample_size for part in parts]),
        torch.cat([part.log_likelihood for part in parts]),
    )


def _row_batches(num_rows: int, batch_size: int | None) -> list[slice]:
    if batch_size is None:
        return [slice(0, num_rows)]
    check_positive("batch_size", batch_size)
    return [slice(start, start + batch_size) for start in range(0, num_rows, batch_size)]


@torch.no_grad()
def impute_multiple(
    model: MissIWAE,
    x: torch.Tensor,
    mask: torch.Tensor,
    num_imputations: int,
    num_samples: int,
    *,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
) -> MultipleImputation:
    """M = `num_imputations` imputed copies by sampling importance resampling over L particles.

    Each copy picks particle l with probability w_l (independently across copies and rows),
    then draws x_m ~ p_θ(x_m | z_l). The pick uses the Gumbel-max trick,
    argmax_l (log r_l + G_l) with G_l ~ Gumbel(0, 1), which is an exact draw from the normalised
    weights and needs only a running maximum: memory is flat in L.
    Returns imputations (M, N, D) with observed entries equal to x (N, D); rows go
    `batch_size` at a time.
    """
    check_positive("num_imputations", num_imputations)
    check_positive("number of importance samples", num_samples)
    model.check_batch(x, mask)  # before x.shape is read: x may not even be a tensor
    parts = [
        _sir(model, x[rows], mask[rows], num_imputations, num_samples, chunk_size, generator)
        for rows in _row_batches(x.shape[0], batch_size)
    ]
    return MultipleImputation(
        torch.cat([part.imputations for part in parts], dim=1),
        torch.cat([part.effective_sample_size for part in parts]),
    )


def _sir(
    model: MissIWAE,
    x: torch.Tensor,
    mask: torch.Tensor,
    num_imputations: int,
    num_samples: int,
    chunk_size: int | None,
    generator: torch.Generator | None,
) -> MultipleImputation:
    num_rows = x.shape[0]
    weights = StreamingLogWeights()
    best_key: torch.Tensor | None = None  # (M, B) running max of log r + Gumbel
    chosen: torch.Tensor | None = None  # (M, B, P, D) decoder output of each picked particle
    rows = torch.arange(num_rows, device=x.device)
    for chunk in model.importance_sample_chunks(x, mask, num_samples, chunk_size, generator):
        weights.update(chunk.log_w)
        exponential = torch.empty(
            (num_imputations, *chunk.log_w.shape), device=x.device, dtype=chunk.log_w.dtype
        ).exponential_(generator=generator)
        keys = chunk.log_w.unsqueeze(0) - torch.log(exponential)  # -log E ~ Gumbel(0, 1)
        chunk_best, index = keys.max(dim=1)  # (M, B)
        picked = chunk.params[index, rows]  # (M, B, P, D)
        if best_key is None or chosen is None:
            best_key, chosen = chunk_best, picked
        else:
            better = chunk_best > best_key
            best_key = torch.where(better, chunk_best, best_key)
            chosen = torch.where(better[:, :, None, None], picked, chosen)
    assert chosen is not None
    draws = model.likelihood.sample(chosen, generator)  # (M, B, D)
    return MultipleImputation(torch.where(mask, x, draws), weights.effective_sample_size())
