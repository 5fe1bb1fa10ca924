"""Tests for missiwae.data (binarization, MCAR masks, IncompleteDataset) on the real MNIST files.

The data root is the ``data_root`` fixture of tests/conftest.py; the tests never skip when it
is missing: CI always has the data, so absence is a setup error.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from missiwae import data as D
from missiwae import mnist_files as M


@pytest.fixture(scope="module")
def root(data_root: Path) -> Path:
    return data_root


# --------------------------------------------------------- seeded binarization


def test_seeded_binarization_is_reproducible_differs_by_seed_and_has_gray_mean(
    root: Path,
) -> None:
    gray, _ = M.load_mnist("test", root)
    a, b, c = D.binarize(gray, 0), D.binarize(gray, 0), D.binarize(gray, 1)
    assert a.dtype == np.float32 and a.shape == gray.shape
    assert np.all((a == 0) | (a == 1))
    np.testing.assert_array_equal(a, b)
    assert np.count_nonzero(a != c) > 10_000
    assert float(a.mean()) == pytest.approx(float(gray.mean()) / 255.0, abs=1e-3)
    # Extreme gray levels are deterministic: 0 -> never on, 255 -> always on.
    assert not np.any(a[gray == 0]) and np.all(a[gray == 255] == 1)


def test_static_binarized_mnist_uses_larochelle_files_when_present(root: Path) -> None:
    x, labels = D.load_static_binarized_mnist("valid", root, seed=123)
    x_ref, labels_ref = M.load_binarized_mnist("valid", root)
    np.testing.assert_array_equal(x, x_ref)
    np.testing.assert_array_equal(labels, labels_ref)


def test_static_binarized_mnist_falls_back_to_seeded_mnist_split(root: Path, tmp_path: Path) -> None:
    (tmp_path / "mnist").symlink_to(root / "mnist")  # MNIST only, no binarized_mnist/
    gray_train, labels_train = M.load_mnist("train", root)
    _, labels_test = M.load_mnist("test", root)
    x_valid, y_valid = D.load_static_binarized_mnist("valid", tmp_path, seed=5)
    x_train, y_train = D.load_static_binarized_mnist("train", tmp_path, seed=5)
    x_test, y_test = D.load_static_binarized_mnist("test", tmp_path, seed=5)
    assert (x_train.shape, x_valid.shape, x_test.shape) == (
        (50_000, 784),
        (10_000, 784),
        (10_000, 784),
    )
    np.testing.assert_array_equal(y_train, labels_train[:50_000])
    np.testing.assert_array_equal(y_valid, labels_train[50_000:])
    np.testing.assert_array_equal(y_test, labels_test)
    # train/valid are one draw over all of MNIST train: binarize(train, seed) sliced.
    np.testing.assert_array_equal(x_valid, D.binarize(gray_train, 5)[50_000:])
    assert not np.any((x_valid == 1) & (gray_train[50_000:] == 0))
    assert x_test.dtype == np.float32 and not x_test.flags.writeable
    x_valid_other, _ = D.load_static_binarized_mnist("valid", tmp_path, seed=6)
    assert np.count_nonzero(x_valid != x_valid_other) > 10_000


# ---------------------------------------------------------------------- MCAR


def test_mcar_mask_is_bool_with_observed_fraction_near_one_minus_rate() -> None:
    shape, rate = (1000, 784), 0.3
    mask = D.mcar_mask(shape, rate, seed=0)
    assert mask.dtype == torch.bool and tuple(mask.shape) == shape
    n = mask.numel()
    se = (rate * (1 - rate) / n) ** 0.5
    assert abs(mask.float().mean().item() - (1 - rate)) < 4 * se


def test_mcar_mask_same_seed_same_mask_different_seed_different_mask() -> None:
    a = D.mcar_mask((50, 784), 0.5, seed=3)
    assert torch.equal(a, D.mcar_mask((50, 784), 0.5, seed=3))
    assert not torch.equal(a, D.mcar_mask((50, 784), 0.5, seed=4))


def test_mcar_mask_extreme_rates_and_bad_rates() -> None:
    assert D.mcar_mask((20, 30), 0.0, seed=0).all()
    assert not D.mcar_mask((20, 30), 1.0, seed=0).any()
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="missing_rate"):
            D.mcar_mask((2, 2), bad, seed=0)


# -------------------------------------------------------------- IncompleteDataset


def _tiny_dataset() -> D.IncompleteDataset:
    x = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    mask = torch.tensor([[True, False, True, True], [False, False, True, True], [True, True, True, False]])
    return D.IncompleteDataset(x=x, mask=mask, labels=torch.tensor([0, 1, 2]))


def test_incomplete_dataset_x_observed_is_nan_exactly_where_mask_is_false() -> None:
    ds = _tiny_dataset()
    obs = ds.x_observed
    assert torch.equal(torch.isnan(obs), ~ds.mask)
    assert torch.equal(obs[ds.mask], ds.x[ds.mask])
    assert not torch.isnan(ds.x).any()  # the truth is kept


def test_incomplete_dataset_rejects_non_bool_mask_and_mismatched_shapes() -> None:
    ds = _tiny_dataset()
    with pytest.raises(ValueError, match="mask must be a bool"):
        D.IncompleteDataset(x=ds.x, mask=ds.mask.float(), labels=ds.labels)
    with pytest.raises(ValueError, match="mask shape"):
        D.IncompleteDataset(x=ds.x, mask=ds.mask[:, :3], labels=ds.labels)
    with pytest.raises(ValueError, match="labels must be an int64"):
        D.IncompleteDataset(x=ds.x, mask=ds.mask, labels=ds.labels[:2])
    with pytest.raises(ValueError, match="float32"):
        D.IncompleteDataset(x=ds.x.double(), mask=ds.mask, labels=ds.labels)
    with pytest.raises(ValueError, match="true values"):
        D.IncompleteDataset(x=ds.x_observed, mask=ds.mask, labels=ds.labels)
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        D.IncompleteDataset(x=ds.x.numpy(), mask=ds.mask, labels=ds.labels)  # type: ignore[arg-type]


def test_incomplete_dataset_len_and_subset() -> None:
    ds = _tiny_dataset()
    assert len(ds) == 3
    sub = ds.subset([2, 0])
    assert len(sub) == 2 and sub.labels.tolist() == [2, 0]
    assert torch.equal(sub.mask[0], ds.mask[2])
    assert len(ds.subset(slice(1, None))) == 2
    assert len(ds.subset(1)) == 1
    assert ds.subset(np.array([True, False, True])).labels.tolist() == [0, 2]
    assert ds.source_rows is None and sub.source_rows is None


def test_incomplete_dataset_source_rows_follow_subset_and_are_checked() -> None:
    ds = _tiny_dataset()
    traced = D.IncompleteDataset(ds.x, ds.mask, ds.labels, source_rows=torch.tensor([70, 10, 40]))
    assert traced.subset([2, 0]).source_rows.tolist() == [40, 70]  # type: ignore[union-attr]
    assert traced.to("cpu").source_rows.tolist() == [70, 10, 40]  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="source_rows must be an int64"):
        D.IncompleteDataset(ds.x, ds.mask, ds.labels, source_rows=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="source_rows must be an int64"):
        D.IncompleteDataset(ds.x, ds.mask, ds.labels, source_rows=torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        D.IncompleteDataset(ds.x, ds.mask, ds.labels, source_rows=np.arange(3))  # type: ignore[arg-type]


def test_load_incomplete_mnist_keeps_truth_and_gives_splits_distinct_masks(
    root: Path,
) -> None:
    test = D.load_incomplete_mnist("test", missing_rate=0.5, seed=0, data_dir=root)
    valid = D.load_incomplete_mnist("valid", missing_rate=0.5, seed=0, data_dir=root)
    x_ref, labels_ref = M.load_binarized_mnist("test", root)
    assert test.x.shape == (10_000, 784) and test.x.dtype == torch.float32
    np.testing.assert_array_equal(test.x.numpy(), x_ref)
    np.testing.assert_array_equal(test.labels.numpy(), labels_ref)
    assert abs(test.mask.float().mean().item() - 0.5) < 0.005
    assert not torch.equal(test.mask, valid.mask)
    # Deterministic, and a smaller num_rows is an exact subset of the full split (rows and
    # mask), drawn at random: the test split is label-sorted, so a prefix would be all zeros.
    small = D.load_incomplete_mnist("test", 0.5, seed=0, num_rows=100, data_dir=root)
    assert len(small) == 100
    rows = torch.from_numpy(np.random.Generator(np.random.PCG64(D.SUBSET_SEED)).permutation(10_000)[:100])
    assert torch.equal(small.mask, test.mask[rows])
    assert torch.equal(small.x, test.x[rows])
    # ... and says which rows of the file it took, in its own order.
    assert torch.equal(small.source_rows, rows)  # type: ignore[arg-type]
    assert torch.equal(test.source_rows, torch.arange(10_000))  # type: ignore[arg-type]
    np.testing.assert_array_equal(small.x.numpy(), x_ref[small.source_rows.numpy()])  # type: ignore[union-attr]
    assert torch.equal(small.subset([3, 1]).source_rows, rows[[3, 1]])  # type: ignore[arg-type]
    assert len(small.labels.unique()) == 10
    larger = D.load_incomplete_mnist("test", 0.5, seed=0, num_rows=300, data_dir=root)
    assert torch.equal(larger.x[:100], small.x)
    other_seed = D.load_incomplete_mnist("test", 0.5, seed=1, num_rows=100, data_dir=root)
    assert not torch.equal(other_seed.mask, small.mask)
    # Callers own their tensors: writing to them must not touch the cache.
    small.x[0] = 7.0
    assert float(M.load_binarized_mnist("test", root)[0][0].max()) <= 1.0
    with pytest.raises(ValueError, match="num_rows"):
        D.load_incomplete_mnist("test", num_rows=10_001, data_dir=root)


def test_data_modules_import_no_ray_mlflow_pyarrow_or_torchvision() -> None:
    code = (
        "import sys\n"
        "import missiwae.data, missiwae.mnist_files\n"
        "bad = [m for m in ('ray', 'mlflow', 'pyarrow', 'torchvision') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
