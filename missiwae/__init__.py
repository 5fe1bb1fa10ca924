"""missIWAE: deep generative modelling and imputation of incomplete data (Mattei & Frellsen).

Pure torch + numpy: the Ray/MLflow pipeline lives in `pipelines/` and builds on this package.
"""

from typing import Any

from missiwae.allocator import retain_freed_memory
from missiwae.bounds import effective_sample_size, log_mean_exp, miss_iwae_bound
from missiwae.config import (
    ConfigError,
    DataConfig,
    EvaluateConfig,
    ImputeConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from missiwae.evaluation import (
    estimate_log_likelihood,
    estimate_log_likelihood_defensive,
    imputation_accuracy,
)
from missiwae.imputation import impute_multiple, impute_single, snis_expectation
from missiwae.likelihoods import Bernoulli, Gaussian, Mixed, StudentT
from missiwae.model import MissIWAE, make_generator
from missiwae.training import TrainingDiverged, load_model, save_checkpoint, train

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # scikit-learn is imported only when the estimator is asked for: with pandas installed,
    # importing scikit-learn imports pandas, and pandas imports pyarrow when it is present.
    if name == "MissIWAEImputer":
        from missiwae.estimator import MissIWAEImputer

        return MissIWAEImputer
    if name in ("rubin", "pool_fits"):  # scipy.stats, only when pooling is asked for
        from missiwae import pooling

        return getattr(pooling, name)
    raise AttributeError(f"module 'missiwae' has no attribute {name!r}")


__all__ = [
    "Bernoulli",
    "ConfigError",
    "DataConfig",
    "EvaluateConfig",
    "Gaussian",
    "ImputeConfig",
    "MissIWAE",
    "MissIWAEImputer",
    "Mixed",
    "ModelConfig",
    "RunConfig",
    "StudentT",
    "TrainConfig",
    "TrainingDiverged",
    "effective_sample_size",
    "estimate_log_likelihood",
    "estimate_log_likelihood_defensive",
    "imputation_accuracy",
    "impute_multiple",
    "impute_single",
    "load_model",
    "log_mean_exp",
    "make_generator",
    "miss_iwae_bound",
    "pool_fits",
    "retain_freed_memory",
    "rubin",
    "save_checkpoint",
    "snis_expectation",
    "train",
]
