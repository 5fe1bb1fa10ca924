"""The sweep's outputs: trials ranked by test log-likelihood (markdown + CSV) and a bar chart in
the style of the paper's Figure 1 (left)."""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipelines.storage import atomic_file, write_json_atomic, write_text_atomic
from tune.space import trial_config
from tune.trial import overrides_of

COLUMNS = (
    "rank",
    "trial",
    "K",
    "iota",
    "data",
    "learning_rate",
    "latent_dim",
    "epochs",
    "valid_bound",
    "test_log_likelihood",
    "test_log_px_o",
    "status",
    "trial_id",
)


@dataclasses.dataclass(frozen=True)
class TrialRow:
    trial: str
    K: int
    iota: str  # "zero" / "oracle" / "learned"; "complete" when nothing is missing
    data: str  # "50% MCAR" / "complete"
    learning_rate: float
    latent_dim: int
    epochs: int
    valid_bound: float
    test_log_likelihood: float  # complete test images (NaN: the trial did not finish)
    test_log_px_o: float
    status: str  # "done", "stopped early (epoch e)", "error", "unfinished"
    trial_id: str


def trial_row(
    base: Mapping[str, Any], params: Mapping[str, Any], metrics: Mapping[str, Any], status: str, trial_id: str
) -> TrialRow:
    """One trial's row from its Tune params, its last reported metrics and its Tune status
    ("TERMINATED", "ERROR", ...)."""
    config = trial_config(base, overrides_of(dict(params)))
    complete = config.data.missing_rate == 0.0
    test_ll = _float(metrics.get("test_log_likelihood"))
    epochs = int(_float(metrics.get("epoch"), 0.0))
    if status == "ERROR":
        state = "error"
    elif not math.isnan(test_ll):
        state = "done"
    elif status == "TERMINATED":
        state = f"stopped early (epoch {epochs})"  # a scheduler ended it
    else:
        state = "unfinished"
    return TrialRow(
        trial=str(params["variant"]["label"]),
        K=config.train.K,
        iota="complete" if complete else config.model.imputation,
        data="complete" if complete else f"{config.data.missing_rate:.0%} MCAR",
        learning_rate=config.train.learning_rate,
        latent_dim=config.model.latent_dim,
        epochs=epochs,
        valid_bound=_float(metrics.get("valid_bound")),
        test_log_likelihood=test_ll,
        test_log_px_o=_float(metrics.get("test_log_px_o")),
        status=state,
        trial_id=trial_id,
    )


def rank(rows: Sequence[TrialRow]) -> list[TrialRow]:
    """Best test log-likelihood first; trials without one last, in label order."""
    return sorted(
        rows,
        key=lambda r: (math.isnan(r.test_log_likelihood), -_or(r.test_log_likelihood, 0.0), r.trial),
    )


def markdown_table(rows: Sequence[TrialRow], title: str = "") -> str:
    header = [
        "rank",
        "trial",
        "K",
        "ι",
        "data",
        "lr",
        "latent",
        "epochs",
        "valid L_K",
        "test log p(x)",
        "test log p(x_o)",
        "status",
    ]
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in enumerate(rank(rows), start=1):
        cells = [
            str(index),
            row.trial,
            str(row.K),
            row.iota,
            row.data,
            f"{row.learning_rate:.3g}",
            str(row.latent_dim),
            str(row.epochs),
            _fmt(row.valid_bound),
            _fmt(row.test_log_likelihood),
            _fmt(row.test_log_px_o),
            row.status,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "test log p(x): importance-sampled log-likelihood of the complete test images (the paper's "
        "Figure 1 left); test log p(x_o): of the observed half only. Higher is better.",
    ]
    return "\n".join(lines) + "\n"


def write_ranking(rows: Sequence[TrialRow], out_dir: Path, title: str = "") -> dict[str, Path]:
    """ranking.md, ranking.csv, ranking.json and figure1_left.png under out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ranked = rank(rows)
    paths = {
        "markdown": out_dir / "ranking.md",
        "csv": out_dir / "ranking.csv",
        "json": out_dir / "ranking.json",
        "figure": out_dir / "figure1_left.png",
    }
    write_text_atomic(paths["markdown"], markdown_table(ranked, title))
    with atomic_file(paths["csv"]) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for index, row in enumerate(ranked, start=1):
            values = dataclasses.asdict(row)
            writer.writerow([index] + [values[c] for c in COLUMNS[1:]])
    write_json_atomic(paths["json"], [dataclasses.asdict(r) for r in ranked])
    import matplotlib.pyplot as plt

    figure = figure1_left(ranked, title)
    with atomic_file(paths["figure"]) as temporary:
        figure.savefig(temporary, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    return paths


IOTA_COLOURS = {"zero": "#4C72B0", "oracle": "#DD8452", "learned": "#55A868", "complete": "#8C8C8C"}


def figure1_left(rows: Sequence[TrialRow], title: str = "") -> Any:
    """Grouped bars: one group per K, one bar per ι (complete data in grey), the best trial of
    each (K, ι) when a sweep has several; bars start below the lowest value so differences of a
    few nats stay visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best: dict[tuple[int, str], float] = {}
    for row in rows:
        if math.isnan(row.test_log_likelihood):
            continue
        key = (row.K, row.iota)
        best[key] = max(best.get(key, -math.inf), row.test_log_likelihood)
    figure, axis = plt.subplots(figsize=(6.5, 4))
    if not best:
        axis.text(0.5, 0.5, "no finished trials", ha="center", va="center", transform=axis.transAxes)
        axis.axis("off")
        return figure
    ks = sorted({k for k, _ in best})
    iotas = [i for i in IOTA_COLOURS if any(key[1] == i for key in best)]
    floor = min(best.values())
    span = max(best.values()) - floor
    bottom = floor - max(0.15 * span, 1.0)
    width = 0.8 / len(iotas)
    for j, iota in enumerate(iotas):
        xs = [i + (j - (len(iotas) - 1) / 2) * width for i, k in enumerate(ks) if (k, iota) in best]
        heights = [best[(k, iota)] - bottom for k in ks if (k, iota) in best]
        label = "complete data" if iota == "complete" else f"{iota} ι"
        bars = axis.bar(xs, heights, width * 0.95, bottom=bottom, color=IOTA_COLOURS[iota], label=label)
        axis.bar_label(bars, labels=[f"{h + bottom:.1f}" for h in heights], fontsize=8, padding=2)
    axis.set_xticks(range(len(ks)), [f"K = {k}" for k in ks])
    axis.set_ylabel("test log-likelihood (nats)")
    axis.set_ylim(bottom, max(best.values()) + max(0.15 * span, 1.0))
    axis.set_title(title or "test log-likelihood by K and imputation function")
    axis.legend(fontsize=8, loc="lower right")
    return figure


def _float(value: Any, default: float = math.nan) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _or(value: float, default: float) -> float:
    return default if math.isnan(value) else value


def _fmt(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}"


__all__ = ["TrialRow", "figure1_left", "markdown_table", "rank", "trial_row", "write_ranking"]
