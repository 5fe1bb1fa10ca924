"""What `missiwae evaluate` and `missiwae impute` measure, as plain dataclasses.

`evaluate_run` estimates the held-out log-likelihood of a trained model next to an
independent-Bernoulli baseline; `impute_run` imputes the missing pixels (SNIS single, SIR
multiple imputation) and scores them against zero and mean imputation. Both take the model,
the run config and the rows; `record` adds provenance for the JSON files the CLI writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from missiwae.atomic import write_atomic, write_text_atomic
from missiwae.baselines import (
    independent_bernoulli_log_likelihood,
    mean_impute,
    observed_feature_means,
    zero_impute,
)
from missiwae.config import RunConfig
from missiwae.data import IncompleteDataset
from missiwae.evaluation import estimate_log_likelihood, imputation_accuracy
from missiwae.imputation import impute_multiple, impute_single
from missiwae.model import MissIWAE, make_generator
from missiwae.runs import RunError, model_input


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Mean log-likelihoods (nats) over the rows of one split; field order is the JSON order."""

    split: str
    num_rows: int
    missing_rate: float
    mean_observed_pixels: float
    num_samples: int  # importance samples S per row
    log_likelihood_observed: float  # log p(x_o) of the masked rows
    log_likelihood_complete: float  # log p(x) of the complete rows
    bernoulli_log_likelihood_observed: float
    bernoulli_log_likelihood_complete: float

    def record(self, *, seconds: float, checkpoint: str | Path, config: RunConfig) -> dict[str, Any]:
        """The metrics with how they were made: what `missiwae evaluate` writes as JSON."""
        return {
            **dataclasses.asdict(self),
            "seconds": seconds,
            "checkpoint": str(Path(checkpoint).resolve()),
            "config": config.to_dict(),
        }


@dataclasses.dataclass(frozen=True)
class ImputationMetrics:
    """Accuracies on the missing pixels (threshold 1/2) and effective sample sizes of one split;
    field order is the JSON order."""

    split: str
    num_rows: int
    missing_rate: float
    num_samples: int  # particles L
    num_imputations: int  # copies M
    accuracy_missiwae: float  # SNIS single imputation
    accuracy_multiple_mean: float  # mean over the M SIR imputations
    accuracy_zero: float
    accuracy_mean: float  # per-pixel means of the observed training pixels
    effective_sample_size_mean: float
    effective_sample_size_multiple_mean: float
    log_likelihood_observed: float  # mean log p(x_o) estimated from the same L particles

    def record(
        self, *, seconds: float, imputations_file: str | Path, checkpoint: str | Path, config: RunConfig
    ) -> dict[str, Any]:
        """The metrics with how they were made: what `missiwae impute` writes as JSON."""
        return {
            **dataclasses.asdict(self),
            "seconds": seconds,
            "imputations_file": str(Path(imputations_file).resolve()),
            "checkpoint": str(Path(checkpoint).resolve()),
            "config": config.to_dict(),
        }


@dataclasses.dataclass(frozen=True)
class Imputation:
    """The imputed rows and their scores.

    arrays: what the .npz holds, all on the CPU: imputed (N, D) single imputation (uint8 0/1
    for binary pixels, else float32), conditional_mean (N, D) float32, imputations (M, N, D),
    mask (N, D) True = observed, labels (N,), effective_sample_size and log_likelihood (N,).
    """

    metrics: ImputationMetrics
    arrays: dict[str, np.ndarray]
    num_missing: int  # missing pixels scored


def evaluate_run(
    model: MissIWAE, config: RunConfig, split: str, data: IncompleteDataset, train_data: IncompleteDataset
) -> Evaluation:
    """Importance-sampling estimates of log p(x_o) and log p(x) over the rows of `data` with
    S = evaluate.num_samples (seeds evaluate.seed and evaluate.seed + 1), next to independent
    per-pixel Bernoullis fitted to the observed pixels of `train_data`."""
    device = model.device
    x, mask = data.x.to(device), data.mask.to(device)
    settings = config.evaluate

    def estimate(observed: torch.Tensor, seed: int) -> torch.Tensor:
        return estimate_log_likelihood(
            model,
            model_input(x, observed, model.uses_oracle),
            observed,
            settings.num_samples,
            batch_size=settings.batch_size,
            chunk_size=config.impute.chunk_size,
            generator=make_generator(seed, device),
        ).cpu()

    observed_ll = estimate(mask, settings.seed)
    complete_ll = estimate(torch.ones_like(mask), settings.seed + 1)
    bernoulli_observed = independent_bernoulli_log_likelihood(
        train_data.x, train_data.mask, data.x, data.mask
    )
    bernoulli_complete = independent_bernoulli_log_likelihood(
        train_data.x, train_data.mask, data.x, torch.ones_like(data.mask)
    )
    return Evaluation(
        split=split,
        num_rows=len(data),
        missing_rate=config.data.missing_rate,
        mean_observed_pixels=float(data.mask.float().sum(1).mean()),
        num_samples=settings.num_samples,
        log_likelihood_observed=float(observed_ll.mean()),
        log_likelihood_complete=float(complete_ll.mean()),
        bernoulli_log_likelihood_observed=float(bernoulli_observed.mean()),
        bernoulli_log_likelihood_complete=float(bernoulli_complete.mean()),
    )


def impute_run(
    model: MissIWAE, config: RunConfig, split: str, data: IncompleteDataset, train_data: IncompleteDataset
) -> Imputation:
    """Single (SNIS, seed impute.seed) and multiple (SIR, seed impute.seed + 1) imputation of
    the missing pixels of `data` with L = impute.num_samples particles, scored against the
    truth next to zero and mean imputation (means of the observed pixels of `train_data`).
    Observed pixels are never changed. A split with no missing pixel is a RunError."""
    if bool(data.mask.all()):
        raise RunError(f"no missing pixels to impute (data.missing_rate={config.data.missing_rate})")
    settings = config.impute
    device = model.device
    x, mask = data.x.to(device), data.mask.to(device)
    x_in = model_input(x, mask, model.uses_oracle)
    single = impute_single(
        model,
        x_in,
        mask,
        settings.num_samples,
        batch_size=settings.batch_size,
        chunk_size=settings.chunk_size,
        generator=make_generator(settings.seed, device),
    )
    multiple = impute_multiple(
        model,
        x_in,
        mask,
        settings.num_imputations,
        settings.num_samples,
        batch_size=settings.batch_size,
        chunk_size=settings.chunk_size,
        generator=make_generator(settings.seed + 1, device),
    )
    conditional_mean = torch.where(mask, x, single.imputed).cpu()
    binary = model.config is not None and model.config.observation == "bernoulli"
    imputed = torch.where(data.mask, data.x, (conditional_mean > 0.5).float()) if binary else conditional_mean
    imputations = multiple.imputations.cpu()
    truth, holes = data.x, data.mask
    means = observed_feature_means(train_data.x, train_data.mask)
    metrics = ImputationMetrics(
        split=split,
        num_rows=len(data),
        missing_rate=config.data.missing_rate,
        num_samples=settings.num_samples,
        num_imputations=settings.num_imputations,
        accuracy_missiwae=imputation_accuracy(imputed, truth, holes),
        accuracy_multiple_mean=float(
            np.mean([imputation_accuracy(copy, truth, holes) for copy in imputations])
        ),
        accuracy_zero=imputation_accuracy(zero_impute(truth, holes), truth, holes),
        accuracy_mean=imputation_accuracy(mean_impute(truth, holes, means), truth, holes),
        effective_sample_size_mean=float(single.effective_sample_size.mean()),
        effective_sample_size_multiple_mean=float(multiple.effective_sample_size.mean()),
        log_likelihood_observed=float(single.log_likelihood.mean()),
    )
    image_dtype = np.uint8 if binary else np.float32
    arrays = {
        "imputed": imputed.numpy().astype(image_dtype),
        "conditional_mean": conditional_mean.numpy().astype(np.float32),
        "imputations": imputations.numpy().astype(image_dtype),
        "mask": data.mask.numpy(),
        "labels": data.labels.numpy(),
        "effective_sample_size": single.effective_sample_size.cpu().numpy(),
        "log_likelihood": single.log_likelihood.cpu().numpy(),
    }
    return Imputation(metrics, arrays, int((~data.mask).sum()))


def non_finite_metrics(record: Mapping[str, Any]) -> list[str]:
    """The keys of `record` whose value is a float that is NaN or infinite."""
    return [key for key, value in record.items() if isinstance(value, float) and not math.isfinite(value)]


def write_json_record(target: str | Path, record: Mapping[str, Any]) -> None:
    """`record` as indented JSON with a final newline at `target` (parents created), atomically."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target, json.dumps(record, indent=2) + "\n")


def write_imputations(target: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    """`arrays` as an uncompressed .npz at `target` (parents created), atomically; the name is
    kept as given (np.savez would append .npz to a path lacking it)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, lambda stream: np.savez(stream, **arrays))  # type: ignore[arg-type]
