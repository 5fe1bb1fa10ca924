"""Column types and observed-entry standardisation of a table with NaN holes.

One implementation for every caller that models a user's table: the scikit-learn estimator
(`missiwae.estimator`), the table pipeline (`pipelines.tabular`) and missForest's "auto"
feature types. Tables are float arrays (N, D) in which NaN marks a missing entry, so the
observed mask is ``~np.isnan(values)`` (True = observed) unless a caller passes its own.

    types = infer_column_types(values, "gaussian")        # "bernoulli" for 0/1 columns
    scaling = Standardization.fit(values, columns=[t != "bernoulli" for t in types])
    x = scaling.transform(values)                          # (N, D), holes -> 0
    completed = scaling.fill(values, model_output)         # observed cells bit for bit

Standardising matters because the decoder's Gaussian / Student-t scales start near 1: a column
in the thousands would otherwise dominate the bound. Pure numpy (no pandas, no scikit-learn),
so the pipeline can import it without pulling in anything heavy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["OBSERVATIONS", "Standardization", "binary_columns", "infer_column_types"]

# The observation models a column may have (the names of missiwae.likelihoods' classes).
OBSERVATIONS = ("bernoulli", "gaussian", "student_t")


def binary_columns(
    values: NDArray[np.floating], observed: NDArray[np.bool_] | None = None
) -> NDArray[np.bool_]:
    """(D,) bool: True where every observed value of the column is 0 or 1.

    `values` (N, D), `observed` (N, D) True = observed (default: not NaN). A column with no
    observed value counts as binary (nothing contradicts it); callers that cannot model such a
    column reject it before asking.
    """
    if observed is None:
        observed = ~np.isnan(values)
    return np.asarray(((values == 0.0) | (values == 1.0) | ~observed).all(axis=0), dtype=bool)


def infer_column_types(
    values: NDArray[np.floating], continuous: str, observed: NDArray[np.bool_] | None = None
) -> list[str]:
    """One observation model per column: "bernoulli" for binary columns (see
    :func:`binary_columns`), `continuous` ("gaussian" or "student_t") for the others."""
    return ["bernoulli" if is_binary else continuous for is_binary in binary_columns(values, observed)]


@dataclass(frozen=True, eq=False)
class Standardization:
    """Per-column shift and scale fitted on observed entries: x_std = (x - mean) / scale.

    mean, scale: float64 (D,). A column that is not standardised (a Bernoulli column, or one
    with no observed entry to learn from) has mean 0 and scale 1; a constant column keeps
    scale 1 so it is shifted but never divided by zero.
    """

    mean: NDArray[np.float64]
    scale: NDArray[np.float64]

    @classmethod
    def identity(cls, num_features: int) -> Standardization:
        """Mean 0, scale 1 for each of `num_features` columns: transform only zeroes the holes."""
        return cls(np.zeros(num_features), np.ones(num_features))

    @classmethod
    def fit(
        cls,
        values: NDArray[np.floating],
        columns: Sequence[bool] | NDArray[np.bool_] | None = None,
        *,
        check_finite: bool = True,
    ) -> Standardization:
        """Fit on the observed (non-NaN) entries of `values` (N, D).

        columns: (D,) bool, the columns to standardise (default: all). check_finite: raise
        ValueError when a column's variance overflows float64 (no scaling can represent it);
        False keeps the infinite scale, as the table pipeline always has.
        """
        num_features = values.shape[1]
        use = np.ones(num_features, dtype=bool) if columns is None else np.asarray(columns, dtype=bool)
        # A column with no observed entry keeps (0, 1): there is nothing to learn its units from
        # (and nanmean would warn about the empty slice).
        use = use & (~np.isnan(values)).any(axis=0)
        mean = np.zeros(num_features)
        std = np.ones(num_features)
        if use.any():
            # nanmean/nanstd over observed entries only: the holes must not bias the scaling.
            # Overflow shows up as a non-finite std, which the check below reports by column.
            with np.errstate(over="ignore", invalid="ignore"):
                mean[use] = np.nanmean(values[:, use], axis=0)
                std[use] = np.nanstd(values[:, use], axis=0)
        too_wide = np.flatnonzero(~np.isfinite(std))
        if check_finite and too_wide.size:
            raise ValueError(
                f"column(s) {too_wide.tolist()} of X span too wide a range to standardise "
                "(their variance overflows float64); rescale them first"
            )
        return cls(mean, np.where(std > 0, std, 1.0))

    def transform(
        self, values: NDArray[np.floating], observed: NDArray[np.bool_] | None = None
    ) -> NDArray[np.float64]:
        """(N, D) float64 standardised values, 0 in the holes (a finite placeholder for the model)."""
        if observed is None:
            observed = ~np.isnan(values)
        return np.where(observed, (values - self.mean) / self.scale, 0.0)

    def inverse_transform(self, standardised: ArrayLike) -> NDArray[np.float64]:
        """(..., D) standardised values -> float64 in the table's units."""
        return np.asarray(standardised, dtype=np.float64) * self.scale + self.mean

    def fill(
        self,
        values: NDArray[np.floating],
        standardised: ArrayLike,
        observed: NDArray[np.bool_] | None = None,
    ) -> NDArray[np.float64]:
        """`values` (N, D) with its holes taken from `standardised` (N, D) or (M, N, D).

        Observed cells are copied from `values` itself, never through the scaling (or a float32
        model) round trip, so they come back bit for bit.
        """
        if observed is None:
            observed = ~np.isnan(values)
        return np.where(observed, values, self.inverse_transform(standardised))
