"""The paper's claims and the verdict on each, computed from the numbers alone (never by hand).

Used by both reports: `paper.report` (the Ray/MLflow cluster report) and `paper.gpu` (the
time-boxed single-GPU run). Each function takes plain numbers and returns one `Verdict` per
claim: "holds", "does not hold", or "not measurable at this budget" when a number is missing.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

# Imputation accuracy of missForest and missIWAE in the paper's Figure 1 (right) is shown only
# as curves; the claims are orderings, checked below. Table 1 is in pipelines.classify.
CLAIMS_LEFT = (
    "at K=1, oracle ι clearly beats zero ι",
    "at K=50, zero and oracle ι are on par, and both beat K=1",
    "missIWAE (K=50, zero ι, half the pixels) is less than 2 nats below the complete-data VAE",
)
CLAIMS_RIGHT = ("missVAE and missIWAE beat missForest for L ≥ 10", "missIWAE is best for L ≥ 1000")
CLEARLY_NATS = 1.0  # "clearly better" / "on par" threshold for Figure 1 (left), in nats


@dataclasses.dataclass(frozen=True)
class Verdict:
    claim: str
    verdict: str  # "holds", "does not hold", "not measurable at this budget"
    evidence: str


def figure1_left_verdicts(test_ll: Mapping[str, float]) -> list[Verdict]:
    """test_ll: sweep label -> test log-likelihood (complete test images)."""

    def get(label: str) -> float:
        return float(test_ll.get(label, math.nan))

    z1, o1, z50, o50 = get("K=1 zero"), get("K=1 oracle"), get("K=50 zero"), get("K=50 oracle")
    vae = get("complete VAE (K=1)")
    out = []
    if math.isnan(z1) or math.isnan(o1):
        out.append(Verdict(CLAIMS_LEFT[0], "not measurable at this budget", "a K=1 trial did not finish"))
    else:
        gap = o1 - z1
        verdict = "holds" if gap > CLEARLY_NATS else "does not hold"
        out.append(Verdict(CLAIMS_LEFT[0], verdict, f"oracle − zero = {gap:+.2f} nats at K=1"))
    if any(math.isnan(v) for v in (z1, o1, z50, o50)):
        out.append(Verdict(CLAIMS_LEFT[1], "not measurable at this budget", "a trial did not finish"))
    else:
        par = abs(o50 - z50) <= CLEARLY_NATS
        above = min(z50, o50) > max(z1, o1)
        verdict = "holds" if par and above else "does not hold"
        evidence = (
            f"|oracle − zero| = {abs(o50 - z50):.2f} nats at K=50; "
            f"worst K=50 − best K=1 = {min(z50, o50) - max(z1, o1):+.2f}"
        )
        out.append(Verdict(CLAIMS_LEFT[1], verdict, evidence))
    if math.isnan(z50) or math.isnan(vae):
        out.append(Verdict(CLAIMS_LEFT[2], "not measurable at this budget", "a trial did not finish"))
    else:
        gap = vae - z50
        out.append(
            Verdict(
                CLAIMS_LEFT[2], "holds" if gap < 2.0 else "does not hold", f"VAE − missIWAE = {gap:+.2f} nats"
            )
        )
    return out


def figure1_right_verdicts(
    samples: Sequence[int], miss_vae: Sequence[float], miss_iwae: Sequence[float], missforest: float
) -> list[Verdict]:
    """Accuracies per L (same order as `samples`) against missForest's single number."""
    out = []
    if math.isnan(missforest):
        out.append(Verdict(CLAIMS_RIGHT[0], "not measurable at this budget", "missForest was not run"))
    else:
        checked = [(n, v, w) for n, v, w in zip(samples, miss_vae, miss_iwae, strict=True) if n >= 10]
        if not checked:
            out.append(Verdict(CLAIMS_RIGHT[0], "not measurable at this budget", "no L ≥ 10 in the grid"))
        else:
            worst = min(min(v, w) for _, v, w in checked)
            verdict = "holds" if worst > missforest else "does not hold"
            out.append(
                Verdict(
                    CLAIMS_RIGHT[0], verdict, f"lowest for L ≥ 10: {worst:.4f}; missForest {missforest:.4f}"
                )
            )
    large = [(n, v, w) for n, v, w in zip(samples, miss_vae, miss_iwae, strict=True) if n >= 1000]
    if not large:
        out.append(Verdict(CLAIMS_RIGHT[1], "not measurable at this budget", "no L ≥ 1000 in the grid"))
    else:
        # "Best" is read per L, as in the paper's curves: at each L ≥ 1000 missIWAE is above
        # missVAE at that same L and above missForest (which has no L).
        forest = -math.inf if math.isnan(missforest) else missforest
        margin, at = min((w - max(v, forest), n) for n, v, w in large)
        verdict = "holds" if margin > 0 else "does not hold"
        evidence = (
            f"smallest lead of missIWAE over the best other at the same L ≥ 1000: {margin:+.4f} (L = {at})"
        )
        out.append(Verdict(CLAIMS_RIGHT[1], verdict, evidence))
    return out


def table1_verdicts(accuracy: Mapping[str, float]) -> list[Verdict]:
    """The paper's ordering: zero < missForest < missIWAE single < multiple ≈ complete."""
    order = ("zero", "missforest", "missiwae_single", "missiwae_multiple")
    values = [accuracy.get(name, math.nan) for name in order]
    claim = "accuracy rises zero < missForest < missIWAE single < missIWAE multiple"
    if any(math.isnan(v) for v in values):
        return [Verdict(claim, "not measurable at this budget", "a dataset was not classified")]
    rising = all(a < b for a, b in itertools.pairwise(values))
    evidence = " < ".join(f"{name} {value:.4f}" for name, value in zip(order, values, strict=True))
    out = [Verdict(claim, "holds" if rising else "does not hold", evidence)]
    complete, multiple = accuracy.get("complete", math.nan), values[-1]
    claim = "missIWAE multiple imputation is on par with complete data (within 0.002)"
    if math.isnan(complete):
        out.append(Verdict(claim, "not measurable at this budget", "complete data was not classified"))
    else:
        gap = complete - multiple
        out.append(
            Verdict(
                claim, "holds" if abs(gap) <= 0.002 else "does not hold", f"complete − multiple = {gap:+.4f}"
            )
        )
    return out


def verdicts_of(results: Mapping[str, Any]) -> list[Verdict]:
    """Every verdict, from the numbers of a results.json alone."""
    right = results["figure1_right"]
    vae, iwae = list(right["curves"].values())
    return (
        figure1_left_verdicts(results["figure1_left"]["test_log_likelihood"])
        + figure1_right_verdicts(right["L"], vae, iwae, float(right["missforest"]))
        + table1_verdicts(results["table1"]["accuracy"])
    )


__all__ = [
    "CLAIMS_LEFT",
    "CLAIMS_RIGHT",
    "CLEARLY_NATS",
    "Verdict",
    "figure1_left_verdicts",
    "figure1_right_verdicts",
    "table1_verdicts",
    "verdicts_of",
]
