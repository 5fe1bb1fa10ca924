"""missForest beside the imputation job: one Ray task over a whole split, and its accuracy.

The imputation stage (pipelines/impute.py) submits :func:`missforest_task` as one Ray task next
to the actor pool (missForest needs every row of the split at once) and scores the result with
:func:`missing_accuracy`, the same measure as missIWAE's datasets.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np


def missforest_task(x_nan: np.ndarray, settings: dict[str, Any], seed: int) -> tuple[np.ndarray, float]:
    """One Ray task: missForest on the whole split (N, D) with NaN holes; (imputed (N, D)
    float32, seconds). `settings`: the ``missforest`` config section as a dict.

    With settings["n_jobs"] != 1 the forests of each sweep fan out from this task to Ray
    actors (Ray's joblib backend), so a cluster fits up to hundreds of columns at once.
    """
    import joblib

    from missiwae.missforest import MissForest

    n_jobs = int(settings.get("n_jobs", 1))
    backend: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if n_jobs != 1:
        from ray.util.joblib import register_ray

        register_ray()
        # The pool's actors take no CPU of their own (Ray's default), so SPREAD is what puts
        # them on every node rather than all beside this task.
        backend = joblib.parallel_config(backend="ray", ray_remote_args={"scheduling_strategy": "SPREAD"})
    started = time.perf_counter()
    imputer = MissForest(
        max_iter=settings["max_iter"],
        n_estimators=settings["n_estimators"],
        max_samples=settings["max_samples"],
        n_jobs=n_jobs,
        random_state=seed % 2**32,
    )
    with backend:
        imputed = np.asarray(imputer.fit_transform(x_nan), dtype=np.float32)
    return imputed, time.perf_counter() - started


def missing_accuracy(imputed: np.ndarray, pixels: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the missing pixels (mask False) whose imputed value, thresholded at 1/2,
    equals the true pixel: imputed, pixels (N, D), mask (N, D) bool True = observed."""
    import torch

    from missiwae.evaluation import imputation_accuracy

    return imputation_accuracy(
        torch.from_numpy(np.array(imputed, np.float32)),
        torch.from_numpy(pixels.astype(np.float32)),
        torch.from_numpy(np.array(mask, np.bool_)),
    )


__all__ = ["missforest_task", "missing_accuracy"]
