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

__all__ = [
    "MAX_MAGNITUDE",
    "OBSERVATIONS",
    "Standardization",
    "binary_columns",
    "check_column_range",
    "check_standardised_range",
    "infer_column_types",
    "out_of_range_columns",
]

# The observation models a column may have (the names of missiwae.likelihoods' classes).
OBSERVATIONS = ("bernoulli", "gaussian", "student_t")

# The largest |observed value| a modelled column may hold. Standardising squares deviations from
# the mean, which overflows float64 (max ~1.8e308) from ~1.3e154 on; 1e150 leaves room for the
# sum over many rows, and keeps an imputation (a float32 model output, |z| < 3.4e38, times a
# scale <= ~2e150, plus the mean) finite in float64.
MAX_MAGNITUDE = 1e150
# The largest |standardised value| the float32 model is given: a Gaussian / Student-t term
# squares it, and 1e15 squared (1e30) stays well inside float32 (3.4e38), so the importance
# weights, hence the imputations, stay finite. A row this far out (in training-set standard
# deviations) is only reached by rows that the scaling was not fitted on.
MAX_STANDARDISED = 1e15


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


def out_of_range_columns(
    values: NDArray[np.floating], observed: NDArray[np.bool_] | None = None
) -> NDArray[np.intp]:
    """(k,) indices of the columns of `values` (N, D) with an observed |value| > MAX_MAGNITUDE
    (inf included); `observed` (N, D) True = observed (default: not NaN)."""
    if observed is None:
        observed = ~np.isnan(values)
    magnitude = np.where(observed, np.abs(values), 0.0)
    # not (<=): NaN in an observed cell (a caller's own mask) counts as out of range too.
    return np.flatnonzero((~(magnitude <= MAX_MAGNITUDE)).any(axis=0))


def check_column_range(
    values: NDArray[np.floating],
    observed: NDArray[np.bool_] | None = None,
    *,
    names: Sequence[str] | None = None,
    where: str = "X",
) -> None:
    """Raise ValueError naming the columns of `values` (N, D) whose observed magnitude is beyond
    what standardisation and imputation can represent (:data:`MAX_MAGNITUDE`).

    The one range check of every caller that models a user's table (the estimator, the table
    pipeline): without it such a column gets an infinite scale and ±inf imputations. `names`
    (D,): the columns' names for the message (default: their indices); `where`: what the table
    is called in it ("X", a file name).
    """
    wide = out_of_range_columns(values, observed)
    if not wide.size:
        return
    if observed is None:
        observed = ~np.isnan(values)
    labels = [str(names[int(j)]) for j in wide] if names is not None else wide.tolist()
    with np.errstate(invalid="ignore"):
        peak = float(np.max(np.where(observed[:, wide], np.abs(values[:, wide]), 0.0)))
    raise ValueError(
        f"column(s) {labels} of {where} hold values of magnitude up to {peak:.3g}, beyond the "
        f"{MAX_MAGNITUDE:.0e} that standardisation and imputation can represent in float64; "
        "rescale them (e.g. divide by a power of ten)"
    )


def check_standardised_range(
    standardised: NDArray[np.floating],
    *,
    names: Sequence[str] | None = None,
    where: str = "X",
) -> None:
    """Raise ValueError naming the columns of `standardised` (N, D) (holes 0) holding a value
    beyond :data:`MAX_STANDARDISED` in magnitude, NaN or inf.

    The second half of the range check, for values standardised with a scaling fitted on other
    rows (a held-out split, a later transform): within MAX_MAGNITUDE they can still land so far
    from the fitted mean that the float32 model's likelihood overflows.
    """
    with np.errstate(invalid="ignore"):
        far = np.flatnonzero((~(np.abs(standardised) <= MAX_STANDARDISED)).any(axis=0))
    if not far.size:
        return
    labels = [str(names[int(j)]) for j in far] if names is not None else far.tolist()
    raise ValueError(
        f"column(s) {labels} of {where} hold values more than {MAX_STANDARDISED:.0e} standard "
        "deviations (of the rows the scaling was fitted on) from their mean, too far for the "
        "model's float32 arithmetic; rescale or clip them"
    )


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
