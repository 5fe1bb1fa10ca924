"""missForest baseline: accuracy, stopping rule, determinism across workers, input checks.

Kept small (two busy cores): forests of 10-30 trees, a few hundred rows. The real-MNIST test
uses the central 14x14 crop (196 pixels) because a sweep over all 784 per-pixel forests costs
~8 s on 300 rows here and the test needs two sweeps.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from missiwae.data import load_incomplete_mnist
from missiwae.missforest import MissForest


def _rank2_table(seed: int = 0, n: int = 300, d: int = 6, rate: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Correlated continuous data (rank-2 signal + noise) and an MCAR mask (True = observed)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2)) @ rng.normal(size=(2, d)) + 0.3 * rng.normal(size=(n, d))
    observed = rng.random((n, d)) >= rate
    observed[:, 0] = True  # one complete column: a predictor only, never refitted
    return x, observed


def _mixed_table(seed: int = 1, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Two continuous and three binary columns driven by one latent factor, 25 % MCAR."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    cont = np.stack([z + 0.3 * rng.normal(size=n), -z + 0.3 * rng.normal(size=n)], axis=1)
    binary = (z[:, None] + 0.5 * rng.normal(size=(n, 3)) > 0).astype(np.float64)
    x = np.concatenate([cont, binary], axis=1)
    observed = rng.random(x.shape) >= 0.25
    return x, observed


def _holes(x: np.ndarray, observed: np.ndarray) -> np.ndarray:
    return np.where(observed, x, np.nan)


@pytest.fixture(scope="module")
def continuous_fit() -> tuple[np.ndarray, np.ndarray, np.ndarray, MissForest]:
    x, observed = _rank2_table()
    mf = MissForest(n_estimators=30, max_iter=10, random_state=0)
    out = mf.fit_transform(_holes(x, observed))
    return x, observed, out, mf


# ------------------------------------------------------------------------- accuracy


def test_continuous_beats_mean_imputation(continuous_fit: tuple) -> None:
    x, observed, out, mf = continuous_fit
    xo = _holes(x, observed)
    assert out.shape == x.shape and out.dtype == np.float64
    assert not np.isnan(out).any()
    assert np.array_equal(out[observed], xo[observed])  # observed entries untouched
    mean_imp = np.where(observed, x, np.nanmean(xo, axis=0))
    mse = ((out - x)[~observed] ** 2).mean()
    mse_mean = ((mean_imp - x)[~observed] ** 2).mean()
    assert mse < 0.7 * mse_mean, (mse, mse_mean)
    # Columns sorted by increasing missingness; the complete column 0 is never a target.
    n_missing = (~observed).sum(axis=0)
    assert 0 not in mf.feature_order_
    assert np.all(np.diff(n_missing[mf.feature_order_]) >= 0)
    assert not mf.categorical_.any()
    assert all(r.delta_categorical is None and r.seconds > 0 for r in mf.history_)
    assert all(r.n_forests == 5 for r in mf.history_)


def test_float32_input_keeps_dtype_and_observed_bits() -> None:
    x, observed = _rank2_table(seed=3, n=80, d=4)
    xo = _holes(x, observed).astype(np.float32)
    out = MissForest(n_estimators=5, max_iter=2, random_state=0).fit_transform(xo)
    assert out.dtype == np.float32
    assert np.array_equal(out[observed].view(np.uint32), xo[observed].view(np.uint32))
    assert not np.isnan(out).any()


def test_mixed_types_binary_columns_get_observed_classes() -> None:
    x, observed = _mixed_table()
    mf = MissForest(n_estimators=20, max_iter=4, random_state=0)
    out = mf.fit_transform(_holes(x, observed))
    assert mf.categorical_.tolist() == [False, False, True, True, True]
    assert np.isin(out[:, 2:], (0.0, 1.0)).all()
    assert not np.isin(out[:, :2][~observed[:, :2]], (0.0, 1.0)).all()
    assert np.array_equal(out[observed], x[observed])
    assert all(r.delta_continuous is not None and r.delta_categorical is not None for r in mf.history_)
    # Forcing every column continuous: binary holes get regression values, no longer only 0/1.
    forced = MissForest(n_estimators=20, max_iter=2, feature_types="continuous", random_state=0)
    out_c = forced.fit_transform(_holes(x, observed))
    assert not forced.categorical_.any()
    assert not np.isin(out_c[:, 2:][~observed[:, 2:]], (0.0, 1.0)).all()


def test_per_column_types_make_an_integer_coded_column_categorical() -> None:
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 3, 200).astype(float)  # three levels, coded 0, 1, 2
    x = np.column_stack([codes + 0.1 * rng.standard_normal(200), codes])
    holed = x.copy()
    holed[rng.random(200) < 0.3, 1] = np.nan
    mf = MissForest(n_estimators=20, max_iter=3, feature_types=["continuous", "categorical"], random_state=0)
    out = mf.fit_transform(holed)
    assert mf.categorical_.tolist() == [False, True]
    assert np.isin(out[:, 1], (0.0, 1.0, 2.0)).all()  # a level, never a regression value
    with pytest.raises(ValueError, match="feature_types must name 'continuous' or 'categorical' for each"):
        MissForest(feature_types=["continuous"]).fit_transform(holed)


def test_binarized_mnist_crop_beats_thresholded_mean(data_root: Path) -> None:
    ds = load_incomplete_mnist("test", missing_rate=0.5, seed=0, num_rows=300, data_dir=data_root)
    side = np.arange(7, 21)
    crop = (side[:, None] * 28 + side[None, :]).ravel()  # central 14x14: 196 pixels
    x = ds.x.numpy()[:, crop].astype(np.float64)
    observed = ds.mask.numpy()[:, crop]
    xo = _holes(x, observed)
    mf = MissForest(n_estimators=10, max_iter=2, max_samples=0.8, random_state=0)
    out = mf.fit_transform(xo)
    assert mf.categorical_.all()
    assert np.isin(out, (0.0, 1.0)).all()
    assert np.array_equal(out[observed], x[observed])
    missing = ~observed
    acc = (out[missing] == x[missing]).mean()
    mean_acc = ((np.nanmean(xo, axis=0) > 0.5)[None, :].repeat(len(x), 0) == (x > 0.5))[missing].mean()
    # Measured: about 0.75 against 0.63.
    assert acc > mean_acc + 0.05, (acc, mean_acc)


# -------------------------------------------------------------------- stopping rule


def test_stops_when_difference_increases_and_returns_previous(continuous_fit: tuple) -> None:
    x, observed, out, mf = continuous_fit
    deltas = [r.delta_continuous for r in mf.history_]
    assert len(deltas) == mf.n_iter_
    # This table stops before max_iter; the differences decrease until the last one.
    assert mf.stopped_early_ and mf.n_iter_ < mf.max_iter
    assert all(b < a for a, b in itertools.pairwise(deltas[:-1]))
    assert deltas[-1] >= deltas[-2]
    assert mf.returned_iteration_ == mf.n_iter_ - 1
    # Forests are seeded by (random_state, sweep, column), so stopping one sweep earlier
    # reproduces the matrix of sweep n_iter_ - 1 exactly: it must be what was returned.
    shorter = MissForest(n_estimators=30, max_iter=mf.n_iter_ - 1, random_state=0)
    again = shorter.fit_transform(_holes(x, observed))
    assert not shorter.stopped_early_ and shorter.returned_iteration_ == mf.n_iter_ - 1
    assert np.array_equal(again, out)
    # ... while the sweep that triggered the stop produced something else (discarded).
    longer = MissForest(n_estimators=30, max_iter=mf.n_iter_, random_state=0)
    longer.fit_transform(_holes(x, observed))
    assert [r.delta_continuous for r in longer.history_] == deltas


def test_max_iter_reached_returns_last_sweep() -> None:
    x, observed = _rank2_table(seed=4, n=100, d=4)
    mf = MissForest(n_estimators=5, max_iter=1, random_state=0)
    mf.fit_transform(_holes(x, observed))
    assert mf.n_iter_ == 1 and not mf.stopped_early_ and mf.returned_iteration_ == 1


def test_no_missing_entries_is_a_copy() -> None:
    x, _ = _rank2_table(seed=5, n=50, d=3)
    mf = MissForest(n_estimators=5, random_state=0)
    out = mf.fit_transform(x)
    assert np.array_equal(out, x) and out is not x
    assert mf.n_iter_ == 0 and mf.history_ == [] and mf.feature_order_.size == 0


def test_constant_column_needs_no_forest() -> None:
    x, observed = _rank2_table(seed=6, n=100, d=4)
    x[:, 3] = 2.5
    mf = MissForest(n_estimators=5, max_iter=2, random_state=0, max_samples=10_000)
    out = mf.fit_transform(_holes(x, observed))
    assert np.all(out[:, 3] == 2.5)
    assert all(r.n_forests == 2 for r in mf.history_)  # columns 1, 2 (0 complete, 3 constant)


# ---------------------------------------------------------------------- determinism


def test_parallel_workers_match_sequential() -> None:
    x, observed = _mixed_table(seed=2, n=120)
    xo = _holes(x, observed)
    params: dict[str, Any] = {"n_estimators": 10, "max_iter": 3, "max_samples": 0.7, "random_state": 7}
    ref = MissForest(n_jobs=1, **params).fit_transform(xo)
    loky = MissForest(n_jobs=2, **params).fit_transform(xo)  # process workers (loky)
    assert np.array_equal(ref, loky)
    # A backend handed in by a joblib context (how a pipeline passes Ray's "ray" backend).
    with joblib.parallel_config(backend="threading", n_jobs=2):
        ctx = MissForest(n_jobs=None, **params).fit_transform(xo)
    assert np.array_equal(ref, ctx)
    threads = MissForest(n_jobs=2, parallel_backend="threading", **params).fit_transform(xo)
    assert np.array_equal(ref, threads)
    other = MissForest(n_jobs=1, **{**params, "random_state": 8}).fit_transform(xo)
    assert not np.array_equal(ref, other)


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("X", "match"),
    [
        (np.array([[1.0, np.nan], [2.0, np.nan], [3.0, np.nan]]), "entirely missing"),
        (np.array([1.0, np.nan, 3.0]), "2-D"),
        (np.array([[1.0, np.inf], [2.0, np.nan]]), "infinite"),
        (np.array([[1.0, -np.inf], [2.0, np.nan]]), "infinite"),
        (np.array([["a", "b"]], dtype=object), "numeric"),
        (np.zeros((0, 3)), "at least one row"),
    ],
)
def test_bad_input_raises(X: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MissForest().fit_transform(X)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"max_iter": 0}, "max_iter"),
        ({"n_estimators": 0}, "n_estimators"),
        ({"max_samples": 1.5}, "max_samples"),
        ({"max_samples": 0}, "max_samples"),
        ({"feature_types": "ordinal"}, "feature_types"),
        ({"random_state": -1}, "random_state"),
    ],
)
def test_bad_params_raise(params: dict[str, Any], match: str) -> None:
    X = np.array([[1.0, np.nan], [2.0, 1.0], [3.0, 2.0]])
    with pytest.raises(ValueError, match=match):
        MissForest(**params).fit_transform(X)
