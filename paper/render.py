"""The cluster report's README and figure, as pure functions of results.json's numbers, and
the provenance lines every report carries (machine, git commit)."""

from __future__ import annotations

import json
import math
import platform
import subprocess
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from missiwae.training import epochs_since_best

REPO = Path(__file__).resolve().parents[1]


def accuracy_figure(samples: Sequence[int], curves: Mapping[str, Sequence[float]], missforest: float) -> Any:
    """Figure 1 (right): accuracy per L, one line per model, missForest as a horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, values in curves.items():
        axis.plot(samples, values, marker="o", label=name)
    if not math.isnan(missforest):
        axis.axhline(missforest, color="grey", linestyle="--", label="missForest")
    axis.set_xscale("log")
    axis.set_xlabel("importance samples L")
    axis.set_ylabel("imputation accuracy (missing pixels)")
    axis.set_title("Figure 1 (right): accuracy of single imputation vs L")
    axis.legend()
    return figure


def learning_curves_figure(curves: Mapping[str, Sequence[float]], complete: Collection[str]) -> Any:
    """Each Figure 1 (left) model's validation bound per epoch: left the models trained on
    incomplete data (a bound on log p(x_o), half the pixels), right those trained on complete
    data (log p(x)); a marker on the best epoch, the weights early stopping keeps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("incomplete data: bound on log p(x_o)", [n for n in curves if n not in complete]),
        ("complete data: bound on log p(x)", [n for n in curves if n in complete]),
    ]
    panels = [(title, names) for title, names in panels if names]
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for axis, (title, names) in zip(axes[0], panels, strict=True):
        for name in names:
            values = np.asarray(curves[name], dtype=float)
            epochs = np.arange(1, len(values) + 1)
            (line,) = axis.plot(epochs, values, label=name)
            best = best_epoch(curves[name])
            if best:
                axis.plot(best, values[best - 1], "o", color=line.get_color())
        axis.set_xlabel("epoch")
        axis.set_ylabel("validation bound (nats per image)")
        axis.set_title(title)
        axis.legend(fontsize="small")
    figure.suptitle("Learning curves of the Figure 1 (left) models (each with its own K)")
    return figure


def epoch_test_ll_figure(curves: Mapping[str, Sequence[float]], vae: str, iwae: str) -> Any:
    """Test log-likelihood per epoch of each model in `curves` (left), and the gap between the
    complete-data VAE `vae` and missIWAE `iwae` (right): the paper bounds it by 2 nats."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for label, values in curves.items():
        left.plot(np.arange(1, len(values) + 1), values, label=label)
    left.set_xlabel("epoch")
    left.set_ylabel("test log p(x) (nats per image)")
    left.set_title("Test log-likelihood per epoch")
    left.legend(fontsize="small")
    reference, missing = curves.get(vae), curves.get(iwae)
    if reference and missing:
        n = min(len(reference), len(missing))
        right.plot(np.arange(1, n + 1), np.subtract(reference[:n], missing[:n]), color="black")
        right.axhline(2.0, linestyle="--", color="gray", label="the paper's 2 nats")
        right.set_xlabel("epoch")
        right.set_ylabel("VAE − missIWAE (nats)")
        right.set_title("The gap the paper bounds by 2 nats")
        right.legend(fontsize="small")
    figure.tight_layout()
    return figure


def epoch_test_ll_lines(
    curves: Mapping[str, Sequence[float]], vae: str, iwae: str, rows: int, num_samples: int
) -> list[str]:
    """The test-curve section: per epoch, the VAE's and missIWAE's test log-likelihood and their
    gap (every epoch for short runs, about eight evenly spaced ones for long runs)."""
    reference, missing = list(curves.get(vae, [])), list(curves.get(iwae, []))
    n = min(len(reference), len(missing))
    lines = [
        "## The gap the paper bounds by 2 nats, per epoch",
        "",
        "![Test curves](test_curves.png)",
        "",
        f"Test log-likelihood (defensive mixture, first {rows} test images, {num_samples}",
        "importance samples, the same draws every epoch) after each epoch.",
        "",
    ]
    if n:
        marks = sorted({1, *range(max(1, n // 8), n + 1, max(1, n // 8)), n})
        lines += [
            "| epoch | complete VAE | missIWAE (K=50, zero ι) | VAE − missIWAE |",
            "|---:|---:|---:|---:|",
        ]
        for e in marks:
            vae_ll, iwae_ll = reference[e - 1], missing[e - 1]
            lines.append(f"| {e} | {vae_ll:.2f} | {iwae_ll:.2f} | {vae_ll - iwae_ll:+.2f} |")
    return [*lines, ""]


def render_report(results: Mapping[str, Any], sweep_table: str) -> str:
    """The README of a report from results.json's content (a pure function of the numbers)."""
    left = results["figure1_left"]["test_log_likelihood"]
    right = results["figure1_right"]
    lines = [
        f"# missIWAE on static binarized MNIST, 50% MCAR — `{results['preset']}` report",
        "",
        f"Generated by `{results['command']}` at git commit `{results['git_commit']}`",
        f"on {results['machine']}.",
        "Every number below comes from that run (`results.json`); the verdicts are computed from them.",
    ]
    if results.get("verdicts_commit"):
        lines.append(
            f"The verdicts were recomputed from those numbers at commit `{results['verdicts_commit']}` "
            "(`python -m paper.report --rerender`)."
        )
    lines += [
        "",
        "## Verdicts",
        "",
        "| claim (Mattei & Frellsen 2019) | verdict | evidence |",
        "|---|---|---|",
    ]
    lines += [f"| {v['claim']} | **{v['verdict']}** | {v['evidence']} |" for v in results["verdicts"]]
    lines += [
        "",
        "## Figure 1 (left): test log-likelihood",
        "",
        "![Figure 1 left](figure1_left.png)",
        "",
        sweep_table.strip(),
        "",
        f"Trials finished: {sum(not math.isnan(v) for v in left.values())} of {len(left)}.",
        "",
        *estimator_table(results["figure1_left"]),
        *learning_curves_section(results.get("learning_curves")),
        *epoch_test_ll_section(results.get("test_curves")),
        "## Figure 1 (right): imputation accuracy vs L",
        "",
        "![Figure 1 right](figure1_right.png)",
        "",
        "| L | " + " | ".join(right["curves"]) + " | missForest |",
        "|---:|" + "---:|" * (len(right["curves"]) + 1),
    ]
    for index, n in enumerate(right["L"]):
        cells = [f"{values[index]:.4f}" for values in right["curves"].values()]
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {_fmt(right['missforest'])} |")
    lines += [
        "",
        f"Accuracy on the missing pixels of {right['rows']} training images "
        "(the SNIS estimate of P(x_j = 1 | x_o) thresholded at 1/2).",
        "",
        "## Table 1: classifier trained on imputed training sets",
        "",
        results["table1"]["markdown"].strip(),
        "",
        "## Figures 2 and 3",
        "",
        "![Figure 2](figure2_samples.png) ![Figure 3](figure3_imputations.png)",
        "",
        "## Settings and wall time",
        "",
        "| stage | seconds |",
        "|---|---:|",
    ]
    lines += [f"| {stage} | {value:.0f} |" for stage, value in results["seconds"].items()]
    measured = results.get("measured_seconds", {})
    if measured:
        lines += [
            "",
            "A stage whose work was already on disk from an earlier run of the same command reuses",
            "it (the sweep is restored, imputations with the same fingerprint are read back), so its",
            "wall time above can be near zero. What that work cost when it ran:",
            "",
            "| work | seconds |",
            "|---|---:|",
        ]
        lines += [
            f"| training, {label} | {value:.0f} |"
            for label, value in measured.get("trial_train_seconds", {}).items()
        ]
        lines += [
            f"| imputation, {key} | {value:.0f} |"
            for key, value in measured.get("impute_seconds", {}).items()
        ]
        if measured.get("impute_created"):
            lines.append(f"\nImputations written {measured['impute_created']}.")
    if results.get("preset_notes"):
        lines += ["", "What the preset reduces from the paper's settings, in its own words:", "", "```"]
        lines += [results["preset_notes"], "```"]
    lines += ["", "```json", json.dumps(results["config"], indent=1), "```", ""]
    return "\n".join(lines)


def best_epoch(valid_bounds: Sequence[float]) -> int:
    """The 1-based epoch early stopping keeps (missiwae.training.epochs_since_best: the highest
    bound, the first on ties), a diverged (NaN) epoch never; 0 when no epoch has a finite bound."""
    finite = [v if math.isfinite(v) else -math.inf for v in valid_bounds]
    if not any(math.isfinite(v) for v in finite):
        return 0
    return len(finite) - epochs_since_best(finite)


def learning_curves_section(curves: Mapping[str, Sequence[float]] | None) -> list[str]:
    """The learning curves' figure and, per model, its epochs, best epoch and bound there
    (nothing for a report made before the curves were recorded)."""
    if not curves:
        return []
    lines = [
        "## Learning curves: validation bound per epoch",
        "",
        "![Learning curves](learning_curves.png)",
        "",
        "| model | epochs trained | best epoch | validation bound there | best at the last epoch |",
        "|---|---:|---:|---:|---|",
    ]
    for name, values in curves.items():
        best = best_epoch(values)
        best_value = values[best - 1] if best else math.nan
        # Best at the last epoch: still improving when the epoch cap stopped it.
        last = "yes" if best == len(values) else "no"
        lines.append(f"| {name} | {len(values)} | {best} | {_fmt(best_value)} | {last} |")
    return [*lines, ""]


def epoch_test_ll_section(recorded: Mapping[str, Any] | None) -> list[str]:
    """epoch_test_ll_lines of results.json's "test_curves" (nothing for a report without them)."""
    if not recorded:
        return []
    return epoch_test_ll_lines(
        recorded["curves"], recorded["vae"], recorded["miss_iwae"], recorded["rows"], recorded["num_samples"]
    )


def estimator_table(left: Mapping[str, Any]) -> list[str]:
    """Figure 1 (left) by both estimators side by side, with standard errors (no lines for a
    report written before the mixture estimate existed)."""
    estimators, mixture = left.get("estimators"), left.get("mixture")
    if not estimators or not mixture:
        return []
    naive, mixed = estimators["naive"], estimators["mixture"]
    lines = [
        "Both estimates of log p(x) on the same "
        f"{mixture['rows']} complete test images, {mixture['num_samples']} importance samples each, "
        "± one standard error over the images. Naive: the encoder sees the complete image. "
        f"Defensive mixture: the naive proposal mixed with {mixture['num_masks']} proposals from "
        f"random masks at missing rate {mixture['missing_rate']:g}, the same for every model, "
        "weighted by the mixture's density (`missiwae.evaluation`). The verdicts use the mixture.",
        "",
        "| model | naive | defensive mixture | mixture − naive |",
        "|---|---:|---:|---:|",
    ]
    for label, value in naive.items():
        other = mixed.get(label, {"mean": math.nan, "se": math.nan})
        lines.append(
            f"| {label} | {value['mean']:.2f} ± {value['se']:.2f} | {other['mean']:.2f} ± {other['se']:.2f} "
            f"| {other['mean'] - value['mean']:+.2f} |"
        )
    return [*lines, ""]


def _fmt(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.4f}"


def machine_description() -> str:
    """CPU, cores, GPU and torch version of this machine, for a report's first lines."""
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {_cpu_count()} cores, {device}, torch {torch.__version__}"


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def git_commit() -> str:
    """The short commit of the checkout the code runs from (\"unknown\" outside git)."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


__all__ = ["accuracy_figure", "git_commit", "machine_description", "render_report"]
