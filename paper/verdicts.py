"""The paper's claims, one per sentence of the paper, and the verdict on each, computed from the
numbers alone (never by hand).

Used by both reports: `paper.report` (the Ray/MLflow cluster report) and `paper.gpu` (the
time-boxed single-GPU run). Each function takes plain numbers and returns one `Verdict` per
claim: "holds", "does not hold", or "not measurable at this budget" when a number is missing.

How the words of the paper are read:
- "A clearly beats B": A − B > Z · se(A − B), with Z = `STANDARD_ERRORS` (2) and
  se(A − B) = √(se_A² + se_B²), the standard errors of the two estimates (over test rows for a
  log-likelihood). That treats the estimates as independent; on the same test rows they are
  positively correlated, so this se is an upper bound and "clearly" errs towards "does not hold".
- "A and B on par": |A − B| ≤ Z · se(A − B), i.e. neither clearly beats the other.
- Where a standard error was not recorded (reports written before they were), both rules fall
  back to the fixed threshold of `CLEARLY_NATS` nats, and the evidence says so.
- "beats", "most accurate", "<" and "worse": the order of the point estimates, as the paper
  reads its own tables and curves; "less than 2 nats below": the point estimate of the gap.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

CLAIMS_LEFT = (
    "at K=1, oracle ι clearly beats zero ι",
    "at K=50, zero and oracle ι are on par, and both beat K=1",
    "missIWAE (K=50, zero ι, half the pixels) is less than 2 nats below the complete-data VAE",
)
CLAIMS_RIGHT = (
    "missVAE and missIWAE beat missForest for L ≥ 10",
    "missIWAE is the most accurate for L ≥ 1000",
)
CLAIMS_TABLE1 = (
    "accuracy rises zero < missForest < missIWAE single < missIWAE multiple",
    "missIWAE multiple imputation beats complete data in accuracy but not in cross-entropy",
    "missForest's cross-entropy is worse than missIWAE's (single and multiple)",
)
COMPLETE_VAE = "complete VAE (K=1)"  # the sweep label of the reference the paper's 2 nats is from
STANDARD_ERRORS = 2.0  # Z of "clearly" and "on par"
CLEARLY_NATS = 1.0  # the fallback threshold when no standard error was recorded
NOT_MEASURABLE = "not measurable at this budget"


@dataclasses.dataclass(frozen=True)
class Verdict:
    claim: str
    verdict: str  # "holds", "does not hold", "not measurable at this budget"
    evidence: str


def _holds(condition: bool) -> str:
    return "holds" if condition else "does not hold"


@dataclasses.dataclass(frozen=True)
class Difference:
    """A − B with its standard error (NaN when either estimate has none)."""

    value: float
    se: float

    @classmethod
    def of(cls, a: float, b: float, se_a: float = math.nan, se_b: float = math.nan) -> Difference:
        return cls(a - b, math.hypot(se_a, se_b))

    @property
    def threshold(self) -> float:
        """How far from 0 the difference must be to count: Z standard errors, or the fallback."""
        return STANDARD_ERRORS * self.se if math.isfinite(self.se) else CLEARLY_NATS

    def clearly_positive(self) -> bool:
        return self.value > self.threshold

    def on_par(self) -> bool:
        return abs(self.value) <= self.threshold

    def describe(self) -> str:
        """'+6.02 ± 0.31 nats (2 se = 0.62)' or, without an se, the fallback threshold."""
        if math.isfinite(self.se):
            return f"{self.value:+.2f} ± {self.se:.2f} nats ({STANDARD_ERRORS:g} se = {self.threshold:.2f})"
        return f"{self.value:+.2f} nats (no standard error recorded: threshold {CLEARLY_NATS:g} nats)"


def figure1_left_verdicts(
    test_ll: Mapping[str, float], stderr: Mapping[str, float] | None = None
) -> list[Verdict]:
    """test_ll: sweep label -> test log-likelihood (complete test images); stderr: the same
    labels -> its standard error over test rows (optional, see the module docstring)."""

    def get(label: str) -> float:
        return float(test_ll.get(label, math.nan))

    def se(label: str) -> float:
        return float((stderr or {}).get(label, math.nan))

    z1, o1, z50, o50 = get("K=1 zero"), get("K=1 oracle"), get("K=50 zero"), get("K=50 oracle")
    vae = get(COMPLETE_VAE)
    out = []
    if math.isnan(z1) or math.isnan(o1):
        out.append(Verdict(CLAIMS_LEFT[0], NOT_MEASURABLE, "a K=1 trial did not finish"))
    else:
        gap = Difference.of(o1, z1, se("K=1 oracle"), se("K=1 zero"))
        out.append(
            Verdict(CLAIMS_LEFT[0], _holds(gap.clearly_positive()), f"oracle − zero = {gap.describe()}")
        )
    if any(math.isnan(v) for v in (z1, o1, z50, o50)):
        out.append(Verdict(CLAIMS_LEFT[1], NOT_MEASURABLE, "a trial did not finish"))
    else:
        apart = Difference.of(o50, z50, se("K=50 oracle"), se("K=50 zero"))
        above = min(z50, o50) - max(z1, o1)
        evidence = f"oracle − zero at K=50 = {apart.describe()}; worst K=50 − best K=1 = {above:+.2f}"
        out.append(Verdict(CLAIMS_LEFT[1], _holds(apart.on_par() and above > 0), evidence))
    if math.isnan(z50) or math.isnan(vae):
        out.append(Verdict(CLAIMS_LEFT[2], NOT_MEASURABLE, "a trial did not finish"))
    else:
        below = Difference.of(vae, z50, se(COMPLETE_VAE), se("K=50 zero"))
        evidence = f"VAE − missIWAE = {below.value:+.2f} nats" + (
            f" ± {below.se:.2f}" if math.isfinite(below.se) else ""
        )
        out.append(Verdict(CLAIMS_LEFT[2], _holds(below.value < 2.0), evidence))
    return out


def figure1_right_verdicts(
    samples: Sequence[int], miss_vae: Sequence[float], miss_iwae: Sequence[float], missforest: float
) -> list[Verdict]:
    """Accuracies per L (same order as `samples`) against missForest's single number."""
    out = []
    if math.isnan(missforest):
        out.append(Verdict(CLAIMS_RIGHT[0], NOT_MEASURABLE, "missForest was not run"))
    else:
        checked = [(n, v, w) for n, v, w in zip(samples, miss_vae, miss_iwae, strict=True) if n >= 10]
        if not checked:
            out.append(Verdict(CLAIMS_RIGHT[0], NOT_MEASURABLE, "no L ≥ 10 in the grid"))
        else:
            worst = min(min(v, w) for _, v, w in checked)
            evidence = f"lowest for L ≥ 10: {worst:.4f}; missForest {missforest:.4f}"
            out.append(Verdict(CLAIMS_RIGHT[0], _holds(worst > missforest), evidence))
    large = [(n, v, w) for n, v, w in zip(samples, miss_vae, miss_iwae, strict=True) if n >= 1000]
    if not large:
        out.append(Verdict(CLAIMS_RIGHT[1], NOT_MEASURABLE, "no L ≥ 1000 in the grid"))
    else:
        # "Most accurate" is read per L, as in the paper's curves: at each L ≥ 1000 missIWAE is
        # above missVAE at that same L and above missForest (which has no L).
        forest = -math.inf if math.isnan(missforest) else missforest
        margin, at = min((w - max(v, forest), n) for n, v, w in large)
        evidence = (
            f"smallest lead of missIWAE over the best other at the same L ≥ 1000: {margin:+.4f} (L = {at})"
        )
        out.append(Verdict(CLAIMS_RIGHT[1], _holds(margin > 0), evidence))
    return out


def table1_verdicts(
    accuracy: Mapping[str, float], cross_entropy: Mapping[str, float] | None = None
) -> list[Verdict]:
    """Table 1's three sentences, from the mean test accuracy and cross-entropy per dataset
    (zero, missforest, missiwae_single, missiwae_multiple, complete)."""
    losses = cross_entropy or {}

    def acc(name: str) -> float:
        return float(accuracy.get(name, math.nan))

    def loss(name: str) -> float:
        return float(losses.get(name, math.nan))

    order = ("zero", "missforest", "missiwae_single", "missiwae_multiple")
    values = [acc(name) for name in order]
    out = []
    if any(math.isnan(v) for v in values):
        out.append(Verdict(CLAIMS_TABLE1[0], NOT_MEASURABLE, "a dataset was not classified"))
    else:
        rising = all(a < b for a, b in itertools.pairwise(values))
        evidence = " < ".join(f"{name} {value:.4f}" for name, value in zip(order, values, strict=True))
        out.append(Verdict(CLAIMS_TABLE1[0], _holds(rising), evidence))
    numbers = (acc("missiwae_multiple"), acc("complete"), loss("missiwae_multiple"), loss("complete"))
    if any(math.isnan(v) for v in numbers):
        out.append(Verdict(CLAIMS_TABLE1[1], NOT_MEASURABLE, "complete data or a cross-entropy is missing"))
    else:
        acc_multiple, acc_complete, ce_multiple, ce_complete = numbers
        evidence = (
            f"accuracy multiple − complete = {acc_multiple - acc_complete:+.4f}; "
            f"cross-entropy multiple − complete = {ce_multiple - ce_complete:+.4f}"
        )
        # Beating in cross-entropy would be a lower one: "not" holds when it is no lower.
        holds = acc_multiple > acc_complete and ce_multiple >= ce_complete
        out.append(Verdict(CLAIMS_TABLE1[1], _holds(holds), evidence))
    forest, single, multiple = loss("missforest"), loss("missiwae_single"), loss("missiwae_multiple")
    if any(math.isnan(v) for v in (forest, single, multiple)):
        out.append(Verdict(CLAIMS_TABLE1[2], NOT_MEASURABLE, "a cross-entropy is missing"))
    else:
        evidence = f"missForest {forest:.4f}; missIWAE single {single:.4f}, multiple {multiple:.4f}"
        out.append(Verdict(CLAIMS_TABLE1[2], _holds(forest > max(single, multiple)), evidence))
    return out


def figure1_left_numbers(left: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """The test log-likelihoods the Figure 1 (left) verdicts are computed from, and their
    standard errors: the defensive mixture estimate where the report has it (one estimator for
    every model, see `missiwae.evaluation`), else the sweep's naive estimate (no standard error)."""
    mixture = left.get("estimators", {}).get("mixture")
    if mixture:
        return (
            {label: float(v["mean"]) for label, v in mixture.items()},
            {label: float(v["se"]) for label, v in mixture.items()},
        )
    return dict(left["test_log_likelihood"]), dict(left.get("test_log_likelihood_se", {}))


def verdicts_of(results: Mapping[str, Any]) -> list[Verdict]:
    """Every verdict, from the numbers of a results.json alone."""
    right, table1 = results["figure1_right"], results["table1"]
    vae, iwae = list(right["curves"].values())
    return (
        figure1_left_verdicts(*figure1_left_numbers(results["figure1_left"]))
        + figure1_right_verdicts(right["L"], vae, iwae, float(right["missforest"]))
        + table1_verdicts(table1["accuracy"], table1.get("cross_entropy"))
    )


__all__ = [
    "CLAIMS_LEFT",
    "CLAIMS_RIGHT",
    "CLAIMS_TABLE1",
    "CLEARLY_NATS",
    "STANDARD_ERRORS",
    "Difference",
    "Verdict",
    "figure1_left_numbers",
    "figure1_left_verdicts",
    "figure1_right_verdicts",
    "table1_verdicts",
    "verdicts_of",
]
