"""Rubin's rules against numbers worked by hand and against their closed-form limits."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from missiwae.pooling import barnard_rubin_df, ols, pool_fits, rubin

# A tiny M = 3 example, parameter 0 worked by hand below; parameter 1 has equal estimates.
ESTIMATES = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
VARIANCES = np.array([[0.5, 0.2], [1.0, 0.2], [1.5, 0.2]])
COMPLETE_DF = 10.0


def test_rubin_matches_the_hand_worked_m3_example() -> None:
    pooled = rubin(ESTIMATES, VARIANCES, complete_df=COMPLETE_DF)
    # Q̄ = (1 + 2 + 3)/3 = 2;  W = (0.5 + 1 + 1.5)/3 = 1;  B = ((1-2)² + 0 + (3-2)²)/2 = 1
    # T = W + (1 + 1/3) B = 1 + 4/3 = 7/3;  λ = (4/3)/(7/3) = 4/7;  r = (4/3)/1 = 4/3
    assert pooled.estimate[0] == pytest.approx(2.0)
    assert pooled.within[0] == pytest.approx(1.0)
    assert pooled.between[0] == pytest.approx(1.0)
    assert pooled.total[0] == pytest.approx(7 / 3)
    assert pooled.missing_share[0] == pytest.approx(4 / 7)
    # ν_old = (M-1)/λ² = 2 / (16/49) = 49/8
    # ν_obs = (ν_com+1)/(ν_com+3) ν_com (1-λ) = 11/13 · 10 · 3/7 = 330/91
    # 1/ν = 8/49 + 91/330 = (2640 + 4459) / 16170 = 7099/16170
    df = Fraction(16170, 7099)
    assert pooled.df[0] == pytest.approx(float(df), rel=1e-12)
    # γ = (r + 2/(ν+3)) / (1 + r) with r = 4/3
    r = Fraction(4, 3)
    fmi = (r + 2 / (df + 3)) / (1 + r)
    assert pooled.fmi[0] == pytest.approx(float(fmi), rel=1e-12)


def test_equal_estimates_have_no_between_variance() -> None:
    pooled = rubin(ESTIMATES, VARIANCES, complete_df=COMPLETE_DF)
    # Parameter 1: B = 0, so T = W = 0.2, λ = 0, ν_old = ∞ and ν = ν_obs = 11/13 · 10.
    assert pooled.between[1] == 0.0
    assert pooled.total[1] == pytest.approx(0.2)
    assert pooled.missing_share[1] == 0.0
    assert pooled.df[1] == pytest.approx(110 / 13)
    assert pooled.fmi[1] == pytest.approx(2 / (110 / 13 + 3))  # r = 0: γ = 2/(ν + 3)


def test_equal_estimates_in_a_large_sample_give_infinite_df_and_zero_fmi() -> None:
    pooled = rubin(ESTIMATES[:, 1], VARIANCES[:, 1])  # ν_com = ∞
    assert np.isinf(pooled.df[0])
    assert pooled.fmi[0] == 0.0
    lower, upper = pooled.interval()
    # t with ∞ degrees of freedom is the normal: 5 ± 1.959964 √0.2
    assert lower[0] == pytest.approx(5 - 1.959964 * np.sqrt(0.2), rel=1e-6)
    assert upper[0] == pytest.approx(5 + 1.959964 * np.sqrt(0.2), rel=1e-6)


def test_large_sample_df_is_rubins_1987_formula() -> None:
    pooled = rubin(ESTIMATES[:, 0], VARIANCES[:, 0])
    assert pooled.df[0] == pytest.approx(49 / 8)  # (M - 1)/λ² with λ = 4/7


def test_many_imputations_reach_the_infinite_m_limits() -> None:
    # ±a with a² = B (M-1)/M has sample variance exactly B; as M → ∞, T → W + B and γ → λ.
    num_imputations, within, between = 1_000_000, 2.0, 0.5
    half = np.sqrt(between * (num_imputations - 1) / num_imputations)
    estimates = np.tile([half, -half], num_imputations // 2)
    pooled = rubin(estimates, np.full(num_imputations, within))
    assert pooled.between[0] == pytest.approx(between, rel=1e-9)
    assert pooled.total[0] == pytest.approx(within + between, rel=1e-6)
    assert pooled.fmi[0] == pytest.approx(between / (within + between), rel=1e-5)
    assert pooled.df[0] > 1e6


@pytest.mark.parametrize("missing_share", [0.0, 0.1, 0.5, 0.9])
def test_barnard_rubin_df_never_exceeds_either_bound(missing_share: float) -> None:
    df = barnard_rubin_df(np.array([missing_share]), num_imputations=5, complete_df=30.0)[0]
    observed = 31 / 33 * 30 * (1 - missing_share)
    assert df <= observed + 1e-12
    if missing_share > 0:
        assert df <= 4 / missing_share**2


def test_ols_matches_simple_regression_worked_by_hand() -> None:
    # x̄ = 1.5, ȳ = 2.5, Sxx = 5, Sxy = 4: slope 0.8, intercept 2.5 - 0.8·1.5 = 1.3;
    # residuals -0.3, 0.9, -0.9, 0.3: RSS = 1.8, σ̂² = 1.8/(4-2) = 0.9;
    # Var(slope) = σ̂²/Sxx = 0.18, Var(intercept) = σ̂² (1/n + x̄²/Sxx) = 0.9 · 0.7 = 0.63.
    coefficients, variances = ols(np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([1.0, 3.0, 2.0, 4.0]))
    np.testing.assert_allclose(coefficients, [1.3, 0.8], rtol=1e-12)
    np.testing.assert_allclose(variances, [0.63, 0.18], rtol=1e-12)


def test_pool_fits_of_identical_datasets_is_the_single_fit() -> None:
    generator = np.random.default_rng(0)
    table = generator.normal(size=(50, 3))
    copies = np.stack([table] * 4)  # (M, N, D)
    pooled = pool_fits(copies, lambda d: ols(d[:, :-1], d[:, -1]), complete_df=50 - 3)
    coefficients, variances = ols(table[:, :-1], table[:, -1])
    np.testing.assert_allclose(pooled.estimate, coefficients)
    np.testing.assert_allclose(pooled.total, variances)
    np.testing.assert_array_equal(pooled.between, 0.0)


def test_covers_reads_the_interval() -> None:
    pooled = rubin(ESTIMATES[:, 0], VARIANCES[:, 0])
    lower, upper = pooled.interval()
    assert pooled.covers(lower[0])[0] and pooled.covers(upper[0])[0]
    assert not pooled.covers(upper[0] + 1e-9)[0]


@pytest.mark.parametrize(
    ("estimates", "variances", "message"),
    [
        (np.ones((1, 2)), np.ones((1, 2)), "M >= 2"),
        (np.ones((3, 2)), np.ones((3, 3)), "must both be"),
        (np.ones((3, 2)), -np.ones((3, 2)), ">= 0"),
    ],
)
def test_rubin_refuses_bad_input(estimates: np.ndarray, variances: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rubin(estimates, variances)


def test_ols_refuses_a_rank_deficient_design() -> None:
    column = np.arange(6.0)
    with pytest.raises(ValueError, match="rank deficient"):
        ols(np.column_stack([column, 2 * column]), column)
