"""A table in several files (pipelines.table_files): a folder or a glob is read in sorted order,
every row keeps its file and its row there, and files that disagree are refused by name."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from missiwae.config import ConfigError
from pipelines.table_files import SourceFiles, read_files, source_files, sources_sha256


def write_parts(folder: Path) -> None:
    """Three parts of one table (x, y): CSV, Parquet, and a CSV with a header and no row."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "part-0.csv").write_text("x,y\n1,0.5\n2,\n3,1.5\n")
    part = pa.table({"x": pa.array([4, None], pa.int64()), "y": [2.5, 3.5]})
    pq.write_table(part, folder / "part-1.parquet")
    (folder / "part-2.csv").write_text("x,y\n")
    (folder / "_SUCCESS").write_text("")
    (folder / ".part-0.csv.crc").write_text("")
    (folder / "notes.txt").write_text("not data")


def test_a_folder_is_its_data_files_in_sorted_order_and_rows_keep_their_file(tmp_path: Path) -> None:
    write_parts(tmp_path / "t")
    table, files, where = read_files(tmp_path / "t")
    assert files.names == ["part-0.csv", "part-1.parquet", "part-2.csv"]
    assert files.num_rows == [3, 2, 0]  # a header alone adds no row
    assert table.column("x").to_pylist() == [1, 2, 3, 4, None]
    assert table.schema.field("x").type == pa.int64()
    assert table.column("y").to_pylist()[:2] == [0.5, None]
    assert where.startswith("3 files in ")
    index, row = files.locate(np.arange(5))
    assert [files.names[i] for i in index] == ["part-0.csv"] * 3 + ["part-1.parquet"] * 2
    assert row.tolist() == [0, 1, 2, 0, 1]


def test_a_glob_reaches_into_subfolders_and_names_files_from_their_common_folder(tmp_path: Path) -> None:
    write_parts(tmp_path / "a")
    write_parts(tmp_path / "b" / "deeper")
    files = source_files(str(tmp_path / "**" / "part-0.csv"))
    assert files == [tmp_path / "a" / "part-0.csv", tmp_path / "b" / "deeper" / "part-0.csv"]
    table, sources, _ = read_files(str(tmp_path / "**" / "part-[01].*"))
    assert sources.names == [
        "a/part-0.csv", "a/part-1.parquet", "b/deeper/part-0.csv", "b/deeper/part-1.parquet"
    ]  # fmt: skip
    assert table.num_rows == 10


def test_a_row_of_a_file_after_an_empty_one_is_located_in_its_own_file() -> None:
    files = SourceFiles(["a.csv", "empty.csv", "b.csv"], [2, 0, 3])
    index, row = files.locate(np.array([0, 1, 2, 4]))
    assert index.tolist() == [0, 0, 2, 2] and row.tolist() == [0, 1, 0, 2]
    assert SourceFiles.from_manifest(json.loads(json.dumps(files.to_manifest()))) == files


def test_integers_beside_floats_become_float64_and_integer_widths_int64(tmp_path: Path) -> None:
    folder = tmp_path / "t"
    folder.mkdir()
    a = pa.table({"n": pa.array([1, 2], pa.int32()), "v": pa.array([1, 2], pa.int64())})
    b = pa.table({"n": pa.array([3], pa.int64()), "v": pa.array([0.5], pa.float64())})
    pq.write_table(a, folder / "a.parquet")
    pq.write_table(b, folder / "b.parquet")
    table, _, _ = read_files(folder)
    assert table.schema.field("n").type == pa.int64() and table.column("n").to_pylist() == [1, 2, 3]
    assert table.schema.field("v").type == pa.float64() and table.column("v").to_pylist() == [1.0, 2.0, 0.5]


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ("x,z\n1,2\n", r"b\.csv does not have the columns of a\.csv \(lacks \['y'\]; has \['z'\] besides\)"),
        ("y,x\n1,2\n", r"b\.csv does not have the columns of a\.csv \(the same columns in another order\)"),
        ("x,y\nTrue,1\n", r"column 'x' is int64 in a\.csv but bool in b\.csv"),
        ("x,y\nabc,1\n", r"column 'x' is int64 in a\.csv but string in b\.csv"),
        ("", r"b\.csv is empty \(0 bytes\)"),
    ],
    ids=["other-columns", "other-order", "bool-beside-int", "text-beside-int", "zero-bytes"],
)
def test_files_that_disagree_are_refused_naming_the_file_and_column(
    tmp_path: Path, second: str, message: str
) -> None:
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "a.csv").write_text("x,y\n1,2\n3,4\n")
    (folder / "b.csv").write_text(second)
    with pytest.raises(ConfigError, match=message):
        read_files(folder)


def test_an_integer_that_float64_would_round_is_refused_beside_floats(tmp_path: Path) -> None:
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "a.csv").write_text("x,y\n9007199254740993,2\n")
    (folder / "b.csv").write_text("x,y\n1.5,2\n")
    with pytest.raises(ConfigError, match=r"column 'x' of a\.csv does not fit the type double"):
        read_files(folder)
    (folder / "a.csv").write_text("x,y\n9007199254740992,2\n")  # 2**53: exact as a float64
    assert read_files(folder)[0].column("x").to_pylist() == [2.0**53, 1.5]


def test_nothing_to_read_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"holds no \.csv, \.parquet or \.pq file"):
        source_files(tmp_path / "empty")
    with pytest.raises(ConfigError, match="no CSV or Parquet file matches"):
        source_files(str(tmp_path / "*.csv"))
    with pytest.raises(ConfigError, match="no such file or folder"):
        source_files(tmp_path / "missing.csv")
    (tmp_path / "t.txt").write_text("x\n1\n")
    with pytest.raises(ConfigError, match=r"must end in one of"):
        source_files(tmp_path / "t.txt")


def test_the_tables_fingerprint_follows_every_files_bytes_and_name(tmp_path: Path) -> None:
    write_parts(tmp_path / "t")
    single = tmp_path / "t" / "part-0.csv"
    assert sources_sha256(single) == hashlib.sha256(single.read_bytes()).hexdigest()
    before = sources_sha256(tmp_path / "t")
    (tmp_path / "t" / "part-2.csv").rename(tmp_path / "t" / "part-3.csv")
    renamed = sources_sha256(tmp_path / "t")
    (tmp_path / "t" / "part-3.csv").write_text("x,y\n5,6\n")
    assert len({before, renamed, sources_sha256(tmp_path / "t")}) == 3


def test_imputed_rows_of_a_folder_name_their_file_and_their_row_in_it(tmp_path: Path) -> None:
    """Ingest's shard tables of a folder, then the output assembly (no Ray): every output row
    says which file and which row of it it completes, and its observed cells are that row's."""
    from pipelines.config import load_pipeline_config
    from pipelines.shards import read_shards
    from pipelines.table_output import OUTPUT_SOURCE_COLUMNS, table_maker
    from pipelines.table_source import tabular_split_tables

    folder = tmp_path / "t"
    rng = np.random.default_rng(0)
    frames = []
    for k, rows in enumerate([7, 0, 12, 5]):
        frame = pd.DataFrame({"a": rng.normal(size=rows), "b": rng.integers(0, 9, rows).astype(float)})
        frame = frame.mask(rng.random(frame.shape) < 0.3)
        folder.mkdir(exist_ok=True)
        frame.to_csv(folder / f"part-{k}.csv", index=False)
        frames.append(frame.assign(file=f"part-{k}.csv", row=np.arange(rows)))
    overrides = [f"data.path={json.dumps(str(folder))}", f"run_dir={json.dumps(str(tmp_path / 'run'))}"]
    tables, info = tabular_split_tables(load_pipeline_config("table", overrides))
    assert info["sources"] == [{"file": f"part-{k}.csv", "num_rows": n} for k, n in enumerate([7, 0, 12, 5])]
    files = []
    for split, split_table in tables.items():
        files.append(tmp_path / f"{split}.parquet")
        pq.write_table(split_table, files[-1])
    output = table_maker(read_shards(files, OUTPUT_SOURCE_COLUMNS, order_by="source_row"), info)(
        np.zeros((24, 2), np.float32)
    ).to_pandas()

    expected = pd.concat(frames, ignore_index=True)
    assert output["source_file"].tolist() == expected["file"].tolist()
    assert output["source_row"].tolist() == expected["row"].tolist()
    observed = expected[["a", "b"]].notna().to_numpy()
    assert np.array_equal(output[["a", "b"]].to_numpy()[observed], expected[["a", "b"]].to_numpy()[observed])


def test_the_job_imputes_a_folder_of_files_and_every_row_says_where_it_came_from(
    ray_cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ingest -> train -> impute on Ray over a folder of three CSV files (one a header alone) and
    a Parquet one; a tiny model: the files, not the model, are under test."""
    from pipelines import full
    from tests.pipeline.test_pipeline_tabular import tiny_table_job

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_parts(tmp_path / "t")
    (tmp_path / "t" / "part-3.csv").write_text("x,y\n6,\n7,8.5\n")
    run_dir = tmp_path / "run"
    assert full.main(["--data", str(tmp_path / "t"), *tiny_table_job(run_dir)]) == 0

    from pipelines.table_output import load_imputed_table

    single = load_imputed_table(run_dir / "imputed" / "table" / "missiwae_single").to_pandas()
    files = ["part-0.csv"] * 3 + ["part-1.parquet"] * 2 + ["part-3.csv"] * 2
    assert single["source_file"].tolist() == files
    assert single["source_row"].tolist() == [0, 1, 2, 0, 1, 0, 1]
    assert single["x"].tolist()[:4] == [1, 2, 3, 4] and single["x"].tolist()[5:] == [6, 7]
    assert single["y"].tolist()[0] == 0.5 and single["y"].tolist()[-1] == 8.5
    assert not single[["x", "y"]].isna().any().any()
    ingest = json.loads((run_dir / "data" / "_MANIFEST.json").read_text())
    assert ingest["table"]["sources"][1] == {"file": "part-1.parquet", "num_rows": 2}


def test_a_column_observed_only_in_held_out_rows_is_refused_by_name_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The model would never see the column: its imputations would be an untrained decoder's."""
    from pipelines import full
    from pipelines.table_source import split_rows

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    held_out = split_rows(30, seed=0, valid_fraction=0.1, test_fraction=0.1)["valid"]
    rare = np.full(30, np.nan)
    rare[held_out[0]] = 5.0
    path = tmp_path / "t.csv"
    pd.DataFrame({"x": np.arange(30.0), "rare": rare}).to_csv(path, index=False)
    assert full.main(["--data", str(path), "--set", f"run_dir={tmp_path / 'run'}"]) == 2
    error = capsys.readouterr().err
    assert "column(s) ['rare'] of t.csv have no observed value among the 24 training rows" in error
    assert "(observed in [1] held-out rows only)" in error
    assert not (tmp_path / "run" / "data" / "_MANIFEST.json").exists()  # nothing published

    rare[np.setdiff1d(np.arange(30), held_out)[0]] = 6.0  # one training row sees it: accepted
    pd.DataFrame({"x": np.arange(30.0), "rare": rare}).to_csv(path, index=False)
    from pipelines.config import load_pipeline_config
    from pipelines.table_source import tabular_split_tables

    overrides = [f"data.path={json.dumps(str(path))}", f"run_dir={json.dumps(str(tmp_path / 'run'))}"]
    _, info = tabular_split_tables(load_pipeline_config("table", overrides))
    assert info["num_rows"] == 30 and info["columns"] == ["x", "rare"]
