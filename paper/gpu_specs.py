"""What the time-boxed single-GPU report runs: the paper's model settings, the six Figure 1
(left) models with their deadlines, and the run folder's layout (shared by `paper.gpu`, which
runs them, and `paper.gpu_render`, which reads what they left)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

PAPER_MODEL = {
    "architecture": "conv",
    "conv_channels": (16, 32, 32),
    "latent_dim": 50,
    "observation": "bernoulli",
}
BATCH_SIZE, LEARNING_RATE = 64, 1e-3
EVAL_SAMPLES, EVAL_BATCH = 5000, 100
ACCURACY_SAMPLES = (1, 10, 100, 1000, 10000)
ACCURACY_ROWS = 1000
MISSFOREST = {"n_estimators": 30, "max_iter": 5, "max_samples": None}
RESULT_FILE = "result.json"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One Figure 1 (left) model and what it must do before each absolute deadline (time.time())."""

    label: str
    K: int
    imputation: str  # zero / oracle
    missing_rate: float  # 0.5, or 0.0 for the complete-data references
    train_until: float
    eval_until: float
    accuracy_until: float
    accuracy: bool  # Figure 1 (right) curve for this model
    figure3: bool
    out: str
    device: str
    seed: int = 0
    train_rows: int | None = None  # None: all 50 000
    eval_rows: int = 10_000
    eval_samples: int = EVAL_SAMPLES
    accuracy_samples: tuple[int, ...] = ACCURACY_SAMPLES
    figure3_samples: int = 10_000


def figure1_specs(
    out: Path,
    start: float,
    budget_s: float,
    device: str,
    train_rows: int | None,
    eval_samples: int = EVAL_SAMPLES,
    accuracy_samples: tuple[int, ...] = ACCURACY_SAMPLES,
    figure3_samples: int = 10_000,
) -> list[ModelSpec]:
    """The paper's six models; 60% of the budget trains, 20% evaluates, 15% imputes."""
    train_until, eval_until = start + 0.60 * budget_s, start + 0.80 * budget_s
    accuracy_until = start + 0.95 * budget_s
    grid = [
        ("K=1 zero", 1, "zero", 0.5),
        ("K=1 oracle", 1, "oracle", 0.5),
        ("K=50 zero", 50, "zero", 0.5),
        ("K=50 oracle", 50, "oracle", 0.5),
        ("complete VAE (K=1)", 1, "zero", 0.0),
        ("complete IWAE (K=50)", 50, "zero", 0.0),
    ]
    return [
        ModelSpec(
            label=label,
            K=K,
            imputation=iota,
            missing_rate=rate,
            train_until=train_until,
            eval_until=eval_until,
            accuracy_until=accuracy_until,
            accuracy=rate > 0 and iota == "zero",
            figure3=label == "K=50 zero",
            out=str(out / folder_name(label)),
            device=device,
            train_rows=train_rows,
            eval_samples=eval_samples,
            accuracy_samples=accuracy_samples,
            figure3_samples=figure3_samples,
        )
        for label, K, iota, rate in grid
    ]


def folder_name(label: str) -> str:
    """A model label as a plain directory name ("K=50 zero" -> "K_50_zero")."""
    return "".join(c if c.isalnum() else "_" for c in label).strip("_")


__all__ = [
    "ACCURACY_ROWS",
    "ACCURACY_SAMPLES",
    "BATCH_SIZE",
    "EVAL_BATCH",
    "EVAL_SAMPLES",
    "LEARNING_RATE",
    "MISSFOREST",
    "PAPER_MODEL",
    "RESULT_FILE",
    "ModelSpec",
    "figure1_specs",
    "folder_name",
]
