"""Categorical columns as the model sees them: one-hot blocks with NaN holes, and back.

A table's column c with levels (l_1, ..., l_k) becomes k consecutive model columns: the
one-hot vector of its value where observed, NaN in all k where missing (so the observed mask
is the same across a block, as `missiwae.likelihoods.Categorical` needs). Other columns are
passed through as float64. The encoder then sees one-hot vectors with zeros in the holes (ι =
zero imputation), and the decoder gives each block's level probabilities.

    onehot = OneHot.fit(columns, categorical=[False, True])    # columns: one 1-D array each
    values = onehot.encode(columns)                            # (N, D') float64, NaN = missing
    labels = onehot.most_probable(model_output, 1)             # (N,) column 1's levels

A block's most probable level is the single imputation when the model output holds the SNIS
level probabilities, and the drawn level when it holds a one-hot draw. Pure numpy; pandas is
used only through objects the caller already holds.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["MAX_LEVELS", "OneHot", "is_missing"]

# The most levels a categorical column may have: each level is a model column (an encoder
# input and a decoder output), so a column of identifiers would make the model as wide as the
# table is long.
MAX_LEVELS = 1000


def is_missing(values: NDArray[Any]) -> NDArray[np.bool_]:
    """(N,) True where a column's entry is missing: None, NaN, pandas' NA / NaT."""
    pandas = sys.modules.get("pandas")
    if pandas is not None:
        return np.asarray(pandas.isna(values), dtype=bool)
    if values.dtype.kind == "f":
        return np.isnan(values)
    return np.array([v is None or (isinstance(v, float) and math.isnan(v)) for v in values], dtype=bool)


def _sorted_levels(observed: NDArray[Any]) -> tuple[Any, ...]:
    """The distinct values of `observed` in their natural order, else (mixed types that do not
    compare, e.g. 1 and "a") by type name, then text."""
    distinct = list(dict.fromkeys(observed.tolist()))
    try:
        return tuple(sorted(distinct))
    except TypeError:
        return tuple(sorted(distinct, key=lambda v: (type(v).__name__, str(v))))


def _check_one_kind(observed: NDArray[Any], label: str) -> None:
    """ValueError naming the column when its observed values mix strings with other values
    (numbers, say): one of them is most likely a mistake, and guessing which would give the
    column levels nobody meant."""
    is_text = np.array([isinstance(v, str) for v in observed.tolist()], dtype=bool)
    if is_text.any() and not is_text.all():
        text, other = observed[is_text][0], observed[~is_text][0]
        raise ValueError(
            f"column {label} of X mixes strings and other values (e.g. {text!r} and {other!r}); "
            "make it all labels (e.g. .astype(str)) or all numbers"
        )


def _declared_levels(column: Any) -> tuple[Any, ...] | None:
    """A pandas categorical column's own categories (its levels, in its order), else None."""
    categories = getattr(getattr(column, "dtype", None), "categories", None)
    return None if categories is None else tuple(categories.tolist())


@dataclass(frozen=True)
class OneHot:
    """Per table column: None (a numeric column, one model column) or its levels (a
    categorical column, one model column per level, in this order)."""

    levels: tuple[tuple[Any, ...] | None, ...]

    @classmethod
    def fit(
        cls,
        columns: Sequence[Any],
        categorical: Sequence[bool],
        names: Sequence[str] | None = None,
        given: Sequence[Sequence[Any]] | None = None,
    ) -> OneHot:
        """The levels of each categorical column: `given` (one sequence per categorical column,
        in order), else a pandas categorical's categories, else the distinct observed values,
        sorted. ValueError naming the column when it has more than MAX_LEVELS levels, or an
        observed value outside its given levels. `columns`: one (N,) array or Series per table
        column."""
        if given is not None and len(given) != sum(categorical):
            raise ValueError(
                f"categories lists {len(given)} columns' levels, but X has {sum(categorical)} "
                "categorical columns"
            )
        levels: list[tuple[Any, ...] | None] = []
        for j, (column, is_categorical) in enumerate(zip(columns, categorical, strict=True)):
            if not is_categorical:
                levels.append(None)
                continue
            if given is not None:
                chosen = tuple(given[sum(categorical[:j])])
                if not chosen:
                    raise ValueError(f"categories gives column {_label(names, j)} no level")
                levels.append(chosen)
                continue
            values = np.asarray(column, dtype=object)
            observed = values[~is_missing(values)]
            if observed.size == 0:
                raise ValueError(
                    f"column {_label(names, j)} of X has no observed value (all missing); drop it "
                    "before fitting: nothing can be learned about it"
                )
            declared = _declared_levels(column)
            if declared is None:
                _check_one_kind(observed, _label(names, j))
            found = declared if declared is not None else _sorted_levels(observed)
            if len(found) > MAX_LEVELS:
                raise ValueError(
                    f"column {_label(names, j)} has {len(found)} distinct values, more than the "
                    f"{MAX_LEVELS} levels a categorical column may have (each is a model column): "
                    "is it an identifier? drop it, or group its rare values"
                )
            levels.append(found)
        return cls(tuple(levels))

    @property
    def widths(self) -> list[int]:
        """(D,) the number of model columns of each table column."""
        return [1 if found is None else len(found) for found in self.levels]

    @property
    def num_model_columns(self) -> int:
        return sum(self.widths)

    @property
    def categorical_levels(self) -> tuple[int, ...]:
        """The level counts of the categorical columns, in order (ModelConfig's)."""
        return tuple(len(found) for found in self.levels if found is not None)

    def model_column_types(self, types: Sequence[str]) -> tuple[str, ...]:
        """(D',) the model columns' types from the table columns' (D,): a categorical column's
        type repeated over its block."""
        return tuple(t for t, width in zip(types, self.widths, strict=True) for _ in range(width))

    def model_column_names(self, names: Sequence[str]) -> list[str]:
        """(D',) the model columns' names from the table columns' (D,): a categorical column
        is one "name=level" per level."""
        return [
            name if found is None else f"{name}={level}"
            for name, found in zip(names, self.levels, strict=True)
            for level in (found if found is not None else [None])
        ]

    def spans(self) -> list[slice]:
        """(D,) the model columns of each table column."""
        ends = np.cumsum(self.widths).tolist()
        return [slice(end - width, end) for end, width in zip(ends, self.widths, strict=True)]

    def encode(self, columns: Sequence[Any], names: Sequence[str] | None = None) -> NDArray[np.float64]:
        """(N, D') float64: numeric columns as they are (they must already be float64-readable),
        categorical ones one-hot, NaN in every model column of a missing entry. ValueError naming
        the column for a level not seen in `fit`."""
        if len(columns) != len(self.levels):
            raise ValueError(f"expected {len(self.levels)} columns, got {len(columns)}")
        num_rows = len(columns[0]) if columns else 0
        encoded = np.empty((num_rows, self.num_model_columns), dtype=np.float64)
        for j, (column, found, span) in enumerate(zip(columns, self.levels, self.spans(), strict=True)):
            if found is None:
                encoded[:, span.start] = np.asarray(column, dtype=np.float64)
                continue
            values = np.asarray(column, dtype=object)
            missing = is_missing(values)
            index = {level: i for i, level in enumerate(found)}
            unseen = [v for v in values[~missing].tolist() if v not in index]
            if unseen:
                raise ValueError(
                    f"column {_label(names, j)} holds the level {unseen[0]!r}, which the imputer "
                    f"did not see in fit (its levels: {_shown(found)}); refit on data that has it"
                )
            block = np.zeros((num_rows, len(found)))
            rows = np.flatnonzero(~missing)
            block[rows, [index[v] for v in values[rows].tolist()]] = 1.0
            block[missing] = np.nan
            encoded[:, span] = block
        return encoded

    def most_probable(self, model_values: NDArray[np.floating], j: int) -> NDArray[Any]:
        """(..., N) object: table column j's level with the largest model value in its block
        (level probabilities or a one-hot draw), from `model_values` (..., N, D')."""
        found = self.levels[j]
        if found is None:
            raise ValueError(f"column {j} is not categorical")
        block = model_values[..., self.spans()[j]]
        return np.asarray(found, dtype=object)[block.argmax(axis=-1)]

    def probabilities(self, model_values: NDArray[np.floating], j: int) -> NDArray[np.float64]:
        """(N, k) table column j's level probabilities from the model's (N, D') SNIS output."""
        return np.asarray(model_values[..., self.spans()[j]], dtype=np.float64)


def _label(names: Sequence[str] | None, j: int) -> str:
    return repr(str(names[j])) if names is not None else str(j)


def _shown(levels: tuple[Any, ...], most: int = 10) -> str:
    shown = ", ".join(repr(level) for level in levels[:most])
    return f"{shown}, ... ({len(levels)} in all)" if len(levels) > most else shown
