"""A linear-Gaussian DLVM whose marginals and posteriors are known in closed form.

p(z) = N(0, I_d),  p(x | z) = N(W z + b, σ² I_D), with each feature loading on one latent
(feature j on latent j mod d). Then W_oᵀ W_o is diagonal for every mask, so the exact
posterior p(z | x_o) is a diagonal Gaussian that a `MissIWAE` encoder can return exactly:

    precision_k = 1 + Σ_{j observed, j→k} W_jk² / σ²
    mean_k      = Σ_{j observed, j→k} W_jk (x_j − b_j) / σ² / precision_k

and x_o ~ N(b_o, W_o W_oᵀ + σ² I).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from missiwae.iota import ZeroImputation
from missiwae.likelihoods import Gaussian
from missiwae.model import MissIWAE

LATENT_DIM = 3
NUM_FEATURES = 9
NOISE_SCALE = 0.5


class LinearGaussian:
    def __init__(self, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.loading = torch.zeros(NUM_FEATURES, LATENT_DIM, dtype=torch.float64)
        rows = torch.arange(NUM_FEATURES)
        self.loading[rows, rows % LATENT_DIM] = 0.5 + torch.rand(
            NUM_FEATURES, generator=generator, dtype=torch.float64
        )
        self.offset = torch.randn(NUM_FEATURES, generator=generator, dtype=torch.float64)
        self.sigma = NOISE_SCALE

    def sample(self, num_rows: int, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(num_rows, LATENT_DIM, generator=generator, dtype=torch.float64)
        noise = torch.randn(num_rows, NUM_FEATURES, generator=generator, dtype=torch.float64)
        return z @ self.loading.T + self.offset + self.sigma * noise

    def posterior(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact p(z | x_o): mean and standard deviation, each (B, d)."""
        observed = mask.to(torch.float64)
        residual = torch.where(mask, x - self.offset, 0.0)
        precision = 1.0 + (observed @ self.loading**2) / self.sigma**2
        mean = (residual @ self.loading) / self.sigma**2 / precision
        return mean, precision.rsqrt()

    def log_marginal(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Exact log p(x_o) per row (B,)."""
        values = []
        for row, row_mask in zip(x, mask, strict=True):
            if not row_mask.any():
                values.append(torch.tensor(0.0, dtype=torch.float64))
                continue
            w_o = self.loading[row_mask]
            covariance = w_o @ w_o.T + self.sigma**2 * torch.eye(int(row_mask.sum()), dtype=torch.float64)
            normal = torch.distributions.MultivariateNormal(self.offset[row_mask], covariance)
            values.append(normal.log_prob(row[row_mask]))
        return torch.stack(values)

    def conditional_mean(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """E[x | x_o] for every entry (B, D): b + W E[z | x_o]."""
        mean, _ = self.posterior(x, mask)
        return mean @ self.loading.T + self.offset

    def conditional_mean_variance(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Var_{p(z | x_o)}[E[x_j | z]] = Σ_k W_jk² s_k² (B, D): the variance SNIS averages."""
        _, std = self.posterior(x, mask)
        return std**2 @ (self.loading**2).T

    def elbo(self, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """E_q[log p(x_o | z)] − KL(q || p) for q = N(mu, std²): (B,)."""
        loc = mu @ self.loading.T + self.offset
        spread = std**2 @ (self.loading**2).T
        expected = -0.5 * math.log(2 * math.pi * self.sigma**2) - ((x - loc) ** 2 + spread) / (
            2 * self.sigma**2
        )
        kl = 0.5 * (mu**2 + std**2 - 1.0 - torch.log(std**2)).sum(-1)
        return torch.where(mask, expected, 0.0).sum(-1) - kl


class PosteriorEncoder(nn.Module):
    """The exact posterior, optionally distorted (shifted mean, scaled spread) into a worse q."""

    def __init__(self, truth: LinearGaussian, shift: float = 0.0, spread: float = 1.0):
        super().__init__()
        self.truth, self.shift, self.spread = truth, shift, spread
        self.anchor = nn.Parameter(torch.zeros((), dtype=torch.float64))  # gives the model a device

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.truth.posterior(x, mask)
        return mean + self.shift, std * self.spread


class LinearDecoder(nn.Module):
    """z -> (loc = W z + b, raw scale giving exactly σ through Gaussian's softplus)."""

    def __init__(self, truth: LinearGaussian, likelihood: Gaussian):
        super().__init__()
        self.truth = truth
        self.raw_scale = math.log(math.expm1(truth.sigma - likelihood.min_scale))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        loc = z @ self.truth.loading.T + self.truth.offset
        return torch.stack([loc, torch.full_like(loc, self.raw_scale)], dim=1)


def linear_gaussian_model(truth: LinearGaussian, shift: float = 0.0, spread: float = 1.0) -> MissIWAE:
    likelihood = Gaussian()
    return MissIWAE(
        PosteriorEncoder(truth, shift, spread),
        LinearDecoder(truth, likelihood),
        likelihood,
        ZeroImputation(),
        NUM_FEATURES,
        LATENT_DIM,
    )


def example_masks(num_rows: int, generator: torch.Generator) -> torch.Tensor:
    """Random masks plus one all-observed and one all-missing row."""
    mask = torch.rand(num_rows, NUM_FEATURES, generator=generator) < 0.6
    mask[0] = True
    mask[1] = False
    return mask
