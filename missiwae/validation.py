"""Checks at the library's edges: bad input gets an error that names the problem."""

from __future__ import annotations

import torch


def check_incomplete_batch(
    x: torch.Tensor,
    mask: torch.Tensor,
    num_features: int | None = None,
    *,
    complete: bool = False,
    dtype: torch.dtype | None = None,
) -> None:
    """Validate data x (B, D) and mask (B, D) bool (True = observed).

    B must be at least 1. Observed entries must be finite; with `complete=True` (oracle ι)
    every entry must be. `dtype`: the model's parameter dtype, which x must share (torch would
    otherwise fail deep inside a layer with a message about matrix dtypes).
    """
    if not isinstance(x, torch.Tensor) or not isinstance(mask, torch.Tensor):
        raise TypeError("x and mask must be torch tensors")
    if x.ndim != 2:
        raise ValueError(f"x must have shape (batch, features), got {tuple(x.shape)}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be boolean (True = observed), got dtype {mask.dtype}")
    if mask.shape != x.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from x shape {tuple(x.shape)}")
    if num_features is not None and x.shape[1] != num_features:
        raise ValueError(f"x has {x.shape[1]} features, the model expects {num_features}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(
            f"x has dtype {x.dtype} but the model's parameters are {dtype}: "
            f"convert the data (x.to({dtype})) or the model (model.to({dtype}))"
        )
    if x.shape[0] == 0:
        raise ValueError(f"x has no rows (shape {tuple(x.shape)}): nothing to evaluate or impute")
    finite = torch.isfinite(x)
    if not bool(finite[mask].all()):
        raise ValueError("x has NaN or inf in observed entries (mask True); mark them missing")
    if complete and not bool(finite.all()):
        raise ValueError("oracle ι needs the true values of the missing entries, but x holds NaN/inf there")


def check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
