"""benchmarks/uci.py: the protocol's plumbing (masks, scoring, outputs) on a tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks import uci


def test_mcar_holes_are_seeded_per_dataset_and_repetition() -> None:
    holes = uci.mcar_holes((569, 30), 0.5, 0, "breast_cancer", 0)
    assert abs(holes.mean() - 0.5) < 0.02
    assert np.array_equal(holes, uci.mcar_holes((569, 30), 0.5, 0, "breast_cancer", 0))
    assert not np.array_equal(holes, uci.mcar_holes((569, 30), 0.5, 0, "breast_cancer", 1))
    assert not np.array_equal(holes, uci.mcar_holes((569, 30), 0.5, 0, "wine", 0))


def test_tiny_run_writes_markdown_json_and_csv_with_every_method(tmp_path: Path) -> None:
    out = tmp_path / "uci"
    args = ["--datasets", "iris", "--repetitions", "2", "--steps", "30", "--num-samples", "20"]
    args += ["--trees", "5"]
    assert uci.main([*args, "--out", str(out)]) == 0
    payload = json.loads(out.with_suffix(".json").read_text())
    mse = payload["results"]["iris"]["mse"]
    assert set(mse) == set(uci.METHODS) and all(len(v) == 2 for v in mse.values())
    # Mean imputation of standardised columns: MSE close to the columns' variance, 1.
    assert 0.8 < np.mean(mse["mean"]) < 1.2
    assert min(np.mean(v) for v in mse.values()) < np.mean(mse["mean"])  # something beats it
    table = out.with_suffix(".md").read_text()
    assert "| iris (150 x 4) |" in table and table.count("**") == 2  # one best cell per row
    assert len(out.with_suffix(".csv").read_text().splitlines()) == 1 + 2 * len(uci.METHODS)
