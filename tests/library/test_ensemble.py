"""The bootstrap ensemble: resampling, the split of M draws among B models, their combination."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from sklearn.base import BaseEstimator

from missiwae.ensemble import (
    BootstrapImputer,
    bootstrap_rows,
    combine_draws,
    poisson_bootstrap_counts,
    split_draws,
)
from missiwae.estimator import MissIWAEImputer


class MeanImputer(BaseEstimator):
    """Fills every NaN with its column's observed mean in the fitted rows; `sample` repeats that
    fill (a deterministic 'model' whose only parameter is θ̂ = the column means)."""

    def __init__(self, random_state: int | None = None) -> None:
        self.random_state = random_state

    def fit(self, X: Any) -> MeanImputer:
        self.mean_ = np.nanmean(np.asarray(X, dtype=np.float64), axis=0)
        return self

    def sample(self, X: Any, n_imputations: int) -> NDArray[np.float64]:
        table = np.asarray(X, dtype=np.float64)
        filled = np.where(np.isnan(table), self.mean_, table)
        return np.repeat(filled[None], n_imputations, axis=0)


def test_bootstrap_rows_draw_with_replacement_reproducibly() -> None:
    rows = bootstrap_rows(num_rows=50, num_models=4, seed=1)
    assert rows.shape == (4, 50)
    assert rows.min() >= 0 and rows.max() < 50
    np.testing.assert_array_equal(rows, bootstrap_rows(50, 4, seed=1))
    assert any(len(np.unique(r)) < 50 for r in rows)  # with replacement: P(no repeat) = 50!/50^50
    assert not np.array_equal(rows[0], rows[1])


@pytest.mark.parametrize(
    ("num_imputations", "num_models", "expected"),
    [(10, 1, [10]), (10, 10, [1] * 10), (10, 4, [3, 3, 2, 2]), (3, 5, [1, 1, 1, 0, 0])],
)
def test_split_draws_is_even_and_sums_to_m(
    num_imputations: int, num_models: int, expected: list[int]
) -> None:
    assert split_draws(num_imputations, num_models) == expected


def test_combine_draws_stacks_models_in_order_and_skips_empty_ones() -> None:
    first, empty, second = np.zeros((2, 3, 1)), np.empty((0, 3, 1)), np.ones((1, 3, 1))
    combined = combine_draws([first, empty, second])
    assert combined.shape == (3, 3, 1)
    np.testing.assert_array_equal(combined[:, 0, 0], [0, 0, 1])


def test_each_member_fits_its_own_resample_and_draws_its_share() -> None:
    X = np.arange(20.0).reshape(10, 2)
    X[0, 0] = np.nan
    ensemble = BootstrapImputer(MeanImputer(), num_models=3, seed=7).fit(X)
    rows = bootstrap_rows(10, 3, seed=7)
    for member, resample in zip(ensemble.members, rows, strict=True):
        np.testing.assert_allclose(member.mean_, np.nanmean(X[resample], axis=0))  # type: ignore[attr-defined]
    assert [m.get_params()["random_state"] for m in ensemble.members] == [7, 8, 9]
    draws = ensemble.sample(X, n_imputations=5)  # split 2, 2, 1
    assert draws.shape == (5, 10, 2)
    fills = [m.mean_[0] for m in ensemble.members]  # type: ignore[attr-defined]
    np.testing.assert_allclose(draws[:, 0, 0], [fills[0], fills[0], fills[1], fills[1], fills[2]])
    np.testing.assert_array_equal(draws[:, 1:], np.broadcast_to(X[1:], (5, 9, 2)))  # observed untouched


def test_member_spread_matches_the_sampling_variance_of_the_parameter() -> None:
    # θ̂ = column mean of N rows has variance σ²/N; the bootstrap's spread of θ̂_b estimates it
    # (here σ = 1, N = 200: sd 0.0707). With 400 members the sd of θ̂_b is within ~3.5% of the
    # plug-in value √(s²(1 - 1/N)/N) (relative se of an sd ≈ 1/√(2·400)); 15% is > 4 se.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 1))
    ensemble = BootstrapImputer(MeanImputer(), num_models=400, seed=0).fit(X)
    spread = np.std([m.mean_[0] for m in ensemble.members], ddof=1)  # type: ignore[attr-defined]
    plug_in = np.sqrt(X.var() / 200)
    assert spread == pytest.approx(plug_in, rel=0.15)


def test_sample_before_fit_and_zero_models_are_refused() -> None:
    with pytest.raises(ValueError, match="not fitted"):
        BootstrapImputer(MeanImputer(), num_models=2).sample(np.zeros((2, 2)), 2)
    with pytest.raises(ValueError, match="num_models"):
        BootstrapImputer(MeanImputer(), num_models=0)


def _holed_table() -> np.ndarray:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 3))
    X[rng.random(X.shape) < 0.3] = np.nan
    return X


def _small_imputer(n_models: int) -> MissIWAEImputer:
    return MissIWAEImputer(
        n_models=n_models, latent_dim=2, hidden=(8,), epochs=1, num_samples=10, random_state=0
    )


def test_imputer_with_n_models_draws_from_its_bootstrap_members() -> None:
    X = _holed_table()
    imputer = _small_imputer(n_models=2).fit(X)
    assert imputer.ensemble_ is not None
    members = imputer.ensemble_.members
    assert len(members) == 2 and all(m.get_params()["n_models"] == 1 for m in members)
    draws = imputer.sample(X, n_imputations=3)  # split 2, 1
    expected = np.concatenate([members[0].sample(X, n_imputations=2), members[1].sample(X, n_imputations=1)])
    np.testing.assert_array_equal(draws, expected)
    observed = ~np.isnan(X)
    np.testing.assert_array_equal(draws[:, observed], np.broadcast_to(X[observed], (3, observed.sum())))


def test_imputer_with_one_model_has_no_ensemble() -> None:
    assert _small_imputer(n_models=1).fit(_holed_table()).ensemble_ is None


def test_poisson_bootstrap_counts_depend_on_the_row_id_alone_not_on_order_or_sharding() -> None:
    ids = np.arange(10_000)
    whole = poisson_bootstrap_counts(ids, seed=3, member=1)
    order = np.random.default_rng(0).permutation(ids)
    assert np.array_equal(poisson_bootstrap_counts(order, seed=3, member=1), whole[order])
    halves = [poisson_bootstrap_counts(part, seed=3, member=1) for part in (ids[::2], ids[1::2])]
    assert np.array_equal(halves[0], whole[::2]) and np.array_equal(halves[1], whole[1::2])


def test_poisson_bootstrap_counts_follow_poisson_one_and_differ_by_member_and_seed() -> None:
    ids = np.arange(200_000)
    counts = poisson_bootstrap_counts(ids, seed=0, member=0)
    # Poisson(1): mean 1, variance 1, P(0) = P(1) = e^-1, P(2) = e^-1 / 2; standard errors of
    # these estimates at N = 200 000 are about 0.003 and 0.001, so the tolerances are ~5 se.
    assert abs(counts.mean() - 1.0) < 0.012 and abs(counts.var() - 1.0) < 0.02
    for k, probability in ((0, np.exp(-1)), (1, np.exp(-1)), (2, np.exp(-1) / 2)):
        assert abs(np.mean(counts == k) - probability) < 0.006
    others = [
        poisson_bootstrap_counts(ids, seed=0, member=1),
        poisson_bootstrap_counts(ids, seed=1, member=0),
    ]
    for other in others:  # independent resamples: correlation about 0 (se 0.0022)
        assert abs(np.corrcoef(counts, other)[0, 1]) < 0.012
    # Neighbouring ids are not correlated either (the mix, not the id, makes the count).
    assert abs(np.corrcoef(counts[:-1], counts[1:])[0, 1]) < 0.012


def test_poisson_bootstrap_counts_refuse_ids_that_are_not_non_negative_integers() -> None:
    for bad in (np.array([0.5, 1.0]), np.array([-1, 2]), np.zeros((2, 2), dtype=np.int64)):
        with pytest.raises(ValueError, match="row_ids"):
            poisson_bootstrap_counts(bad, seed=0, member=0)
    with pytest.raises(ValueError, match="member"):
        poisson_bootstrap_counts(np.arange(3), seed=0, member=-1)
