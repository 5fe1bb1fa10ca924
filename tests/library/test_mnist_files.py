"""Tests for missiwae.mnist_files on the real MNIST files (and small corrupt copies).

The data root is ``$MISSIWAE_DATA_DIR`` or ``<repo>/../shared/data`` (the ``data_root``
fixture of tests/conftest.py). The tests never skip when it is missing: CI always has the
data, so absence is a setup error.
"""

from __future__ import annotations

import gzip
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from missiwae import mnist_files as M

# Canonical MNIST label counts (digits 0..9).
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
# From /work/shared/data/README.md.
BINARIZED_COUNTS = {
    "train": [4946, 5642, 4924, 5091, 4865, 4515, 4929, 5219, 4888, 4981],
    "valid": [977, 1100, 1034, 1040, 977, 906, 989, 1046, 963, 968],
    "test": MNIST_TEST_COUNTS,
}
BINARIZED_ROWS = {"train": 50_000, "valid": 10_000, "test": 10_000}
BINARIZED_MEANS = {"train": 0.1306, "valid": 0.1311, "test": 0.1325}


@pytest.fixture(scope="module")
def root(data_root: Path) -> Path:
    return data_root


def _write_gz(path: Path, payload: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload))
    return path


def _amat_text(rows: np.ndarray) -> str:
    return "".join(" ".join(str(int(v)) for v in row) + "\n" for row in rows)


def _write_binarized(
    tmp: Path, split: str, amat_text: str, label_rows: list[tuple[int, int, int]]
) -> tuple[Path, Path]:
    """Write a tiny binarized_mnist/<split> pair under ``tmp`` (a fake data root)."""
    folder = tmp / "binarized_mnist"
    amat = _write_gz(folder / f"binarized_mnist_{split}.amat.gz", amat_text.encode("ascii"))
    lines = ["# header"] + [f"{i} {lab} {c}" for i, lab, c in label_rows]
    labels = _write_gz(
        folder / f"binarized_mnist_{split}_mnist_index_labels.txt.gz",
        ("\n".join(lines) + "\n").encode("ascii"),
    )
    return amat, labels


def _small_rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, size=(n, M.NUM_PIXELS))


# ------------------------------------------------------------------- data root


def test_resolve_data_dir_prefers_argument_then_env_then_home_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(M.DATA_DIR_ENV, str(tmp_path / "from_env"))
    assert M.resolve_data_dir(tmp_path / "arg") == (tmp_path / "arg").resolve()
    assert M.resolve_data_dir() == (tmp_path / "from_env").resolve()
    monkeypatch.delenv(M.DATA_DIR_ENV)
    expected = (Path.home() / ".cache" / "missiwae" / "data").resolve()
    assert M.resolve_data_dir() == expected


# ------------------------------------------------------------------------ MNIST


def test_idx_files_give_canonical_mnist_sizes_label_counts_and_pixel_range(
    root: Path,
) -> None:
    for split, n, counts in (
        ("train", 60_000, MNIST_TRAIN_COUNTS),
        ("test", 10_000, MNIST_TEST_COUNTS),
    ):
        images, labels = M.load_mnist(split, root)  # type: ignore[arg-type]
        assert images.shape == (n, 784) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.int64
        assert np.bincount(labels, minlength=10).tolist() == counts
        assert int(images.min()) == 0 and int(images.max()) == 255


def test_read_idx_returns_header_shape(root: Path) -> None:
    assert M.read_idx(root / "mnist" / "t10k-images-idx3-ubyte.gz").shape == (
        10_000,
        28,
        28,
    )
    assert M.read_idx(root / "mnist" / "t10k-labels-idx1-ubyte.gz").shape == (10_000,)


def test_loaded_arrays_are_cached_and_read_only(root: Path) -> None:
    images, labels = M.load_mnist("test", root)
    again, _ = M.load_mnist("test", root)
    assert again is images  # served from the in-process cache
    x, y = M.load_binarized_mnist("test", root)
    for arr in (images, labels, x, y):
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = 1


def test_missing_mnist_without_download_mentions_env_var_and_download(
    tmp_path: Path,
) -> None:
    with pytest.raises(M.DataError, match=M.DATA_DIR_ENV) as err:
        M.load_mnist("train", tmp_path / "does_not_exist")
    assert "download=True" in str(err.value)
    assert "train-images-idx3-ubyte" in str(err.value)


def test_download_fallback_uses_torchvision_under_data_root(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[tuple[str, bool, bool]] = []

    class FakeMNIST:  # stands in for torchvision.datasets.MNIST (no network in tests)
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append((root, train, download))
            n = 7 if train else 3
            self.data = torch.full((n, 28, 28), 200, dtype=torch.uint8)
            self.targets = torch.arange(n) % 10

    datasets = types.ModuleType("torchvision.datasets")
    datasets.MNIST = FakeMNIST  # type: ignore[attr-defined]
    tv = types.ModuleType("torchvision")
    tv.datasets = datasets  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)

    images, labels = M.load_mnist("test", tmp_path, download=True)
    assert calls == [(str(tmp_path.resolve() / "torchvision"), False, True)]
    assert images.shape == (3, 784) and images.dtype == np.uint8
    assert labels.tolist() == [0, 1, 2] and labels.dtype == np.int64


# ---------------------------------------------------------- Larochelle binarized


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_binarized_split_has_readme_rows_label_counts_and_mean(root: Path, split: str) -> None:
    x, labels = M.load_binarized_mnist(split, root)  # type: ignore[arg-type]
    assert x.shape == (BINARIZED_ROWS[split], 784) and x.dtype == np.float32
    assert labels.shape == (BINARIZED_ROWS[split],) and labels.dtype == np.int64
    assert np.all((x == 0) | (x == 1)) and x.max() == 1
    assert np.bincount(labels, minlength=10).tolist() == BINARIZED_COUNTS[split]
    assert float(x.mean()) == pytest.approx(BINARIZED_MEANS[split], abs=5e-5)


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_label_file_row_order_matches_amat_rows(root: Path, split: str) -> None:
    """Ones fall only where the matched MNIST gray image is > 0, and the label file's
    label is the MNIST label: proves the label file is read in .amat row order."""
    x, labels = M.load_binarized_mnist(split, root)  # type: ignore[arg-type]
    meta = M.read_binarized_label_file(
        root / "binarized_mnist" / f"binarized_mnist_{split}_mnist_index_labels.txt.gz"
    )
    gray, mnist_labels = M.load_mnist("test" if split == "test" else "train", root)
    rows = np.random.default_rng(1).choice(len(x), size=300, replace=False)
    matched = gray[meta.mnist_index[rows]]
    assert not np.any((x[rows] == 1) & (matched == 0))
    np.testing.assert_array_equal(labels[rows], mnist_labels[meta.mnist_index[rows]])
    np.testing.assert_array_equal(labels, meta.label)
    # The README's warning holds: in MNIST order the same rows do NOT line up.
    offset = 50_000 if split == "valid" else 0
    in_order = gray[rows + offset]
    assert np.count_nonzero((x[rows] == 1) & (in_order == 0)) > 300


def test_binarized_test_split_is_t10k_in_stable_label_sorted_order(root: Path) -> None:
    meta = M.read_binarized_label_file(
        root / "binarized_mnist" / "binarized_mnist_test_mnist_index_labels.txt.gz"
    )
    _, t10k_labels = M.load_mnist("test", root)
    expected = np.argsort(t10k_labels, kind="stable")
    np.testing.assert_array_equal(meta.mnist_index, expected)


def test_binarized_train_and_valid_partition_mnist_train(root: Path) -> None:
    idx = [
        M.read_binarized_label_file(
            root / "binarized_mnist" / f"binarized_mnist_{s}_mnist_index_labels.txt.gz"
        ).mnist_index
        for s in ("train", "valid")
    ]
    np.testing.assert_array_equal(np.sort(np.concatenate(idx)), np.arange(60_000))


def test_read_amat_accepts_crlf_trailing_spaces_and_blank_lines(tmp_path: Path) -> None:
    rows = _small_rows(3)
    text = "".join(" ".join(map(str, r)) + " \r\n" for r in rows) + "\n\n"
    path = tmp_path / "ok.amat"
    path.write_text(text)
    out = M.read_amat(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, rows)


def test_values_per_line_are_counted_the_same_across_block_boundaries() -> None:
    rng = np.random.default_rng(0)
    lines = [" ".join("01"[b] for b in rng.integers(0, 2, rng.integers(0, 9))) + "\n" for _ in range(11)]
    buf = np.frombuffer("".join(lines).encode(), dtype=np.uint8)
    starts = np.concatenate(([0], np.flatnonzero(buf == ord("\n"))[:-1] + 1))
    expected = [len(line.split()) for line in lines]
    for block in (1, 2, 3, 4096):  # lines per block
        counts = M._count_per_line((buf & 0xFE) == ord("0"), starts, lines_per_block=block)
        assert counts.tolist() == expected, block


# ------------------------------------------------------------ corrupt inputs


def test_truncated_gzip_raises_data_error_naming_file(root: Path, tmp_path: Path) -> None:
    raw = (root / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()
    bad = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    bad.parent.mkdir()
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(M.DataError, match=r"t10k-labels-idx1-ubyte\.gz.*truncated"):
        M.read_idx(bad)


def test_non_gzip_data_in_gz_file_raises_data_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.amat.gz"
    bad.write_bytes(b"0 1 0 1\n")
    with pytest.raises(M.DataError, match=r"x\.amat\.gz.*gzip"):
        M.read_amat(bad)


def test_idx_with_wrong_magic_number_raises_data_error(tmp_path: Path) -> None:
    header = (0x00000802).to_bytes(4, "big") + (2).to_bytes(4, "big")
    bad = _write_gz(tmp_path / "labels.gz", header + bytes(2 * 4))
    with pytest.raises(M.DataError, match=r"labels\.gz.*magic number 0x00000802"):
        M.read_idx(bad)


def test_idx_with_wrong_byte_count_raises_data_error(tmp_path: Path) -> None:
    header = (0x00000801).to_bytes(4, "big") + (5).to_bytes(4, "big")
    bad = _write_gz(tmp_path / "labels.gz", header + bytes(4))
    with pytest.raises(M.DataError, match=r"labels\.gz.*shape \(5,\)"):
        M.read_idx(bad)


def test_idx_images_with_wrong_dimensions_raise_data_error(tmp_path: Path) -> None:
    dims = b"".join(d.to_bytes(4, "big") for d in (2, 27, 28))
    _write_gz(
        tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz",
        (0x00000803).to_bytes(4, "big") + dims + bytes(2 * 27 * 28),
    )
    _write_gz(
        tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz",
        (0x00000801).to_bytes(4, "big") + (2).to_bytes(4, "big") + bytes(2),
    )
    with pytest.raises(M.DataError, match=r"t10k-images.*\(N, 28, 28\)"):
        M.load_mnist("test", tmp_path)


def test_amat_with_a_two_raises_data_error_naming_file(tmp_path: Path) -> None:
    rows = _small_rows(3)
    rows[1, 5] = 2
    _write_binarized(tmp_path, "test", _amat_text(rows), [(0, 0, 1), (1, 1, 1), (2, 2, 1)])
    with pytest.raises(M.DataError, match=r"binarized_mnist_test\.amat\.gz.*'2'.*line 2"):
        M.load_binarized_mnist("test", tmp_path)


def test_amat_with_a_short_line_raises_data_error(tmp_path: Path) -> None:
    rows = _small_rows(2)
    text = _amat_text(rows[:1]) + " ".join(map(str, rows[1, :-1])) + "\n"
    text += " ".join(map(str, rows[1, -1:])) + "\n"  # value count still 2 * 784
    path = tmp_path / "short.amat"
    path.write_text(text)
    with pytest.raises(M.DataError, match=r"short\.amat.*line 2 has 783 values"):
        M.read_amat(path)


def test_amat_with_merged_values_raises_data_error(tmp_path: Path) -> None:
    path = tmp_path / "merged.amat"
    path.write_text("01 " + " ".join(["0"] * 782) + "\n")
    with pytest.raises(M.DataError, match=r"merged\.amat.*multi-character"):
        M.read_amat(path)


def test_label_file_with_wrong_row_count_raises_data_error_naming_it(
    tmp_path: Path,
) -> None:
    _write_binarized(tmp_path, "valid", _amat_text(_small_rows(3)), [(0, 0, 1), (1, 1, 1)])
    with pytest.raises(
        M.DataError,
        match=r"binarized_mnist_valid_mnist_index_labels\.txt\.gz: 2 label rows.* 3 rows",
    ):
        M.load_binarized_mnist("valid", tmp_path)


def test_label_file_with_bad_fields_raises_data_error(tmp_path: Path) -> None:
    _, labels = _write_binarized(tmp_path, "test", _amat_text(_small_rows(2)), [(0, 0, 1), (1, 12, 1)])
    with pytest.raises(M.DataError, match=r"labels must lie in 0\.\.9"):
        M.read_binarized_label_file(labels)
    labels.write_bytes(gzip.compress(b"# h\n0 1\n"))
    with pytest.raises(M.DataError, match="row 0 has 2 fields"):
        M.read_binarized_label_file(labels)


def test_missing_binarized_directory_mentions_env_var(tmp_path: Path) -> None:
    with pytest.raises(M.DataError, match=M.DATA_DIR_ENV) as err:
        M.load_binarized_mnist("train", tmp_path / "nowhere")
    assert "binarized_mnist_train.amat.gz" in str(err.value)


def test_bad_split_name_raises_value_error(root: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        M.load_binarized_mnist("validation", root)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="split"):
        M.load_mnist("valid", root)  # type: ignore[arg-type]
