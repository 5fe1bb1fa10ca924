"""The streaming ingest of a table (pipelines/table_source.py, pipelines/table_stats.py): the
split decided per block, stats merged from pieces, and shards that do not depend on how the
table was cut into pieces or where the pieces ran."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from missiwae.config import ConfigError
from pipelines import table_files, table_source
from pipelines.config import load_pipeline_config
from pipelines.shards import SPLITS
from pipelines.table_source import SplitPlan, split_rows, tabular_split_tables
from pipelines.table_stats import TableStats


def _old_split_rows(num_rows: int, seed: int, valid_fraction: float, test_fraction: float) -> dict[str, Any]:
    """The split as it was drawn before blocks: one seeded permutation of all rows."""
    num_valid, num_test = max(1, round(num_rows * valid_fraction)), max(1, round(num_rows * test_fraction))
    order = np.random.default_rng(seed).permutation(num_rows)
    parts = np.split(order, [num_rows - num_valid - num_test, num_rows - num_test])
    return {split: np.sort(part) for split, part in zip(SPLITS, parts, strict=True)}


@pytest.mark.parametrize("num_rows", [3, 10, 997])
def test_a_table_within_one_block_keeps_the_split_it_always_had(num_rows: int) -> None:
    new, old = split_rows(num_rows, 5, 0.1, 0.2), _old_split_rows(num_rows, 5, 0.1, 0.2)
    assert all(np.array_equal(new[split], old[split]) for split in SPLITS)


def test_the_split_over_blocks_has_exact_sizes_and_any_range_of_rows_agrees_with_the_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(table_source, "SPLIT_BLOCK_ROWS", 64)
    plan = SplitPlan.make(1000, seed=2, valid_fraction=0.15, test_fraction=0.05)
    codes = plan.codes(0, 1000)
    assert np.bincount(codes, minlength=3).tolist() == [800, 150, 50]
    assert plan.counts.sum(axis=0).tolist() == [800, 150, 50] and len(plan.counts) == 16
    for first, size in ((0, 1), (63, 2), (100, 300), (999, 1), (640, 360)):
        assert np.array_equal(plan.codes(first, size), codes[first : first + size])
    # The blocks do not all get the same share: the counts are a draw, not a quota.
    assert len({tuple(row) for row in plan.counts[:-1]}) > 1
    other = SplitPlan.make(1000, seed=3, valid_fraction=0.15, test_fraction=0.05)
    assert not np.array_equal(other.codes(0, 1000), codes)
    with pytest.raises(ConfigError, match="leave none for training"):
        SplitPlan.make(2, 0, 0.1, 0.1)


def test_stats_merged_from_pieces_in_any_grouping_are_the_whole_tables() -> None:
    rng = np.random.default_rng(0)
    n = 500
    x = rng.normal(3.0, 2.0, n)
    x[rng.random(n) < 0.3] = np.nan
    words = rng.choice(np.array(["a", "b", "c", None], dtype=object), n)
    table = pa.table({"x": x, "w": pa.array(words.tolist(), pa.string()), "y": rng.integers(0, 2, n)})
    codes = rng.integers(0, 3, n).astype(np.int8)
    whole = TableStats.of_piece(table, codes, "y")
    cuts = [0, 7, 8, 200, 431, n]
    parts = [TableStats.of_piece(table.slice(a, b - a), codes[a:b], "y") for a, b in itertools.pairwise(cuts)]
    left = TableStats.merge_all(parts)
    right = parts[-1]
    for part in reversed(parts[:-1]):
        right = part.merge(right)
    assert TableStats.from_json(whole.to_json()) == whole  # what a Ray Data task hands the driver
    for merged in (left, right):
        assert merged.num_rows == n and merged.split_rows == whole.split_rows
        a, b = merged.stats[0], whole.stats[0]
        assert (a.observed, a.observed_train, a.levels, a.binary) == (
            b.observed,
            b.observed_train,
            b.levels,
            b.binary,
        )
        assert a.train.count == b.train.count and a.train.mean == pytest.approx(b.train.mean, rel=1e-13)
        assert a.train.std == pytest.approx(b.train.std, rel=1e-12)
        assert a.whole.std == pytest.approx(np.nanstd(x), rel=1e-12)
        words_stats = merged.stats[1]
        train_words = {w for w, c in zip(words, codes, strict=True) if w is not None and c == 0}
        assert words_stats.levels == train_words == whole.stats[1].levels
    assert whole.label_missing == 0


def _mixed_files(folder: Path, num_rows: int = 600) -> Path:
    """The same mixed table as 2 Parquet files of small row groups and 1 CSV."""
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "x": rng.normal(10.0, 3.0, num_rows),
            "n": rng.integers(0, 50, num_rows),
            "flag": rng.integers(0, 2, num_rows),
            "word": rng.choice(["red", "green", "blue"], num_rows),
            "target": rng.integers(0, 3, num_rows),
        }
    )
    for column in ("x", "word"):
        frame.loc[rng.random(num_rows) < 0.3, column] = None
    folder.mkdir()
    third = num_rows // 3
    pq.write_table(
        pa.Table.from_pandas(frame.iloc[:third], preserve_index=False),
        folder / "a.parquet",
        row_group_size=37,
    )
    pq.write_table(
        pa.Table.from_pandas(frame.iloc[third : 2 * third], preserve_index=False),
        folder / "b.parquet",
        row_group_size=50,
    )
    frame.iloc[2 * third :].to_csv(folder / "c.csv", index=False)
    return folder


def _settings(folder: Path | str, *more: str) -> list[str]:
    return [f"data.path={folder}", "data.label_column=target", "data.column_types.n=categorical", *more]


def _assert_same(left: dict[str, pa.Table], right: dict[str, pa.Table]) -> None:
    for split in SPLITS:
        a, b = left[split], right[split]
        assert a.num_rows == b.num_rows > 0 and a.column_names == b.column_names
        for name in a.column_names:
            if name in ("pixels", "values"):
                x, y = (np.asarray(t.column(name).to_pylist(), np.float64) for t in (a, b))
                np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
            else:
                assert a.column(name).equals(b.column(name)), (split, name)


def test_the_shards_do_not_depend_on_how_the_table_is_cut_into_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _mixed_files(tmp_path / "t")
    config = load_pipeline_config("table", _settings(folder))
    whole_tables, whole_info = tabular_split_tables(config)
    monkeypatch.setattr(table_files, "PIECE_ROWS", 40)  # row groups of 37 and 50: pieces of 1 group
    plan = table_source.plan_ingest(config).plan
    assert len(plan.pieces()) == 6 + 4 + 1
    cut_tables, cut_info = tabular_split_tables(config)
    _assert_same(whole_tables, cut_tables)
    for key in whole_info:
        if key in ("mean", "scale"):
            np.testing.assert_allclose(whole_info[key], cut_info[key], rtol=1e-12)
        else:
            assert whole_info[key] == cut_info[key], key
    assert whole_info["column_types"][:3] == ["student_t", "categorical", "bernoulli"]
    assert [t.column("source_row").to_pylist() for t in whole_tables.values()] != []
    rows = sorted(r for t in whole_tables.values() for r in t.column("source_row").to_pylist())
    assert rows == list(range(600))
    for table in whole_tables.values():
        assert table.column("row_id").to_pylist() == list(range(table.num_rows))


def test_ray_data_tasks_write_the_same_shards_and_a_tasks_config_error_reaches_the_driver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.runtime import ensure_ray

    ensure_ray()
    monkeypatch.setattr(table_files, "PIECE_ROWS", 100)
    folder = _mixed_files(tmp_path / "t")
    config = load_pipeline_config("table", _settings(folder, "ingest.table_parallel_rows=0"))
    expected, expected_info = tabular_split_tables(config)
    folders = {split: tmp_path / "out" / split for split in SPLITS}
    for path in folders.values():
        path.mkdir(parents=True)
    info, names, num_rows = table_source.write_table_shards(config, folders)
    assert info == expected_info
    assert num_rows == {split: table.num_rows for split, table in expected.items()}
    written = {
        split: pa.concat_tables([pq.read_table(folders[split] / name) for name in names[split]]).sort_by(
            "row_id"
        )
        for split in SPLITS
    }
    _assert_same(
        expected, {split: table.select(expected[split].column_names) for split, table in written.items()}
    )

    def refuse(item: int) -> str:
        if item == 2:
            raise ConfigError("piece 2 is unreadable")
        return str(item * 10)

    assert table_source.map_pieces(lambda item: str(item * 10), [0, 1, 2, 3], parallel=True) == [
        "0",
        "10",
        "20",
        "30",
    ]
    with pytest.raises(ConfigError, match=r"^piece 2 is unreadable$"):
        table_source.map_pieces(refuse, [0, 1, 2, 3], parallel=True)


@pytest.mark.parametrize(
    "pattern", ["t", "t/a.parquet", "t/*.parquet", "**/*.csv", "t/[ab].*", "t/?.parquet", "*/[!a]*"]
)
def test_a_uri_names_the_same_files_and_gives_the_same_shards_as_the_local_path(
    tmp_path: Path, pattern: str
) -> None:
    folder = _mixed_files(tmp_path / "t")
    local = str(tmp_path / pattern)
    uri = (tmp_path / pattern).as_uri() if "*" not in pattern and "?" not in pattern else f"file://{local}"
    _, files = table_files.locate_files(uri)
    assert files == [str(path) for path in table_files.source_files(local)]
    assert table_files.sources_sha256(uri) == table_files.sources_sha256(local)
    if pattern == "t":
        by_path = tabular_split_tables(load_pipeline_config("table", _settings(folder)))
        by_uri = tabular_split_tables(load_pipeline_config("table", _settings(uri)))
        by_uri_info = {**by_uri[1], "source": by_path[1]["source"]}
        assert by_uri[1]["source"] == uri and by_uri_info == by_path[1]
        _assert_same(by_path[0], by_uri[0])


def test_a_uri_with_nothing_to_read_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "t.txt").write_text("x\n1\n")
    for target, message in (
        (f"{(tmp_path / 'empty').as_uri()}", r"holds no \.csv, \.parquet or \.pq file"),
        (f"file://{tmp_path}/*.csv", "no CSV or Parquet file matches"),
        (f"{(tmp_path / 'missing.csv').as_uri()}", "no such file or folder"),
        (f"{(tmp_path / 't.txt').as_uri()}", "must end in one of"),
        ("nosuchscheme://bucket/t.csv", "cannot open nosuchscheme://bucket/t.csv"),
    ):
        with pytest.raises(ConfigError, match=message):
            table_files.locate_files(target)
