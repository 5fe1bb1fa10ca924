"""Checks at the library's edges: bad input gets an error that names the problem."""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Integral
from typing import Any

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


def check_params(
    constraints: Mapping[str, list[Any]],
    values: Mapping[str, Any],
    caller: str,
    wording: Mapping[str, str] | None = None,
) -> None:
    """scikit-learn's `validate_parameter_constraints`, one parameter at a time.

    `constraints` is an estimator's `_parameter_constraints` (or a method's own, e.g. for
    `n_imputations`). Why not scikit-learn's `_validate_params` as is: its error reads "The 'K'
    parameter of MissIWAEImputer must be an int in the range [1, inf)", raised inside sklearn;
    this project's errors start with the parameter's name ("K must be an integer >= 1, got 0",
    wording[name] when given) and come from its own code, with scikit-learn's as the cause. It
    also refuses a bool where a number is due: Interval(Integral) takes True for 1, but a flag
    passed as a count is a mistake.
    """
    # Imported here: scikit-learn imports pandas (and pyarrow), which `import missiwae` must not.
    from sklearn.utils._param_validation import (
        Interval,
        InvalidParameterError,
        validate_parameter_constraints,
    )

    for name, value in values.items():
        allowed = constraints.get(name, [])
        numeric = any(isinstance(c, Interval) for c in allowed)
        try:
            if numeric and isinstance(value, bool):
                raise InvalidParameterError(f"{name} is a bool")
            validate_parameter_constraints({name: allowed}, {name: value}, caller_name=caller)
        except InvalidParameterError as error:
            described = (wording or {}).get(name) or _describe(allowed)
            raise ValueError(f"{name} must be {described}, got {value!r}") from error


def _describe(allowed: list[Any]) -> str:
    """scikit-learn constraints in words: "one of [...]", "an integer >= 1", else sklearn's own."""
    from sklearn.utils._param_validation import Interval, StrOptions, make_constraint

    words = []
    for constraint in allowed:
        if isinstance(constraint, StrOptions):
            words.append(f"one of {sorted(constraint.options)}")
        elif isinstance(constraint, Interval) and constraint.type is Integral and constraint.right is None:
            words.append(f"an integer >= {constraint.left}")
        else:
            words.append(str(make_constraint(constraint)))
    return " or ".join(words)


def reraised(error: ValueError | TypeError) -> ValueError | TypeError:
    """A copy of a third-party input error (same type, same message) to raise from this package
    with `raise reraised(error) from error`: the library's bad-input contract is that errors
    come from its own code (tests/library/test_bad_input.py), the original kept as the cause."""
    return ValueError(str(error)) if isinstance(error, ValueError) else TypeError(str(error))
