"""The time-boxed single-GPU report (paper/gpu.py), run here on the CPU at toy size."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from paper import gpu_specs
from paper.gpu import proposal_check, run
from paper.gpu_render import render
from paper.gpu_specs import RESULT_FILE, figure1_specs, folder_name


def test_a_time_boxed_run_trains_evaluates_and_imputes_with_every_model_then_renders_the_report(
    data_root, tmp_path, monkeypatch
):
    monkeypatch.setenv("MISSIWAE_DATA_DIR", str(data_root))
    folder = tmp_path / "run"
    status = run(
        folder,
        budget_s=30,
        device="cpu",
        train_rows=128,
        missforest_jobs=1,
        eval_samples=5,
        accuracy_samples=(1, 10),
        figure3_samples=10,
        grace_s=600,  # the deadlines shape the stages; no model process is killed on a slow machine
        valid_rows=32,
        curve=(8, 5),
    )
    machine = json.loads((folder / "machine.json").read_text())
    assert all(machine["exit"][spec.label] == 0 for spec in figure1_specs(folder, 0, 1, "cpu", None))
    for spec in figure1_specs(folder, 0, 1, "cpu", None):
        result = json.loads((Path(spec.out) / RESULT_FILE).read_text())
        assert result["epochs"] > 0 and result["steps"] > 0
        assert result["test_log_likelihood_per_row"], spec.label
        assert all(math.isfinite(v) and v < 0 for v in result["test_log_likelihood_per_row"])
        # both estimators on the same rows; early stopping watched the validation bound
        assert len(result["test_log_likelihood_mixture_per_row"]) == len(
            result["test_log_likelihood_per_row"]
        )
        assert result["stopped_by"] in ("plateau", "epoch cap", "deadline")
        assert all("valid_bound" in point for point in result["history"])
        assert spec.test_curve == any("test_log_likelihood" in point for point in result["history"])
        if spec.accuracy:
            # the smallest L always, the rest as far as the deadline allowed, in order
            assert list(result["accuracy_vs_L"]) in (["1"], ["1", "10"])
    # missForest on 1000 x 784 cannot finish in 30 s on one process: it is killed and said so.
    forest_finished = machine["exit"]["missforest"] == 0
    assert status == (0 if forest_finished else 1)

    report = tmp_path / "report"
    text = render(folder, report, "python -m paper.gpu run --budget-s 30")
    assert {"README.md", "results.json", "figure1_left.png", "figure1_right.png"} <= {
        p.name for p in report.iterdir()
    }
    assert {"figure2_samples.png", "figure3_imputations.png", "learning_curves.png", "test_curves.png"} <= {
        p.name for p in report.iterdir()
    }
    assert "| model | naive | defensive mixture | mixture − naive |" in text
    assert "## The gap the paper bounds by 2 nats, per epoch" in text
    summary = json.loads((report / "results.json").read_text())
    assert len(summary["verdicts"]) == 5
    for verdict in summary["verdicts"]:
        assert f"| {verdict['claim']} | **{verdict['verdict']}** |" in text
    if not forest_finished:
        assert "| not finished |" in text
        assert summary["verdicts"][3]["verdict"] == "not measurable at this budget"

    table = proposal_check(folder, ["K=1 zero", "K=1 oracle"], rows=4, samples=3)
    assert table.count("\n| K=1 ") == 2


def _fake_run(folder: Path, rows: dict[str, list[float]]) -> None:
    """A run folder where each listed model evaluated the given per-row log-likelihoods."""
    folder.mkdir()
    machine = {"gpu": "none", "torch": "x", "cpus": 2, "budget_s": 10, "started": "t", "seconds": 10}
    (folder / "machine.json").write_text(json.dumps(machine))
    for spec in figure1_specs(folder, 0, 10, "cpu", None):
        if spec.label not in rows:
            continue
        Path(spec.out).mkdir()
        result = {
            "spec": {"K": spec.K, "imputation": spec.imputation, "missing_rate": spec.missing_rate},
            "epochs": 1.5,
            "history": [{"epochs": 1.5, "train_bound": -100.0, "seconds": 1.0}],
            "test_log_likelihood_per_row": rows[spec.label],
        }
        (Path(spec.out) / RESULT_FILE).write_text(json.dumps(result))


def test_models_are_compared_on_the_test_images_all_of_them_evaluated_and_a_missing_model_is_reported(
    tmp_path,
):
    rows = {
        "K=1 zero": [-101.0, -99.0, -50.0],  # the third row is beyond the common prefix
        "K=1 oracle": [-97.0, -95.0],
        "K=50 zero": [-96.0, -94.0, -95.0, -95.0],
        "K=50 oracle": [-95.5, -93.5],
        "complete VAE (K=1)": [-95.0, -93.0],
    }
    _fake_run(tmp_path / "run", rows)
    text = render(tmp_path / "run", tmp_path / "report", "cmd")
    summary = json.loads((tmp_path / "report" / "results.json").read_text())
    assert summary["test_rows"] == 2
    assert summary["test_log_likelihood"]["K=1 zero"] == -100.0
    assert math.isnan(summary["test_log_likelihood"]["complete IWAE (K=50)"])
    assert "| complete IWAE (K=50) | | | did not finish |" in text
    verdicts = [v["verdict"] for v in summary["verdicts"]]
    # Each mean has a standard error of 1 over the 2 common rows (2 se of a difference: 2.83):
    # +4 nats at K=1 is clear, 0.5 apart at K=50 is on par, VAE − missIWAE = 1 < 2.
    assert verdicts == ["holds", "holds", "holds"]
    assert "Not reached before the deadline." in text  # no accuracy curves in this folder


def test_folder_names_are_plain_and_distinct():
    labels = [spec.label for spec in figure1_specs(Path("x"), 0, 1, "cpu", None)]
    names = [folder_name(label) for label in labels]
    assert len(set(names)) == len(names)
    assert all(name.replace("_", "").isalnum() for name in names)
    assert np.isclose(gpu_specs.LEARNING_RATE, 1e-3)
