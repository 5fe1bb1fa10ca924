"""The missIWAE datasets: statically binarized MNIST with MCAR masks.

The files under the data root are read by `missiwae.mnist_files`; this module binarizes
(the Larochelle & Murray files when present, a seeded substitute otherwise), draws the
missing-completely-at-random masks and keeps the ground truth in :class:`IncompleteDataset`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch

from missiwae.mnist_files import (
    BINARIZED_SPLITS,
    NUM_PIXELS,
    BinarizedSplit,
    MnistSplit,
    binarized_files_present,
    check_split,
    load_binarized_mnist,
    load_mnist,
    read_only,
    resolve_data_dir,
)

__all__ = [
    "SUBSET_SEED",
    "IncompleteDataset",
    "binarize",
    "load_incomplete_mnist",
    "load_static_binarized_mnist",
    "mcar_mask",
]

# The fallback static binarization takes train/valid from the MNIST training set.
_NUM_TRAIN_FALLBACK = 50_000


# ------------------------------------------------------------ seeded binarization


def _bernoulli(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    gray = np.asarray(gray)
    if gray.size and (np.nanmin(gray) < 0 or np.nanmax(gray) > 255 or np.isnan(gray).any()):
        raise ValueError("gray values must lie in [0, 255]")
    # u < p with u ~ U[0, 1) gives P(1) = p exactly; p = 0 never fires, p = 1 always.
    u = rng.random(gray.shape, dtype=np.float32)
    return (u < gray.astype(np.float32) / np.float32(255.0)).astype(np.float32)


def binarize(gray: np.ndarray, seed: int) -> np.ndarray:
    """Seeded static binarization: ``x ~ Bernoulli(gray / 255)`` elementwise.

    Args:
        gray: gray levels in [0, 255], any shape (typically uint8 (N, 784)).
        seed: seed of ``numpy.random.Generator(PCG64(seed))``; same seed, same output.

    Returns:
        float32 array of 0/1 with the shape of ``gray``.
    """
    return _bernoulli(gray, np.random.Generator(np.random.PCG64(seed)))


@functools.lru_cache(maxsize=2)
def _fallback_binarized_mnist(root: Path, mnist_split: str, seed: int, download: bool) -> np.ndarray:
    """Seeded binarization of a whole MNIST split: float32 (N, 784), read-only."""
    gray, _ = load_mnist(cast(MnistSplit, mnist_split), root, download=download)
    if mnist_split == "train":
        # All 60000 at once, sliced later, so train and valid come from one draw
        # and do not depend on which split is requested first.
        return read_only(binarize(gray, seed))
    # A different stream than train: reusing PCG64(seed) would give the test
    # images the same uniforms as the first 10000 training images.
    return read_only(_bernoulli(gray, np.random.Generator(np.random.PCG64([seed, 1]))))


def _fallback_split(root: Path, split: str, seed: int, download: bool) -> tuple[np.ndarray, np.ndarray]:
    mnist_split = "test" if split == "test" else "train"
    x = _fallback_binarized_mnist(root, mnist_split, seed, download)
    _, labels = load_mnist(cast(MnistSplit, mnist_split), root, download=download)
    rows = {
        "train": slice(0, _NUM_TRAIN_FALLBACK),
        "valid": slice(_NUM_TRAIN_FALLBACK, None),
        "test": slice(None),
    }[split]
    # Slices of read-only arrays are read-only views: no copy, cache stays safe.
    return x[rows], labels[rows]


def load_static_binarized_mnist(
    split: BinarizedSplit,
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    download: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The default dataset: statically binarized MNIST.

    If the Larochelle & Murray files (``binarized_mnist/``) are present for ``split``
    they are used and ``seed`` is ignored (their binarization is fixed). Otherwise
    MNIST is binarized with :func:`binarize` as a substitute:
    train = MNIST train[:50000], valid = MNIST train[50000:], test = MNIST test
    (train/valid use ``PCG64(seed)`` over all 60000 training images, test uses
    ``PCG64([seed, 1])``). The substitute has the same split sizes but is a different
    random binarization (and different train/valid membership) than Larochelle's.

    Returns:
        ``(x, labels)``: float32 (N, 784) of 0/1 and int64 (N,); read-only, cached.
    """
    check_split(split, BINARIZED_SPLITS)
    root = resolve_data_dir(data_dir)
    if binarized_files_present(root, split):
        # Present but corrupt files raise instead of silently switching datasets.
        return load_binarized_mnist(split, root)
    return _fallback_split(root, split, int(seed), bool(download))


# ------------------------------------------------------------------------ masking


def mcar_mask(shape: tuple[int, ...], missing_rate: float, seed: int) -> torch.Tensor:
    """Missing-completely-at-random mask.

    Each entry is missing independently with probability ``missing_rate``.

    Returns:
        bool tensor of ``shape`` (on CPU), **True = observed**, False = missing.
        Deterministic given ``seed`` (a seeded ``torch.Generator``).
    """
    rate = float(missing_rate)
    if not 0.0 <= rate <= 1.0:  # also rejects NaN
        raise ValueError(f"missing_rate must be in [0, 1], got {missing_rate!r}")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    # u ~ U[0, 1): P(u < rate) = rate, so rate 0 -> all observed and rate 1 -> none.
    return torch.rand(tuple(shape), generator=gen) >= rate


@dataclass(frozen=True, eq=False)  # eq=False: tensor __eq__ is elementwise, not a bool
class IncompleteDataset:
    """A dataset with missing values, keeping the ground truth.

    Attributes:
        x: float32 (N, D) holding the TRUE values everywhere, including at missing
            entries (needed for oracle imputations and imputation accuracy). Models
            must only look at ``x_observed`` or ``x * mask``.
        mask: bool (N, D), True = observed.
        labels: int64 (N,).
        source_rows: int64 (N,), each row's index in the split it was drawn from (for MNIST
            the row of :func:`load_static_binarized_mnist`'s split, i.e. of the Larochelle
            file when present), so an output can be traced back; None when unknown.
    """

    x: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    source_rows: torch.Tensor | None = None

    def __post_init__(self) -> None:
        optional = () if self.source_rows is None else ("source_rows",)
        for name in ("x", "mask", "labels", *optional):
            if not isinstance(getattr(self, name), torch.Tensor):
                # TypeError (not ValueError): the argument is of the wrong kind entirely.
                raise TypeError(f"{name} must be a torch.Tensor, got {type(getattr(self, name))}")
        if self.x.dtype != torch.float32 or self.x.ndim != 2:
            raise ValueError(
                f"x must be a float32 tensor of shape (N, D), got {self.x.dtype} {tuple(self.x.shape)}"
            )
        if self.mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor (True = observed), got {self.mask.dtype}")
        if self.mask.shape != self.x.shape:
            raise ValueError(
                f"mask shape {tuple(self.mask.shape)} differs from x shape {tuple(self.x.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.x.shape[0],):
            raise ValueError(
                f"labels must be an int64 tensor of shape ({self.x.shape[0]},), got "
                f"{self.labels.dtype} {tuple(self.labels.shape)}"
            )
        if self.source_rows is not None and (
            self.source_rows.dtype != torch.int64 or self.source_rows.shape != self.labels.shape
        ):
            raise ValueError(
                f"source_rows must be an int64 tensor of shape ({self.x.shape[0]},), got "
                f"{self.source_rows.dtype} {tuple(self.source_rows.shape)}"
            )
        if torch.isnan(self.x).any():
            raise ValueError("x must hold the true values everywhere (found NaN)")
        devices = {t.device for t in (self.x, self.mask, self.labels, self.source_rows) if t is not None}
        if len(devices) > 1:
            raise ValueError("x, mask, labels (and source_rows) must be on the same device")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def x_observed(self) -> torch.Tensor:
        """float32 (N, D): x with missing entries set to NaN (what a real user holds)."""
        return self.x.masked_fill(~self.mask, float("nan"))

    def subset(self, index: int | slice | list[int] | np.ndarray | torch.Tensor) -> IncompleteDataset:
        """Rows selected by ``index`` (int, slice, sequence, int/bool array or tensor)."""
        idx: slice | torch.Tensor
        if isinstance(index, slice):
            idx = index
        else:
            if isinstance(index, int | np.integer):
                index = [int(index)]  # keep the row dimension: a 1-row dataset
            idx = torch.as_tensor(np.asarray(index) if not isinstance(index, torch.Tensor) else index)
            idx = idx.to(self.x.device)
        rows = None if self.source_rows is None else self.source_rows[idx]
        return IncompleteDataset(self.x[idx], self.mask[idx], self.labels[idx], rows)

    def to(self, device: torch.device | str) -> IncompleteDataset:
        """Copy of the dataset on ``device``."""
        rows = None if self.source_rows is None else self.source_rows.to(device)
        return IncompleteDataset(self.x.to(device), self.mask.to(device), self.labels.to(device), rows)


# Fixed, so that `num_rows` picks the same rows whatever the mask seed.
SUBSET_SEED = 20190101


def load_incomplete_mnist(
    split: BinarizedSplit,
    missing_rate: float = 0.5,
    seed: int = 0,
    num_rows: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> IncompleteDataset:
    """Static binarized MNIST (:func:`load_static_binarized_mnist`) with an MCAR mask.

    The mask seed is ``3 * seed + split_index`` (train 0, valid 1, test 2) so the three
    splits get different but deterministic masks. With ``num_rows``, the rows are the first
    ``num_rows`` of a fixed random permutation of the split (seeded by ``SUBSET_SEED``, not by
    ``seed``): the Larochelle test split is sorted by label, so a prefix would hold only
    zeros. The mask is drawn for the full split and then indexed, so a smaller dataset is an
    exact subset of a larger one (same rows, same mask). ``seed`` is also the binarization
    seed when the Larochelle files are absent.

    Returns:
        :class:`IncompleteDataset` with x float32 (n, 784), mask bool (n, 784),
        labels int64 (n,) and source_rows int64 (n,) (which rows of the split were taken, in
        the dataset's order), n = ``num_rows`` or the split size.
    """
    check_split(split, BINARIZED_SPLITS)
    x_np, labels_np = load_static_binarized_mnist(split, data_dir, seed=seed, download=download)
    n_total = x_np.shape[0]
    if num_rows is None:
        n = n_total
    else:
        if isinstance(num_rows, bool) or not isinstance(num_rows, int | np.integer):
            raise ValueError(f"num_rows must be an int or None, got {num_rows!r}")
        if not 1 <= num_rows <= n_total:
            raise ValueError(f"num_rows must be in [1, {n_total}] for split {split!r}, got {num_rows}")
        n = int(num_rows)
    mask_seed = 3 * int(seed) + BINARIZED_SPLITS.index(split)
    mask = mcar_mask((n_total, NUM_PIXELS), missing_rate, mask_seed)
    if n < n_total:
        rows = np.random.Generator(np.random.PCG64(SUBSET_SEED)).permutation(n_total)[:n]
        mask = mask[torch.from_numpy(rows)]  # a copy: the full-size mask is not kept alive
    else:
        rows = np.arange(n_total)
    # Copies: the cached numpy arrays are read-only and must not be aliased.
    x = torch.from_numpy(np.array(x_np[rows], dtype=np.float32))
    labels = torch.from_numpy(np.array(labels_np[rows], dtype=np.int64))
    source_rows = torch.from_numpy(rows.astype(np.int64))
    return IncompleteDataset(x=x, mask=mask, labels=labels, source_rows=source_rows)
