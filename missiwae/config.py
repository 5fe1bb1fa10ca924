"""Run settings as frozen dataclasses, built from plain dicts (YAML / JSON / CLI flags).

Every setting has one home here; `from_dict` refuses unknown keys and wrong types with a message
that names the key, so a typo in a config file never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

Architecture = Literal["mlp", "conv"]
Observation = Literal["bernoulli", "gaussian", "student_t"]
# What one model column may be: an observation model, or one level's entry of a one-hot
# categorical column (see ModelConfig.categorical_levels).
ColumnType = Literal["bernoulli", "gaussian", "student_t", "categorical"]
Imputation = Literal["zero", "oracle", "learned"]


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type, or out of range."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data, how it is masked, and how much of it is used."""

    dataset: Literal["binarized_mnist"] = "binarized_mnist"
    data_dir: str | None = None  # None: $MISSIWAE_DATA_DIR, then ~/.cache/missiwae/data
    missing_rate: float = 0.5
    seed: int = 0
    num_train: int | None = None  # None: the whole split
    num_valid: int | None = None
    num_test: int | None = None
    # A user's table (CSV or Parquet, NaN = missing) instead of MNIST: pipelines/full.py only
    # (the `missiwae` command line and `missing_rate`/`num_*` are MNIST settings). Its rows are
    # split into train/valid/test by a seeded permutation with these fractions.
    path: str | None = None
    label_column: str | None = None  # kept aside as the label; not modelled, not imputed
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    # A table column's model instead of the inferred one (text: categorical; numbers whose
    # observed values are all 0/1: bernoulli; other numbers: model.observation), by name, e.g.
    # {zip_code: categorical, has_pet: gaussian} (pipelines/table_source.py says what is allowed).
    column_types: dict[str, ColumnType] = dataclasses.field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        require(0.0 <= self.missing_rate <= 1.0, "data.missing_rate must lie in [0, 1]")
        require(
            0.0 < self.valid_fraction < 1.0 and 0.0 < self.test_fraction < 1.0,
            "data.valid_fraction and data.test_fraction must lie in (0, 1)",
        )
        require(
            self.valid_fraction + self.test_fraction < 1.0,
            "data.valid_fraction + data.test_fraction must leave rows for training",
        )
        for name in ("num_train", "num_valid", "num_test"):
            value = getattr(self, name)
            require(value is None or value >= 1, f"data.{name} must be >= 1 or null")
        for column, kind in self.column_types.items():
            kinds = list(typing.get_args(ColumnType))
            require(kind in kinds, f"data.column_types.{column} must be one of {kinds}, got {kind!r}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The DLVM: p(z) = N(0, I), p_θ(x | z) = `observation`(f_θ(z)), q_γ(z | ι(x_o)) Gaussian."""

    num_features: int = 784
    architecture: Architecture = "mlp"
    latent_dim: int = 50
    hidden: tuple[int, ...] = (200, 200)  # MLP widths (Burda et al. 2016: 784-200-200-50)
    activation: Literal["tanh", "relu", "elu"] = "tanh"
    conv_channels: tuple[int, ...] = (16, 32, 32)  # three 5x5 stride-2 convolutions
    image_shape: tuple[int, int] = (28, 28)
    observation: Observation = "bernoulli"
    # Per-column observation models (a mixed table: e.g. bernoulli for 0/1 columns, gaussian
    # for the rest); empty: every column uses `observation`.
    column_types: tuple[ColumnType, ...] = ()
    # A categorical column with k levels is k consecutive "categorical" model columns (its one-hot
    # encoding); these are the k of each such column, in order.
    categorical_levels: tuple[int, ...] = ()
    imputation: Imputation = "zero"

    def __post_init__(self) -> None:
        require(self.num_features >= 1, "model.num_features must be >= 1")
        require(
            not self.column_types or len(self.column_types) == self.num_features,
            f"model.column_types names {len(self.column_types)} columns, "
            f"model.num_features is {self.num_features}",
        )
        one_hot = sum(t == "categorical" for t in self.column_types)
        levels = self.categorical_levels
        require(
            all(k >= 1 for k in levels) and sum(levels) == one_hot,
            f"model.categorical_levels {list(levels)} must count the levels of the {one_hot} "
            f"'categorical' model columns (>= 1 each, summing to {one_hot})",
        )
        require(self.latent_dim >= 1, "model.latent_dim must be >= 1")
        require(all(w >= 1 for w in self.hidden), "model.hidden widths must be >= 1")
        # An MLP without hidden layers would build (one linear map each way), but the model
        # sizes its chunks by the widest hidden layer and was never tested that way: refused
        # here, at load, rather than crashing in evaluate / impute after training.
        require(
            self.architecture != "mlp" or len(self.hidden) >= 1,
            f"model.hidden must list at least one layer width for the mlp architecture "
            f"(e.g. [128]), got {list(self.hidden)}",
        )
        if self.architecture == "conv":
            require(
                len(self.conv_channels) == 3 and all(c >= 1 for c in self.conv_channels),
                "model.conv_channels must be three positive channel counts",
            )
            height, width = self.image_shape
            require(
                height * width == self.num_features,
                f"model.image_shape {self.image_shape} does not hold "
                f"model.num_features={self.num_features} pixels",
            )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Adam on the negative missIWAE bound L_K (K = 1 is the missVAE bound)."""

    K: int = 50
    batch_size: int = 64
    epochs: int = 10
    learning_rate: float = 1e-3
    seed: int = 0
    device: str = "cpu"
    # Stop once the validation bound has not improved for this many epochs (then `epochs` is
    # the cap); None trains for `epochs` epochs whatever the validation bound does.
    early_stopping_patience: int | None = None
    # Replay each full-size training step from a CUDA graph (missiwae.train_step): at small
    # batches a GPU step is launch-bound. The one-process loop only (`train`), on CUDA.
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        require(self.K >= 1, f"train.K must be >= 1, got {self.K}")
        require(self.batch_size >= 1, "train.batch_size must be >= 1")
        require(self.epochs >= 0, "train.epochs must be >= 0")
        require(self.learning_rate > 0, "train.learning_rate must be > 0")
        require(
            self.early_stopping_patience is None or self.early_stopping_patience >= 1,
            f"train.early_stopping_patience must be >= 1 or null, got {self.early_stopping_patience}",
        )
        require(_is_device(self.device), f"train.device must be a torch device, got {self.device!r}")
        require(
            not self.cuda_graph or self.device.startswith("cuda"),
            f"train.cuda_graph needs train.device cuda, got {self.device!r}",
        )


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """Importance-sampling estimate of log p(x_o) (5000 samples is the convention)."""

    num_samples: int = 5000
    batch_size: int = 100
    seed: int = 0
    # The test curve: after every training epoch, log p(x) of the first `curve_rows` complete
    # test images by the defensive mixture (`curve_samples` samples, masks at `curve_mask_rate`,
    # the same draws every epoch), so a learning curve shows the measure the paper reports and
    # not only the training bound. 0 rows: none. Recorded by the Ray pipeline's training stage.
    curve_rows: int = 0
    curve_samples: int = 500
    curve_mask_rate: float = 0.5

    def __post_init__(self) -> None:
        require(self.num_samples >= 1, "evaluate.num_samples must be >= 1")
        require(self.batch_size >= 1, "evaluate.batch_size must be >= 1")
        require(self.curve_rows >= 0, "evaluate.curve_rows must be >= 0")
        require(self.curve_samples >= 1, "evaluate.curve_samples must be >= 1")
        require(0.0 < self.curve_mask_rate < 1.0, "evaluate.curve_mask_rate must lie in (0, 1)")


@dataclasses.dataclass(frozen=True)
class ImputeConfig:
    """SNIS single imputation with L samples and SIR multiple imputation (M copies)."""

    num_samples: int = 1000  # L
    num_imputations: int = 20  # M
    batch_size: int = 250
    chunk_size: int | None = None  # importance samples per chunk; None: sized from memory
    seed: int = 0
    # B: proper multiple imputation (missiwae.ensemble). The pipeline also trains B models on
    # Poisson bootstrap resamples of the training rows and draws the M imputations from them,
    # M/B each; B = 1 draws all M from the one model. The `missiwae` command line imputes from
    # one checkpoint and refuses B > 1; the estimator's form is MissIWAEImputer(n_models=B).
    bootstrap_models: int = 1

    def __post_init__(self) -> None:
        require(self.num_samples >= 1, f"impute.num_samples (L) must be >= 1, got {self.num_samples}")
        require(self.num_imputations >= 1, "impute.num_imputations must be >= 1")
        require(
            1 <= self.bootstrap_models <= self.num_imputations,
            f"impute.bootstrap_models (B) must be between 1 and impute.num_imputations (M = "
            f"{self.num_imputations}), got {self.bootstrap_models}",
        )
        require(self.batch_size >= 1, "impute.batch_size must be >= 1")
        require(self.chunk_size is None or self.chunk_size >= 1, "impute.chunk_size must be >= 1")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything one `missiwae` run needs, one section per stage."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = dataclasses.field(default_factory=EvaluateConfig)
    impute: ImputeConfig = dataclasses.field(default_factory=ImputeConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunConfig:
        return from_dict(cls, values)


T = TypeVar("T")


def _is_device(name: str) -> bool:
    import torch

    try:
        torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls: type[T], values: Mapping[str, Any], *, _where: str = "") -> T:
    """Build dataclass `cls` from `values`, refusing unknown keys and ill-typed values."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{_where or 'config'} must be a mapping, got {type(values).__name__}")
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(key) for key in set(values) - set(names))
    if unknown:
        where = f" in section '{_where}'" if _where else ""
        raise ConfigError(f"unknown config key(s) {unknown}{where}; valid keys: {names}")
    kwargs = {
        key: _coerce(value, hints[key], f"{_where}.{key}" if _where else key) for key, value in values.items()
    }
    return cls(**kwargs)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        return from_dict(typing.cast(type, annotation), value, _where=where)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError("; ".join(errors))
    if origin is Literal:
        require(value in args, f"{where} must be one of {list(args)}, got {value!r}")
        return value
    if origin is dict:
        require(isinstance(value, Mapping), f"{where} must be a mapping, got {value!r}")
        key_type, item_type = args
        return {
            _coerce(key, key_type, f"{where} key"): _coerce(item, item_type, f"{where}.{key}")
            for key, item in value.items()
        }
    if origin is tuple:
        require(isinstance(value, list | tuple), f"{where} must be a list, got {value!r}")
        item_type = args[0]
        if len(args) != 2 or args[1] is not Ellipsis:
            require(len(value) == len(args), f"{where} must have {len(args)} items")
        return tuple(_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value))
    if annotation is bool:
        require(isinstance(value, bool), f"{where} must be true or false, got {value!r}")
        return value
    if annotation is int:
        require(
            isinstance(value, int) and not isinstance(value, bool),
            f"{where} must be an integer, got {value!r}",
        )
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where} must be a number, got {value!r}") from None
        require(
            isinstance(value, int | float) and not isinstance(value, bool),
            f"{where} must be a number, got {value!r}",
        )
        # No setting means anything at NaN or infinity (a learning rate of inf trains to NaN).
        require(math.isfinite(value), f"{where} must be a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        require(isinstance(value, str), f"{where} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported setting type {annotation!r}")  # pragma: no cover


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a plain dict (validated later by `from_dict`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    import yaml

    try:
        text = path.read_text()
        loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path} is not text ({error})") from error
    except (ValueError, yaml.YAMLError) as error:  # json.JSONDecodeError is a ValueError
        kind = "JSON" if path.suffix == ".json" else "YAML"
        message = " ".join(str(error).split())
        raise ConfigError(f"config file {path} is not valid {kind}: {message}") from error
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return loaded


def apply_overrides(values: Mapping[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` overrides (values parsed as YAML scalars: 5, 1e-3, true, [1, 2])."""
    import yaml

    if not isinstance(values, Mapping):
        raise ConfigError(f"a config must be a mapping of sections, got {type(values).__name__}")
    # A deep copy through JSON; default=str turns what YAML may add (dates) into strings, which
    # from_dict then refuses by key name.
    merged: dict[str, Any] = json.loads(json.dumps(values, default=str))
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {override!r} must look like section.key=value")
        *sections, leaf = key.split(".")
        target = merged
        for section in sections:
            target = target.setdefault(section, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {override!r}: {section} is not a section")
        try:
            target[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            message = " ".join(str(error).split())
            raise ConfigError(f"override {override!r}: the value is not valid YAML ({message})") from error
    return merged
