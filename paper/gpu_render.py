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
    CURVE_LABELS,
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


def common_rows(models: dict[str, Any], key: str = "test_log_likelihood_per_row") -> int:
    """Test rows every model evaluated: the log-likelihoods are compared on the same images."""
    counts = [len(r.get(key, [])) for r in models.values() if r]
    return min(counts) if counts else 0


def mean_and_se(models: dict[str, Any], key: str, n: int) -> dict[str, dict[str, float]]:
    """label -> mean and standard error (`paper.report.mean_and_se`) over the first n per-row
    values under `key`; NaN for a model that has none."""
    from paper.report import mean_and_se as of_rows

    nothing = {"mean": math.nan, "se": math.nan}
    return {
        label: of_rows(np.asarray(r[key][:n], dtype=float)) if r and r.get(key) and n else nothing
        for label, r in models.items()
    }


def figure1_left(models: dict[str, Any], eval_samples: int) -> dict[str, Any]:
    """Figure 1 (left) in the report's form (`paper.verdicts.figure1_left_numbers`): the naive
    estimate, and both estimators side by side where the run has the defensive mixture."""
    from missiwae.evaluation import DEFENSIVE_MASKS

    n = common_rows(models)
    naive = mean_and_se(models, "test_log_likelihood_per_row", n)
    left: dict[str, Any] = {
        "rows": n,
        "test_log_likelihood": {label: v["mean"] for label, v in naive.items()},
        "test_log_likelihood_se": {label: v["se"] for label, v in naive.items()},
    }
    if common_rows(models, "test_log_likelihood_mixture_per_row") == n > 0:
        left["estimators"] = {
            "naive": naive,
            "mixture": mean_and_se(models, "test_log_likelihood_mixture_per_row", n),
        }
        left["mixture"] = {
            "rows": n,
            "num_samples": eval_samples,
            "num_masks": DEFENSIVE_MASKS,
            "missing_rate": 0.5,
        }
    return left


def render(folder: Path, report: Path, command: str) -> str:
    """Write report/README.md, figure1_left.png, figure1_right.png, figures 2 and 3, and the
    learning curves when the run recorded them."""
    import matplotlib.pyplot as plt

    from paper.render import accuracy_figure, epoch_test_ll_figure, learning_curves_figure
    from paper.verdicts import figure1_left_numbers, figure1_left_verdicts, figure1_right_verdicts
    from pipelines import figures
    from tune.ranking import TrialRow, write_ranking

    results = load_results(folder)
    models, forest = results["models"], results["missforest"]
    eval_samples = next((r["spec"].get("eval_samples", 0) for r in models.values() if r), 0)
    left = figure1_left(models, eval_samples)
    n = left["rows"]
    test_ll, stderr = figure1_left_numbers(left)
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
                valid_bound=best_valid_bound(r),
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
    valid_curves = learning_curves(models)
    if valid_curves:
        complete = [label for label, r in models.items() if r and r["spec"].get("missing_rate") == 0.0]
        figure = learning_curves_figure(valid_curves, complete)
        figure.savefig(report / "learning_curves.png", dpi=120, bbox_inches="tight")
        plt.close(figure)
    gap = test_curves(models)
    if gap:
        iwae_label, vae_label = CURVE_LABELS
        figure = epoch_test_ll_figure(gap, vae_label, iwae_label)
        figure.savefig(report / "test_curves.png", dpi=120, bbox_inches="tight")
        plt.close(figure)
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
    text = readme(
        results,
        test_ll,
        stderr,
        n,
        samples,
        curves,
        forest,
        verdicts,
        command,
        proposal,
        left=left,
        valid_curves=valid_curves,
        gap=gap,
    )
    write_text_atomic(report / "README.md", text)
    summary = {
        "machine": results["machine"],
        "test_log_likelihood": test_ll,
        "test_rows": n,
        "accuracy_vs_L": {"L": samples, **curves, "missforest": forest_accuracy},
        "verdicts": [dataclasses.asdict(v) for v in verdicts],
        "epochs": {label: r["epochs"] if r else None for label, r in models.items()},
        "stopped_by": {label: r.get("stopped_by") if r else None for label, r in models.items()},
        "figure1_left": left,
        "learning_curves": valid_curves,
        "test_curves": gap,
    }
    write_json_atomic(report / "results.json", summary)
    return text


def best_valid_bound(result: dict[str, Any] | None) -> float:
    """The best validation bound of a model's history (the weights early stopping kept);
    the last training bound for a run that recorded no validation bound."""
    if not result or not result.get("history"):
        return math.nan
    valid = [p["valid_bound"] for p in result["history"] if "valid_bound" in p]
    return max(valid) if valid else float(result["history"][-1]["train_bound"])


def learning_curves(models: dict[str, Any]) -> dict[str, list[float]]:
    """label -> validation bound per epoch (models whose history has one)."""
    return {
        label: [p["valid_bound"] for p in r["history"]]
        for label, r in models.items()
        if r and r.get("history") and all("valid_bound" in p for p in r["history"])
    }


def test_curves(models: dict[str, Any]) -> dict[str, list[float]]:
    """label -> test log-likelihood per epoch (defensive mixture) of the CURVE_LABELS models."""
    return {
        label: [p["test_log_likelihood"] for p in r["history"] if "test_log_likelihood" in p]
        for label, r in models.items()
        if label in CURVE_LABELS and r and any("test_log_likelihood" in p for p in r.get("history", []))
    }


def training_lines(machine: dict[str, Any], models: dict[str, Any]) -> list[str]:
    """How training ended, for the README's "reduced" list."""
    budget = 0.6 * machine["budget_s"]
    spec: dict[str, Any] = next((r["spec"] for r in models.values() if r), {})
    if "patience" not in spec:  # a run made before early stopping
        return [
            f"- Training is cut at {budget:.0f} s per model (all six at once on the one GPU), so",
            "  the models are far from converged (epochs below).",
        ]
    capture = "replayed from a CUDA graph" if machine.get("cuda_graph") else "run eagerly"
    return [
        "- Training: each model stops early once its validation bound (its own K, on "
        f"{spec['valid_rows']} validation",
        f"  images masked as its training images) has not improved for {spec['patience']} epochs "
        f"(cap {spec['max_epochs']} epochs),",
        f"  or at the training deadline, {budget:.0f} s after the start (all six at once on the one GPU,",
        f"  every step {capture}); the weights kept are those of the best validation epoch.",
    ]


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
    *,
    left: dict[str, Any] | None = None,
    valid_curves: dict[str, list[float]] | None = None,
    gap: dict[str, list[float]] | None = None,
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
        *training_lines(machine, models),
        f"- Reduced: test log-likelihood on the first {n} of the 10 000 test images (fixed random",
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
        "A model the deadline stopped was still improving: its verdicts say what an under-trained",
        "model shows, not what the paper's converged models show.",
        "",
        "## Figure 1 (left): test log-likelihood of complete test images",
        "",
        "![Figure 1 left](figure1_left.png)",
        "",
        "| model | K | ι | epochs trained | stopped by | best validation bound | test log p(x) ± SE |",
        "|---|---:|---|---:|---|---:|---:|",
    ]
    for label, r in models.items():
        if not r:
            lines.append(f"| {label} | | | did not finish | | | |")
            continue
        spec = r["spec"]
        iota = "complete" if spec["missing_rate"] == 0.0 else spec["imputation"]
        lines.append(
            f"| {label} | {spec['K']} | {iota} | {r['epochs']:.2f} | {r.get('stopped_by', 'deadline')} | "
            f"{best_valid_bound(r):.2f} | {test_ll[label]:.2f} ± {stderr[label]:.2f} |"
        )
    lines += [
        "",
        f"Every model is scored on the same {n} test images"
        + (", by the defensive mixture (below)." if left and left.get("estimators") else "."),
        "",
    ]
    if left and left.get("estimators"):
        from paper.render import estimator_table

        lines += estimator_table(left)
    if valid_curves:
        from paper.render import learning_curves_section

        lines += learning_curves_section(valid_curves)
    if gap:
        from paper.gpu_specs import CURVE_ROWS, CURVE_SAMPLES
        from paper.render import epoch_test_ll_lines

        iwae, vae = CURVE_LABELS
        lines += epoch_test_ll_lines(gap, vae, iwae, CURVE_ROWS, CURVE_SAMPLES)
    lines += [
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
