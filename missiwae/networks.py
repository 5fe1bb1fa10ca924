"""Encoder and decoder networks.

Contracts the model relies on (custom networks follow the same ones):

- encoder(x_filled (B, D), mask (B, D) bool) -> (mu (B, d), sigma (B, d) > 0): the diagonal
  Gaussian q_γ(z | ι(x_o)). The built-in encoders read only ι(x_o), as in the paper; the mask
  is passed so that an encoder may use it (e.g. an exact posterior in tests).
- decoder(z (N, d)) -> raw observation parameters (N, P, D), read by a `likelihoods` model.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from missiwae.config import ModelConfig

_MIN_SIGMA = 1e-4  # keeps q's log-density finite when the encoder saturates


class _CpuActivation(nn.Module):
    """An elementwise activation computed by `cpu_function` (an autograd Function with a
    closed-form backward pass) on CPU tensors, and by torch's own `reference` elsewhere: on a
    GPU one fused kernel beats the CPU form's several passes."""

    cpu_function: type[torch.autograd.Function]

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return self.reference(x)
        return self.cpu_function.apply(x)


class _CpuELU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = torch.clamp(x, max=0.0).exp_().sub_(1.0).add_(torch.relu(x))
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return grad * torch.clamp(out, max=0.0).add_(1.0)


class ELU(_CpuActivation):
    """elu(x) = x for x > 0, e^x − 1 otherwise; d elu / dx = 1 or e^x = min(elu(x), 0) + 1.

    On CPU this is computed as max(x, 0) + (e^{min(x, 0)} − 1): torch's own ELU kernel goes
    through an unvectorised expm1 and took a fifth of a K = 50 convolutional training step,
    four times what vectorised exp costs (benchmarks/README.md). exp − 1 instead of expm1
    differs by at most one float32 rounding of 1 (6e-8) near 0⁻. Other devices use F.elu.
    """

    cpu_function = _CpuELU

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(x)


class _CpuTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = torch.mul(x, 2.0).sigmoid_().mul_(2.0).sub_(1.0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, out)


class Tanh(_CpuActivation):
    """tanh(x) = 2 sigmoid(2x) − 1; d tanh / dx = 1 − tanh².

    On CPU torch's tanh kernel costs 2.6x as much as this form's three vectorised passes (it was
    6% of a K = 50 MLP step). The form is off by at most 1.8e-7 from tanh in float32 (torch's
    own kernel: 6e-8) and 3.3e-16 in float64. Other devices use torch.tanh.
    """

    cpu_function = _CpuTanh

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)


class OutputConvTranspose2d(nn.ConvTranspose2d):
    """A transposed convolution to the decoder's few (P ≤ 3) parameter maps.

    On CPU, oneDNN's kernel for a transposed convolution with one to three output channels ran
    2.6x (P = 1) to 1.2x (P = 3) slower than torch's GEMM + col2im kernel, which it picks
    otherwise, so the forward pass calls that kernel directly (its backward pass still goes to
    oneDNN, which is fast there). Same function and parameters, so checkpoints are unchanged.
    """

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        direct = (
            x.device.type == "cpu"
            and x.ndim == 4
            and self.out_channels <= 3
            and self.groups == 1
            and self.padding_mode == "zeros"
            and output_size is None
        )
        if not direct:
            return super().forward(x, output_size)
        return torch.ops.aten.slow_conv_transpose2d(
            x,
            self.weight,
            self.kernel_size,
            self.bias,
            self.stride,
            self.padding,
            self.output_padding,
            self.dilation,
        )


_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": Tanh, "relu": nn.ReLU, "elu": ELU}


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
            ELU(),
            nn.Conv2d(c1, c2, 5, stride=2, padding=2),
            ELU(),
            nn.Conv2d(c2, c3, 5, stride=2, padding=2),
            ELU(),
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
        self.project = nn.Sequential(nn.Linear(latent_dim, c3 * 16), ELU())
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(c3, c2, 5, stride=2, padding=2),
            ELU(),  # 4 -> 7
            nn.ConvTranspose2d(c2, c1, 5, stride=2, padding=2, output_padding=1),
            ELU(),  # -> 14
            OutputConvTranspose2d(c1, num_params, 5, stride=2, padding=2, output_padding=1),  # -> 28
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
