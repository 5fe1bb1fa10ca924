"""The job's headline numbers as metrics with stable names, so runs line up in the MLflow UI.

Every run of the job (and of a sweep or the report, which call the same function) logs the same
keys on its parent run, so the UI's runs table and charts put them side by side and
``MlflowClient.search_runs`` can filter and order by them::

    table1/{dataset}/accuracy_mean        test accuracy of the classifier, mean over seeds
    table1/{dataset}/accuracy_sd          ... sample sd over seeds (absent with one seed)
    table1/{dataset}/cross_entropy_mean   test cross-entropy, mean over seeds
    table1/{dataset}/cross_entropy_sd     ... sample sd over seeds (absent with one seed)
    table1/{dataset}/accuracy_fmi         for a pooled reading (missiwae_multiple_pooled,
                                          missiwae_ensemble_pooled): Rubin's fraction of
                                          missing information about the test accuracy, over
                                          the M networks (mean over seeds)
    table1/{dataset}/accuracy_interval_width   ... and the width of its 95% interval
    impute/{method}/accuracy              fraction of missing pixels right (threshold 1/2) on
                                          the split the classifier trains on; method in
                                          missiwae_single, missiwae_multiple (mean over the M
                                          copies), missiwae_ensemble (the bootstrap ensemble's
                                          M copies, impute.bootstrap_models > 1), zero, missforest
    impute/ess_mean                       mean effective sample size of the SNIS weights
    train/test_log_likelihood             mean log p(x_o) of the test split
    seconds/{stage}                       wall time of ingest, train, impute, classify, total

{dataset} is a Table 1 row: zero, missforest, missiwae_single, missiwae_multiple,
missiwae_multiple_pooled, missiwae_ensemble, missiwae_ensemble_pooled (the last two with
impute.bootstrap_models > 1), complete. Non-finite values are left out (MLflow filters treat NaN
oddly); a name that is absent means "not computed in this run".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# The per-copy accuracies (missiwae_multiple_00, ...) stay in the impute stage's own run.
IMPUTE_METHODS: tuple[str, ...] = (
    "missiwae_single",
    "missiwae_multiple",
    "missiwae_ensemble",
    "zero",
    "missforest",
)


def table1_metrics(summary: Any) -> dict[str, float]:
    """``table1/{dataset}/{accuracy,cross_entropy}_{mean,sd}`` from Table 1's summary rows
    (``pipelines.table1.SummaryRow``: dataset, accuracy_mean, ...)."""
    out: dict[str, float] = {}
    for row in summary:
        for field in ("accuracy_mean", "accuracy_sd", "cross_entropy_mean", "cross_entropy_sd"):
            out[f"table1/{row.dataset}/{field}"] = float(getattr(row, field))
        for field in ("accuracy_fmi", "accuracy_interval_width"):  # NaN (dropped) but when pooled
            out[f"table1/{row.dataset}/{field}"] = float(getattr(row, f"{field}_mean", math.nan))
    return out


def impute_metrics(metrics: Mapping[str, float], split: str = "train") -> dict[str, float]:
    """``impute/{method}/accuracy`` and ``impute/ess_mean`` from the impute stage's metrics
    (``"{split}/accuracy/{name}"``, ``"{split}/ess_mean"``, see pipelines.impute.ImputeResult)."""
    out: dict[str, float] = {}
    for method in IMPUTE_METHODS:
        key = f"{split}/accuracy/{method}"
        if key in metrics:
            out[f"impute/{method}/accuracy"] = float(metrics[key])
    if f"{split}/ess_mean" in metrics:
        out["impute/ess_mean"] = float(metrics[f"{split}/ess_mean"])
    return out


def headline_metrics(
    *,
    summary: Any = (),
    impute: Mapping[str, float] | None = None,
    impute_split: str = "train",
    test_log_likelihood: float | None = None,
    seconds: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Every headline number under its stable name (module docstring); finite values only.

    summary: Table 1 rows (``ClassifyResult.summary``); impute: the impute stage's metrics;
    test_log_likelihood: ``TrainResult.test_log_likelihood``; seconds: stage -> wall seconds.
    """
    out = table1_metrics(summary)
    out.update(impute_metrics(impute or {}, impute_split))
    if test_log_likelihood is not None:
        out["train/test_log_likelihood"] = float(test_log_likelihood)
    out.update({f"seconds/{stage}": float(value) for stage, value in (seconds or {}).items()})
    return {key: value for key, value in out.items() if math.isfinite(value)}


__all__ = ["IMPUTE_METHODS", "headline_metrics", "impute_metrics", "table1_metrics"]
