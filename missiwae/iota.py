"""Imputation functions ι: what the encoder sees in place of the missing entries.

q_γ(z | ι(x_o)) needs a fixed-size input, so ι fills the holes before the encoder runs. It never
affects which entries enter p_θ(x_o | z): that is the mask's job alone.

Every ι maps x (B, D) and mask (B, D) bool (True = observed) to a filled (B, D) tensor.
"""

from __future__ import annotations

import torch
from torch import nn

from missiwae.config import Imputation


def zero_filled(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B, D) with 0 wherever mask (B, D) bool is False, whatever the holes held (NaN too).

    Equal to `torch.where(mask, x, 0.0)`, at a third of its cost on CPU: torch's kernels for
    bool tensors are not vectorised, while a uint8 view of the mask converts to floats at
    memory speed, and NaN or inf placeholders are cleared before the product. (A hole that held
    a negative number becomes −0.0, which equals 0 in every use.)
    """
    observed = mask.view(torch.uint8).to(x.dtype)
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).mul_(observed)


class ZeroImputation(nn.Module):
    """ι(x_o) = x_o with zeros in the holes: the paper's default."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return zero_filled(x, mask)


class OracleImputation(nn.Module):
    """ι(x_o) = the complete x: the encoder sees the true missing values.

    For experiments only (Figure 1 left): `x` must hold the truth in its missing entries.
    """

    requires_complete_data = True

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x


class LearnedImputation(nn.Module):
    """ι(x_o) = x_o with a learned per-feature constant in the holes, trained with the bound."""

    def __init__(self, num_features: int):
        super().__init__()
        self.fill_value = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, x, self.fill_value.to(x.dtype))


def imputation_function(name: Imputation, num_features: int) -> nn.Module:
    """The ι a config names."""
    if name == "zero":
        return ZeroImputation()
    if name == "oracle":
        return OracleImputation()
    if name == "learned":
        return LearnedImputation(num_features)
    raise ValueError(f"unknown imputation function {name!r}; choose zero, oracle or learned")
