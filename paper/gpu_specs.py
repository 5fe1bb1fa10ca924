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
# The paper's MCAR rate: the incomplete models' training data, Figure 1 (right)'s holes, and the
# defensive mixture's random masks (the same for every model).
MISSING_RATE = 0.5
RESULT_FILE = "result.json"
# Early stopping: the validation bound (each model's own K, on VALID_ROWS validation images with
# the model's own missing rate) has not improved for PATIENCE epochs; MAX_EPOCHS is the cap.
PATIENCE, VALID_ROWS, MAX_EPOCHS = 10, 5000, 500
# Per-epoch test log-likelihood (defensive mixture) of the two models whose gap the paper
# states: CURVE_ROWS test images, CURVE_SAMPLES importance samples each.
CURVE_LABELS = ("K=50 zero", "complete VAE (K=1)")
CURVE_ROWS, CURVE_SAMPLES = 500, 500


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One Figure 1 (left) model and what it must do before each absolute deadline (time.time())."""

    label: str
    K: int
    imputation: str  # zero / oracle
    missing_rate: float  # MISSING_RATE, or 0.0 for the complete-data references
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
    cuda_graph: bool = False
    patience: int = PATIENCE
    valid_rows: int = VALID_ROWS
    max_epochs: int = MAX_EPOCHS
    test_curve: bool = False  # test log-likelihood per epoch (CURVE_LABELS)
    curve_rows: int = CURVE_ROWS
    curve_samples: int = CURVE_SAMPLES


def figure1_specs(
    out: Path,
    start: float,
    budget_s: float,
    device: str,
    train_rows: int | None,
    eval_samples: int = EVAL_SAMPLES,
    accuracy_samples: tuple[int, ...] = ACCURACY_SAMPLES,
    figure3_samples: int = 10_000,
    cuda_graph: bool = False,
    valid_rows: int = VALID_ROWS,
    curve: tuple[int, int] = (CURVE_ROWS, CURVE_SAMPLES),
) -> list[ModelSpec]:
    """The paper's six models; 60% of the budget trains, 20% evaluates, 15% imputes."""
    train_until, eval_until = start + 0.60 * budget_s, start + 0.80 * budget_s
    accuracy_until = start + 0.95 * budget_s
    grid = [
        ("K=1 zero", 1, "zero", MISSING_RATE),
        ("K=1 oracle", 1, "oracle", MISSING_RATE),
        ("K=50 zero", 50, "zero", MISSING_RATE),
        ("K=50 oracle", 50, "oracle", MISSING_RATE),
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
            cuda_graph=cuda_graph,
            valid_rows=valid_rows,
            test_curve=label in CURVE_LABELS,
            curve_rows=curve[0],
            curve_samples=curve[1],
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
    "CURVE_LABELS",
    "CURVE_ROWS",
    "CURVE_SAMPLES",
    "EVAL_BATCH",
    "EVAL_SAMPLES",
    "LEARNING_RATE",
    "MAX_EPOCHS",
    "MISSFOREST",
    "MISSING_RATE",
    "PAPER_MODEL",
    "PATIENCE",
    "RESULT_FILE",
    "VALID_ROWS",
    "ModelSpec",
    "figure1_specs",
    "folder_name",
]
