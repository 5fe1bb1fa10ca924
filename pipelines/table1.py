"""Table 1 of the paper as data: one row per (dataset, seed), the summary over seeds beside the
paper's numbers, and the markdown / CSV files (pipelines/classify.py computes the rows)."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipelines.storage import write_text_atomic

# Table 1 of Mattei & Frellsen (2019): (test accuracy, test cross-entropy).
PAPER_TABLE1: dict[str, tuple[float, float]] = {
    "zero": (0.97388, 0.10033),
    "missforest": (0.98049, 0.06446),
    "missiwae_single": (0.98473, 0.05101),
    "missiwae_multiple": (0.98683, 0.05090),
    "complete": (0.98663, 0.04638),
}
PAPER_ORDER: tuple[str, ...] = (
    "zero",
    "missforest",
    "missiwae_single",
    "missiwae_multiple",
    "missiwae_multiple_pooled",
    "missiwae_ensemble",
    "missiwae_ensemble_pooled",
    "complete",
)
LABELS: dict[str, str] = {
    "zero": "Zero imputation",
    "missforest": "missForest",
    "missiwae_single": "missIWAE single imputation",
    "missiwae_multiple": "missIWAE multiple imputation (union)",
    "missiwae_multiple_pooled": "missIWAE multiple imputation (pooled)",
    "missiwae_ensemble": "missIWAE bootstrap-ensemble multiple imputation (union)",
    "missiwae_ensemble_pooled": "missIWAE bootstrap-ensemble multiple imputation (pooled)",
    "complete": "Complete data",
}


# ------------------------------------------------------------------------------ results


@dataclasses.dataclass(frozen=True)
class RunRow:
    """One (dataset, seed) outcome.

    For the pooled reading ``best_epoch`` / ``epochs_run`` are means over the M networks,
    ``seconds`` their sum and ``num_networks`` = M; ``history`` is then empty; and the M
    networks' test accuracies a_m, each with variance a_m (1 - a_m) / n_test, are pooled by
    Rubin's rules (missiwae.pooling.rubin): ``accuracy_fmi`` is the fraction of missing
    information about the test accuracy and ``accuracy_interval_width`` the width of its 95%
    interval -- how much the imputations' spread adds (NaN for the other readings).
    """

    dataset: str
    seed: int
    test_accuracy: float
    test_cross_entropy: float
    best_epoch: float
    epochs_run: float
    seconds: float  # training time inside the task(s), queueing excluded
    num_networks: int = 1
    history: tuple[dict[str, float], ...] = ()  # per epoch, see ClassifierResult.history
    accuracy_fmi: float = math.nan
    accuracy_interval_width: float = math.nan

    def record(self) -> dict[str, Any]:
        """The row without its history (what the CSV holds)."""
        out = dataclasses.asdict(self)
        del out["history"]
        return out


@dataclasses.dataclass(frozen=True)
class SummaryRow:
    """Table 1 row: mean and sample sd (ddof=1; NaN for one seed) over seeds; for a pooled
    reading also the mean over seeds of its Rubin FMI and interval width (RunRow)."""

    dataset: str
    num_seeds: int
    accuracy_mean: float
    accuracy_sd: float
    cross_entropy_mean: float
    cross_entropy_sd: float
    paper_accuracy: float | None
    paper_cross_entropy: float | None
    accuracy_fmi_mean: float = math.nan
    accuracy_interval_width_mean: float = math.nan

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ClassifyResult:
    runs: tuple[RunRow, ...]
    summary: tuple[SummaryRow, ...]
    seconds: float  # wall clock of the whole fan-out (reading included)

    def run(self, dataset: str, seed: int) -> RunRow:
        for row in self.runs:
            if row.dataset == dataset and row.seed == seed:
                return row
        raise KeyError(f"no run for dataset {dataset!r}, seed {seed}")

    def row(self, dataset: str) -> SummaryRow:
        for row in self.summary:
            if row.dataset == dataset:
                return row
        raise KeyError(f"no summary row for dataset {dataset!r}")


# ------------------------------------------------------------------------------ summary


def paper_order(names: Sequence[str]) -> list[str]:
    known = [n for n in PAPER_ORDER if n in names]
    return known + [n for n in names if n not in PAPER_ORDER]


def summarize(runs: Sequence[RunRow]) -> tuple[SummaryRow, ...]:
    by_dataset: dict[str, list[RunRow]] = {}
    for row in runs:
        by_dataset.setdefault(row.dataset, []).append(row)
    rows = []
    for name in paper_order(list(by_dataset)):
        group = by_dataset[name]
        acc = [r.test_accuracy for r in group]
        ce = [r.test_cross_entropy for r in group]
        paper = PAPER_TABLE1.get(name)
        rows.append(
            SummaryRow(
                dataset=name,
                num_seeds=len(group),
                accuracy_mean=statistics.fmean(acc),
                accuracy_sd=statistics.stdev(acc) if len(acc) > 1 else math.nan,
                cross_entropy_mean=statistics.fmean(ce),
                cross_entropy_sd=statistics.stdev(ce) if len(ce) > 1 else math.nan,
                paper_accuracy=paper[0] if paper else None,
                paper_cross_entropy=paper[1] if paper else None,
                accuracy_fmi_mean=statistics.fmean(r.accuracy_fmi for r in group),
                accuracy_interval_width_mean=statistics.fmean(r.accuracy_interval_width for r in group),
            )
        )
    return tuple(rows)


# ------------------------------------------------------------------------------ output


def _fmt(value: float | None, digits: int = 5) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def format_table(result: ClassifyResult) -> str:
    """Table 1 as markdown: mean ± sd over seeds, the paper's numbers beside."""
    lines = [
        "| dataset | method | seeds | test accuracy | test cross-entropy "
        "| paper accuracy | paper cross-entropy |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in result.summary:
        lines.append(
            f"| {row.dataset} | {LABELS.get(row.dataset, row.dataset)} | {row.num_seeds} "
            f"| {_fmt(row.accuracy_mean)} ± {_fmt(row.accuracy_sd)} "
            f"| {_fmt(row.cross_entropy_mean)} ± {_fmt(row.cross_entropy_sd)} "
            f"| {_fmt(row.paper_accuracy)} | {_fmt(row.paper_cross_entropy)} |"
        )
    return "\n".join(lines) + "\n"


def _csv_text(records: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in records)
    return buffer.getvalue()


def write_table(result: ClassifyResult, directory: Path | str) -> dict[str, Path]:
    """Write ``table1.csv`` (summary), ``table1.md`` and ``classify_runs.csv`` (one row per
    dataset and seed) into ``directory``, each atomically (temp file + rename).

    Returns ``{"csv": ..., "markdown": ..., "runs": ...}``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "table1.csv", "markdown": out / "table1.md", "runs": out / "classify_runs.csv"}
    write_text_atomic(paths["csv"], _csv_text([r.record() for r in result.summary]))
    write_text_atomic(paths["markdown"], format_table(result))
    write_text_atomic(paths["runs"], _csv_text([r.record() for r in result.runs]))
    return paths


__all__ = [
    "LABELS",
    "PAPER_ORDER",
    "PAPER_TABLE1",
    "ClassifyResult",
    "RunRow",
    "SummaryRow",
    "format_table",
    "paper_order",
    "summarize",
    "write_table",
]
