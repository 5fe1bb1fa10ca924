"""MissIWAE: the DLVM p(z) p_θ(x | z) with amortised proposal q_γ(z | ι(x_o)).

    z ~ N(0, I),   x | z ~ p_θ(x | f_θ(z)),   q_γ(z | x_o) = N(mu_γ(ι(x_o)), diag sigma_γ²(ι(x_o)))

`importance_samples` draws z_1..z_K ~ q and returns the log weights
log p_θ(x_o | z_k) + log p(z_k) − log q(z_k | x_o); `bound` turns them into L_K (bounds.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import torch
from torch import nn

from missiwae.bounds import log_importance_weights, log_mean_exp
from missiwae.config import ModelConfig
from missiwae.iota import imputation_function, zero_filled
from missiwae.likelihoods import ObservationModel, observation_model
from missiwae.networks import build_networks
from missiwae.validation import check_incomplete_batch, check_positive

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)

# Importance samples per chunk are sized so that the largest per-sample tensor (the (C, B, P, D)
# decoder output or the widest hidden layer) holds about this many numbers: ~8 MB in float32,
# whatever L is. Small enough to stay in cache and be reused by the allocator (chunks of 128 MB
# ran at half the speed on CPU: every fresh mmap'd buffer is page-faulted in again), large
# enough that the decoder's matrix products keep thousands of rows.
DEFAULT_CHUNK_ELEMENTS = 2**21


@dataclasses.dataclass
class ImportanceSamples:
    """K importance samples for a batch of B rows."""

    log_w: torch.Tensor  # (K, B) log p(x_o | z) + log p(z) − log q(z | x_o)
    z: torch.Tensor  # (K, B, d)
    params: torch.Tensor  # (K, B, P, D) decoder output f_θ(z)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last axis: (..., d) -> (...)."""
    return -0.5 * (z**2).sum(-1) - z.shape[-1] * _HALF_LOG_2PI


class MissIWAE(nn.Module):
    """Encoder, decoder, observation model and ι, wired as in the paper."""

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        likelihood: ObservationModel,
        iota: nn.Module,
        num_features: int,
        latent_dim: int,
        config: ModelConfig | None = None,
    ):
        super().__init__()
        self.encoder, self.decoder, self.iota = encoder, decoder, iota
        self.likelihood = likelihood
        self.num_features, self.latent_dim = num_features, latent_dim
        self.config = config

    @classmethod
    def from_config(cls, config: ModelConfig) -> MissIWAE:
        likelihood = observation_model(config.observation, config.column_types, config.categorical_levels)
        encoder, decoder = build_networks(config, likelihood.num_params)
        iota = imputation_function(config.imputation, config.num_features)
        return cls(encoder, decoder, likelihood, iota, config.num_features, config.latent_dim, config)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def uses_oracle(self) -> bool:
        return bool(getattr(self.iota, "requires_complete_data", False))

    def check_batch(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        """Bad input gets an error naming the problem (see `check_incomplete_batch`)."""
        dtype = next(self.parameters()).dtype
        check_incomplete_batch(x, mask, self.num_features, complete=self.uses_oracle, dtype=dtype)

    def posterior(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q_γ(z | ι(x_o)): (mu, sigma), each (B, d)."""
        return self.encoder(self.iota(x, mask), mask)

    def importance_samples(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        num_samples: int,
        generator: torch.Generator | None = None,
        *,
        validate: bool = True,
    ) -> ImportanceSamples:
        """Draw z_1..z_K ~ q(z | x_o) (reparameterised) and weigh them.

        x (B, D) float, mask (B, D) bool (True = observed). Missing entries of x are ignored
        (NaN allowed) unless ι is the oracle, which reads them.
        """
        if validate:
            check_positive("K (number of importance samples)", num_samples)
            self.check_batch(x, mask)
        mu, sigma = self.posterior(x, mask)
        return self._weigh(zero_filled(x, mask), mask, mu, sigma, num_samples, generator)

    def _weigh(
        self,
        x_observed: torch.Tensor,
        mask: torch.Tensor,
        mu: torch.Tensor,
        sigma: torch.Tensor,
        num_samples: int,
        generator: torch.Generator | None,
    ) -> ImportanceSamples:
        """K samples from q = N(mu, sigma²) and their log weights. x_observed (B, D) holds zeros
        in the holes, so that a NaN placeholder cannot reach the gradient through the masked sum."""
        epsilon = torch.randn((num_samples, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + sigma * epsilon  # (K, B, d)
        log_qz = standard_normal_log_prob(epsilon) - torch.log(sigma).sum(-1)
        log_pz = standard_normal_log_prob(z)
        params = self.decoder(z.reshape(-1, self.latent_dim))
        params = params.view(num_samples, x_observed.shape[0], *params.shape[1:])
        log_px_o = self.likelihood.log_prob_observed(params, x_observed, mask)
        return ImportanceSamples(log_importance_weights(log_px_o, log_pz, log_qz), z, params)

    def importance_sample_chunks(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        num_samples: int,
        chunk_size: int | None = None,
        generator: torch.Generator | None = None,
        proposal_mask: torch.Tensor | None = None,
    ) -> Iterator[ImportanceSamples]:
        """`num_samples` importance samples in chunks of at most `chunk_size`, sharing one q.

        Peak memory is that of one chunk, so it does not grow with `num_samples`. With
        `proposal_mask` (B, D) bool, a subset of `mask`, the proposal is q(z | ι(x_o')) for the
        entries o' it marks, while the weights still score every observed entry.
        """
        check_positive("number of importance samples", num_samples)
        self.check_batch(x, mask)
        if chunk_size is None:
            chunk_size = max(1, DEFAULT_CHUNK_ELEMENTS // (x.shape[0] * self._widest_per_sample()))
        check_positive("chunk_size", chunk_size)
        if proposal_mask is not None:
            self.check_batch(x, proposal_mask)
            if bool((proposal_mask & ~mask).any()):
                raise ValueError("proposal_mask may only mark observed entries (True where mask is True)")
        mu, sigma = self.posterior(x, mask if proposal_mask is None else proposal_mask)
        x_observed = zero_filled(x, mask)
        for start in range(0, num_samples, chunk_size):
            size = min(chunk_size, num_samples - start)
            yield self._weigh(x_observed, mask, mu, sigma, size, generator)

    def _widest_per_sample(self) -> int:
        """The largest per-row tensor one importance sample creates: decoder output or layer."""
        widest = self.num_features * self.likelihood.num_params
        if self.config is not None and self.config.architecture == "mlp":
            widest = max(widest, *self.config.hidden)
        return widest

    def bound(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        K: int,
        generator: torch.Generator | None = None,
        *,
        validate: bool = True,
    ) -> torch.Tensor:
        """The per-row missIWAE bound L_K(x_o): (B,). K = 1 gives the missVAE bound."""
        samples = self.importance_samples(x, mask, K, generator, validate=validate)
        return log_mean_exp(samples.log_w)

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw x ~ p_θ(x) = ∫ p_θ(x | z) p(z) dz: (num_samples, D) (Figure 2)."""
        check_positive("num_samples", num_samples)
        z = torch.randn((num_samples, self.latent_dim), generator=generator, device=self.device)
        return self.likelihood.sample(self.decoder(z), generator)

    @torch.no_grad()
    def generative_mean(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """E[x | z] for z ~ p(z): (num_samples, D); smoother pictures than `sample`."""
        z = torch.randn((num_samples, self.latent_dim), generator=generator, device=self.device)
        return self.likelihood.mean(self.decoder(z))


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A seeded generator on `device` (CUDA sampling needs a CUDA generator)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator
