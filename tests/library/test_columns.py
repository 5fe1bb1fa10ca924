"""missiwae.columns: column types and observed-entry standardisation (closed-form small tables)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

from missiwae.columns import (
    MAX_MAGNITUDE,
    MAX_STANDARDISED,
    OBSERVATIONS,
    Standardization,
    binary_columns,
    check_column_range,
    check_standardised_range,
    infer_column_types,
    out_of_range_columns,
)

nan = np.nan


def small_table() -> np.ndarray:
    """Columns: continuous, binary with holes, constant, all missing, binary written as -0.0/1."""
    return np.array(
        [
            [1.0, 0.0, 4.0, nan, -0.0],
            [3.0, nan, 4.0, nan, 1.0],
            [nan, 1.0, nan, nan, 1.0],
            [5.0, 1.0, 4.0, nan, 0.0],
        ]
    )


def test_binary_columns_look_at_observed_values_only() -> None:
    values = small_table()
    assert binary_columns(values).tolist() == [False, True, False, True, True]
    # An explicit mask overrides NaN: hiding the only non-binary values makes column 0 binary.
    observed = ~np.isnan(values)
    observed[[0, 1, 3], 0] = False
    assert binary_columns(values, observed).tolist() == [True, True, False, True, True]


def test_infer_column_types_names_binary_columns_bernoulli() -> None:
    types = infer_column_types(small_table(), "student_t")
    assert types == ["student_t", "bernoulli", "student_t", "bernoulli", "bernoulli"]
    assert set(types) <= set(OBSERVATIONS)


def test_fit_uses_observed_entries_only() -> None:
    values = np.array([[1.0, nan], [3.0, 2.0], [nan, 4.0], [nan, 6.0]])
    scaling = Standardization.fit(values)
    # Column 0: observed {1, 3}: mean 2, population std 1. Column 1: {2, 4, 6}: mean 4, std sqrt(8/3).
    np.testing.assert_array_equal(scaling.mean, [2.0, 4.0])
    np.testing.assert_allclose(scaling.scale, [1.0, np.sqrt(8.0 / 3.0)], rtol=1e-15)


def test_fit_leaves_unselected_constant_and_empty_columns_alone() -> None:
    values = small_table()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an all-missing column must not warn (empty slice)
        scaling = Standardization.fit(values, columns=[True, False, True, True, False])
    np.testing.assert_array_equal(scaling.mean, [3.0, 0.0, 4.0, 0.0, 0.0])
    # Constant column 2 has std 0: scale 1 so it is shifted, never divided by zero.
    np.testing.assert_allclose(scaling.scale, [np.sqrt(8.0 / 3.0), 1.0, 1.0, 1.0, 1.0], rtol=1e-15)


def test_fit_matches_nanmean_nanstd_of_the_selected_columns_exactly() -> None:
    # The table pipeline's statistics, bit for bit: the manifest records them.
    rng = np.random.default_rng(0)
    values = rng.standard_normal((500, 6)) * [1.0, 10.0, 1e3, 1.0, 5.0, 1e-3] + 7.0
    values[rng.random(values.shape) < 0.3] = nan
    columns = np.array([True, True, False, True, False, True])
    scaling = Standardization.fit(values, columns=columns)
    assert np.array_equal(scaling.mean[columns], np.nanmean(values[:, columns], axis=0))
    assert np.array_equal(scaling.scale[columns], np.nanstd(values[:, columns], axis=0))
    assert np.array_equal(scaling.mean[~columns], [0.0, 0.0])
    assert np.array_equal(scaling.scale[~columns], [1.0, 1.0])


def test_fit_on_some_rows_transform_others() -> None:
    values = np.array([[0.0, 10.0], [2.0, 30.0], [4.0, nan], [nan, 50.0]])
    scaling = Standardization.fit(values[:2])  # the pipeline fits on the train rows
    np.testing.assert_array_equal(scaling.mean, [1.0, 20.0])
    np.testing.assert_array_equal(scaling.scale, [1.0, 10.0])
    np.testing.assert_array_equal(
        scaling.transform(values), [[-1.0, -1.0], [1.0, 1.0], [3.0, 0.0], [0.0, 3.0]]
    )


def test_variance_overflow_raises_or_is_kept_as_asked() -> None:
    values = np.array([[1e300, 1.0], [-1e300, 2.0], [nan, 3.0]])
    with pytest.raises(ValueError, match=r"column\(s\) \[0\] of X span too wide a range"):
        Standardization.fit(values)
    kept = Standardization.fit(values, check_finite=False)
    assert kept.scale[0] == np.inf and kept.scale[1] == pytest.approx(np.sqrt(2.0 / 3.0))


def test_transform_zeroes_the_holes_and_inverse_undoes_it() -> None:
    values = np.array([[1.0, nan], [3.0, 2.0], [nan, 4.0], [nan, 7.0]])  # no value at its mean
    scaling = Standardization.fit(values)
    x = scaling.transform(values)
    assert x.dtype == np.float64 and np.array_equal(np.isnan(values), x == 0.0)
    np.testing.assert_array_equal(x[:2, 0], [-1.0, 1.0])
    observed = ~np.isnan(values)
    np.testing.assert_allclose(scaling.inverse_transform(x)[observed], values[observed], rtol=1e-15)
    # An explicit mask wins over NaN: a hidden observed value becomes a hole.
    hidden = observed.copy()
    hidden[0, 0] = False
    assert scaling.transform(values, hidden)[0, 0] == 0.0


def test_fill_keeps_observed_cells_bit_for_bit() -> None:
    rng = np.random.default_rng(1)
    values = rng.standard_normal((50, 4)) * 1e3 + np.pi
    values[rng.random(values.shape) < 0.4] = nan
    observed = ~np.isnan(values)
    scaling = Standardization.fit(values)
    # Through float32, as the model sees them: the observed cells would not survive that.
    model_output = scaling.transform(values).astype(np.float32)
    filled = scaling.fill(values, model_output)
    assert np.array_equal(filled[observed], values[observed])
    holes_column = np.nonzero(~observed)[1]  # the column of each hole, in row-major order
    np.testing.assert_array_equal(filled[~observed], scaling.mean[holes_column])  # holes were 0
    # (M, N, D) draws broadcast against the (N, D) table.
    draws = np.stack([model_output, model_output + 1.0])
    copies = scaling.fill(values, draws)
    assert copies.shape == (2, 50, 4)
    assert all(np.array_equal(copy[observed], values[observed]) for copy in copies)
    np.testing.assert_allclose(copies[1][~observed], (scaling.mean + scaling.scale)[holes_column])


def test_identity_only_zeroes_the_holes() -> None:
    values = np.array([[0.5, nan], [nan, -2.0]])
    scaling = Standardization.identity(2)
    np.testing.assert_array_equal(scaling.transform(values), [[0.5, 0.0], [0.0, -2.0]])
    np.testing.assert_array_equal(scaling.fill(values, np.full((2, 2), 9.0)), [[0.5, 9.0], [9.0, -2.0]])


def test_importing_columns_pulls_in_neither_pandas_nor_sklearn() -> None:
    code = "import sys, missiwae.columns; print(sorted({'pandas', 'sklearn', 'pyarrow'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_range_check_names_every_column_beyond_the_largest_magnitude() -> None:
    # 1e152 would still standardise (its variance 1e304 is finite) but leaves no headroom.
    values = np.array([[1e152, 1.0, -1e300, MAX_MAGNITUDE], [nan, 2.0, 0.0, 0.0], [3.0, nan, 5e-324, 1.0]])
    assert out_of_range_columns(values).tolist() == [0, 2]
    with pytest.raises(
        ValueError, match=r"column\(s\) \['big', 'huge'\] of t.csv hold values of magnitude up to 1e\+300"
    ):
        check_column_range(values, names=["big", "ok", "huge", "edge"], where="t.csv")
    with pytest.raises(ValueError, match=r"column\(s\) \[0, 2\] of X"):
        check_column_range(values)
    # Holes do not count: hiding the wide cells makes the table acceptable.
    observed = ~np.isnan(values)
    observed[0, [0, 2]] = False
    check_column_range(values, observed)


def test_standardised_range_check_names_columns_far_from_the_fitted_rows() -> None:
    scaled = np.array([[0.0, 2e15, 1.0], [MAX_STANDARDISED, -3.0, nan]])
    with pytest.raises(ValueError, match=r"column\(s\) \['b', 'c'\] of t.csv hold values more than 1e\+15"):
        check_standardised_range(scaled, names=["a", "b", "c"], where="t.csv")
    check_standardised_range(scaled[:, :1])


def test_estimator_refuses_a_too_wide_column_with_the_shared_range_check() -> None:
    from missiwae.estimator import MissIWAEImputer

    X = np.array([[1e152, 1.0], [2.0, nan], [nan, 3.0], [4.0, 4.0]])  # standardisable, yet refused
    with pytest.raises(ValueError, match=r"column\(s\) \[0\] of X hold values of magnitude up to 1e\+152"):
        MissIWAEImputer(epochs=1, random_state=0).fit(X)
