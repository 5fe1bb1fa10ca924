"""The trained checkpoint as an imputer of pandas frames: what the logged MLflow model runs.

``FrameImputer`` knows nothing of MLflow (``runs.py`` wraps it in an ``mlflow.pyfunc``
``PythonModel`` and logs it): it loads a missiwae checkpoint plus a small features file (column
names, the table's standardisation, L and the seed) and fills the NaN cells of a DataFrame with
the SNIS single imputation E[x_m | x_o] (``missiwae.imputation.impute_single``), in the
frame's own units. Observed cells are copied from the input, bit for bit.

For MNIST the columns are ``pixel_000`` .. ``pixel_783`` (binarised pixels, no scaling) and an
imputed cell is the posterior probability P(x_j = 1 | x_o), as in the pipeline's
``missiwae_single`` dataset; for a user's table they are the table's columns, with the
ingest's standardisation undone on the way out.

The logged model carries its own code (:func:`stage_model_code`, MLflow's ``code_paths``): the
``.py`` files of ``missiwae`` and of the few ``pipelines`` modules its class imports, so it
loads where only mlflow and torch are installed, without this project.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from missiwae.categorical import OneHot
from missiwae.columns import Standardization
from missiwae.imputation import impute_single
from missiwae.model import MissIWAE, make_generator
from missiwae.training import load_model

FEATURES_FILE = "features.json"
# Rows per imputation batch: memory stays flat in the frame's length (L is chunked by the library).
_BATCH_ROWS = 256
# What the logged model imports from this project, as globs of .py files per package: its class
# (pipelines.tracking.runs.PyfuncImputer, pickled by reference), everything the package
# pipelines.tracking imports on the way (pipelines.config), and the library. The tracking tests
# load the model in a Python without the project on its path, so a new import shows up there.
MODEL_CODE: Mapping[str, tuple[str, ...]] = {
    "missiwae": ("**/*.py",),
    "pipelines": ("__init__.py", "config.py", "tracking/*.py"),
}


def pixel_columns(num_features: int) -> list[str]:
    """``pixel_000`` .. : the column names of an image model's frame."""
    return [f"pixel_{j:03d}" for j in range(num_features)]


@dataclasses.dataclass(frozen=True)
class Features:
    """What a frame must hold and how the model sees it.

    columns: the D feature names, in the model's order. mean, scale: (D',) the standardisation
    the model was trained in (None: the frame's units are the model's). num_samples: L of the
    SNIS estimate; seed: the generator's seed, so the same frame always gets the same output.
    levels: per column, the levels of a column of labels (one-hot in the model, so D' model
    columns in all; missiwae.categorical) or None for a number; None: every column a number.
    """

    columns: tuple[str, ...]
    num_samples: int
    seed: int = 0
    mean: tuple[float, ...] | None = None
    scale: tuple[float, ...] | None = None
    levels: tuple[tuple[Any, ...] | None, ...] | None = None

    @classmethod
    def for_table(
        cls,
        columns: Sequence[str],
        num_samples: int,
        seed: int = 0,
        mean: Sequence[float] | None = None,
        scale: Sequence[float] | None = None,
        levels: Sequence[Sequence[Any] | None] | None = None,
    ) -> Features:
        return cls(
            tuple(str(c) for c in columns),
            int(num_samples),
            int(seed),
            None if mean is None else tuple(float(v) for v in mean),
            None if scale is None else tuple(float(v) for v in scale),
            None if levels is None else tuple(None if found is None else tuple(found) for found in levels),
        )

    def onehot(self) -> OneHot | None:
        """The model's view of the columns of labels, None when every column is a number."""
        if self.levels is None or all(found is None for found in self.levels):
            return None
        return OneHot(self.levels)

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(dataclasses.asdict(self)))
        return path

    @classmethod
    def read(cls, path: str | Path) -> Features:
        values: dict[str, Any] = json.loads(Path(path).read_text())
        return cls.for_table(**values)

    def standardization(self) -> Standardization:
        if self.mean is None or self.scale is None:
            return Standardization.identity(len(self.columns))
        return Standardization(
            np.asarray(self.mean, dtype=np.float64), np.asarray(self.scale, dtype=np.float64)
        )


class FrameImputer:
    """A trained missIWAE that fills NaN cells of a DataFrame (N rows, ``features.columns``)."""

    def __init__(self, model: MissIWAE, features: Features) -> None:
        onehot = features.onehot()
        width = len(features.columns) if onehot is None else onehot.num_model_columns
        if model.num_features != width:
            raise ValueError(
                f"the model has {model.num_features} features but the features file names "
                f"{len(features.columns)} columns ({width} model columns)"
            )
        self.model = model.eval()
        self.features = features

    @classmethod
    def load(cls, checkpoint_dir: str | Path, features_file: str | Path) -> FrameImputer:
        return cls(load_model(checkpoint_dir), Features.read(features_file))

    def impute(self, frame: pd.DataFrame) -> pd.DataFrame:
        """A copy of ``frame`` with its NaN cells replaced by the SNIS estimate E[x_m | x_o].

        Columns are taken by name (extra columns are an error, so is a missing one); the result
        has the model's columns in its order and the frame's index. Observed cells are copied
        from the input unchanged.
        """
        columns = list(self.features.columns)
        missing = [c for c in columns if c not in frame.columns]
        extra = [c for c in frame.columns if c not in set(columns)]
        if missing or extra:
            raise ValueError(
                f"the frame's columns do not match the model's: missing {missing[:5]}, extra {extra[:5]}"
                + (" (and more)" if len(missing) > 5 or len(extra) > 5 else "")
            )
        onehot = self.features.onehot()
        if onehot is None:
            values = frame[columns].to_numpy(dtype=np.float64, copy=True)  # (N, D), NaN = missing
        else:  # (N, D'): a column of labels one-hot, NaN across its block where missing
            raw = [
                frame[c].to_numpy(dtype=object if found is not None else np.float64)
                for c, found in zip(columns, onehot.levels, strict=True)
            ]
            values = onehot.encode(raw, columns)
        observed = ~np.isnan(values)
        scaling = self.features.standardization()
        x = torch.as_tensor(scaling.transform(values, observed).astype(np.float32))  # the model's dtype
        mask = torch.as_tensor(observed)
        result = impute_single(
            self.model,
            x,
            mask,
            self.features.num_samples,
            batch_size=_BATCH_ROWS,
            generator=make_generator(self.features.seed),
        )
        filled = scaling.fill(values, result.imputed.detach().cpu().numpy(), observed)
        if onehot is None:
            return pd.DataFrame(filled, columns=columns, index=frame.index)
        out: dict[str, Any] = {}
        for j, (name, found, span) in enumerate(zip(columns, onehot.levels, onehot.spans(), strict=True)):
            if found is None:
                out[name] = filled[:, span.start]
                continue
            labels, holes = raw[j].copy(), ~observed[:, span.start]
            labels[holes] = onehot.most_probable(filled[holes], j)  # the most probable level
            out[name] = labels
        return pd.DataFrame(out, index=frame.index)


def stage_model_code(folder: Path, packages: Mapping[str, Sequence[str]] = MODEL_CODE) -> list[str]:
    """Copy the ``.py`` files the logged model imports (`packages`: name -> globs relative to
    the installed package) into ``folder/<name>/...``; returns the package folders, MLflow's
    ``code_paths`` (each lands under the model's ``code/``, which loading puts on sys.path).
    Only source files: no caches, no configs, nothing of a run."""
    import importlib

    staged = []
    for name, patterns in packages.items():
        source = Path(importlib.import_module(name).__file__ or "").parent
        target = folder / name
        for pattern in patterns:
            for path in sorted(source.glob(pattern)):
                destination = target / path.relative_to(source)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, destination)
        staged.append(str(target))
    return staged


def pip_requirements() -> list[str]:
    """The packages the logged model needs, pinned to what is installed: given to MLflow, so
    nothing is inferred (no subprocess, no network) when it is logged or loaded."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for package in ("mlflow", "torch", "numpy", "pandas", "scikit-learn"):
        try:
            out.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            out.append(package)
    return out


__all__ = [
    "FEATURES_FILE",
    "MODEL_CODE",
    "Features",
    "FrameImputer",
    "pip_requirements",
    "pixel_columns",
    "stage_model_code",
]
