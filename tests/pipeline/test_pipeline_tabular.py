"""A user's CSV through the pipeline (pipelines/full.py --data) on a real local Ray cluster."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from missiwae.config import ConfigError
from pipelines import full
from pipelines.table_source import column_types, read_table, split_rows

COLUMNS = ["a", "b", "flag", "c", "d", "e"]


def write_csv(path: Path, seed: int = 0, num_rows: int = 200) -> pd.DataFrame:
    """200 x 6 correlated columns (one of them 0/1) on different scales, 25% NaN, plus a label."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((num_rows, 1))
    continuous = z * np.array([1.0, -2.0, 0.5, 3.0, 1.5]) + 0.3 * rng.standard_normal((num_rows, 5))
    continuous = continuous * np.array([1.0, 10.0, 100.0, 0.1, 5.0]) + 50.0
    flag = (z[:, 0] + 0.3 * rng.standard_normal(num_rows) > 0).astype(float)
    values = np.column_stack([continuous[:, :2], flag, continuous[:, 2:]])
    values[rng.random(values.shape) < 0.25] = np.nan
    frame = pd.DataFrame(values, columns=COLUMNS)
    frame["target"] = rng.integers(0, 3, num_rows)
    frame.to_csv(path, index=False)
    return frame


def test_read_table_rejects_non_numeric_and_empty_columns_by_name(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    pd.DataFrame({"x": [1.0, 2.0, 3.0], "city": ["a", "b", "c"]}).to_csv(path, index=False)
    with pytest.raises(ConfigError, match=r"column\(s\) \['city'\] of t.csv are not numeric"):
        read_table(path)
    pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [np.nan] * 3}).to_csv(path, index=False)
    with pytest.raises(ConfigError, match=r"column\(s\) \['y'\] of t.csv have no observed value"):
        read_table(path)
    with pytest.raises(ConfigError, match=r"data\.label_column 'nope' is not a column"):
        read_table(path, label_column="nope")
    (tmp_path / "t.txt").write_text("x\n1\n")
    with pytest.raises(ConfigError, match="CSV or Parquet"):
        read_table(tmp_path / "t.txt")


def test_full_job_on_a_table_with_text_column_exits_with_the_column_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = tmp_path / "bad.csv"
    pd.DataFrame({"x": [1.0, np.nan, 3.0, 4.0], "city": ["a", "b", None, "d"]}).to_csv(path, index=False)
    assert full.main(["--data", str(path), "--set", f"run_dir={tmp_path / 'run'}"]) == 2
    assert "column(s) ['city'] of bad.csv are not numeric" in capsys.readouterr().err


def test_parquet_reads_like_csv_and_binary_columns_are_bernoulli(tmp_path: Path) -> None:
    frame = write_csv(tmp_path / "t.csv")
    frame.to_parquet(tmp_path / "t.parquet")
    from_csv, names, labels = read_table(tmp_path / "t.csv", label_column="target")
    from_parquet, _, _ = read_table(tmp_path / "t.parquet", label_column="target")
    np.testing.assert_array_equal(from_csv, from_parquet)
    assert names == COLUMNS and labels is not None and labels.shape == (200,)
    assert column_types(from_csv, "student_t") == ["student_t"] * 2 + ["bernoulli"] + ["student_t"] * 3
    with pytest.raises(ConfigError, match="need 'gaussian' or 'student_t'"):
        column_types(from_csv, "bernoulli")


def test_row_split_is_seeded_disjoint_and_complete() -> None:
    first = split_rows(200, seed=3, valid_fraction=0.1, test_fraction=0.2)
    assert [len(first[s]) for s in ("train", "valid", "test")] == [140, 20, 40]
    assert np.array_equal(np.sort(np.concatenate(list(first.values()))), np.arange(200))
    again = split_rows(200, seed=3, valid_fraction=0.1, test_fraction=0.2)
    assert all(np.array_equal(first[s], again[s]) for s in first)
    assert not np.array_equal(first["test"], split_rows(200, 4, 0.1, 0.2)["test"])


def test_csv_with_nan_goes_through_ingest_train_impute_with_mlflow(
    ray_cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    csv = tmp_path / "user.csv"
    frame = write_csv(csv)
    run_dir = tmp_path / "run"
    settings = {
        "run_dir": str(run_dir),
        "data.label_column": "target",
        "model.hidden": "[16]",
        "model.latent_dim": "2",
        "train.epochs": "1",
        "train.K": "3",
        "scaling.num_workers": "1",
        "evaluate.num_samples": "10",
        "impute.num_samples": "20",
        "impute.num_imputations": "2",
        "impute.batch_size": "64",
        "impute_stage.num_actors": "1",
    }
    overrides = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    assert full.main(["--data", str(csv), *overrides]) == 0

    values = frame[COLUMNS].to_numpy()
    observed = ~np.isnan(values)
    out = run_dir / "imputed" / "table"
    single = pd.read_parquet(out / "missiwae_single.parquet")
    assert list(single.columns) == ["source_row", "split", "target", *COLUMNS]
    assert np.array_equal(single["source_row"], np.arange(200))  # the file's rows, in its order
    completed = single[COLUMNS].to_numpy()
    assert not np.isnan(completed).any()
    assert np.array_equal(completed[observed], values[observed])  # bit for bit
    assert np.array_equal(single["target"], frame["target"])
    flag = completed[~observed[:, 2], 2]
    assert ((flag > 0) & (flag < 1)).all()  # the Bernoulli column: probabilities
    # Continuous holes come back in the file's units (column c has mean ~50, sd ~50).
    assert abs(np.mean(completed[~observed[:, 3], 3]) - 50.0) < 60.0
    from_csv = pd.read_csv(out / "missiwae_single.csv")
    np.testing.assert_allclose(from_csv[COLUMNS].to_numpy(), completed)
    for m in range(2):
        copy = pd.read_parquet(out / f"missiwae_multiple_{m:02d}.parquet")[COLUMNS].to_numpy()
        assert np.array_equal(copy[observed], values[observed])
        assert np.isin(copy[~observed[:, 2], 2], (0.0, 1.0)).all()

    # Standardisation comes from the observed entries of the training rows only.
    manifest = json.loads((run_dir / "data" / "_MANIFEST.json").read_text())
    table = manifest["table"]
    train_rows = single["split"].to_numpy() == "train"
    continuous = [j for j, t in enumerate(table["column_types"]) if t != "bernoulli"]
    assert table["column_types"][2] == "bernoulli" and len(continuous) == 5
    np.testing.assert_allclose(
        np.array(table["mean"])[continuous], np.nanmean(values[train_rows][:, continuous], 0)
    )
    np.testing.assert_allclose(
        np.array(table["scale"])[continuous], np.nanstd(values[train_rows][:, continuous], 0)
    )
    assert sorted(manifest["splits"]) == ["test", "train", "valid"]

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("missiwae-table")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    stages = {run.data.tags.get("stage"): run for run in runs if "stage" in run.data.tags}
    assert set(stages) == {"ingest", "train", "impute"}
    assert all(run.info.status == "FINISHED" for run in runs)
    metrics = stages["impute"].data.metrics
    imputed_cells = sum(metrics[f"{split}/num_imputed_cells"] for split in ("train", "valid", "test"))
    assert imputed_cells == (~observed).sum()
    assert np.isfinite(stages["train"].data.metrics["test_log_likelihood"])
    assert np.isfinite(metrics["train/log_likelihood_mean"])
