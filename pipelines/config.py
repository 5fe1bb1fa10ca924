"""The pipeline's settings: the library's sections plus one per distributed stage.

Strict like `missiwae.config`: unknown keys and ill-typed values are errors naming the key.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from missiwae.classifier import EPOCH_STEPS
from missiwae.config import (
    ConfigError,
    DataConfig,
    EvaluateConfig,
    ImputeConfig,
    ModelConfig,
    TrainConfig,
    apply_overrides,
    from_dict,
    load_config_file,
    require,
    to_dict,
)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    num_shards: int = 4  # Parquet files per split (MNIST; a table has one per piece and split)
    # A table of more rows than this is read, checked and written by Ray Data tasks, a piece
    # each (pipelines/table_source.py); a smaller one a piece at a time in the driver.
    table_parallel_rows: int = 1_000_000

    def __post_init__(self) -> None:
        require(self.num_shards >= 1, "ingest.num_shards must be >= 1")
        require(self.table_parallel_rows >= 0, "ingest.table_parallel_rows must be >= 0")


@dataclasses.dataclass(frozen=True)
class ScalingConfig:
    """Ray Train: N data-parallel workers (DDP), CPU here and GPU on a cluster."""

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 0.5  # fractional: whole-CPU requests deadlock 2-core machines
    max_failures: int = 2  # worker deaths survived by restarting from the last checkpoint
    # true: each worker reads its training shard once into memory and reshuffles it every epoch
    # (as the one-process loop does); false: streams it through Ray Data every epoch instead,
    # for shards larger than a worker's memory; "auto": true when the shards fit in a stated
    # fraction of each node's memory (pipelines.train.shards_fit_in_memory). Row order only:
    # not part of a run's fingerprint.
    shard_in_memory: bool | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        require(self.num_workers >= 1, "scaling.num_workers must be >= 1")
        require(self.cpus_per_worker > 0, "scaling.cpus_per_worker must be > 0")
        require(self.max_failures >= 0, "scaling.max_failures must be >= 0")


@dataclasses.dataclass(frozen=True)
class ImputeStageConfig:
    """Ray Data batch imputation: an actor pool, each actor holding the trained model."""

    num_actors: int = 2
    cpus_per_actor: float = 0.5
    gpus_per_actor: float = 0.0
    splits: tuple[str, ...] = ("train",)  # the classifier is trained on imputed training data
    # A table's single imputation also as CSV (beside the Parquet files): "auto" up to
    # pipelines.tabular.CSV_MAX_ROWS rows (a CSV of millions of rows is slow to write and read).
    table_csv: bool | Literal["auto"] = "auto"
    # A table's imputed rows per Ray Data writer task: a partition file holds at most this many
    # (one per split among them); pipelines/table_output.py.
    table_rows_per_file: int = 100_000

    def __post_init__(self) -> None:
        require(self.num_actors >= 1, "impute_stage.num_actors must be >= 1")
        require(self.table_rows_per_file >= 1, "impute_stage.table_rows_per_file must be >= 1")
        require(self.cpus_per_actor > 0, "impute_stage.cpus_per_actor must be > 0")
        require(self.gpus_per_actor >= 0, "impute_stage.gpus_per_actor must be >= 0")
        require(
            all(s in ("train", "valid", "test") for s in self.splits),
            "impute_stage.splits must name train / valid / test",
        )


@dataclasses.dataclass(frozen=True)
class MissForestConfig:
    enabled: bool = True
    n_estimators: int = 100
    max_iter: int = 10
    max_samples: float | None = None  # rows per tree (fraction): the knob for big data
    # Forests fitted at once within a sweep (the D forests of a sweep are independent): 1 runs
    # them one after another inside one Ray task; k > 1, or -1 for every CPU of the cluster,
    # fans them out as Ray actors through Ray's joblib backend. The imputation does not depend
    # on it (missiwae.missforest seeds each forest by sweep and column).
    n_jobs: int = 1

    def __post_init__(self) -> None:
        require(self.n_jobs == -1 or self.n_jobs >= 1, "missforest.n_jobs must be >= 1 or -1 (all CPUs)")
        require(self.n_estimators >= 1, "missforest.n_estimators must be >= 1")
        require(self.max_iter >= 1, "missforest.max_iter must be >= 1")
        require(
            self.max_samples is None or 0 < self.max_samples <= 1,
            "missforest.max_samples must lie in (0, 1] or be null",
        )


@dataclasses.dataclass(frozen=True)
class ClassifyConfig:
    """The two-layer dropout convnet trained on each imputed dataset, one Ray task per seed.
    ``epoch_steps`` (missiwae.classifier.ClassifierConfig): "rows", every dataset the same cap
    on gradient steps (the M-copy union included), or "union", a pass over all M copies."""

    num_seeds: int = 10
    epochs: int = 50
    batch_size: int = 128
    learning_rate: float = 1e-3
    patience: int = 5
    epoch_steps: str = "rows"
    cpus_per_task: float = 0.5
    gpus_per_task: float = 0.0

    def __post_init__(self) -> None:
        require(self.num_seeds >= 1, "classify.num_seeds must be >= 1")
        require(self.epochs >= 1, "classify.epochs must be >= 1")
        require(self.batch_size >= 1, "classify.batch_size must be >= 1")
        require(self.learning_rate > 0, "classify.learning_rate must be > 0")
        require(self.patience >= 0, "classify.patience must be >= 0")
        require(self.epoch_steps in EPOCH_STEPS, f"classify.epoch_steps must be one of {EPOCH_STEPS}")
        require(self.cpus_per_task > 0, "classify.cpus_per_task must be > 0")
        require(self.gpus_per_task >= 0, "classify.gpus_per_task must be >= 0")


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """`python -m paper.report`: which sweep gives Figure 1 (left), which of its models the
    other experiments use, and the L grid of Figure 1 (right)."""

    space: str = "paper"  # tune/spaces/<space>.yaml: the Figure 1 (left) sweep
    miss_vae: str = "K=1 zero"  # sweep trial labels of the two models compared in Figure 1 (right)
    miss_iwae: str = "K=50 zero"  # ... and the model behind Table 1 and Figures 2 and 3
    accuracy_samples: tuple[int, ...] = (1, 10, 100, 1000, 10000)  # L in Figure 1 (right)
    accuracy_rows: int | None = None  # training rows scored in Figure 1 (right); None: all

    def __post_init__(self) -> None:
        require(len(self.accuracy_samples) >= 1, "report.accuracy_samples must not be empty")
        require(all(n >= 1 for n in self.accuracy_samples), "report.accuracy_samples must be >= 1")
        require(self.accuracy_rows is None or self.accuracy_rows >= 1, "report.accuracy_rows must be >= 1")


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    experiment: str = "missiwae"
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite under run_dir


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    run_dir: str = "runs/pipeline"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    ingest: IngestConfig = dataclasses.field(default_factory=IngestConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    scaling: ScalingConfig = dataclasses.field(default_factory=ScalingConfig)
    evaluate: EvaluateConfig = dataclasses.field(default_factory=EvaluateConfig)
    impute: ImputeConfig = dataclasses.field(default_factory=ImputeConfig)
    impute_stage: ImputeStageConfig = dataclasses.field(default_factory=ImputeStageConfig)
    missforest: MissForestConfig = dataclasses.field(default_factory=MissForestConfig)
    classify: ClassifyConfig = dataclasses.field(default_factory=ClassifyConfig)
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)
    report: ReportConfig = dataclasses.field(default_factory=ReportConfig)

    def __post_init__(self) -> None:
        require(
            not self.train.cuda_graph,
            "train.cuda_graph is for the one-process loop (python -m missiwae train, paper.gpu); "
            "the Ray Train workers run their DDP steps eagerly",
        )

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PipelineConfig:
        return from_dict(cls, values)

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir).expanduser().resolve()


def add_override_argument(parser: argparse.ArgumentParser) -> None:
    """The entry points' `--set section.key=value ...` (read by load_pipeline_config): as the
    `missiwae` command line takes it, one --set may carry several settings and may be repeated
    (`--set a=1 b=2 --set c=3`)."""
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="SECTION.KEY=VALUE",
        nargs="+",
        action="extend",
        default=[],
        help="override settings (repeatable), e.g. --set train.epochs=5 data.seed=1; unknown keys are errors",
    )


def load_pipeline_config(config: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """A preset name ("smoke", "paper") or a YAML/JSON path, then `section.key=value` overrides."""
    path = Path(config)
    if not path.suffix and (CONFIG_DIR / f"{config}.yaml").is_file():
        path = CONFIG_DIR / f"{config}.yaml"
    values = apply_overrides(load_config_file(path), overrides or [])
    return PipelineConfig.from_dict(values)


__all__ = [
    "ClassifyConfig",
    "ConfigError",
    "ImputeStageConfig",
    "IngestConfig",
    "MissForestConfig",
    "PipelineConfig",
    "ReportConfig",
    "ScalingConfig",
    "TrackingConfig",
    "add_override_argument",
    "load_pipeline_config",
]
