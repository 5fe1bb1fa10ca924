"""Encoder and decoder networks.

Contracts the model relies on (custom networks follow the same ones):

- encoder(x_filled (B, D), mask (B, D) bool) -> (mu (B, d), sigma (B, d) > 0): the diagonal
  Gaussian q_γ(z | ι(x_o)). The built-in encoders read only ι(x_o), as in the paper; the mask
  is passed so that an encoder may use it (e.g. an exact posterior in tests).
- decoder(z (N, d)) -> raw observation parameters (N, P, D), read by a `likelihoods` model.

The layers are torch's, except that ELU, tanh and the decoder's last transposed convolution
come from `missiwae.kernels`: the same functions and parameters, computed faster on CPU.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from missiwae import kernels
from missiwae.config import ModelConfig

_MIN_SIGMA = 1e-4  # keeps q's log-density finite when the encoder saturates


# kernels.Tanh and kernels.ELU are nn.Tanh and nn.ELU, computed faster on CPU.
_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": kernels.Tanh, "relu": nn.ReLU, "elu": kernels.ELU}


def _mlp(widths: list[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(widths) - 2:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def _gaussian_head(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mu, raw_sigma = raw.chunk(2, dim=-1)
    return mu, F.softplus(raw_sigma) + _MIN_SIGMA


class MLPEncoder(nn.Module):
    """D -> hidden... -> (mu, sigma) in R^d (Burda et al. 2016 style, for tabular data too)."""

    def __init__(self, num_features: int, hidden: tuple[int, ...], latent_dim: int, activation: str):
        super().__init__()
        self.net = _mlp([num_features, *hidden, 2 * latent_dim], activation)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _gaussian_head(self.net(x))


class MLPDecoder(nn.Module):
    """d -> hidden (reversed)... -> P x D raw observation parameters."""

    def __init__(
        self, latent_dim: int, hidden: tuple[int, ...], num_features: int, num_params: int, activation: str
    ):
        super().__init__()
        self.num_params, self.num_features = num_params, num_features
        self.net = _mlp([latent_dim, *reversed(hidden), num_params * num_features], activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, self.num_params, self.num_features)


class ConvEncoder(nn.Module):
    """28x28 image -> three 5x5 stride-2 convolutions (16, 32, 32 maps) -> (mu, sigma)."""

    def __init__(self, image_shape: tuple[int, int], channels: tuple[int, ...], latent_dim: int):
        super().__init__()
        self.image_shape = image_shape
        c1, c2, c3 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 5, stride=2, padding=2),
            kernels.ELU(),
            nn.Conv2d(c1, c2, 5, stride=2, padding=2),
            kernels.ELU(),
            nn.Conv2d(c2, c3, 5, stride=2, padding=2),
            kernels.ELU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, 1, *image_shape)).shape[-1]
        self.head = nn.Linear(flat, 2 * latent_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = x.view(-1, 1, *self.image_shape)
        return _gaussian_head(self.head(self.features(images)))


class ConvDecoder(nn.Module):
    """The encoder mirrored: linear -> (32, 4, 4) -> transposed convolutions -> P maps of 28x28."""

    def __init__(
        self, latent_dim: int, image_shape: tuple[int, int], channels: tuple[int, ...], num_params: int
    ):
        super().__init__()
        if image_shape != (28, 28):
            raise ValueError(f"the convolutional decoder is built for 28x28 images, not {image_shape}")
        c1, c2, c3 = channels
        self.num_params, self.num_features = num_params, image_shape[0] * image_shape[1]
        self.start = (c3, 4, 4)
        self.project = nn.Sequential(nn.Linear(latent_dim, c3 * 16), kernels.ELU())
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(c3, c2, 5, stride=2, padding=2),
            kernels.ELU(),  # 4 -> 7
            nn.ConvTranspose2d(c2, c1, 5, stride=2, padding=2, output_padding=1),
            kernels.ELU(),  # -> 14
            kernels.OutputConvTranspose2d(c1, num_params, 5, stride=2, padding=2, output_padding=1),  # -> 28
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        maps = self.upsample(self.project(z).view(-1, *self.start))
        return maps.reshape(-1, self.num_params, self.num_features)


def build_networks(config: ModelConfig, num_params: int) -> tuple[nn.Module, nn.Module]:
    """The (encoder, decoder) pair a config names."""
    if config.architecture == "mlp":
        return (
            MLPEncoder(config.num_features, config.hidden, config.latent_dim, config.activation),
            MLPDecoder(config.latent_dim, config.hidden, config.num_features, num_params, config.activation),
        )
    return (
        ConvEncoder(config.image_shape, config.conv_channels, config.latent_dim),
        ConvDecoder(config.latent_dim, config.image_shape, config.conv_channels, num_params),
    )
