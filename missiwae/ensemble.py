"""Proper multiple imputation by a bootstrap ensemble of imputers.

SIR draws from p_θ̂(x_m | x_o) for one fitted θ̂ ignore the uncertainty in θ̂ itself: Rubin
(1987, §4.2) calls such imputations improper, and the between-imputation variance they give
is too small, so pooled intervals under-cover. The bootstrap repairs this (Rubin & Schenker
1986; Little & Rubin, *Statistical Analysis with Missing Data*, 3rd ed. 2019, §5.4 and §10.2):
fit B models, model b on a resample with replacement of the N incomplete rows, so that the
spread of θ̂_b approximates the sampling distribution of θ̂; then draw each imputation from a
model picked this way, x_m ~ p_θ̂_b(x_m | x_o).

M imputations are split as evenly as possible among the B models (`split_draws`). With B = M
each imputation has its own θ̂_b, the textbook scheme. With B < M, the M/B draws of one model
share θ̂_b, so the between-imputation variance B of Rubin's rules underestimates the parameter
part by a factor of about (M − M/B)/(M − 1): prefer B = M when the budget allows.

On a cluster the rows live in shards and no process holds them all, so the pipeline
resamples with `poisson_bootstrap_counts`: each row enters resample b Poisson(1) times, the
count a function of (seed, b, the row's id) alone. Which worker holds a row, in what order, and
whether that worker restarted then change nothing, and no pass over all rows is needed. The
resample's size is random (mean N, sd √N) instead of exactly N; for N in the thousands the two
bootstraps agree to first order (Hanley & MacGibbon 2006; Chamandy et al. 2012, "Estimating
uncertainty for massive data streams").

Works with any imputer that has scikit-learn's `get_params` / `set_params`, `fit(X)` and
`sample(X, n_imputations)` returning (n, N, D), such as `MissIWAEImputer`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.base import clone

from missiwae.frames import is_frame


class SamplingImputer(Protocol):
    """What the ensemble needs of an imputer."""

    def fit(self, X: ArrayLike) -> Any: ...

    def sample(self, X: ArrayLike, n_imputations: int) -> NDArray[np.float64]: ...

    def get_params(self, deep: bool = True) -> dict[str, Any]: ...

    def set_params(self, **params: Any) -> Any: ...


def bootstrap_rows(num_rows: int, num_models: int, seed: int) -> NDArray[np.intp]:
    """Row indices of B = `num_models` bootstrap resamples: (B, N), each row drawn uniformly
    with replacement from range(N)."""
    if num_rows < 1 or num_models < 1:
        raise ValueError(f"need num_rows >= 1 and num_models >= 1, got {num_rows} and {num_models}")
    return np.random.default_rng(seed).integers(0, num_rows, size=(num_models, num_rows))


def poisson_bootstrap_counts(row_ids: ArrayLike, seed: int, member: int) -> NDArray[np.int64]:
    """How many times each row enters bootstrap resample `member`: (N,) independent Poisson(1)
    counts, each a deterministic function of (seed, member, row id), so any subset or order of
    the rows gets the same counts as the whole table (the module docstring says why).

    Args:
        row_ids: (N,) non-negative integer ids, unique within the table.
        seed: the ensemble's seed.
        member: b, the resample's index (>= 0).
    """
    ids = np.asarray(row_ids)
    if ids.ndim != 1 or (ids.size and (not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0)):
        raise ValueError(f"row_ids must be a 1-d array of non-negative integers, got {ids.dtype} {ids.shape}")
    if member < 0:
        raise ValueError(f"member must be >= 0, got {member}")
    key = np.random.SeedSequence([seed, member]).generate_state(1, dtype=np.uint64)[0]
    bits = _splitmix64(_splitmix64(ids.astype(np.uint64)) ^ key)
    uniform = (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53  # in [0, 1)
    return np.searchsorted(_POISSON_ONE_CDF, uniform, side="right").astype(np.int64)


def _splitmix64(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """Steele, Lea & Flood's SplitMix64 finaliser: a bijective mix of 64-bit words, so
    consecutive ids give independent-looking uniform bits."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


# P(count <= k) for count ~ Poisson(1), k = 0..19 (the tail past 19 is below 2**-53).
_POISSON_ONE_CDF = np.cumsum([np.exp(-1.0) / math.factorial(k) for k in range(20)])


def split_draws(num_imputations: int, num_models: int) -> list[int]:
    """How many of the M imputations each of the B models draws: as even as possible, the first
    M mod B models one more; models past M draw none when M < B. Sums to M."""
    if num_imputations < 1 or num_models < 1:
        raise ValueError(f"need M >= 1 and B >= 1, got {num_imputations} and {num_models}")
    base, extra = divmod(num_imputations, num_models)
    return [base + (b < extra) for b in range(num_models)]


def combine_draws(draws: Sequence[NDArray[np.float64]]) -> NDArray[np.float64]:
    """Stack the models' draws, each (m_b, N, D), into the M imputations (M, N, D), model by
    model (Rubin's rules do not depend on the order)."""
    kept = [d for d in draws if d.shape[0] > 0]
    if not kept:
        raise ValueError("no draws to combine")
    return np.concatenate(kept, axis=0)


class BootstrapImputer:
    """B clones of `imputer`, clone b fitted on bootstrap resample b of the rows of X.

    `sample(X, M)` returns (M, N, D): clone b contributes `split_draws(M, B)[b]` draws. Clone b
    gets `random_state = seed + b` when the imputer has that parameter, so the ensemble is
    reproducible and its members' training noise independent. A resample can in principle miss
    every observed value of a sparse column; the member's `fit` then raises as it would on such
    a table.
    """

    def __init__(self, imputer: SamplingImputer, num_models: int, seed: int = 0) -> None:
        if num_models < 1:
            raise ValueError(f"num_models must be >= 1, got {num_models}")
        self.imputer = imputer
        self.num_models = num_models
        self.seed = seed
        self.members: list[SamplingImputer] = []

    def fit(self, X: ArrayLike) -> BootstrapImputer:
        """X: a float array (N, D), or a table with labels (a DataFrame, an object array), whose
        rows the resamples then take as they are."""
        table: Any = X if is_frame(X) else np.asarray(X)
        if not is_frame(table) and table.dtype != object:
            table = np.asarray(table, dtype=np.float64)
        self.members = []
        for b, rows in enumerate(bootstrap_rows(table.shape[0], self.num_models, self.seed)):
            member = clone(self.imputer)
            if "random_state" in member.get_params(deep=False):
                member.set_params(random_state=self.seed + b)
            member.fit(table.iloc[rows] if is_frame(table) else table[rows])
            self.members.append(member)
        return self

    def sample(self, X: ArrayLike, n_imputations: int) -> NDArray[np.float64]:
        if not self.members:
            raise ValueError("BootstrapImputer is not fitted: call fit first")
        counts = split_draws(n_imputations, len(self.members))
        return combine_draws(
            [
                member.sample(X, n_imputations=count)
                for member, count in zip(self.members, counts, strict=True)
                if count
            ]
        )


def fit_bootstrap_ensemble(
    imputer: SamplingImputer, X: ArrayLike, num_models: int, seed: int
) -> BootstrapImputer:
    """A `BootstrapImputer` of `num_models` one-model clones of `imputer` (its `n_models`
    parameter set to 1, so a member does not build an ensemble of its own), fitted on X."""
    member = clone(imputer).set_params(n_models=1)
    return BootstrapImputer(member, num_models, seed).fit(X)
