"""The paper report: verdicts computed from the numbers, and the whole code path on tiny data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from paper.render import (
    epoch_test_ll_figure,
    epoch_test_ll_lines,
    epoch_test_ll_section,
    estimator_table,
    learning_curves_figure,
    learning_curves_section,
    render_report,
)
from paper.report import rerender, run_report
from paper.verdicts import (
    figure1_left_numbers,
    figure1_left_verdicts,
    figure1_right_verdicts,
    table1_verdicts,
)
from pipelines.config import load_pipeline_config

PAPER_LIKE = {
    "K=1 zero": -90.0,
    "K=1 oracle": -87.5,
    "K=50 zero": -85.2,
    "K=50 oracle": -85.0,
    "complete VAE (K=1)": -84.0,
    "complete IWAE (K=50)": -82.0,
}


def _verdicts(verdicts) -> list[str]:
    return [v.verdict for v in verdicts]


PAPER_LIKE_SE = dict.fromkeys(PAPER_LIKE, 0.3)  # 2 se of a difference: 0.85 nats


def test_figure1_left_claims_hold_for_paper_like_numbers_and_fail_when_broken():
    assert _verdicts(figure1_left_verdicts(PAPER_LIKE, PAPER_LIKE_SE)) == ["holds"] * 3
    flat = {**PAPER_LIKE, "K=1 oracle": -89.5}  # oracle only 0.5 nats better at K=1
    assert _verdicts(figure1_left_verdicts(flat, PAPER_LIKE_SE))[0] == "does not hold"
    apart = {**PAPER_LIKE, "K=50 oracle": -83.0}  # zero and oracle 2.2 nats apart at K=50
    assert _verdicts(figure1_left_verdicts(apart, PAPER_LIKE_SE))[1] == "does not hold"
    below = {**PAPER_LIKE, "K=50 zero": -88.0, "K=50 oracle": -88.0}  # on par, but under K=1 oracle
    assert _verdicts(figure1_left_verdicts(below, PAPER_LIKE_SE))[1] == "does not hold"
    far = {**PAPER_LIKE, "complete VAE (K=1)": -80.0}  # 5.2 nats between VAE and missIWAE
    assert _verdicts(figure1_left_verdicts(far, PAPER_LIKE_SE))[2] == "does not hold"
    missing = {k: v for k, v in PAPER_LIKE.items() if k != "K=1 zero"}
    unmeasured = _verdicts(figure1_left_verdicts(missing, PAPER_LIKE_SE))[:2]
    assert unmeasured == ["not measurable at this budget"] * 2


def test_clearly_and_on_par_are_decided_by_the_standard_errors():
    # The same 2.5-nat K=1 gap and 0.2-nat K=50 gap: with se 0.3 the K=1 gap is clear (2 se of
    # the difference: 0.85 nats); with se 1.5 it is not (4.2 nats)...
    noisy = dict.fromkeys(PAPER_LIKE, 1.5)
    assert _verdicts(figure1_left_verdicts(PAPER_LIKE, noisy))[0] == "does not hold"
    # ...and 1.5 nats apart at K=50 is on par with se 1.5 but not with se 0.3.
    apart = {**PAPER_LIKE, "K=50 oracle": -83.7}
    assert _verdicts(figure1_left_verdicts(apart, noisy))[1] == "holds"
    assert _verdicts(figure1_left_verdicts(apart, PAPER_LIKE_SE))[1] == "does not hold"
    verdict = figure1_left_verdicts(PAPER_LIKE, PAPER_LIKE_SE)[0]
    assert "+2.50 ± 0.42 nats (2 se = 0.85)" in verdict.evidence
    # Without standard errors (reports written before they were recorded): the 1-nat fallback,
    # said in the evidence.
    fallback = figure1_left_verdicts(PAPER_LIKE)
    assert _verdicts(fallback) == ["holds"] * 3
    assert "no standard error recorded" in fallback[0].evidence
    assert _verdicts(figure1_left_verdicts(apart))[1] == "does not hold"


def test_figure1_right_claims_follow_the_accuracy_curves():
    samples = [1, 10, 100, 1000, 10000]
    vae = [0.80, 0.86, 0.88, 0.89, 0.89]
    iwae = [0.80, 0.87, 0.89, 0.905, 0.91]
    assert _verdicts(figure1_right_verdicts(samples, vae, iwae, 0.85)) == ["holds", "holds"]
    assert _verdicts(figure1_right_verdicts(samples, vae, iwae, 0.87))[0] == "does not hold"
    assert _verdicts(figure1_right_verdicts(samples, iwae, vae, 0.85))[1] == "does not hold"
    # "best" is per L: missVAE at L=10 000 above missIWAE at L=1000 does not break the claim
    rising = [0.80, 0.86, 0.88, 0.900, 0.908]
    assert _verdicts(figure1_right_verdicts(samples, rising, iwae, 0.85))[1] == "holds"
    tied = [0.80, 0.86, 0.88, 0.905, 0.90]  # equal at L=1000: not "best"
    assert _verdicts(figure1_right_verdicts(samples, tied, iwae, 0.85))[1] == "does not hold"
    assert _verdicts(figure1_right_verdicts(samples, vae, iwae, 0.906))[1] == "does not hold"
    assert (
        _verdicts(figure1_right_verdicts([1, 10], vae[:2], iwae[:2], math.nan))
        == ["not measurable at this budget"] * 2
    )


PAPER_TABLE1_ACCURACY = {
    "zero": 0.97388,
    "missforest": 0.98049,
    "missiwae_single": 0.98473,
    "missiwae_multiple": 0.98683,
    "complete": 0.98663,
}
PAPER_TABLE1_CROSS_ENTROPY = {
    "zero": 0.10033,
    "missforest": 0.06446,
    "missiwae_single": 0.05101,
    "missiwae_multiple": 0.05090,
    "complete": 0.04638,
}


def _table1(accuracy=None, cross_entropy=None) -> list[str]:
    return _verdicts(
        table1_verdicts(
            {**PAPER_TABLE1_ACCURACY, **(accuracy or {})},
            {**PAPER_TABLE1_CROSS_ENTROPY, **(cross_entropy or {})},
        )
    )


def test_table1_claims_hold_for_the_papers_numbers():
    assert _table1() == ["holds"] * 3


def test_table1_accuracy_ordering_fails_when_any_pair_is_swapped():
    assert _table1({"zero": 0.99})[0] == "does not hold"
    assert _table1({"missforest": 0.985})[0] == "does not hold"  # above missIWAE single
    assert _table1({"missiwae_multiple": 0.984})[0] == "does not hold"  # below single


def test_multiple_beats_complete_in_accuracy_but_not_in_cross_entropy():
    assert _table1({"complete": 0.987})[1] == "does not hold"  # complete more accurate
    assert _table1(cross_entropy={"missiwae_multiple": 0.046})[1] == "does not hold"  # lower loss too
    assert _table1(cross_entropy={"missiwae_multiple": 0.04638})[1] == "holds"  # equal: not beaten


def test_missforest_cross_entropy_worse_than_missiwae():
    assert _table1(cross_entropy={"missforest": 0.0505})[2] == "does not hold"  # better than both
    assert _table1(cross_entropy={"missforest": 0.051})[2] == "does not hold"  # better than single


def test_table1_claims_are_not_measurable_without_their_numbers():
    assert _verdicts(table1_verdicts(PAPER_TABLE1_ACCURACY)) == [
        "holds",
        "not measurable at this budget",
        "not measurable at this budget",
    ]


def test_figure1_left_verdicts_use_the_mixture_estimate_and_the_readme_shows_both():
    naive = {label: {"mean": value - 3.0, "se": 0.3} for label, value in PAPER_LIKE.items()}
    naive["K=1 oracle"]["mean"] = naive["K=1 zero"]["mean"]  # naive: no K=1 gap at all
    mixture = {label: {"mean": value, "se": 0.3} for label, value in PAPER_LIKE.items()}
    left = {
        "test_log_likelihood": {label: v["mean"] for label, v in naive.items()},
        "estimators": {"naive": naive, "mixture": mixture},
        "mixture": {"num_masks": 4, "missing_rate": 0.5, "num_samples": 1000, "rows": 1000},
    }
    assert figure1_left_numbers(left) == (PAPER_LIKE, PAPER_LIKE_SE)
    assert _verdicts(figure1_left_verdicts(*figure1_left_numbers(left)))[0] == "holds"
    lines = estimator_table(left)
    assert "| K=1 oracle | -93.00 ± 0.30 | -87.50 ± 0.30 | +5.50 |" in lines
    without = {"test_log_likelihood": left["test_log_likelihood"]}  # a report from before
    assert estimator_table(without) == []
    assert figure1_left_numbers(without) == (left["test_log_likelihood"], {})


def test_learning_curves_name_each_models_best_epoch_and_whether_the_cap_cut_it():
    curves = {
        "K=1 zero": [-120.0, -110.0, -105.0],
        "complete VAE (K=1)": [-100.0, -90.0, -92.0, float("nan")],
    }
    lines = learning_curves_section(curves)
    assert "| K=1 zero | 3 | 3 | -105.0000 | yes |" in lines  # still improving: cut by the cap
    assert "| complete VAE (K=1) | 4 | 2 | -90.0000 | no |" in lines
    assert learning_curves_section(None) == [] and learning_curves_section({}) == []  # older reports
    figure = learning_curves_figure(curves, complete={"complete VAE (K=1)"})
    assert [axis.get_title() for axis in figure.axes] == [
        "incomplete data: bound on log p(x_o)",
        "complete data: bound on log p(x)",
    ]
    assert next(line.get_label() for line in figure.axes[1].get_lines()) == "complete VAE (K=1)"


def test_tiny_report_runs_every_experiment_and_writes_a_readme_with_verdicts(
    ray_cluster, data_root, tmp_path
):
    config = load_pipeline_config("tiny", [f"run_dir={tmp_path / 'run'}", f"data.data_dir={data_root}"])
    out = tmp_path / "report"
    results = run_report(config, "tiny", out, "python -m paper.report --config tiny")

    names = {p.name for p in out.iterdir()}
    expected = {"README.md", "results.json", "ranking.md", "figure1_left.png", "figure1_right.png"}
    assert expected | {"figure2_samples.png", "figure3_imputations.png", "learning_curves.png"} <= names
    learning = results["learning_curves"]  # every trial's validation bound, epoch by epoch
    assert set(learning) == {"K=1 zero", "K=2 zero"}
    assert all(len(v) == config.train.epochs and all(math.isfinite(b) for b in v) for v in learning.values())
    assert set(results["figure1_left"]["test_log_likelihood"]) == {"K=1 zero", "K=2 zero"}
    measured = results["measured_seconds"]  # what reused work cost when it ran
    assert set(measured["trial_train_seconds"]) == {"K=1 zero", "K=2 zero"}
    assert measured["impute_seconds"]["train/total"] > 0
    curves = results["figure1_right"]["curves"]
    assert list(curves) == ["missVAE (K=1 zero)", "missIWAE (K=2 zero)"]
    assert all(0.0 < a <= 1.0 for values in curves.values() for a in values)
    assert 0.0 < results["figure1_right"]["missforest"] <= 1.0
    estimators = results["figure1_left"]["estimators"]  # both estimators, for every trial
    assert {name: set(by_label) for name, by_label in estimators.items()} == {
        "naive": {"K=1 zero", "K=2 zero"},
        "mixture": {"K=1 zero", "K=2 zero"},
    }
    assert all(math.isfinite(v["mean"]) and v["se"] > 0 for e in estimators.values() for v in e.values())
    accuracy = results["table1"]["accuracy"]
    assert {"zero", "missforest", "missiwae_single", "missiwae_multiple", "complete"} <= set(accuracy)
    readme = (out / "README.md").read_text()
    assert readme == render_report(
        json.loads((out / "results.json").read_text()), (out / "ranking.md").read_text()
    )
    assert "| model | naive | defensive mixture | mixture − naive |" in readme
    assert "![Learning curves](learning_curves.png)" in readme
    # The test curve (evaluate.curve_rows): every trial's complete-image log p(x) after each epoch.
    test_curves = results["test_curves"]
    assert set(test_curves["curves"]) == {"K=1 zero", "K=2 zero"} and "test_curves.png" in names
    assert all(
        len(v) == config.train.epochs and all(math.isfinite(x) and x < 0 for x in v)
        for v in test_curves["curves"].values()
    )
    assert "![Test curves](test_curves.png)" in readme
    # The tiny space has no K=50 or oracle trial: those claims are reported, not hidden.
    verdicts = {v["claim"]: v["verdict"] for v in results["verdicts"]}
    assert len(verdicts) == 8 and "not measurable at this budget" in verdicts.values()
    for v in results["verdicts"]:
        assert f"| {v['claim']} | **{v['verdict']}** |" in readme
    assert str(Path.home()) not in readme or str(Path.home()) == "/"

    # --rerender recomputes the same verdicts from results.json alone and says so.
    (out / "README.md").write_text("stale")
    rerendered = rerender(out)
    assert rerendered["verdicts"] == results["verdicts"]
    assert "recomputed from those numbers" in (out / "README.md").read_text()


def test_the_test_curve_is_the_reports_mixture_estimate_with_the_same_draws_every_epoch():
    import torch

    from missiwae.config import ModelConfig
    from missiwae.evaluation import DEFENSIVE_MASKS, estimate_log_likelihood_defensive
    from missiwae.model import MissIWAE, make_generator
    from pipelines.train_worker import epoch_test_ll

    torch.manual_seed(0)
    model = MissIWAE.from_config(ModelConfig(num_features=12, hidden=(8,), latent_dim=2))
    images = (torch.rand(6, 12) < 0.5).float().numpy()
    curve = {"images": images, "num_samples": 40, "mask_rate": 0.5, "seed": 3}
    first = epoch_test_ll(model, curve)
    assert epoch_test_ll(model, curve) == first and model.training  # same draws; mode kept
    x = torch.from_numpy(images)
    expected = estimate_log_likelihood_defensive(
        model,
        x,
        torch.ones_like(x, dtype=torch.bool),
        40,
        num_masks=DEFENSIVE_MASKS,
        missing_rate=0.5,
        generator=make_generator(3),
    )
    assert first == pytest.approx(float(expected.double().mean()), abs=1e-9)
    with torch.no_grad():  # another epoch's weights: the value moves with the model
        next(model.parameters()).add_(0.5)
    assert epoch_test_ll(model, curve) != first


def test_the_test_curve_section_tabulates_the_gap_the_paper_bounds_by_two_nats():
    curves = {"complete VAE (K=1)": [-100.0, -95.0, -94.0], "K=50 zero": [-104.0, -97.5, -95.5]}
    lines = epoch_test_ll_lines(curves, "complete VAE (K=1)", "K=50 zero", rows=500, num_samples=200)
    assert "| 1 | -100.00 | -104.00 | +4.00 |" in lines and "| 3 | -94.00 | -95.50 | +1.50 |" in lines
    assert any("first 500 test images, 200" in line for line in lines)
    assert epoch_test_ll_section(None) == []
    figure = epoch_test_ll_figure(curves, "complete VAE (K=1)", "K=50 zero")
    gap = figure.axes[1].get_lines()[0].get_ydata()
    assert list(gap) == [4.0, 2.5, 1.5]
