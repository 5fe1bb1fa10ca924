"""Rubin's rules: pool M analyses of M imputed datasets into one estimate and one interval.

Each imputed dataset m = 1..M gives estimates Q_m of P parameters and their squared standard
errors U_m (the diagonal of the complete-data covariance: parameters are pooled one at a time,
which is what the intervals need). With arrays `estimates` and `variances` of shape (M, P):

    Q̄ = (1/M) Σ_m Q_m                        pooled estimate
    W = (1/M) Σ_m U_m                        within-imputation variance
    B = 1/(M − 1) Σ_m (Q_m − Q̄)²             between-imputation variance
    T = W + (1 + 1/M) B                      total variance
    λ = (1 + 1/M) B / T                      share of T due to the missing data
    r = (1 + 1/M) B / W                      relative increase in variance

Degrees of freedom (Barnard & Rubin 1999), with ν_com the complete-data degrees of freedom
(∞ for a large-sample analysis):

    ν_old = (M − 1) / λ²                     Rubin (1987), for ν_com = ∞
    ν_obs = (ν_com + 1) / (ν_com + 3) · ν_com (1 − λ)
    ν     = ν_old ν_obs / (ν_old + ν_obs)    i.e. 1/ν = 1/ν_old + 1/ν_obs

Fraction of missing information (Rubin 1987, eq. 3.1.10): γ = (r + 2/(ν + 3)) / (1 + r),
which tends to λ as ν → ∞. The 95% interval is Q̄ ± t_{ν, 0.975} √T.

References: Rubin, *Multiple Imputation for Nonresponse in Surveys* (1987), §3.1;
Barnard & Rubin, *Small-sample degrees of freedom with multiple imputation*, Biometrika 86
(1999); van Buuren, *Flexible Imputation of Missing Data* (2nd ed. 2018), §2.3.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

Array = NDArray[np.float64]


@dataclasses.dataclass(frozen=True)
class PooledEstimate:
    """Rubin's rules for P parameters; every field has shape (P,)."""

    estimate: Array  # Q̄
    within: Array  # W
    between: Array  # B
    total: Array  # T = W + (1 + 1/M) B
    df: Array  # ν, Barnard–Rubin
    missing_share: Array  # λ = (1 + 1/M) B / T
    fmi: Array  # γ = (r + 2/(ν + 3)) / (1 + r)
    num_imputations: int  # M

    @property
    def std_error(self) -> Array:
        """√T (P,)."""
        return np.sqrt(self.total)

    def interval(self, level: float = 0.95) -> tuple[Array, Array]:
        """(lower, upper), each (P,): Q̄ ∓ t_{ν, (1 + level)/2} √T."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level}")
        half = stats.t.ppf(0.5 + level / 2, self.df) * self.std_error
        return self.estimate - half, self.estimate + half

    def covers(self, truth: ArrayLike, level: float = 0.95) -> NDArray[np.bool_]:
        """Whether each parameter's interval holds the true value (P,)."""
        lower, upper = self.interval(level)
        value = np.asarray(truth, dtype=np.float64)
        return (lower <= value) & (value <= upper)


def rubin(estimates: ArrayLike, variances: ArrayLike, complete_df: float = np.inf) -> PooledEstimate:
    """Pool M estimates (M, P) and their variances (M, P) by Rubin's rules (module docstring).

    `complete_df` is ν_com, the degrees of freedom of the analysis had the data been complete
    (n − p for an OLS fit; ∞, the default, for a large-sample analysis). A 1-D input is one
    parameter (M,). Raises ValueError for M < 2 (B needs two imputations), mismatched shapes,
    negative variances or ν_com <= 0.
    """
    q = np.asarray(estimates, dtype=np.float64)
    u = np.asarray(variances, dtype=np.float64)
    if q.ndim == 1:
        q, u = q[:, None], u[:, None]
    if q.ndim != 2 or q.shape != u.shape:
        raise ValueError(
            "estimates and variances must both be (M, P), "
            f"got {np.shape(estimates)} and {np.shape(variances)}"
        )
    num_imputations = q.shape[0]
    if num_imputations < 2:
        raise ValueError(f"Rubin's rules need M >= 2 imputations, got {num_imputations}")
    if np.any(u < 0) or not np.all(np.isfinite(q)) or not np.all(np.isfinite(u)):
        raise ValueError("estimates must be finite and variances finite and >= 0")
    if not complete_df > 0:
        raise ValueError(f"complete_df must be > 0 (or inf), got {complete_df}")

    estimate = q.mean(axis=0)
    within = u.mean(axis=0)
    between = q.var(axis=0, ddof=1)
    inflated = (1.0 + 1.0 / num_imputations) * between
    total = within + inflated
    with np.errstate(divide="ignore", invalid="ignore"):
        # T = 0 only when every U_m and every Q_m agree exactly: no uncertainty at all, λ = 0.
        missing_share = np.where(total > 0, inflated / total, 0.0)
        relative_increase = np.where(within > 0, inflated / within, np.inf)
    df = barnard_rubin_df(missing_share, num_imputations, complete_df)
    with np.errstate(divide="ignore", invalid="ignore"):
        fmi = np.where(
            np.isinf(relative_increase),
            1.0,  # W = 0 < B: all the information about the parameter is missing
            (relative_increase + 2.0 / (df + 3.0)) / (1.0 + relative_increase),
        )
    return PooledEstimate(estimate, within, between, total, df, missing_share, fmi, num_imputations)


def barnard_rubin_df(missing_share: ArrayLike, num_imputations: int, complete_df: float = np.inf) -> Array:
    """ν with 1/ν = λ²/(M − 1) + 1/ν_obs, ν_obs = (ν_com + 1)/(ν_com + 3) ν_com (1 − λ)
    (Barnard & Rubin 1999, eq. 3), for λ (P,) as in `rubin`. Written through the reciprocals so
    that λ = 0 (ν_old = ∞) and ν_com = ∞ (ν = ν_old, Rubin 1987) need no special case; ∞ when
    both are infinite."""
    lam = np.asarray(missing_share, dtype=np.float64)
    inverse_old = lam**2 / (num_imputations - 1)
    if np.isinf(complete_df):
        inverse_obs = np.zeros_like(lam)
    else:
        with np.errstate(divide="ignore"):
            inverse_obs = (complete_df + 3.0) / ((complete_df + 1.0) * complete_df * (1.0 - lam))
    with np.errstate(divide="ignore"):
        return 1.0 / (inverse_old + inverse_obs)


def pool_fits(
    datasets: Iterable[ArrayLike],
    fit: Callable[[Array], tuple[ArrayLike, ArrayLike]],
    complete_df: float = np.inf,
) -> PooledEstimate:
    """Run `fit` on each of the M imputed datasets and pool the results by `rubin`.

    `fit(dataset)` returns (estimates, variances), each (P,): e.g. `lambda d: ols(d[:, :-1],
    d[:, -1])`. `datasets` is any iterable of M >= 2 datasets, such as the (M, N, D) array of
    `MissIWAEImputer.sample`.
    """
    results = [fit(np.asarray(dataset, dtype=np.float64)) for dataset in datasets]
    if not results:
        raise ValueError("pool_fits needs at least two imputed datasets, got none")
    estimates = np.stack([np.asarray(result[0], dtype=np.float64) for result in results])
    variances = np.stack([np.asarray(result[1], dtype=np.float64) for result in results])
    return rubin(estimates, variances, complete_df)


def ols(X: ArrayLike, y: ArrayLike, intercept: bool = True) -> tuple[Array, Array]:
    """Ordinary least squares of y (N,) on X (N, D): coefficients (P,) and their variances (P,).

    P = D + 1 with the intercept first when `intercept`, else D. The variances are the diagonal
    of σ̂² (XᵀX)⁻¹ with σ̂² = RSS / (N − P), the usual unbiased residual variance; the
    complete-data degrees of freedom to pool with are N − P.
    """
    design = np.asarray(X, dtype=np.float64)
    response = np.asarray(y, dtype=np.float64)
    if design.ndim != 2 or response.shape != (design.shape[0],):
        raise ValueError(f"X must be (N, D) and y (N,), got {design.shape} and {response.shape}")
    if intercept:
        design = np.column_stack([np.ones(design.shape[0]), design])
    num_rows, num_params = design.shape
    if num_rows <= num_params:
        raise ValueError(f"OLS needs more rows than parameters, got N = {num_rows}, P = {num_params}")
    coefficients, _, rank, _ = np.linalg.lstsq(design, response, rcond=None)
    if rank < num_params:
        raise ValueError("X (with the intercept) is rank deficient: the coefficients are not identified")
    residual_variance = np.sum((response - design @ coefficients) ** 2) / (num_rows - num_params)
    # (XᵀX)⁻¹ through the inverse of the Gram matrix; fine for the well-conditioned designs of
    # an analysis model (lstsq above already refused rank deficiency).
    variances = residual_variance * np.diag(np.linalg.inv(design.T @ design))
    return coefficients.astype(np.float64), np.asarray(variances, dtype=np.float64)
