"""missForest: iterative imputation with random forests (Stekhoven & Bühlmann 2011).

The non-parametric baseline that Mattei & Frellsen (2019) compare missIWAE against on MNIST
with 50 % of the pixels missing::

    imputer = MissForest(n_estimators=100, n_jobs=4, random_state=0)
    X_filled = imputer.fit_transform(X)   # X: (N, D) float with NaN holes
    imputer.n_iter_, imputer.history_     # iterations run, ΔN / ΔF and seconds per iteration

Algorithm (the paper's Algorithm 1):

1. Fill every hole with its column's observed mean (continuous) or mode (categorical).
2. Visit the columns with missing entries in order of increasing missingness. For column j,
   fit a random forest (regressor or classifier) on the rows where j is observed, with all
   other columns of the current imputed matrix as predictors, and predict the rows where j is
   missing.
3. After each sweep compute the change between the new and the previous imputation,

       ΔN = Σ_{j∈N} Σ_i (X_new − X_old)²_ij / Σ_{j∈N} Σ_i (X_new)²_ij     (continuous columns)
       ΔF = #{imputed categorical entries that changed} / #{missing categorical entries},

   and stop as soon as it increases for the first time (for both types when both are
   present), returning the PREVIOUS imputation; otherwise stop after ``max_iter`` sweeps.
   As in the R package, "increases" means "no longer decreases strictly" (a tie stops too),
   and the first sweep is compared with Δ = ∞, so at least two sweeps run before a stop.

One deliberate difference from the original: within a sweep every column's forest is trained
on the matrix left by the previous sweep (a Jacobi update), whereas the R package updates the
matrix column by column so later columns already see this sweep's imputations (Gauss-Seidel).
The Jacobi form makes the D forests of a sweep independent, so they run in parallel through
``joblib.Parallel`` (loky processes locally, or Ray's joblib backend across a cluster); on
MNIST that is 784 forests per sweep, which is what makes missForest affordable at all. The
per-column models are the same; each sweep just sees slightly staler predictors, which can
cost an extra sweep before the stopping rule fires.

Only numpy, scikit-learn and joblib are imported: a distributed backend such as Ray is chosen
by the caller (``parallel_backend="ray"`` or a ``joblib.parallel_config`` context) after it has
registered that backend, so this module never imports it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any, ClassVar, Literal

import numpy as np
from joblib import Parallel, delayed
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import Interval, RealNotInt, StrOptions

from missiwae.columns import binary_columns
from missiwae.missforest_sweep import (
    constant_value,
    delta_categorical,
    delta_continuous,
    fit_predict_column,
    forest_seed,
    mode,
    restore_observed,
)
from missiwae.validation import check_params

__all__ = ["IterationRecord", "MissForest"]

FeatureTypes = Literal["auto", "continuous", "categorical"]
_POSITIVE_INT = Interval(Integral, 1, None, closed="left")


@dataclass(frozen=True)
class IterationRecord:
    """What one missForest sweep did.

    Attributes:
        iteration: 1-based index of the sweep.
        delta_continuous: ΔN of this sweep against the previous imputation, or None when no
            continuous column has missing entries.
        delta_categorical: ΔF likewise, or None when no categorical column has missing entries.
        seconds: wall-clock time of the sweep (forest fits, predictions and the Δ's).
        n_forests: forests actually fitted (columns whose observed values are constant are
            filled with that constant, which is exactly what a forest would predict).
    """

    iteration: int
    delta_continuous: float | None
    delta_categorical: float | None
    seconds: float
    n_forests: int


class MissForest(BaseEstimator):
    """Impute NaN entries by missForest (Stekhoven & Bühlmann 2011), parallel over columns.

    Parameters
    ----------
    max_iter : int
        Maximum number of sweeps over the columns (the paper's and R package's default is 10).
    n_estimators : int
        Trees per forest (R's ``ntree``, default 100).
    max_features : {"sqrt", "log2"}, int, float or None
        Predictors tried at each split, as in scikit-learn's forests. "sqrt" for every column;
        note that R's randomForest defaults to p/3 for regression, sqrt(p) for classification.
    min_samples_leaf : int or float
        Minimum samples per leaf (R's ``nodesize`` is 5 for regression, 1 for classification).
    max_samples : float, int or None
        Rows drawn (bootstrap) for each tree: None = as many as the column has observed rows
        (the standard forest), a float in (0, 1] = that fraction of them, an int = that many
        (capped at the number of observed rows). THE knob for large data: a forest's cost grows
        like ``n_estimators * max_samples * log(max_samples)``, so e.g. ``max_samples=2000``
        keeps every per-column fit cheap on 50 000 MNIST rows, while all rows are still
        imputed and every tree still sees a fresh subsample.
    feature_types : {"auto", "continuous", "categorical"} or sequence of them
        "auto": a column whose observed values are all in {0, 1} is categorical (random forest
        classifier, mode initialisation, counted in ΔF), any other column is continuous
        (regressor, mean initialisation, ΔN). "continuous"/"categorical" force one type for
        every column; a sequence names "continuous" or "categorical" for each column
        (integer-coded categorical columns of a mixed table). Categorical columns are imputed
        with one of their observed values; as predictors they enter with their numeric codes
        (scikit-learn forests have no native categorical splits), which is exact for binary
        columns.
    n_jobs : int or None
        Parallel workers for the per-column forests of a sweep, passed to ``joblib.Parallel``
        (-1 = all cores). None defers to an enclosing ``joblib.parallel_config`` /
        ``parallel_backend`` context (joblib's default is 1). Each forest itself uses one core,
        so the parallelism is over columns and never nested.
    parallel_backend : str or None
        joblib backend for those workers, e.g. "loky", "threading", or "ray" (after
        ``ray.util.joblib.register_ray()``) to fan the forests out over a Ray cluster. None uses
        the active joblib backend, so running inside ``with joblib.parallel_config(backend="ray",
        n_jobs=-1):`` works too. With n_jobs=1 joblib runs sequentially whatever the backend.
    random_state : int or None
        Seed. The forest of column j in sweep t is seeded from (random_state, t, j) through
        ``numpy.random.SeedSequence``, so results do not depend on n_jobs, on the backend, or
        on which worker fits which column. None draws fresh entropy on each call.
    verbose : bool
        Print one line per sweep (Δ's and seconds).

    Attributes
    ----------
    n_iter_ : int
        Sweeps run, including the one whose increased Δ triggered the stop.
    stopped_early_ : bool
        True when the stopping rule fired (the returned matrix is then that of sweep
        ``n_iter_ - 1``); False when ``max_iter`` sweeps ran without an increase (the last
        sweep's matrix is returned).
    returned_iteration_ : int
        The sweep whose imputation ``fit_transform`` returned.
    history_ : list of IterationRecord
        One record per sweep run: ΔN, ΔF, seconds, forests fitted.
    feature_order_ : ndarray of int
        Columns with missing entries in the order they are visited: increasing number of
        missing entries, ties by column index. Columns without holes are predictors only. With
        the Jacobi update the order does not change the result; it is the dispatch order, which
        sends the most expensive fits (most observed rows) first and balances the workers.
    categorical_ : ndarray of bool
        Which columns were treated as categorical.
    """

    # scikit-learn's declaration of the valid parameters, checked at the start of fit; the
    # forest's own three are those of scikit-learn's RandomForestRegressor.
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "max_iter": [_POSITIVE_INT],
        "n_estimators": [_POSITIVE_INT],
        "max_features": [
            _POSITIVE_INT,
            Interval(RealNotInt, 0.0, 1.0, closed="right"),
            StrOptions({"sqrt", "log2"}),
            None,
        ],
        "min_samples_leaf": [_POSITIVE_INT, Interval(RealNotInt, 0.0, 1.0, closed="neither")],
        "max_samples": [None, _POSITIVE_INT, Interval(RealNotInt, 0.0, 1.0, closed="right")],
        "feature_types": [StrOptions({"auto", "continuous", "categorical"}), list, tuple],
        "n_jobs": [Integral, None],
        "parallel_backend": [str, None],
        # Not "random_state": a RandomState cannot seed the per-forest SeedSequence streams.
        "random_state": [Interval(Integral, 0, None, closed="left"), None],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        max_iter: int = 10,
        n_estimators: int = 100,
        max_features: str | int | float | None = "sqrt",
        min_samples_leaf: int | float = 1,
        max_samples: float | int | None = None,
        feature_types: FeatureTypes | Sequence[FeatureTypes] = "auto",
        n_jobs: int | None = 1,
        parallel_backend: str | None = None,
        random_state: int | None = None,
        verbose: bool = False,
    ) -> None:
        # Stored unchanged (scikit-learn convention: get_params/clone); validated in fit.
        self.max_iter = max_iter
        self.n_estimators = n_estimators
        self.max_features = max_features
        self.min_samples_leaf = min_samples_leaf
        self.max_samples = max_samples
        self.feature_types = feature_types
        self.n_jobs = n_jobs
        self.parallel_backend = parallel_backend
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ validation

    def _check_params(self) -> None:
        check_params(self._parameter_constraints, self.get_params(deep=False), type(self).__name__)

    @staticmethod
    def _check_input(X: ArrayLike) -> NDArray[Any]:
        # Not scikit-learn's validate_data: missForest has no transform (so no n_features_in_
        # to record), keeps a float32 input's dtype, and names each problem in its own words.
        arr = np.asarray(X)
        if arr.ndim != 2:
            raise ValueError(f"X must be a 2-D array (rows, columns), got shape {arr.shape}")
        if arr.shape[0] < 1 or arr.shape[1] < 1:
            raise ValueError(f"X must have at least one row and one column, got shape {arr.shape}")
        if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
            try:
                arr = arr.astype(np.float64)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"X must be numeric, got dtype {arr.dtype}") from exc
        if np.iscomplexobj(arr):
            raise ValueError("X must be real-valued, got a complex array")
        if np.isinf(arr).any():
            raise ValueError("X contains infinite values; only NaN marks a missing entry")
        all_missing = np.flatnonzero(np.isnan(arr).all(axis=0))
        if all_missing.size:
            shown = all_missing[:10].tolist()
            raise ValueError(
                f"{all_missing.size} column(s) are entirely missing (e.g. {shown}): nothing to "
                "fit a forest on; drop them first"
            )
        return arr

    def _forest_params(self, n_observed: int) -> dict[str, Any]:
        ms = self.max_samples
        if ms is not None and isinstance(ms, Integral):
            # scikit-learn refuses max_samples > number of rows; columns differ in how many
            # rows they have observed, so cap per column.
            ms = min(int(ms), n_observed)
        return {
            "n_estimators": int(self.n_estimators),
            "max_features": self.max_features,
            "min_samples_leaf": self.min_samples_leaf,
            "max_samples": ms,
        }

    # ------------------------------------------------------------------ algorithm

    def fit_transform(self, X: ArrayLike, y: object = None) -> NDArray[Any]:
        """Impute the NaN entries of X and return the completed matrix.

        Args:
            X: (N, D) numeric array; NaN marks a missing entry. Observed values must be
                finite and no column may be entirely missing.
            y: ignored (scikit-learn signature).

        Returns:
            (N, D) array without NaN, of X's floating dtype (float64 for other dtypes), whose
            observed entries equal X's bit for bit.

        Raises:
            ValueError: on a non-2-D or non-numeric X, an infinite value, an all-NaN column,
                or an invalid parameter.
        """
        self._check_params()
        arr = self._check_input(X)
        out_dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.dtype(np.float64)
        # float64 internally: exact for every float input, so observed entries survive the
        # round trip bit for bit (they are also copied back from the input at the end).
        x_in = arr.astype(np.float64, copy=False)
        observed = ~np.isnan(x_in)
        n_missing = (~observed).sum(axis=0)
        n_rows = x_in.shape[0]

        self.categorical_ = self._column_types(x_in, observed)
        # Stable sort: increasing missingness, ties by column index (deterministic).
        order = np.argsort(n_missing, kind="stable")
        self.feature_order_ = order[n_missing[order] > 0]
        self.history_: list[IterationRecord] = []
        self.n_iter_ = 0
        self.stopped_early_ = False
        self.returned_iteration_ = 0

        x_imp = x_in.copy()
        for j in self.feature_order_:
            col = x_in[observed[:, j], j]
            x_imp[~observed[:, j], j] = mode(col) if self.categorical_[j] else col.mean()
        if self.feature_order_.size == 0:
            return restore_observed(x_imp, arr, observed, out_dtype)

        cont_cols = np.flatnonzero(~self.categorical_)
        cat_missing = int(n_missing[self.categorical_].sum())
        has_cont = bool(n_missing[~self.categorical_].sum() > 0)
        has_cat = cat_missing > 0

        # One base seed per call: with random_state=None every call differs, but all forests
        # of a call still derive from it (n_jobs-independent within the call).
        # (SeedSequence().entropy is a fresh 128-bit int.)
        base_entropy = (
            int(np.random.SeedSequence().entropy)  # type: ignore[arg-type]
            if self.random_state is None
            else int(self.random_state)
        )
        # Columns whose observed values are all equal need no forest (see constant_value).
        constant = {int(j): constant_value(x_in[observed[:, j], j]) for j in self.feature_order_.tolist()}
        prev_delta = (math.inf, math.inf)

        for it in range(1, int(self.max_iter) + 1):
            t0 = time.perf_counter()
            to_fit = [j for j in self.feature_order_.tolist() if constant[j] is None]
            tasks = (
                delayed(fit_predict_column)(
                    x_imp,
                    j,
                    observed[:, j],
                    bool(self.categorical_[j]),
                    self._forest_params(n_rows - int(n_missing[j])),
                    forest_seed(base_entropy, it, j),
                )
                for j in to_fit
            )
            # Jacobi sweep: every forest sees x_imp from the previous sweep, so the fits are
            # independent and joblib may run them anywhere in any order.
            preds = Parallel(n_jobs=self.n_jobs, backend=self.parallel_backend)(tasks)
            x_new = x_imp.copy()
            for j, pred in zip(to_fit, preds, strict=True):
                x_new[~observed[:, j], j] = pred
            for j, value in constant.items():
                if value is not None:
                    x_new[~observed[:, j], j] = value

            d_cont = delta_continuous(x_new, x_imp, cont_cols) if has_cont else None
            d_cat = (
                delta_categorical(x_new, x_imp, observed, self.categorical_, cat_missing) if has_cat else None
            )
            record = IterationRecord(
                iteration=it,
                delta_continuous=d_cont,
                delta_categorical=d_cat,
                seconds=time.perf_counter() - t0,
                n_forests=len(to_fit),
            )
            self.history_.append(record)
            self.n_iter_ = it
            if self.verbose:
                print(
                    f"missForest sweep {it}/{self.max_iter}: ΔN={d_cont} ΔF={d_cat} "
                    f"({record.n_forests} forests, {record.seconds:.2f} s)",
                    flush=True,
                )

            # Stopping rule (paper, and R's stopCriterion): keep going while at least one
            # present type's Δ still decreases strictly; once all have stopped decreasing,
            # the previous imputation is the better one, so discard x_new.
            decreased = (d_cont is not None and d_cont < prev_delta[0]) or (
                d_cat is not None and d_cat < prev_delta[1]
            )
            if not decreased:
                self.stopped_early_ = True
                self.returned_iteration_ = it - 1
                break
            x_imp = x_new
            prev_delta = (
                math.inf if d_cont is None else d_cont,
                math.inf if d_cat is None else d_cat,
            )
            self.returned_iteration_ = it

        return restore_observed(x_imp, arr, observed, out_dtype)

    def _column_types(self, x: NDArray[np.float64], observed: NDArray[np.bool_]) -> NDArray[np.bool_]:
        """Boolean (D,) mask of categorical columns."""
        n_cols = x.shape[1]
        spec = self.feature_types
        if not isinstance(spec, str):  # one type per column
            if len(spec) != n_cols or not set(spec) <= {"continuous", "categorical"}:
                raise ValueError(
                    f"feature_types must name 'continuous' or 'categorical' for each of the {n_cols} "
                    f"columns, got {list(spec)}"
                )
            return np.array([t == "categorical" for t in spec], dtype=bool)
        if spec == "continuous":
            return np.zeros(n_cols, dtype=bool)
        if spec == "categorical":
            return np.ones(n_cols, dtype=bool)
        return binary_columns(x, observed)  # "auto": observed values all in {0, 1}
