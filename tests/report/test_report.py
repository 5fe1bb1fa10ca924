"""The paper report: verdicts computed from the numbers, and the whole code path on tiny data."""

from __future__ import annotations

import json
import math
from pathlib import Path

from paper.render import render_report
from paper.report import rerender, run_report
from paper.verdicts import figure1_left_verdicts, figure1_right_verdicts, table1_verdicts
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


def test_figure1_left_claims_hold_for_paper_like_numbers_and_fail_when_broken():
    assert _verdicts(figure1_left_verdicts(PAPER_LIKE)) == ["holds"] * 3
    flat = {**PAPER_LIKE, "K=1 oracle": -89.5}  # oracle only 0.5 nats better at K=1
    assert _verdicts(figure1_left_verdicts(flat))[0] == "does not hold"
    apart = {**PAPER_LIKE, "K=50 oracle": -83.0}  # zero and oracle 2.2 nats apart at K=50
    assert _verdicts(figure1_left_verdicts(apart))[1] == "does not hold"
    far = {**PAPER_LIKE, "complete VAE (K=1)": -80.0}  # 5.2 nats between VAE and missIWAE
    assert _verdicts(figure1_left_verdicts(far))[2] == "does not hold"
    missing = {k: v for k, v in PAPER_LIKE.items() if k != "K=1 zero"}
    assert _verdicts(figure1_left_verdicts(missing))[:2] == ["not measurable at this budget"] * 2


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


def test_table1_ordering_claim():
    paper = {
        "zero": 0.97388,
        "missforest": 0.98049,
        "missiwae_single": 0.98473,
        "missiwae_multiple": 0.98683,
        "complete": 0.98663,
    }
    assert _verdicts(table1_verdicts(paper)) == ["holds", "holds"]
    swapped = {**paper, "zero": 0.99}
    assert _verdicts(table1_verdicts(swapped))[0] == "does not hold"


def test_tiny_report_runs_every_experiment_and_writes_a_readme_with_verdicts(
    ray_cluster, data_root, tmp_path
):
    config = load_pipeline_config("tiny", [f"run_dir={tmp_path / 'run'}", f"data.data_dir={data_root}"])
    out = tmp_path / "report"
    results = run_report(config, "tiny", out, "python -m paper.report --config tiny")

    names = {p.name for p in out.iterdir()}
    expected = {"README.md", "results.json", "ranking.md", "figure1_left.png", "figure1_right.png"}
    assert expected | {"figure2_samples.png", "figure3_imputations.png"} <= names
    assert set(results["figure1_left"]["test_log_likelihood"]) == {"K=1 zero", "K=2 zero"}
    measured = results["measured_seconds"]  # what reused work cost when it ran
    assert set(measured["trial_train_seconds"]) == {"K=1 zero", "K=2 zero"}
    assert measured["impute_seconds"]["train/total"] > 0
    curves = results["figure1_right"]["curves"]
    assert list(curves) == ["missVAE (K=1 zero)", "missIWAE (K=2 zero)"]
    assert all(0.0 < a <= 1.0 for values in curves.values() for a in values)
    assert 0.0 < results["figure1_right"]["missforest"] <= 1.0
    accuracy = results["table1"]["accuracy"]
    assert {"zero", "missforest", "missiwae_single", "missiwae_multiple", "complete"} <= set(accuracy)
    readme = (out / "README.md").read_text()
    assert readme == render_report(
        json.loads((out / "results.json").read_text()), (out / "ranking.md").read_text()
    )
    # The tiny space has no K=50 or oracle trial: those claims are reported, not hidden.
    verdicts = {v["claim"]: v["verdict"] for v in results["verdicts"]}
    assert len(verdicts) == 7 and "not measurable at this budget" in verdicts.values()
    for v in results["verdicts"]:
        assert f"| {v['claim']} | **{v['verdict']}** |" in readme
    assert str(Path.home()) not in readme or str(Path.home()) == "/"

    # --rerender recomputes the same verdicts from results.json alone and says so.
    (out / "README.md").write_text("stale")
    rerendered = rerender(out)
    assert rerendered["verdicts"] == results["verdicts"]
    assert "recomputed from those numbers" in (out / "README.md").read_text()
