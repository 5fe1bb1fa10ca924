"""missiwae.run_results: what `evaluate` and `impute` measure, on a tiny model and synthetic rows."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from missiwae.data import IncompleteDataset
from missiwae.run_results import (
    Evaluation,
    ImputationMetrics,
    evaluate_run,
    impute_run,
    non_finite_metrics,
    write_imputations,
    write_json_record,
)
from missiwae.runs import RunError, build_model, resolve_config

D = 16
CONFIG = resolve_config(
    {
        "model": {"num_features": D, "hidden": [8], "latent_dim": 2},
        "evaluate": {"num_samples": 8, "batch_size": 7},
        "impute": {"num_samples": 8, "num_imputations": 3, "batch_size": 7},
    },
    [],
    None,
)


def _rows(n: int, seed: int, missing_rate: float = 0.5) -> IncompleteDataset:
    generator = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, D, generator=generator) < 0.3).float()
    mask = torch.rand(n, D, generator=generator) >= missing_rate
    return IncompleteDataset(x, mask, torch.arange(n) % 10)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_model(CONFIG).eval()


def test_evaluate_run_estimates_both_likelihoods_reproducibly(model) -> None:
    data, train_data = _rows(20, 1), _rows(40, 2)
    result = evaluate_run(model, CONFIG, "test", data, train_data)
    assert result == evaluate_run(model, CONFIG, "test", data, train_data)  # seeded by the config
    assert result.split == "test" and result.num_rows == 20 and result.num_samples == 8
    assert result.mean_observed_pixels == pytest.approx(float(data.mask.float().sum(1).mean()))
    values = dataclasses.asdict(result)
    for key in (
        "log_likelihood_observed",
        "log_likelihood_complete",
        "bernoulli_log_likelihood_observed",
        "bernoulli_log_likelihood_complete",
    ):
        assert math.isfinite(values[key]) and values[key] < 0, key
    # Scoring a subset of each row's pixels: every dropped pixel adds a negative term.
    assert result.bernoulli_log_likelihood_observed > result.bernoulli_log_likelihood_complete


def test_evaluation_record_adds_provenance_after_the_metrics(tmp_path: Path) -> None:
    result = Evaluation("valid", 3, 0.5, 8.0, 10, -1.0, -2.0, -3.0, -4.0)
    record = result.record(seconds=1.5, checkpoint=tmp_path, config=CONFIG)
    assert list(record)[:9] == [field.name for field in dataclasses.fields(Evaluation)]
    assert list(record)[9:] == ["seconds", "checkpoint", "config"]
    assert record["checkpoint"] == str(tmp_path.resolve()) and record["config"] == CONFIG.to_dict()


def test_impute_run_fills_only_the_holes(model) -> None:
    data, train_data = _rows(20, 3), _rows(40, 4)
    result = impute_run(model, CONFIG, "test", data, train_data)
    arrays = result.arrays
    mask, truth = data.mask.numpy(), data.x.numpy()
    assert arrays["imputed"].shape == (20, D) and arrays["imputed"].dtype == np.uint8
    assert arrays["imputations"].shape == (3, 20, D) and arrays["imputations"].dtype == np.uint8
    assert arrays["conditional_mean"].dtype == np.float32
    for name in ("effective_sample_size", "log_likelihood"):
        assert arrays[name].shape == (20,), name
    np.testing.assert_array_equal(arrays["mask"], mask)
    np.testing.assert_array_equal(arrays["labels"], data.labels.numpy())
    np.testing.assert_array_equal(arrays["imputed"][mask], truth[mask])
    np.testing.assert_array_equal(arrays["conditional_mean"][mask], truth[mask])
    for copy in arrays["imputations"]:
        np.testing.assert_array_equal(copy[mask], truth[mask])
    assert set(np.unique(arrays["imputed"])) <= {0, 1}
    # The single imputation is the conditional mean thresholded at 1/2.
    holes = ~mask
    np.testing.assert_array_equal(arrays["imputed"][holes], arrays["conditional_mean"][holes] > 0.5)

    metrics = result.metrics
    assert result.num_missing == int(holes.sum())
    assert metrics.num_rows == 20 and metrics.num_samples == 8 and metrics.num_imputations == 3
    for name in ("accuracy_missiwae", "accuracy_multiple_mean", "accuracy_zero", "accuracy_mean"):
        assert 0.0 <= getattr(metrics, name) <= 1.0, name
    assert metrics.accuracy_zero == pytest.approx(float((truth[holes] == 0).mean()))
    assert 1.0 <= metrics.effective_sample_size_mean <= 8.0
    assert metrics == impute_run(model, CONFIG, "test", data, train_data).metrics  # seeded


def test_impute_run_refuses_rows_without_a_hole(model) -> None:
    complete = _rows(5, 5, missing_rate=0.0)
    with pytest.raises(RunError, match="no missing pixels"):
        impute_run(model, CONFIG, "test", complete, _rows(10, 6))


def test_imputation_record_names_its_files(tmp_path: Path) -> None:
    metrics = ImputationMetrics("test", 2, 0.5, 8, 3, 0.9, 0.8, 0.7, 0.6, 4.0, 3.0, -5.0)
    record = metrics.record(
        seconds=2.0, imputations_file=tmp_path / "x.npz", checkpoint=tmp_path, config=CONFIG
    )
    assert list(record)[-4:] == ["seconds", "imputations_file", "checkpoint", "config"]
    assert record["imputations_file"] == str((tmp_path / "x.npz").resolve())


def test_non_finite_metrics_lists_only_bad_floats() -> None:
    record = {"a": 1.0, "b": math.nan, "c": -math.inf, "d": "nan", "e": 3}
    assert non_finite_metrics(record) == ["b", "c"]


def test_writers_create_parents_and_keep_the_given_names(tmp_path: Path) -> None:
    record_path = tmp_path / "new" / "metrics.json"
    write_json_record(record_path, {"x": 1})
    assert record_path.read_text() == json.dumps({"x": 1}, indent=2) + "\n"
    arrays_path = tmp_path / "other" / "imputed.bin"
    write_imputations(arrays_path, {"a": np.arange(4)})
    assert sorted(p.name for p in arrays_path.parent.iterdir()) == ["imputed.bin"]
    with np.load(arrays_path) as saved:
        np.testing.assert_array_equal(saved["a"], np.arange(4))
