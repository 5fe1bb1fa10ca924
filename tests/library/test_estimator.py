"""MissIWAEImputer: the scikit-learn face of missIWAE (fit on NaN-holed tables, SNIS/SIR imputation)."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import Ridge
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.utils.estimator_checks import (
    check_dataframe_column_names_consistency,
    check_global_output_transform_pandas,
    check_set_output_transform,
    check_set_output_transform_pandas,
    estimator_checks_generator,
)
from sklearn.utils.validation import check_is_fitted

from missiwae.estimator import MissIWAEImputer

# Small but enough to learn a rank-2 table: ~2.5 s of training on one CPU thread.
FAST: dict[str, Any] = {"latent_dim": 4, "hidden": (64, 64), "epochs": 100, "num_samples": 200}
# For tests that only check plumbing, not quality.
TINY: dict[str, Any] = {"latent_dim": 2, "hidden": (16,), "epochs": 3, "num_samples": 20}


def correlated_table(
    seed: int = 0, num_rows: int = 300, num_features: int = 6, missing_rate: float = 0.3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(complete X, X with NaN holes, holes mask), rows from a rank-2 linear model + noise.

    Columns get different offsets and scales so that standardisation matters.
    """
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((num_rows, 2))
    loading = rng.standard_normal((2, num_features))
    X = z @ loading + 0.3 * rng.standard_normal((num_rows, num_features))
    X = X * np.linspace(1.0, 50.0, num_features) + np.arange(num_features) * 10.0
    holes = rng.random((num_rows, num_features)) < missing_rate
    return X, np.where(holes, np.nan, X), holes


def binary_table(seed: int = 0, num_rows: int = 300, num_features: int = 8) -> np.ndarray:
    """A binary table with NaN holes: thresholded rank-1 Gaussian, 30% MCAR."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((num_rows, 1))
    X = (latent + 0.5 * rng.standard_normal((num_rows, num_features)) > 0).astype(float)
    return np.where(rng.random(X.shape) < 0.3, np.nan, X)


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    """These models are tiny: one intra-op thread is as fast on an idle machine, and on a busy
    one two threads' spinning barriers made training ~10x slower (measured: 2.5 s vs 30-50 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return correlated_table()


@pytest.fixture(scope="module")
def fitted(table: tuple[np.ndarray, np.ndarray, np.ndarray]) -> MissIWAEImputer:
    _, X_missing, _ = table
    return MissIWAEImputer(**FAST, random_state=0).fit(X_missing)


def test_fit_records_sklearn_fitted_attributes(
    fitted: MissIWAEImputer, table: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    _, X_missing, _ = table
    check_is_fitted(fitted)
    assert fitted.n_features_in_ == 6
    assert len(fitted.history_) == FAST["epochs"]
    assert np.isfinite(fitted.history_[-1].train_bound)
    # Standardisation uses the observed entries of each column only.
    np.testing.assert_allclose(fitted.mean_, np.nanmean(X_missing, axis=0))
    np.testing.assert_allclose(fitted.scale_, np.nanstd(X_missing, axis=0))


def test_transform_fills_every_hole_and_keeps_observed_entries_bit_for_bit(
    fitted: MissIWAEImputer, table: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    _, X_missing, holes = table
    before = X_missing.copy()
    out = fitted.transform(X_missing)
    assert out.shape == X_missing.shape and out.dtype == np.float64
    assert not np.isnan(out).any()
    assert np.array_equal(out[~holes], X_missing[~holes])  # exact, not approximate
    assert np.array_equal(X_missing, before, equal_nan=True)  # the input is not written to


def test_sample_gives_copies_that_differ_on_holes_only(
    fitted: MissIWAEImputer, table: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    _, X_missing, holes = table
    copies = fitted.sample(X_missing, n_imputations=4)
    assert copies.shape == (4, *X_missing.shape) and copies.dtype == np.float64
    assert not np.isnan(copies).any()
    for copy in copies:
        assert np.array_equal(copy[~holes], X_missing[~holes])
    # SIR draws are random: copies disagree on (almost) every missing entry.
    assert np.mean(copies[0][holes] != copies[1][holes]) > 0.9
    np.testing.assert_array_equal(copies, fitted.sample(X_missing, n_imputations=4))


def test_imputation_beats_column_means_on_correlated_table(
    fitted: MissIWAEImputer, table: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    X, X_missing, holes = table
    ours = np.mean((fitted.transform(X_missing)[holes] - X[holes]) ** 2)
    column_means = np.where(holes, np.nanmean(X_missing, axis=0), X_missing)
    baseline = np.mean((column_means[holes] - X[holes]) ** 2)
    # Measured: ours/baseline ≈ 0.11-0.23 over 5 tables x 2 seeds; 0.5 leaves a wide margin.
    assert ours < 0.5 * baseline, f"missIWAE MSE {ours:.3f} vs column-mean MSE {baseline:.3f}"


def test_same_random_state_gives_identical_imputations(
    table: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    _, X_missing, _ = table
    first = MissIWAEImputer(**TINY, random_state=7).fit(X_missing)
    second = MissIWAEImputer(**TINY, random_state=7).fit(X_missing)
    other = MissIWAEImputer(**TINY, random_state=8).fit(X_missing)
    out = first.transform(X_missing)
    np.testing.assert_array_equal(out, second.transform(X_missing))
    np.testing.assert_array_equal(out, first.transform(X_missing))  # repeatable on one fit
    np.testing.assert_array_equal(first.sample(X_missing, 2), second.sample(X_missing, 2))
    assert not np.array_equal(out, other.transform(X_missing))


def test_clone_gives_unfitted_estimator_with_equal_params(fitted: MissIWAEImputer) -> None:
    copy = clone(fitted)
    assert copy.get_params() == fitted.get_params()
    with pytest.raises(NotFittedError):
        check_is_fitted(copy)
    copy.set_params(K=5, observation="student_t")
    assert copy.K == 5 and copy.observation == "student_t"
    assert fitted.K == 20 and fitted.observation == "gaussian"  # the original is untouched


def test_pickled_imputer_imputes_identically(
    fitted: MissIWAEImputer, table: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    _, X_missing, _ = table
    restored = pickle.loads(pickle.dumps(fitted))  # what joblib.dump / model registries do
    np.testing.assert_array_equal(restored.transform(X_missing), fitted.transform(X_missing))


def _sklearn_checks() -> list[Any]:
    # The array-API check only runs where SCIPY_ARRAY_API is set and skips otherwise; the
    # imputer takes numpy input only (its tags say so), so that one check is left out.
    return [
        pytest.param(estimator, check, id=_check_name(check))
        for estimator, check in estimator_checks_generator(MissIWAEImputer(**TINY, random_state=0))
        if _check_name(check) != "check_array_api_input"
    ]


def _check_name(check: Any) -> str:
    return getattr(check, "func", check).__name__


@pytest.mark.parametrize(("estimator", "check"), _sklearn_checks())
def test_follows_sklearn_estimator_conventions(estimator: Any, check: Any) -> None:
    # scikit-learn's own API checks: clone, get/set_params, n_features_in_, error messages,
    # idempotent fit, no mutation of the input, NaN tag, pickling... (~4 s in all).
    check(estimator)


def test_works_in_pipeline_with_downstream_regressor(
    table: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    X, X_missing, _ = table
    y = X[:, 0] - 0.5 * X[:, 1]
    pipeline = Pipeline([("impute", MissIWAEImputer(**TINY, random_state=0)), ("model", Ridge())])
    predictions = pipeline.fit(X_missing, y).predict(X_missing)
    assert predictions.shape == y.shape and np.isfinite(predictions).all()
    # Cross-validation clones and refits the whole pipeline on each fold.
    scores = cross_val_score(pipeline, X_missing, y, cv=2)
    assert np.isfinite(scores).all()


@pytest.mark.parametrize(
    ("X", "params", "message"),
    [
        (np.ones(10), {}, "must be 2-D"),
        (
            np.array([[1.0, np.nan], [2.0, np.nan], [3.0, np.nan]]),
            {},
            r"column\(s\) \[1\] of X have no observed value",
        ),
        (np.array([[1.0, np.inf], [2.0, 3.0]]), {}, "contains inf"),
        (np.array([[1.0, 2.0], [2.0, 3.0]]), {"imputation": "oracle"}, "oracle"),
        (np.array([[1.0, 2.0], [2.0, 3.0]]), {"observation": "poisson"}, "observation must be one of"),
        (np.array([[1.0, 2.0], [2.0, 3.0]]), {"K": 0}, "K must be an integer >= 1"),
        (np.array([[1.0, 2.0], [2.0, 3.0]]), {"num_samples": 0}, "num_samples must be an integer >= 1"),
        (np.array([[0.0, 0.5], [1.0, np.nan]]), {"observation": "bernoulli"}, r"values in \{0, 1\}"),
        # Trained, then crashed in transform (issue 18): refused as a config file refuses it.
        (np.array([[1.0, 2.0], [2.0, 3.0]]), {"hidden": ()}, r"hidden must be a non-empty tuple .* got \(\)"),
    ],
    ids=["1d", "empty-column", "inf", "oracle", "unknown-observation", "K0", "L0", "non-binary", "no-hidden"],
)
def test_fit_rejects_bad_input_with_a_clear_message(
    X: np.ndarray, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        MissIWAEImputer(**{**TINY, **params}).fit(X)


def test_transform_rejects_wrong_number_of_columns(fitted: MissIWAEImputer) -> None:
    with pytest.raises(ValueError, match="X has 5 features, but MissIWAEImputer is expecting 6 features"):
        fitted.transform(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="X has 5 features"):
        fitted.sample(np.zeros((3, 5)))


def test_transform_and_sample_before_fit_raise_not_fitted() -> None:
    with pytest.raises(NotFittedError, match="not fitted yet"):
        MissIWAEImputer().transform(np.zeros((3, 2)))
    with pytest.raises(NotFittedError, match="not fitted yet"):
        MissIWAEImputer().sample(np.zeros((3, 2)))


def test_sample_rejects_nonpositive_imputation_count(fitted: MissIWAEImputer) -> None:
    with pytest.raises(ValueError, match="n_imputations must be an integer >= 1"):
        fitted.sample(np.zeros((3, 6)), n_imputations=0)


def test_bernoulli_imputes_probabilities_and_samples_bits() -> None:
    X = binary_table()
    holes = np.isnan(X)
    imputer = MissIWAEImputer(
        observation="bernoulli", latent_dim=2, hidden=(32,), epochs=20, num_samples=50, random_state=0
    ).fit(X)
    assert np.array_equal(imputer.mean_, np.zeros(8)) and np.array_equal(imputer.scale_, np.ones(8))
    out = imputer.transform(X)
    assert np.array_equal(out[~holes], X[~holes])
    assert ((out[holes] >= 0.0) & (out[holes] <= 1.0)).all()
    copies = imputer.sample(X, n_imputations=3)
    assert np.isin(copies[:, holes], (0.0, 1.0)).all()
    assert all(np.array_equal(copy[~holes], X[~holes]) for copy in copies)


@pytest.mark.parametrize("imputation", ["zero", "learned"])
def test_student_t_observation_imputes_finite_values(
    table: tuple[np.ndarray, np.ndarray, np.ndarray], imputation: str
) -> None:
    _, X_missing, holes = table
    imputer = MissIWAEImputer(
        observation="student_t", imputation=imputation, **{**TINY, "epochs": 10}, random_state=0
    )
    out = imputer.fit_transform(X_missing)
    assert np.isfinite(out).all() and np.array_equal(out[~holes], X_missing[~holes])
    copies = imputer.sample(X_missing, n_imputations=2)
    assert np.isfinite(copies).all() and np.array_equal(copies[1][~holes], X_missing[~holes])


def test_constant_column_is_kept_with_unit_scale() -> None:
    _, X_missing, holes = correlated_table(num_rows=100, num_features=3)
    X_missing[:, 2] = np.where(holes[:, 2], np.nan, 4.0)  # a column with std 0
    imputer = MissIWAEImputer(**TINY, random_state=0).fit(X_missing)
    assert imputer.scale_[2] == 1.0 and imputer.mean_[2] == 4.0
    assert np.isfinite(imputer.transform(X_missing)).all()


def mixed_table(seed: int = 0, num_rows: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """(complete X, X with 30% MCAR NaN): 4 continuous columns and 2 binary ones, all driven by
    one shared latent factor, so each type helps impute the other."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((num_rows, 1))
    continuous = z * np.array([1.0, -2.0, 0.5, 3.0]) + 0.2 * rng.standard_normal((num_rows, 4))
    continuous = continuous * 10.0 + 100.0
    binary = (z + 0.3 * rng.standard_normal((num_rows, 2)) > 0).astype(float)
    X = np.hstack([continuous[:, :2], binary[:, :1], continuous[:, 2:], binary[:, 1:]])
    return X, np.where(rng.random(X.shape) < 0.3, np.nan, X)


def test_auto_column_types_model_binary_columns_as_bernoulli_and_impute_probabilities() -> None:
    _, X_missing = mixed_table()
    holes = np.isnan(X_missing)
    imputer = MissIWAEImputer(**{**TINY, "epochs": 30}, random_state=0).fit(X_missing)
    expected = ["gaussian", "gaussian", "bernoulli", "gaussian", "gaussian", "bernoulli"]
    assert imputer.column_types_ == expected
    assert type(imputer.model_.likelihood).__name__ == "Mixed"
    binary = np.array([t == "bernoulli" for t in expected])
    # Binary columns are not standardised: the Bernoulli model needs them in {0, 1}.
    assert np.array_equal(imputer.mean_[binary], [0.0, 0.0])
    assert np.array_equal(imputer.scale_[binary], [1.0, 1.0])
    np.testing.assert_allclose(imputer.mean_[~binary], np.nanmean(X_missing, axis=0)[~binary])
    out = imputer.transform(X_missing)
    assert not np.isnan(out).any() and np.array_equal(out[~holes], X_missing[~holes])
    filled = out[:, binary][holes[:, binary]]
    assert ((filled > 0) & (filled < 1)).all()  # probabilities P(x_j = 1 | x_o)
    copies = imputer.sample(X_missing, n_imputations=2)
    assert np.isin(copies[:, :, binary], (0.0, 1.0)).all()
    assert all(np.array_equal(copy[~holes], X_missing[~holes]) for copy in copies)


def test_explicit_and_disabled_column_types_override_auto_detection() -> None:
    _, X_missing = mixed_table(num_rows=80)
    everything_gaussian = MissIWAEImputer(**TINY, column_types=None, random_state=0).fit(X_missing)
    assert everything_gaussian.column_types_ == ["gaussian"] * 6
    assert type(everything_gaussian.model_.likelihood).__name__ == "Gaussian"
    explicit = ["student_t", "gaussian", "bernoulli", "student_t", "gaussian", "gaussian"]
    imputer = MissIWAEImputer(**TINY, column_types=explicit, random_state=0).fit(X_missing)
    assert imputer.column_types_ == explicit
    with pytest.raises(ValueError, match="column_types names 2 columns, but X has 6 features"):
        MissIWAEImputer(**TINY, column_types=["gaussian", "bernoulli"]).fit(X_missing)
    with pytest.raises(ValueError, match="column 0 is modelled as bernoulli"):
        MissIWAEImputer(**TINY, column_types=["bernoulli"] * 6).fit(X_missing)
    with pytest.raises(ValueError, match="column_types must be 'auto', None or a list"):
        MissIWAEImputer(**TINY, column_types="mixed").fit(X_missing)


def test_round_trip_clone_and_pipeline_on_a_small_mixed_table() -> None:
    X, X_missing = mixed_table(num_rows=120)
    holes = np.isnan(X_missing)
    pipeline = Pipeline([("impute", MissIWAEImputer(**TINY, random_state=0)), ("model", Ridge())])
    y = X[:, 0]
    fitted = pipeline.fit(X_missing, y)
    completed = fitted.named_steps["impute"].transform(X_missing)
    assert not np.isnan(completed).any() and np.array_equal(completed[~holes], X_missing[~holes])
    assert np.isfinite(fitted.predict(X_missing)).all()
    refit = clone(pipeline).fit(X_missing, y)  # a clone refits to the very same numbers
    np.testing.assert_array_equal(refit.predict(X_missing), fitted.predict(X_missing))


# ------------------------------------------------------------------ DataFrames (issue 18)


@pytest.mark.parametrize(
    "check",
    [
        check_set_output_transform,
        check_set_output_transform_pandas,
        check_global_output_transform_pandas,
        check_dataframe_column_names_consistency,
    ],
    ids=_check_name,
)
# The pandas checks transform arrays with an imputer fitted on DataFrames and back, on purpose:
# scikit-learn warns there for its own SimpleImputer too.
@pytest.mark.filterwarnings("ignore:X (does not have valid|has) feature names:UserWarning")
def test_follows_sklearn_set_output_and_feature_name_checks(check: Any) -> None:
    # scikit-learn's own checks for set_output and feature names, which
    # estimator_checks_generator does not yield (scikit-learn 1.9).
    check(MissIWAEImputer.__name__, MissIWAEImputer(**TINY, random_state=0))


def labelled_frame(num_rows: int = 60) -> pd.DataFrame:
    """A DataFrame with NaN holes, columns a..d and an index that is not 0..N-1."""
    _, X_missing, _ = correlated_table(num_rows=num_rows, num_features=4)
    return pd.DataFrame(X_missing, columns=list("abcd"), index=np.arange(1000, 1000 + num_rows))


def test_dataframe_column_names_are_recorded_and_must_come_back_in_order() -> None:
    frame = labelled_frame()
    imputer = MissIWAEImputer(**TINY, random_state=0).fit(frame)
    assert list(imputer.feature_names_in_) == list("abcd") and imputer.n_features_in_ == 4
    assert list(imputer.get_feature_names_out()) == list("abcd")
    reordered = frame[list("dcba")]  # same columns, other order: imputations would be wrong
    for method in (imputer.transform, imputer.sample):
        with pytest.raises(ValueError, match="Feature names must be in the same order as they were in fit"):
            method(reordered)
    with pytest.raises(ValueError, match="Feature names unseen at fit time"):
        imputer.transform(frame.rename(columns={"d": "e"}))


def test_pandas_output_keeps_index_names_dtypes_and_rounds_imputed_integers() -> None:
    rng = np.random.default_rng(0)
    frame = labelled_frame()
    holes = rng.random(len(frame)) < 0.3
    counts = rng.integers(0, 40, len(frame))
    frame["count"] = pd.array(
        [None if hole else int(v) for hole, v in zip(holes, counts, strict=True)], "Int64"
    )
    frame["small"] = frame["a"].astype("float32")
    frame["flag"] = pd.array(
        [None if hole else bool(v % 2) for hole, v in zip(holes[::-1], counts, strict=True)], "boolean"
    )
    frame["year"] = np.arange(len(frame), dtype=np.int64) + 1990  # no holes: int64 can hold no NaN
    frame["seen"] = counts > 20
    imputer = MissIWAEImputer(**TINY, random_state=0).set_output(transform="pandas").fit(frame)
    out = imputer.transform(frame)
    assert isinstance(out, pd.DataFrame)
    pd.testing.assert_index_equal(out.index, frame.index)
    assert list(out.columns) == list(frame.columns)
    pd.testing.assert_series_equal(out.dtypes, frame.dtypes)
    assert not out.isna().any().any()
    for name in frame.columns:  # observed cells: the very values, as Python objects
        observed = frame[name].notna().to_numpy()
        assert out[name][observed].tolist() == frame[name][observed].tolist(), name
    assert type(out["year"].iloc[0]) is type(frame["year"].iloc[0])  # 1990 stays an integer
    # The same model's float output, rounded, is what an integer column gets.
    floats = imputer.set_output(transform="default").transform(frame)
    count_holes = frame["count"].isna().to_numpy()
    column = list(frame.columns).index("count")
    assert out["count"][count_holes].tolist() == np.rint(floats[count_holes, column]).astype(int).tolist()
    flag_holes = frame["flag"].isna().to_numpy()
    flag = list(frame.columns).index("flag")
    assert out["flag"][flag_holes].tolist() == (floats[flag_holes, flag] >= 0.5).tolist()


def test_integers_beyond_2_to_the_53_come_back_exact_or_are_refused_by_name() -> None:
    frame = labelled_frame()
    ids = np.arange(len(frame), dtype=np.int64) + 2**53 + 1  # odd: float64 rounds each of them
    frame["id"] = ids
    imputer = MissIWAEImputer(**TINY, random_state=0).fit(frame)
    with pytest.raises(
        ValueError, match="column 'id' of X holds the integer 9007199254740993, which a float64"
    ):
        imputer.transform(frame)
    with pytest.raises(ValueError, match="column 'id' of X holds the integer 9007199254740993"):
        imputer.sample(frame, 2)
    out = imputer.set_output(transform="pandas").transform(frame)
    assert out["id"].dtype == np.int64 and out["id"].tolist() == ids.tolist()
    # An integer array cannot keep its dtype: the float64 result is refused rather than changed.
    table = np.column_stack([ids, np.where(np.isnan(frame["a"]), 0, 1)])
    array_imputer = MissIWAEImputer(**TINY, random_state=0).fit(table)
    with pytest.raises(ValueError, match="column 0 of X holds the integer 9007199254740993"):
        array_imputer.transform(table)


@pytest.mark.parametrize(
    ("column", "error", "message"),
    [
        (["x", "y", None] * 20, ValueError, "column '{name}' of X: could not convert string to float: 'x'"),
        ([1.0, np.inf, np.nan] * 20, ValueError, "column '{name}' of X: Input X contains infinity"),
        (pd.to_datetime(["2020-01-01"] * 60), TypeError, r"column '{name}' of X holds dates or durations"),
    ],
    ids=["strings", "inf", "dates"],
)
def test_a_column_numpy_cannot_read_is_named_in_the_error(
    column: Any, error: type[Exception], message: str
) -> None:
    frame = labelled_frame()
    frame.insert(1, "bad", column)
    # column_types=None: every column numbers ("auto" would take the strings as a categorical)
    with pytest.raises(error, match=message.format(name="bad")):
        MissIWAEImputer(**TINY, column_types=None).fit(frame)
    fitted = MissIWAEImputer(**TINY, random_state=0).fit(frame.drop(columns="bad"))
    with pytest.raises(error, match=message.format(name="b")):  # at transform as well
        fitted.transform(frame.drop(columns="b").rename(columns={"bad": "b"})[list("abcd")])


def test_column_checks_name_dataframe_columns() -> None:
    frame = labelled_frame()
    frame["b"] = np.nan
    with pytest.raises(ValueError, match=r"column\(s\) \['b'\] of X have no observed value"):
        MissIWAEImputer(**TINY).fit(frame)
    with pytest.raises(ValueError, match="column 'a' is modelled as bernoulli"):
        MissIWAEImputer(**TINY, observation="bernoulli", column_types=None).fit(labelled_frame())
    huge = labelled_frame()
    huge["c"] *= 1e60  # in range for standardisation, not for float32 unstandardised
    with pytest.raises(
        ValueError, match=r"column\(s\) \['c'\] of X hold values too large for the model's float32"
    ):
        MissIWAEImputer(**TINY, standardize=False).fit(huge)


def test_pandas_output_gives_numbers_held_as_text_back_as_float64() -> None:
    frame = labelled_frame()
    frame["text"] = pd.Series(["1.5", None, "2"] * 20, index=frame.index, dtype=object)
    out = MissIWAEImputer(**TINY, random_state=0).set_output(transform="pandas").fit_transform(frame)
    assert out["text"].dtype == np.float64 and out["text"].notna().all()
    assert out["text"].iloc[[0, 2]].tolist() == [1.5, 2.0]
