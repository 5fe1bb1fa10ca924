"""A user's CSV through the pipeline (pipelines/full.py --data) on a real local Ray cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from missiwae.config import ConfigError
from pipelines import full
from pipelines.table_output import (
    completed_column,
    load_imputed_table,
    mask_strings,
    read_table_mask,
    row_columns,
)
from pipelines.table_source import column_types, load_table, read_table, split_rows

COLUMNS = ["a", "b", "flag", "c", "d", "e"]


def tiny_table_job(run_dir: Path) -> list[str]:
    """`--set` arguments of a table job in seconds: a 1-d latent, one epoch, L = 8, M = 2 (the
    table path, not the model, under test)."""
    settings = {
        "run_dir": str(run_dir),
        "model.hidden": "[4]",
        "model.latent_dim": "1",
        "train.epochs": "1",
        "train.K": "2",
        "evaluate.num_samples": "4",
        "impute.num_samples": "8",
        "impute.num_imputations": "2",
    }
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]


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


def test_read_table_rejects_dates_numbers_mixed_with_text_and_empty_columns_by_name(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.csv"
    pd.DataFrame({"x": [1.0, 2.0, 3.0], "day": ["2020-01-01", "2020-01-02", None]}).to_csv(path, index=False)
    with pytest.raises(
        ConfigError, match=r"column\(s\) \['day \(date32\[day\]\)'\] of t.csv are neither numbers"
    ):
        read_table(path)
    pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [np.nan] * 3}).to_csv(path, index=False)
    with pytest.raises(ConfigError, match=r"column\(s\) \['y'\] of t.csv have no observed value"):
        read_table(path)
    pd.DataFrame({"x": [1.0, 2.0, 3.0], "size": ["12", "S", None]}).to_csv(path, index=False)
    with pytest.raises(
        ConfigError, match=r"column 'size' of t.csv mixes numbers and text \(e.g. '12' and 'S'\)"
    ):
        read_table(path)
    with pytest.raises(ConfigError, match=r"data\.label_column 'nope' is not a column"):
        read_table(path, label_column="nope")
    (tmp_path / "t.txt").write_text("x\n1\n")
    with pytest.raises(ConfigError, match="CSV or Parquet"):
        read_table(tmp_path / "t.txt")


def test_a_level_found_only_in_held_out_rows_stops_the_job_naming_column_and_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = tmp_path / "rare.csv"
    pd.DataFrame({"x": [1.0, np.nan, 3.0, 4.0], "city": ["a", "b", None, "d"]}).to_csv(path, index=False)
    assert full.main(["--data", str(path), "--set", f"run_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "column 'city' of rare.csv holds the level" in err and "only in held-out rows" in err


def test_a_column_of_labels_comes_back_as_its_levels_in_every_output_and_the_logged_model(
    ray_cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two columns of labels: text (inferred) and integer star ratings that data.column_types
    makes categorical (their imputed cells are ratings, in the column's integer type); a 0/1
    column chosen gaussian."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rng = np.random.default_rng(0)
    z = rng.standard_normal(120)
    colour = np.where(z > 0.5, "red", np.where(z < -0.5, "blue", "green")).astype(object)
    stars = pd.array(np.clip(np.rint(z + 3), 1, 5).astype(int), dtype="Int64")
    frame = pd.DataFrame({"x": 3 * z + 10, "colour": colour, "y": -z, "stars": stars, "vip": (z > 1) * 1.0})
    frame.loc[rng.random(120) < 0.25, "colour"] = None
    frame.loc[rng.random(120) < 0.2, "x"] = np.nan
    frame.loc[rng.random(120) < 0.2, "stars"] = pd.NA
    csv = tmp_path / "shop.csv"
    frame.to_csv(csv, index=False)
    chosen = ["--set", "data.column_types.stars=categorical", "--set", "data.column_types.vip=gaussian"]
    assert full.main(["--data", str(csv), *tiny_table_job(tmp_path / "run"), *chosen]) == 0

    table = json.loads((tmp_path / "run" / "data" / "_MANIFEST.json").read_text())["table"]
    types = table["column_types"]  # the numbers: the table preset's observation (student_t)
    assert types == ["student_t", "categorical", "student_t", "categorical", "gaussian"]
    levels = sorted(set(frame["stars"].dropna()))
    assert table["levels"] == [None, ["blue", "green", "red"], None, levels, None]
    assert len(table["mean"]) == 3 + 3 + len(levels)
    out = tmp_path / "run" / "imputed" / "table"
    for name in ("missiwae_single", "missiwae_multiple_00", "missiwae_multiple_01"):
        imputed = load_imputed_table(out / name).to_pandas()
        assert imputed["stars"].dtype == np.int64 and set(imputed["stars"]) <= set(levels), name
        assert imputed["colour"].notna().all() and set(imputed["colour"]) <= {"blue", "green", "red"}, name
        mask = read_table_mask(imputed["mask"])
        for column, j in (("colour", 1), ("stars", 3)):
            observed = frame[column].notna().to_numpy()
            assert imputed[column][observed].tolist() == frame[column][observed].tolist(), (name, column)
            assert mask[:, j].tolist() == observed.tolist(), (name, column)

    from missiwae.training import load_model
    from pipelines.tracking.model import Features, FrameImputer

    features = Features.for_table(frame.columns, 8, 0, table["mean"], table["scale"], table["levels"])
    filled = FrameImputer(load_model(tmp_path / "run" / "model"), features).impute(frame)
    observed = frame["colour"].notna()
    assert filled["colour"].notna().all() and filled["colour"][observed].equals(frame["colour"][observed])
    assert filled["x"][frame["x"].notna()].equals(frame["x"][frame["x"].notna()])
    assert set(filled["stars"]) <= set(levels)


def test_data_column_types_may_choose_a_number_columns_model_and_refuses_the_rest(tmp_path: Path) -> None:
    from pipelines.config import load_pipeline_config
    from pipelines.table_source import tabular_split_tables

    frame = pd.DataFrame(
        {"code": [7, 7, 3, None, 9, 3] * 5, "flag": [0, 1, 1, 0, None, 1] * 5, "word": list("abcab") * 6}
    )
    csv = tmp_path / "t.csv"
    frame.to_csv(csv, index=False)

    def ingest(**chosen: str) -> dict:
        settings = [f"data.path={csv}"] + [f"data.column_types.{c}={kind}" for c, kind in chosen.items()]
        return tabular_split_tables(load_pipeline_config("table", settings))[1]

    inferred = ingest()
    assert inferred["column_types"] == ["student_t", "bernoulli", "categorical"]
    chosen = ingest(code="categorical", flag="gaussian", word="categorical")
    assert chosen["column_types"] == ["categorical", "gaussian", "categorical"]
    assert chosen["levels"] == [[3, 7, 9], None, ["a", "b", "c"]]
    assert ingest(flag="bernoulli")["column_types"][1] == "bernoulli"
    for settings, message in (
        ({"code": "bernoulli"}, r"data.column_types.code=bernoulli: column 'code' of t.csv holds 7"),
        ({"word": "gaussian"}, r"column 'word' of t.csv holds text, which can only be 'categorical'"),
        ({"cod": "gaussian"}, r"data.column_types names \['cod'\], not modelled column\(s\) of t.csv"),
    ):
        with pytest.raises(ConfigError, match=message):
            ingest(**settings)
    with pytest.raises(ConfigError, match=r"data.column_types.code must be one of"):
        ingest(code="poisson")


def test_the_single_imputation_comes_as_csv_too_up_to_a_million_rows_unless_told() -> None:
    from types import SimpleNamespace

    from pipelines.config import load_pipeline_config
    from pipelines.tabular import CSV_MAX_ROWS, write_csv

    def ingest(train: int) -> Any:
        return SimpleNamespace(num_rows={"train": train, "valid": 10, "test": 10})

    auto = load_pipeline_config("table", [])
    assert write_csv(auto, ingest(CSV_MAX_ROWS - 20)) and not write_csv(auto, ingest(CSV_MAX_ROWS - 19))
    train_only = load_pipeline_config("table", ["impute_stage.splits=[train]"])
    assert write_csv(train_only, ingest(CSV_MAX_ROWS))  # only the imputed splits' rows count
    assert write_csv(load_pipeline_config("table", ["impute_stage.table_csv=true"]), ingest(10**8))
    assert not write_csv(load_pipeline_config("table", ["impute_stage.table_csv=false"]), ingest(10))


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
        "impute_stage.table_rows_per_file": "70",  # several writer tasks, several partitions each
    }
    overrides = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    assert full.main(["--data", str(csv), *overrides]) == 0

    values = frame[COLUMNS].to_numpy()
    observed = ~np.isnan(values)
    out = run_dir / "imputed" / "table"
    # The workers wrote each completed table as partitions: the same names in every folder.
    partitions = sorted(p.name for p in (out / "missiwae_single").iterdir())
    assert len(partitions) >= 4 and {name.split("-")[0] for name in partitions} == {"train", "valid", "test"}
    for name in ("missiwae_multiple_00", "missiwae_multiple_01"):
        assert sorted(p.name for p in (out / name).iterdir()) == partitions
    assert max(pq.read_metadata(out / "missiwae_single" / name).num_rows for name in partitions) <= 70
    single = load_imputed_table(out / "missiwae_single").to_pandas()
    assert list(single.columns) == ["source_file", "source_row", "split", "mask", "target", *COLUMNS]
    assert set(single["source_file"]) == {csv.name}
    assert np.array_equal(read_table_mask(single["mask"]), observed)  # which cells were imputed
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
    assert np.array_equal(read_table_mask(from_csv["mask"]), observed)
    for m in range(2):
        copy = load_imputed_table(out / f"missiwae_multiple_{m:02d}").to_pandas()[COLUMNS].to_numpy()
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


# ------------------------------------------------------------------ careless and hostile tables


def test_column_too_wide_to_standardise_is_refused_naming_file_and_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = tmp_path / "wide.csv"
    path.write_text("small,big\n1.0,1e300\n2.0,\n3.0,-2e300\n4.0,5.0\n")
    with pytest.raises(ConfigError, match=r"column\(s\) \['big'\] of wide.csv hold values of magnitude"):
        read_table(path)
    assert full.main(["--data", str(path), "--set", f"run_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "['big'] of wide.csv" in err[0]
    assert not (tmp_path / "run" / "data" / "_MANIFEST.json").exists()  # no infinite scale anywhere


def test_unreadable_tables_are_refused_in_one_line_naming_the_file(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"^empty.csv is empty \(0 bytes\)"):
        read_table(tmp_path / "empty.csv")
    (tmp_path / "twice.csv").write_text("a,b,a\n1,2,3\n4,5,6\n7,8,9\n")  # pandas would rename a.1
    with pytest.raises(ConfigError, match=r"column name\(s\) \['a'\] occur more than once in twice.csv"):
        read_table(tmp_path / "twice.csv")
    twice = pa.Table.from_arrays([pa.array([1.0, 2.0, 3.0])] * 2, names=["x", "x"])
    pq.write_table(twice, tmp_path / "twice.parquet")
    with pytest.raises(ConfigError, match=r"column name\(s\) \['x'\] occur more than once in twice.parquet"):
        read_table(tmp_path / "twice.parquet")
    (tmp_path / "torn.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ConfigError, match=r"^torn.parquet is not a readable Parquet file \(.*\)$"):
        read_table(tmp_path / "torn.parquet")


def test_source_cells_keep_their_own_types_and_integers_beyond_2_53(tmp_path: Path) -> None:
    path = tmp_path / "ints.csv"
    path.write_text("n,flag,x\n9007199254740993,True,0.1\n,False,\n17,,-0.0\n")
    table = load_table(path)
    assert table.source.type == pa.struct([("c0", pa.int64()), ("c1", pa.bool_()), ("c2", pa.float64())])
    assert table.source.field("c0").to_pylist() == [9007199254740993, None, 17]
    assert table.source.field("c1").to_pylist() == [True, False, None]
    assert np.signbit(table.source.field("c2").to_numpy(zero_copy_only=False)[2])
    assert np.isnan(table.values[1, 0]) and table.values[0, 1] == 1.0  # the model's float view


def test_imputed_cells_take_the_columns_type_and_observed_cells_are_copied() -> None:
    observed = np.array([True, False, True, False])
    big = pa.array([9007199254740993, None, -5, None], pa.int64())
    out = completed_column(big, observed, np.array([0.0, 16.6, 0.0, -1e30]))
    assert out.type == pa.int64() and out.to_pylist() == [9007199254740993, 17, -5, -(2**63)]
    small = pa.array([200, None, 3, None], pa.uint8())
    assert completed_column(small, observed, np.array([0, 300.0, 0, -4.0])).to_pylist() == [200, 255, 3, 0]
    flags = pa.array([True, None, False, None])
    assert completed_column(flags, observed, np.array([0, 0.7, 0, 0.2])).to_pylist() == [
        True,
        True,
        False,
        False,
    ]
    halves = pa.array([1.5, float("nan"), -0.0, None], pa.float32())
    filled = completed_column(halves, observed, np.array([0.0, 1e300, 0.0, 0.25]))
    values = filled.to_numpy(zero_copy_only=False)
    assert filled.type == pa.float32() and np.isfinite(values).all() and np.signbit(values[2])
    assert values[1] == np.finfo(np.float32).max and values[3] == np.float32(0.25)


def test_bookkeeping_columns_step_aside_for_the_users_own_names() -> None:
    plain = row_columns({"columns": ["a", "b"], "label_column": None})
    assert plain == {name: name for name in ("source_file", "source_row", "split", "mask")}
    taken = row_columns({"columns": ["split", "_split", "mask", "source_file"], "label_column": "source_row"})
    assert taken == {
        "source_file": "_source_file", "source_row": "_source_row", "split": "__split", "mask": "_mask"
    }  # fmt: skip


def test_a_small_table_with_reserved_names_comes_back_whole_and_exact(
    ray_cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3 rows (the documented minimum: one per split, the training one observing every column)
    under the table preset's 2 shards, 2 workers and 2 actors; user columns called split and
    source_row; ints beyond 2**53 and bools."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    csv = tmp_path / "tiny.csv"
    csv.write_text(
        "big,split,source_row,flag\n9007199254740993,1.5,17,True\n,2.5,,False\n9007199254740995,3.5,19,True\n"
    )
    run_dir = tmp_path / "run"
    assert full.main(["--data", str(csv), *tiny_table_job(run_dir)]) == 0

    out = run_dir / "imputed" / "table"
    for name in ("missiwae_single", "missiwae_multiple_00", "missiwae_multiple_01"):
        table = load_imputed_table(out / name)
        assert table.column_names == [
            "source_file", "_source_row", "_split", "mask", "big", "split", "source_row", "flag"
        ]  # fmt: skip
        assert read_table_mask(table.column("mask")).tolist() == [
            [True, True, True, True],
            [False, True, False, True],
            [True, True, True, True],  # the training row (seed 0): every column seen in training
        ]
        assert table.column("_source_row").to_pylist() == [0, 1, 2]
        assert sorted(table.column("_split").to_pylist()) == ["test", "train", "valid"]
        assert table.schema.field("big").type == pa.int64()
        big = table.column("big").to_pylist()
        assert big[0] == 9007199254740993 and big[2] == 9007199254740995
        assert table.column("split").to_pylist()[:2] == [1.5, 2.5]
        assert np.isfinite(table.column("split").to_numpy()).all()
        assert table.schema.field("source_row").type == pa.int64()
        assert table.column("source_row").to_pylist()[0] == 17
        assert table.schema.field("flag").type == pa.bool_()
        assert table.column("flag").to_pylist()[:2] == [True, False]
    # The CSV copy keeps the integers exact too (written as integers, not floats).
    text = (out / "missiwae_single.csv").read_text().splitlines()
    assert text[0] == "source_file,_source_row,_split,mask,big,split,source_row,flag"
    assert text[1].split(",")[4] == "9007199254740993" and text[1].split(",")[6] == "17"
    manifest = json.loads((out / "_MANIFEST.json").read_text())
    assert manifest["row_columns"] == {
        "source_file": "source_file", "source_row": "_source_row", "split": "_split", "mask": "mask"
    }  # fmt: skip


def test_imputed_tables_carry_which_cells_were_imputed_in_parquet_and_csv(tmp_path: Path) -> None:
    """The output assembly without Ray: ingest's shard tables, then the imputed table of
    imputations drawn here; the ``mask`` column reads back the file's holes from Parquet and
    from CSV (letters, so a CSV reader keeps ``iooi`` a string), and steps aside for a user
    column called ``mask``."""
    from pipelines.table_output import table_maker

    frame = write_csv(tmp_path / "t.csv", num_rows=40).rename(columns={"e": "mask"})
    frame.to_csv(tmp_path / "t.csv", index=False)
    names = [*COLUMNS[:-1], "mask"]
    make = table_maker(*shard_rows(tmp_path / "t.csv", tmp_path, "data.label_column=target"))
    output = make(np.zeros((40, len(names)), np.float32))

    observed = frame[names].notna().to_numpy()
    assert output.column_names[:4] == ["source_file", "source_row", "split", "_mask"]
    pq.write_table(output, tmp_path / "out.parquet")
    output.to_pandas().to_csv(tmp_path / "out.csv", index=False)
    assert np.array_equal(read_table_mask(pq.read_table(tmp_path / "out.parquet").column("_mask")), observed)
    from_csv = pd.read_csv(tmp_path / "out.csv")
    assert np.array_equal(read_table_mask(from_csv["_mask"]), observed)
    assert np.array_equal(from_csv["mask"].isna(), np.zeros(40, bool))  # the user's column, completed


def shard_rows(
    path: Path, folder: Path, *overrides: str, order_by: str | None = "source_row"
) -> tuple[pa.Table, dict[str, Any]]:
    """Ingest's shard tables of the table at `path` (no Ray: written with plain pyarrow into
    `folder`, test / train / valid, the order the imputation job reads them), read back as the
    output's OUTPUT_SOURCE_COLUMNS (sorted by `order_by`, or in that order when None), and the
    ingest manifest's ``table`` entry."""
    from pipelines.config import load_pipeline_config
    from pipelines.shards import read_shards
    from pipelines.table_output import OUTPUT_SOURCE_COLUMNS
    from pipelines.table_source import tabular_split_tables

    settings = [f"data.path={json.dumps(str(path))}", f"run_dir={json.dumps(str(folder / 'run'))}"]
    tables, info = tabular_split_tables(load_pipeline_config("table", [*settings, *overrides]))
    files = []
    for split in sorted(tables):
        files.append(folder / f"{split}.parquet")
        pq.write_table(tables[split], files[-1])
    return read_shards(files, OUTPUT_SOURCE_COLUMNS, order_by=order_by), info


def test_table_mask_letters_round_trip_and_refuse_anything_else() -> None:
    mask = np.array([[True, False, True], [False, False, True]])
    assert mask_strings(mask) == ["oio", "iio"]
    assert np.array_equal(read_table_mask(pa.array(mask_strings(mask))), mask)
    with pytest.raises(ValueError, match="only the letters"):
        read_table_mask(["oxo", "iio"])
    with pytest.raises(ValueError, match="differ in length"):
        read_table_mask(["oo", "iio"])
