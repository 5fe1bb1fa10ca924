"""The pieces of one missForest sweep (see `missiwae.missforest`): one forest per column, the
stopping statistics ΔN / ΔF, and the per-forest seeds.

Module-level functions, not methods, so that process and Ray workers can unpickle
`fit_predict_column` without the estimator.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

__all__ = [
    "constant_value",
    "delta_categorical",
    "delta_continuous",
    "fit_predict_column",
    "forest_seed",
    "mode",
    "restore_observed",
]


def fit_predict_column(
    x: NDArray[np.float64],
    j: int,
    observed: NDArray[np.bool_],
    categorical: bool,
    forest_params: dict[str, Any],
    seed: int,
) -> NDArray[np.float64]:
    """Fit column j's forest on its observed rows and predict its missing rows.

    A module-level function (not a method) so that process and Ray workers can unpickle it
    without the estimator; ``x`` is the previous sweep's full imputed matrix, which joblib
    memory-maps for local process workers instead of copying it per task.
    """
    y = x[observed, j]
    missing = ~observed
    predictors = np.delete(x, j, axis=1)
    if categorical:
        # Fit on integer codes: scikit-learn rejects float labels such as 0.5 ("continuous"
        # target), and the codes map back to the exact observed values.
        labels, codes = np.unique(y, return_inverse=True)
        clf = RandomForestClassifier(random_state=seed, n_jobs=1, **forest_params)
        clf.fit(predictors[observed], codes)
        return labels[clf.predict(predictors[missing]).astype(np.intp)].astype(np.float64)
    reg = RandomForestRegressor(random_state=seed, n_jobs=1, **forest_params)
    reg.fit(predictors[observed], y)
    return np.asarray(reg.predict(predictors[missing]), dtype=np.float64)


def forest_seed(base_entropy: int, iteration: int, column: int) -> int:
    """Forest seed from (random_state, sweep, column): independent streams per forest, and the
    same seed whichever worker (or node) fits it."""
    ss = np.random.SeedSequence(entropy=base_entropy, spawn_key=(iteration, column))
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def mode(values: NDArray[np.float64]) -> float:
    """Most frequent value; ties go to the smallest (np.unique sorts, argmax takes the first)."""
    uniq, counts = np.unique(values, return_counts=True)
    return float(uniq[np.argmax(counts)])


def constant_value(values: NDArray[np.float64]) -> float | None:
    """The single observed value of a column, or None when it varies.

    A forest trained on a constant target predicts that constant everywhere, so fitting one
    is wasted work (on MNIST many border pixels are 0 in every observed row).
    """
    first = values[0]
    return float(first) if bool((values == first).all()) else None


def delta_continuous(x_new: NDArray[np.float64], x_old: NDArray[np.float64], cols: NDArray[np.intp]) -> float:
    """ΔN over all continuous columns, as in the paper and the R package: observed entries add
    nothing to the numerator (they never change) but do count in the denominator."""
    num = float(((x_new[:, cols] - x_old[:, cols]) ** 2).sum())
    den = float((x_new[:, cols] ** 2).sum())
    return num / den if den > 0.0 else 0.0


def delta_categorical(
    x_new: NDArray[np.float64],
    x_old: NDArray[np.float64],
    observed: NDArray[np.bool_],
    categorical: NDArray[np.bool_],
    n_missing_categorical: int,
) -> float:
    """ΔF: share of the missing categorical entries whose imputed class changed."""
    changed = (x_new[:, categorical] != x_old[:, categorical]) & ~observed[:, categorical]
    return float(changed.sum()) / n_missing_categorical


def restore_observed(
    x_imp: NDArray[np.float64], original: NDArray[Any], observed: NDArray[np.bool_], dtype: np.dtype[Any]
) -> NDArray[Any]:
    """Cast to the output dtype and copy the observed entries straight from the input, so
    they come back bit for bit whatever happened in float64."""
    out = x_imp.astype(dtype, copy=True)
    out[observed] = original[observed]
    return out
