"""The single-GPU report's README, figures and results.json, from a `paper.gpu run` folder.

Runs anywhere (no GPU needed): it reads each model's result.json, compares the models on the
test images all of them evaluated, and computes the verdicts with `paper.verdicts`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from paper.gpu_specs import (
    ACCURACY_ROWS,
    ACCURACY_SAMPLES,
    LEARNING_RATE,
    MISSFOREST,
    PAPER_MODEL,
    RESULT_FILE,
    figure1_specs,
    folder_name,
)
from pipelines.storage import write_json_atomic, write_text_atomic


def load_results(folder: Path) -> dict[str, Any]:
    """The run folder's results: machine, per-model results, missForest (None if unfinished)."""
    machine = json.loads((folder / "machine.json").read_text())
    models = {}
    for spec in figure1_specs(folder, 0.0, 1.0, "cpu", None):
        path = Path(spec.out) / RESULT_FILE
        models[spec.label] = json.loads(path.read_text()) if path.is_file() else None
    forest_path = folder / "missforest" / RESULT_FILE
    forest = json.loads(forest_path.read_text()) if forest_path.is_file() else None
    return {"machine": machine, "models": models, "missforest": forest}


def common_rows(models: dict[str, Any]) -> int:
    """Test rows every model evaluated: the log-likelihoods are compared on the same images."""
    counts = [len(r.get("test_log_likelihood_per_row", [])) for r in models.values() if r]
    return min(counts) if counts else 0


def render(folder: Path, report: Path, command: str) -> str:
    """Write report/README.md, figure1_left.png, figure1_right.png, figures 2 and 3."""
    import matplotlib.pyplot as plt

    from paper.render import accuracy_figure
    from paper.verdicts import figure1_left_verdicts, figure1_right_verdicts
    from pipelines import figures
    from tune.ranking import TrialRow, write_ranking

    results = load_results(folder)
    models, forest = results["models"], results["missforest"]
    n = common_rows(models)
    test_ll = {
        label: float(np.mean(r["test_log_likelihood_per_row"][:n])) if r and n else math.nan
        for label, r in models.items()
    }
    stderr = {
        label: float(np.std(r["test_log_likelihood_per_row"][:n], ddof=1) / math.sqrt(n))
        if r and n > 1
        else math.nan
        for label, r in models.items()
    }
    rows = []
    for label, r in models.items():
        spec = r["spec"] if r else {}
        complete = spec.get("missing_rate", 0.5) == 0.0
        rows.append(
            TrialRow(
                trial=label,
                K=int(spec.get("K", 0)),
                iota="complete" if complete else str(spec.get("imputation", "")),
                data="complete" if complete else "50% MCAR",
                learning_rate=LEARNING_RATE,
                latent_dim=int(PAPER_MODEL["latent_dim"]),  # type: ignore[call-overload]
                epochs=int(r["epochs"]) if r else 0,
                valid_bound=r["history"][-1]["train_bound"] if r and r["history"] else math.nan,
                test_log_likelihood=test_ll[label],
                test_log_px_o=math.nan,
                status="done" if r and "test_log_likelihood_per_row" in r else "unfinished",
                trial_id=folder_name(label),
            )
        )
    report.mkdir(parents=True, exist_ok=True)
    write_ranking(rows, report, f"Figure 1 (left) on {results['machine']['gpu']}, time-boxed")
    accuracy_models = {"missVAE (K=1)": models.get("K=1 zero"), "missIWAE (K=50)": models.get("K=50 zero")}
    samples = [
        s
        for s in ACCURACY_SAMPLES
        if all(r and str(s) in r.get("accuracy_vs_L", {}) for r in accuracy_models.values())
    ]
    curves = {name: [r["accuracy_vs_L"][str(s)] for s in samples] for name, r in accuracy_models.items() if r}
    forest_accuracy = float(forest["accuracy"]) if forest else math.nan
    verdicts = figure1_left_verdicts(test_ll, stderr)
    if samples:
        verdicts += figure1_right_verdicts(
            samples, curves["missVAE (K=1)"], curves["missIWAE (K=50)"], forest_accuracy
        )
        figure = accuracy_figure(samples, curves, forest_accuracy)
        figure.savefig(report / "figure1_right.png", dpi=120, bbox_inches="tight")
        plt.close(figure)
    iwae_dir = folder / folder_name("K=50 zero")
    if (iwae_dir / "checkpoint").is_dir():
        from missiwae.training import load_model

        figure = figures.samples_figure(load_model(iwae_dir / "checkpoint"))
        figure.savefig(report / "figure2_samples.png", dpi=120, bbox_inches="tight")
        figures.close(figure)
    if (iwae_dir / "figure3.npz").is_file():
        data = np.load(iwae_dir / "figure3.npz")
        figure = figures.imputations_figure(data["x"], data["mask"], data["imputed"])
        figure.savefig(report / "figure3_imputations.png", dpi=120, bbox_inches="tight")
        figures.close(figure)
    proposal_path = report / "proposal.md"
    proposal = proposal_path.read_text() if proposal_path.is_file() else None
    text = readme(results, test_ll, stderr, n, samples, curves, forest, verdicts, command, proposal)
    write_text_atomic(report / "README.md", text)
    summary = {
        "machine": results["machine"],
        "test_log_likelihood": test_ll,
        "test_rows": n,
        "accuracy_vs_L": {"L": samples, **curves, "missforest": forest_accuracy},
        "verdicts": [dataclasses.asdict(v) for v in verdicts],
        "epochs": {label: r["epochs"] if r else None for label, r in models.items()},
    }
    write_json_atomic(report / "results.json", summary)
    return text


def readme(
    results: dict[str, Any],
    test_ll: dict[str, float],
    stderr: dict[str, float],
    n: int,
    samples: list[int],
    curves: dict[str, list[float]],
    forest: dict[str, Any] | None,
    verdicts: list[Any],
    command: str,
    proposal: str | None = None,
) -> str:
    """The README text: what is the paper's and what is reduced, the verdicts, Figure 1 left
    (per model) and right (per L), the proposal check when present, each process's exit."""
    machine, models = results["machine"], results["models"]
    lines = [
        f"# missIWAE on static binarized MNIST, 50% MCAR — one {machine['gpu']}, {machine['budget_s']:.0f} s",
        "",
        "A time-boxed run of the paper's Figure 1 and Figures 2-3 at the paper's model settings on a",
        "single lent GPU. That machine has no Ray or MLflow and cannot install them, so this is the",
        "library alone (`paper/gpu.py`), not `paper.report --config paper`; Table 1 (the",
        "classifier on 50 000 imputed images with L = 10 000) did not fit the budget and is not here.",
        "",
        f"Run: `{command}` on {machine['gpu']} (torch {machine['torch']}, {machine['cpus']} CPU cores),",
        f"started {machine['started']}, {machine.get('seconds', math.nan):.0f} s wall.",
        "",
        "## What is the paper's and what is reduced",
        "",
        "- Paper: convolutional DLVM (three 5×5 stride-2 convolutions, 16/32/32 channels, latent 50),",
        "  all 50 000 training images, 50% MCAR, batch 64, Adam 1e-3; test log-likelihood with 5000",
        "  importance samples; accuracy vs L on training images.",
        f"- Reduced: training is cut at {0.6 * machine['budget_s']:.0f} s per model (all six at once on the",
        "  one GPU), so the models are far from converged (epochs below; the `paper` preset trains",
        f"  for 500). Test log-likelihood on the first {n} of the 10 000 test images (fixed random",
        f"  order), accuracy vs L on {ACCURACY_ROWS} training images, missForest with"
        f" {MISSFOREST['n_estimators']} trees",
        f"  and at most {MISSFOREST['max_iter']} sweeps (paper: 100 trees, up to 10).",
        "",
        "## Verdicts",
        "",
        "| claim (Mattei & Frellsen 2019) | verdict | evidence |",
        "|---|---|---|",
    ]
    lines += [f"| {v.claim} | **{v.verdict}** | {v.evidence} |" for v in verdicts]
    lines += [
        "",
        "Verdicts at this budget say what an under-trained model shows, not what the paper's",
        "converged models show.",
        "",
        "## Figure 1 (left): test log-likelihood of complete test images",
        "",
        "![Figure 1 left](figure1_left.png)",
        "",
        "| model | K | ι | epochs trained | last train bound | test log p(x) ± SE |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for label, r in models.items():
        if not r:
            lines.append(f"| {label} | | | did not finish | | |")
            continue
        spec = r["spec"]
        bound = r["history"][-1]["train_bound"] if r["history"] else math.nan
        iota = "complete" if spec["missing_rate"] == 0.0 else spec["imputation"]
        lines.append(
            f"| {label} | {spec['K']} | {iota} | {r['epochs']:.2f} | {bound:.2f} | "
            f"{test_ll[label]:.2f} ± {stderr[label]:.2f} |"
        )
    lines += [
        "",
        f"Every model is scored on the same {n} test images. The paper's converged models are far",
        "higher; compare the orderings, not the levels.",
        "",
        "## Figure 1 (right): imputation accuracy vs L",
        "",
    ]
    if samples:
        lines += [
            "![Figure 1 right](figure1_right.png)",
            "",
            "| L | " + " | ".join(curves) + " | missForest |",
            "|---:|" + "---:|" * (len(curves) + 1),
        ]
        forest_cell = f"{forest['accuracy']:.4f}" if forest else "not finished"
        for index, s in enumerate(samples):
            lines.append(
                f"| {s} | " + " | ".join(f"{c[index]:.4f}" for c in curves.values()) + f" | {forest_cell} |"
            )
    else:
        lines.append("Not reached before the deadline.")
    if forest:
        lines += [
            "",
            f"missForest: {forest['iterations']} sweeps in {forest['seconds']:.0f} s on "
            f"{forest['settings']['n_jobs']} CPU processes "
            + (
                "(it reached its sweep limit before the stopping rule fired)."
                if forest["iterations"] >= forest["settings"]["max_iter"]
                else "(stopped by the Stekhoven & Bühlmann rule)."
            ),
        ]
    if proposal:
        lines += [
            "",
            "## The proposal behind the zero ι / oracle ι gap",
            "",
            "Figure 1 (left) scores complete test images, so a zero-ι encoder, trained on images",
            "with half their pixels zeroed, is handed inputs unlike any it saw in training. Any q is",
            "a valid importance distribution, so the same models can be scored with the encoder fed a",
            "50%-masked copy of each test image instead (`python -m paper.gpu proposal",
            "reports/gpu/run --out reports/gpu/proposal.md`; the oracle encoder sees the complete",
            "image either way and is the control):",
            "",
            proposal.strip(),
        ]
    lines += [
        "",
        "## Figures 2 and 3 (missIWAE, K=50, zero ι; Figure 3 with L = 10 000)",
        "",
        "![Figure 2](figure2_samples.png) ![Figure 3](figure3_imputations.png)",
        "",
        "## Exit status of each process",
        "",
        "```json",
        json.dumps(machine.get("exit", {}), indent=1),
        "```",
        "",
    ]
    return "\n".join(lines)


__all__ = ["common_rows", "load_results", "readme", "render"]
