"""MNIST on disk: the data root, the IDX / ``.amat`` / label-file parsers and cached loading.

Layout of the data root (see :func:`resolve_data_dir`)::

    <root>/mnist/train-images-idx3-ubyte.gz      LeCun IDX files (gzipped or raw)
    <root>/mnist/train-labels-idx1-ubyte.gz
    <root>/mnist/t10k-images-idx3-ubyte.gz
    <root>/mnist/t10k-labels-idx1-ubyte.gz
    <root>/binarized_mnist/binarized_mnist_{train,valid,test}.amat.gz
    <root>/binarized_mnist/binarized_mnist_{split}_mnist_index_labels.txt.gz

The Larochelle & Murray ``.amat`` rows are a *permutation* of MNIST (not MNIST order),
so their labels must come from the accompanying ``*_mnist_index_labels.txt.gz`` file,
never from the IDX label files.

Every parser validates its input and raises :class:`DataError` (a ``ValueError``)
naming the offending file, because silently mis-parsed data would only surface much
later as a mysteriously bad likelihood. `missiwae.data` builds the datasets (binarization,
MCAR masks) on top of these files.

Only numpy and the standard library are imported at module level; torchvision
is imported lazily and only by the ``download=True`` fallback.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import zlib
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

__all__ = [
    "BINARIZED_SPLITS",
    "DATA_DIR_ENV",
    "DEFAULT_DATA_DIR",
    "IMAGE_SIDE",
    "NUM_PIXELS",
    "BinarizedLabels",
    "BinarizedSplit",
    "DataError",
    "MnistSplit",
    "binarized_files_present",
    "check_split",
    "load_binarized_mnist",
    "load_mnist",
    "read_amat",
    "read_binarized_label_file",
    "read_idx",
    "read_only",
    "resolve_data_dir",
]

DATA_DIR_ENV = "MISSIWAE_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.cache/missiwae/data")
NUM_PIXELS = 784  # 28 x 28
IMAGE_SIDE = 28

MnistSplit = Literal["train", "test"]
BinarizedSplit = Literal["train", "valid", "test"]

_MNIST_SPLITS: tuple[str, ...] = ("train", "test")
BINARIZED_SPLITS: tuple[str, ...] = ("train", "valid", "test")

_IDX_MAGIC_LABELS = 0x00000801  # unsigned byte, 1 dimension
_IDX_MAGIC_IMAGES = 0x00000803  # unsigned byte, 3 dimensions
_IDX_MAGICS = {_IDX_MAGIC_LABELS: 1, _IDX_MAGIC_IMAGES: 3}

_MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DataError(ValueError):
    """A data file is missing, corrupt or inconsistent; the message names the file."""


# --------------------------------------------------------------------------- paths


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the data root: ``data_dir`` if given, else ``$MISSIWAE_DATA_DIR``,
    else ``~/.cache/missiwae/data``.

    The root holds ``mnist/`` and ``binarized_mnist/``. The returned path is
    user-expanded and absolute (it is also used as an in-process cache key).
    """
    if data_dir is not None:
        path = Path(data_dir)
    else:
        env = os.environ.get(DATA_DIR_ENV, "").strip()
        path = Path(env) if env else DEFAULT_DATA_DIR
    return path.expanduser().resolve()


def _missing_hint(root: Path) -> str:
    return (
        f"The data root is {root}. Set the environment variable {DATA_DIR_ENV} (or pass "
        "data_dir=... in Python, --data-dir on the command line) to a directory holding "
        "mnist/ and binarized_mnist/"
    )


def _file_stamp(*paths: Path) -> tuple[tuple[int, int], ...]:
    """(mtime_ns, size) of each file: part of the cache key so that a file replaced
    on disk is re-read instead of served stale from the in-process cache."""
    stamps = []
    for p in paths:
        st = p.stat()
        stamps.append((st.st_mtime_ns, st.st_size))
    return tuple(stamps)


def _read_bytes(path: Path) -> bytes:
    """Read ``path``, gunzipping it when its name ends in ``.gz``."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc})") from exc
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError as exc:
        raise DataError(f"{path}: truncated gzip file ({exc})") from exc
    except (OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: corrupt gzip file ({exc})") from exc


def read_only(a: np.ndarray) -> np.ndarray:
    """Mark a cached array read-only so callers cannot corrupt the cache."""
    a.flags.writeable = False
    return a


def check_split(split: str, allowed: tuple[str, ...]) -> None:
    """ValueError unless ``split`` is one of ``allowed``."""
    if split not in allowed:
        raise ValueError(f"split must be one of {allowed}, got {split!r}")


# ----------------------------------------------------------------------------- IDX


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse a LeCun IDX file (gzipped if the name ends in ``.gz``).

    Supports the two MNIST formats: magic ``0x00000801`` (uint8 labels, shape (N,))
    and ``0x00000803`` (uint8 images, shape (N, rows, cols)). The payload size must
    equal the product of the header dimensions exactly.

    Returns:
        uint8 array of the shape given by the header (a fresh, writable array).
    """
    p = Path(path)
    buf = _read_bytes(p)
    if len(buf) < 4:
        raise DataError(f"{p}: too short for an IDX header ({len(buf)} bytes)")
    magic = int.from_bytes(buf[:4], "big")
    if magic not in _IDX_MAGICS:
        raise DataError(
            f"{p}: wrong IDX magic number 0x{magic:08x} "
            f"(expected 0x{_IDX_MAGIC_LABELS:08x} for labels or 0x{_IDX_MAGIC_IMAGES:08x} "
            "for images)"
        )
    ndim = _IDX_MAGICS[magic]
    header_len = 4 + 4 * ndim
    if len(buf) < header_len:
        raise DataError(f"{p}: truncated IDX header ({len(buf)} < {header_len} bytes)")
    dims = tuple(int.from_bytes(buf[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header_len + math.prod(dims)
    if len(buf) != expected:
        raise DataError(
            f"{p}: IDX header says shape {dims} ({expected} bytes) but the file has {len(buf)} bytes"
        )
    return np.frombuffer(buf, dtype=np.uint8, offset=header_len).reshape(dims).copy()


def _find_mnist_file(root: Path, stem: str) -> Path | None:
    """Locate an MNIST IDX file: ``mnist/`` first, then a previous torchvision
    download under ``torchvision/MNIST/raw`` (so ``download=True`` is needed once)."""
    for folder in (root / "mnist", root / "torchvision" / "MNIST" / "raw"):
        for name in (stem + ".gz", stem):
            candidate = folder / name
            if candidate.is_file():
                return candidate
    return None


def _validate_mnist(
    images: np.ndarray, labels: np.ndarray, img_path: object, lbl_path: object
) -> tuple[np.ndarray, np.ndarray]:
    """Check MNIST shapes/label range; return (uint8 (N, 784), int64 (N,))."""
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(f"{img_path}: expected images of shape (N, 28, 28), got {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{lbl_path}: expected labels of shape (N,), got {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{lbl_path}: {labels.shape[0]} labels but {img_path} has {images.shape[0]} images")
    if labels.size and int(labels.max()) > 9:
        raise DataError(f"{lbl_path}: label {int(labels.max())} outside 0..9")
    return (
        np.ascontiguousarray(images, dtype=np.uint8).reshape(-1, NUM_PIXELS),
        labels.astype(np.int64),
    )


@functools.lru_cache(maxsize=4)
def _load_mnist_cached(
    img_path: Path, lbl_path: Path, stamp: tuple[tuple[int, int], ...]
) -> tuple[np.ndarray, np.ndarray]:
    del stamp  # only part of the cache key
    images, labels = _validate_mnist(read_idx(img_path), read_idx(lbl_path), img_path, lbl_path)
    return read_only(images), read_only(labels)


def _download_mnist(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fallback: fetch MNIST with torchvision into ``<root>/torchvision``."""
    try:
        from torchvision.datasets import MNIST  # lazy: optional heavy dependency
    except ImportError as exc:
        raise DataError(
            f"MNIST IDX files not found under {root / 'mnist'} and download=True needs "
            f"torchvision, which is not installed. {_missing_hint(root)}"
        ) from exc
    ds = MNIST(root=str(root / "torchvision"), train=(split == "train"), download=True)
    images = np.asarray(ds.data.numpy() if hasattr(ds.data, "numpy") else ds.data)
    labels = np.asarray(ds.targets.numpy() if hasattr(ds.targets, "numpy") else ds.targets)
    src = f"torchvision MNIST({root / 'torchvision'})"
    images, labels = _validate_mnist(images, labels, src, src)
    return read_only(images), read_only(labels)


def load_mnist(
    split: MnistSplit,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Load gray MNIST in its original order.

    Reads ``<root>/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``. If they
    are missing and ``download`` is true, falls back to
    ``torchvision.datasets.MNIST(root=<root>/torchvision, download=True)``.

    Returns:
        ``(images, labels)``: uint8 (N, 784) with values 0..255 and int64 (N,), with
        N = 60000 (train) or 10000 (test). Both are cached and **read-only**; copy
        them before modifying.
    """
    check_split(split, _MNIST_SPLITS)
    root = resolve_data_dir(data_dir)
    img_stem, lbl_stem = _MNIST_FILES[split]
    img_path = _find_mnist_file(root, img_stem)
    lbl_path = _find_mnist_file(root, lbl_stem)
    if img_path is None or lbl_path is None:
        if download:
            return _download_mnist(root, split)
        missing = img_stem if img_path is None else lbl_stem
        raise DataError(
            f"{root / 'mnist' / (missing + '.gz')}: MNIST file not found. "
            f"{_missing_hint(root)}, or pass download=True (--download on the command line) "
            "to fetch MNIST with torchvision."
        )
    return _load_mnist_cached(img_path, lbl_path, _file_stamp(img_path, lbl_path))


# ------------------------------------------------------------- Larochelle binarized


class BinarizedLabels(NamedTuple):
    """Contents of ``binarized_mnist_{split}_mnist_index_labels.txt.gz``, one entry per
    ``.amat`` row: all int64 arrays of shape (N,)."""

    mnist_index: np.ndarray  # 0-based row in MNIST train (train/valid) or t10k (test)
    label: np.ndarray  # digit 0..9
    index_certain: np.ndarray  # 1 = unique best match, 0 = near-tie among same-label images


def read_amat(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse a binarized MNIST ``.amat`` text file (gzipped if named ``.gz``).

    Each non-blank line must hold exactly 784 values ``0``/``1`` separated by
    whitespace. Parsing is vectorised (no ``np.loadtxt``): every byte is classified
    as digit / whitespace / invalid, so the 50000 training rows take
    about 1.5 s (most of it allocating; see docs/performance.md on numpy's huge pages).

    Returns:
        uint8 array (N, 784) of 0/1 (writable, freshly allocated).
    """
    p = Path(path)
    buf = np.frombuffer(_read_bytes(p), dtype=np.uint8)
    # Byte classes by comparisons (faster than a 256-entry lookup table on 78 MB):
    # '0' = 48 and '1' = 49 are exactly the bytes with (b & 0xFE) == 48.
    is_digit = (buf & 0xFE) == ord("0")
    is_space = (buf == ord(" ")) | (buf == ord("\n")) | (buf == ord("\r"))
    is_space |= buf == ord("\t")
    bad = np.flatnonzero(~(is_digit | is_space))
    if bad.size:
        pos = int(bad[0])
        raise DataError(
            f"{p}: invalid character {chr(buf[pos])!r} at byte {pos} "
            f"(line {_line_of(buf, pos)}); only '0', '1' and whitespace are allowed"
        )
    del is_space
    # Values must be single digits separated by whitespace: "01" would be silently
    # read as two pixels by a one-byte-per-value scan, so reject adjacent digits.
    adjacent = np.flatnonzero(is_digit[1:] & is_digit[:-1])
    if adjacent.size:
        pos = int(adjacent[0])
        raise DataError(
            f"{p}: multi-character value at byte {pos} (line {_line_of(buf, pos)}); "
            "expected single 0/1 values separated by whitespace"
        )
    n_values = int(np.count_nonzero(is_digit))
    if n_values == 0:
        raise DataError(f"{p}: no values (empty file)")
    if n_values % NUM_PIXELS:
        raise DataError(f"{p}: {n_values} values in total, not a multiple of {NUM_PIXELS}")
    # Per-line value counts: every non-blank line must be exactly one image, so a
    # short line cannot be silently completed by the next one.
    newlines = np.flatnonzero(buf == ord("\n"))
    starts = np.concatenate(([0], newlines + 1))
    starts = starts[starts < buf.size]
    counts = _count_per_line(is_digit, starts)
    line_numbers = np.flatnonzero(counts > 0) + 1
    counts = counts[counts > 0]  # blank lines (e.g. a trailing one) are harmless
    wrong = np.flatnonzero(counts != NUM_PIXELS)
    if wrong.size:
        raise DataError(
            f"{p}: line {int(line_numbers[wrong[0]])} has {int(counts[wrong[0]])} "
            f"values, expected {NUM_PIXELS} per line ({counts.size} non-blank lines "
            f"for {n_values} values)"
        )
    return (buf[is_digit] - ord("0")).reshape(counts.size, NUM_PIXELS)


def _count_per_line(flags: np.ndarray, starts: np.ndarray, lines_per_block: int = 4096) -> np.ndarray:
    """How many of ``flags`` (bool, the file's bytes) are set on each line, the lines beginning
    at ``starts`` (int64, increasing, first 0): int64 (len(starts),).

    Differences of a running count, a block of lines at a time so the int32 count stays a few
    MB. (``np.add.reduceat`` gives the same numbers but took 8 s on the 78 MB train file with
    numpy 2.4; this takes a fraction of a second.)
    """
    ends = np.append(starts[1:], flags.size)
    counts = np.empty(starts.size, dtype=np.int64)
    for first in range(0, starts.size, lines_per_block):
        last = min(first + lines_per_block, starts.size)
        begin = starts[first]
        running = np.concatenate(([0], np.cumsum(flags[begin : ends[last - 1]], dtype=np.int32)))
        counts[first:last] = running[ends[first:last] - begin] - running[starts[first:last] - begin]
    return counts


def _line_of(buf: np.ndarray, pos: int) -> int:
    """1-based line number of byte ``pos`` (for error messages only)."""
    return int(np.count_nonzero(buf[:pos] == ord("\n"))) + 1


def read_binarized_label_file(path: str | os.PathLike[str]) -> BinarizedLabels:
    """Parse ``binarized_mnist_{split}_mnist_index_labels.txt[.gz]``.

    Lines starting with ``#`` are comments (the file has one header line); every
    other non-blank line is ``mnist_index label index_certain``.

    Returns:
        :class:`BinarizedLabels` of three int64 arrays (N,).
    """
    p = Path(path)
    try:
        text = _read_bytes(p).decode("ascii")
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not an ASCII text file ({exc})") from exc
    rows = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    tokens = " ".join(rows).split()
    if len(tokens) != 3 * len(rows):
        bad = next(i for i, ln in enumerate(rows) if len(ln.split()) != 3)
        raise DataError(
            f"{p}: data row {bad} has {len(rows[bad].split())} fields, expected 3 "
            "(mnist_index label index_certain)"
        )
    try:
        table = np.array(tokens, dtype=np.int64).reshape(len(rows), 3)
    except ValueError as exc:
        raise DataError(f"{p}: non-integer field ({exc})") from exc
    mnist_index, label, certain = (np.ascontiguousarray(table[:, j]) for j in range(3))
    if mnist_index.size and (mnist_index.min() < 0 or np.unique(mnist_index).size != mnist_index.size):
        raise DataError(f"{p}: mnist_index must be non-negative and unique")
    if label.size and (label.min() < 0 or label.max() > 9):
        raise DataError(f"{p}: labels must lie in 0..9")
    if not np.isin(certain, (0, 1)).all():
        raise DataError(f"{p}: index_certain must be 0 or 1")
    return BinarizedLabels(mnist_index, label, certain)


def _binarized_paths(root: Path, split: str) -> tuple[Path, Path]:
    folder = root / "binarized_mnist"
    return (
        folder / f"binarized_mnist_{split}.amat.gz",
        folder / f"binarized_mnist_{split}_mnist_index_labels.txt.gz",
    )


def binarized_files_present(root: Path, split: str) -> bool:
    """Whether both Larochelle files of ``split`` (``.amat`` and labels) are under ``root``."""
    return all(p.is_file() for p in _binarized_paths(root, split))


@functools.lru_cache(maxsize=3)
def _load_binarized_cached(
    root: Path, split: str, stamp: tuple[tuple[int, int], ...]
) -> tuple[np.ndarray, np.ndarray]:
    del stamp  # only part of the cache key
    amat_path, label_path = _binarized_paths(root, split)
    x = read_amat(amat_path)
    meta = read_binarized_label_file(label_path)
    if meta.label.shape[0] != x.shape[0]:
        raise DataError(
            f"{label_path}: {meta.label.shape[0]} label rows but {amat_path.name} has {x.shape[0]} rows"
        )
    return read_only(x.astype(np.float32)), read_only(meta.label)


def load_binarized_mnist(
    split: BinarizedSplit, data_dir: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load the Larochelle & Murray statically binarized MNIST split.

    Reads ``<root>/binarized_mnist/binarized_mnist_{split}.amat.gz`` and the labels from
    ``binarized_mnist_{split}_mnist_index_labels.txt.gz`` (the rows are a permutation
    of MNIST, so IDX labels would be wrong).

    Returns:
        ``(x, labels)``: float32 (N, 784) of 0/1 and int64 (N,), N = 50000 / 10000 /
        10000 for train / valid / test. Cached in-process and **read-only**.
    """
    check_split(split, BINARIZED_SPLITS)
    root = resolve_data_dir(data_dir)
    paths = _binarized_paths(root, split)
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: binarized MNIST file not found. {_missing_hint(root)}.")
    return _load_binarized_cached(root, split, _file_stamp(*paths))
