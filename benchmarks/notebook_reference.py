"""missIWAE written the way the original MIWAE notebooks are: for comparison only.

torch.distributions objects are built on every step (td.Independent(td.Normal), td.Bernoulli),
the data and mask are tiled K times with `repeat`, the Bernoulli log-probability is taken over the
flattened (K·B·D, 1) tensor and multiplied by the float mask; no fusion, no chunking. Same
networks (784-200-200-50 tanh MLP, or the three-convolution pair), same bound, same Adam.
"""

from __future__ import annotations

import torch
import torch.distributions as td
from torch import nn


def mlp_pair(num_features: int, hidden: int, latent: int) -> tuple[nn.Module, nn.Module]:
    encoder = nn.Sequential(
        nn.Linear(num_features, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, 2 * latent),
    )
    decoder = nn.Sequential(
        nn.Linear(latent, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, num_features),
    )
    return encoder, decoder


def conv_pair(latent: int) -> tuple[nn.Module, nn.Module]:
    encoder = nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 16, 5, stride=2, padding=2),
        nn.ELU(),
        nn.Conv2d(16, 32, 5, stride=2, padding=2),
        nn.ELU(),
        nn.Conv2d(32, 32, 5, stride=2, padding=2),
        nn.ELU(),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 2 * latent),
    )
    decoder = nn.Sequential(
        nn.Linear(latent, 32 * 16),
        nn.ELU(),
        nn.Unflatten(1, (32, 4, 4)),
        nn.ConvTranspose2d(32, 32, 5, stride=2, padding=2),
        nn.ELU(),
        nn.ConvTranspose2d(32, 16, 5, stride=2, padding=2, output_padding=1),
        nn.ELU(),
        nn.ConvTranspose2d(16, 1, 5, stride=2, padding=2, output_padding=1),
        nn.Flatten(),
    )
    return encoder, decoder


class NotebookMIWAE:
    """The notebook's `miwae_loss` and training step, Bernoulli observation model."""

    def __init__(self, architecture: str, num_features: int = 784, hidden: int = 200, latent: int = 50):
        self.d, self.p = latent, num_features
        if architecture == "mlp":
            self.encoder, self.decoder = mlp_pair(num_features, hidden, latent)
        else:
            self.encoder, self.decoder = conv_pair(latent)
        self.p_z = td.Independent(td.Normal(loc=torch.zeros(latent), scale=torch.ones(latent)), 1)
        params = list(self.encoder.parameters()) + list(self.decoder.parameters())
        self.optimizer = torch.optim.Adam(params, lr=1e-3)

    def miwae_loss(self, iota_x: torch.Tensor, mask: torch.Tensor, K: int) -> torch.Tensor:
        batch_size, d, p = iota_x.shape[0], self.d, self.p
        out_encoder = self.encoder(iota_x)
        q_zgivenxobs = td.Independent(
            td.Normal(loc=out_encoder[..., :d], scale=nn.Softplus()(out_encoder[..., d : (2 * d)]) + 1e-4),
            1,
        )
        zgivenx = q_zgivenxobs.rsample([K])
        zgivenx_flat = zgivenx.reshape([K * batch_size, d])
        out_decoder = self.decoder(zgivenx_flat)
        data_flat = torch.Tensor.repeat(iota_x, [K, 1]).reshape([-1, 1])
        tiledmask = torch.Tensor.repeat(mask, [K, 1])
        all_log_pxgivenz_flat = td.Bernoulli(logits=out_decoder.reshape([-1, 1])).log_prob(data_flat)
        all_log_pxgivenz = all_log_pxgivenz_flat.reshape([K * batch_size, p])
        logpxobsgivenz = torch.sum(all_log_pxgivenz * tiledmask, 1).reshape([K, batch_size])
        logpz = self.p_z.log_prob(zgivenx)
        logq = q_zgivenxobs.log_prob(zgivenx)
        return -torch.mean(torch.logsumexp(logpxobsgivenz + logpz - logq, 0))

    def step(self, x: torch.Tensor, mask: torch.Tensor, K: int) -> float:
        """One Adam step on a batch: x (B, D) true values, mask (B, D) bool (True = observed)."""
        mask_float = mask.float()
        iota_x = x * mask_float  # zeros in the holes, as the notebooks' xhat_0
        self.optimizer.zero_grad()
        loss = self.miwae_loss(iota_x, mask_float, K)
        loss.backward()
        self.optimizer.step()
        return float(loss)
