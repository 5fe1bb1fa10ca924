"""benchmarks/mixed.py: mixed tables, each method's filling and scoring, the outputs."""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import numpy as np

from benchmarks import mixed
from benchmarks.uci import mcar_holes


def test_each_table_has_standardised_numbers_and_its_labels_as_categories() -> None:
    frame = mixed.load_mixed("diabetes")
    assert mixed._categorical(frame) == [False] * 9 + [True, True]
    assert list(frame["progression"].cat.categories) == ["low", "mid", "high"]
    numbers = frame.iloc[:, :9].to_numpy()
    np.testing.assert_allclose(numbers.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(numbers.std(0), 1.0)


def test_every_method_fills_every_hole_and_keeps_the_observed_cells() -> None:
    complete = mixed.load_mixed("iris")
    holes = mcar_holes(complete.shape, 0.3, 0, "iris", 0)
    holed = complete.mask(holes)
    args = Namespace(steps=30, num_samples=20, trees=5, mice_iterations=3)
    for method in mixed.METHODS:
        filled = mixed.impute(method, holed, 0, args)
        assert not filled.isna().any().any() and filled.mask(holes).equals(holed), method
        assert filled.dtypes.equals(complete.dtypes), method
    # The labels of the mode: as right as the most frequent level among the holes, no more.
    mode = mixed.score(complete, mixed.impute("mean_mode", holed, 0, args), holes)["accuracy"]
    species = complete["species"][holes[:, 4]]
    assert mode == (species == holed["species"].mode()[0]).mean()


def test_tiny_run_writes_markdown_and_json_with_both_measures(tmp_path: Path) -> None:
    out = tmp_path / "mixed"
    args = ["--datasets", "iris", "--repetitions", "2", "--steps", "30", "--num-samples", "20"]
    assert mixed.main([*args, "--trees", "5", "--mice-iterations", "3", "--out", str(out)]) == 0
    results = json.loads(out.with_suffix(".json").read_text())["results"]["iris"]
    assert results["categorical"] == ["species"]
    for measure in ("rmse", "accuracy"):
        assert set(results[measure]) == set(mixed.METHODS)
        assert all(len(v) == 2 for v in results[measure].values())
    # Mean imputation of standardised columns: RMSE near the columns' sd, 1.
    assert 0.85 < np.mean(results["rmse"]["mean_mode"]) < 1.15
    table = out.with_suffix(".md").read_text()
    assert "| iris (150 x 5; species) | RMSE (numbers) |" in table and table.count("**") == 4
