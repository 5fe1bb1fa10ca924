"""The missIWAE bound and the importance-weight algebra shared by evaluation and imputation.

With z_1..z_K ~ q_γ(z | ι(x_o)) and log importance weights

    log w_k = log p_θ(x_o | z_k) + log p(z_k) − log q_γ(z_k | ι(x_o)),

the missIWAE bound of one row is

    L_K(x_o) = log (1/K) Σ_k w_k          (K = 1: the missVAE bound, an ELBO),

and the same weights, normalised, drive self-normalised importance sampling (SNIS) and sampling
importance resampling (SIR). Everything stays in log space: logsumexp and log_softmax only.
"""

from __future__ import annotations

import math

import torch


def log_importance_weights(
    log_px_o: torch.Tensor, log_pz: torch.Tensor, log_qz: torch.Tensor
) -> torch.Tensor:
    """log w = log p_θ(x_o | z) + log p(z) − log q(z | x_o); each (K, B) -> (K, B)."""
    return log_px_o + log_pz - log_qz


def miss_iwae_bound(log_px_o: torch.Tensor, log_pz: torch.Tensor, log_qz: torch.Tensor) -> torch.Tensor:
    """Per-row missIWAE bound L_K = log (1/K) Σ_k w_k; inputs (K, B) -> (B,)."""
    return log_mean_exp(log_importance_weights(log_px_o, log_pz, log_qz))


def log_mean_exp(log_w: torch.Tensor) -> torch.Tensor:
    """log (1/K) Σ_k exp(log_w[k]) over the leading axis: (K, B) -> (B,)."""
    if log_w.shape[0] == 1:  # the missVAE bound: the one weight itself, without two kernels
        return log_w[0]
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


def normalised_log_weights(log_w: torch.Tensor) -> torch.Tensor:
    """log of the self-normalised weights w_k / Σ_j w_j: (K, B) -> (K, B)."""
    return torch.log_softmax(log_w, dim=0)


def effective_sample_size(log_w: torch.Tensor) -> torch.Tensor:
    """Kish's ESS (Σ w)² / Σ w² of each column: (K, B) -> (B,), in [1, K]."""
    # Normalising first keeps every term in [0, 1], so huge |log w| cannot cancel badly.
    return 1.0 / torch.exp(2.0 * normalised_log_weights(log_w)).sum(0)


class StreamingLogWeights:
    """Running log Σ w and log Σ w² over chunks of importance samples (flat memory in K).

    Feed (C, B) chunks with `update`; `log_mean_exp` and `effective_sample_size` then equal
    what the one-shot functions give on the concatenated (K, B) weights.
    """

    def __init__(self) -> None:
        self.num_samples = 0
        # Sums are of exp(log w − shift), with shift the first chunk's maximum: |log w| can be
        # in the thousands, and subtracting two such logs in float32 would lose the ESS.
        self.shift: torch.Tensor | None = None  # (B,)
        self.log_sum: torch.Tensor | None = None  # (B,) log Σ exp(log w − shift)
        self.log_sum_sq: torch.Tensor | None = None  # (B,) log Σ exp(2 (log w − shift))

    def update(self, log_w: torch.Tensor) -> None:
        if self.shift is None:
            self.shift = log_w.max(0).values
        shifted = log_w - self.shift
        chunk_sum = torch.logsumexp(shifted, 0)
        chunk_sum_sq = torch.logsumexp(2.0 * shifted, 0)
        if self.log_sum is None or self.log_sum_sq is None:
            self.log_sum, self.log_sum_sq = chunk_sum, chunk_sum_sq
        else:
            self.log_sum = torch.logaddexp(self.log_sum, chunk_sum)
            self.log_sum_sq = torch.logaddexp(self.log_sum_sq, chunk_sum_sq)
        self.num_samples += log_w.shape[0]

    def log_mean_exp(self) -> torch.Tensor:
        """The importance-sampling estimate of log p(x_o) (the bound with K = all samples)."""
        if self.log_sum is None or self.shift is None:
            raise ValueError("no importance weights were added")
        return self.shift + self.log_sum - math.log(self.num_samples)

    def log_normaliser(self) -> torch.Tensor:
        """log Σ_l exp(log w_l): (B,)."""
        if self.log_sum is None or self.shift is None:
            raise ValueError("no importance weights were added")
        return self.shift + self.log_sum

    def effective_sample_size(self) -> torch.Tensor:
        if self.log_sum is None or self.log_sum_sq is None:
            raise ValueError("no importance weights were added")
        return torch.exp(2.0 * self.log_sum - self.log_sum_sq)
