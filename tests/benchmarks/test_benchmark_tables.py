"""benchmarks/bench_tables.py: the generated table, the job's settings and the report."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks import bench_tables
from pipelines.config import load_pipeline_config
from pipelines.console import Console
from pipelines.table_source import load_table, tabular_split_tables


def test_the_generated_table_has_every_kind_of_column_and_its_holes(tmp_path: Path) -> None:
    paths = bench_tables.make_table(3000, tmp_path, num_files=3)
    assert [pq.read_metadata(p).num_rows for p in paths] == [1000, 1000, 1000]
    _, info = tabular_split_tables(
        load_pipeline_config("table", [f"data.path={tmp_path}", "model.observation=gaussian"])
    )
    assert info["column_types"] == ["gaussian"] * 5 + ["bernoulli"] * 2 + ["categorical"] * 2
    missing = info["num_missing"] / (info["num_rows"] * len(info["columns"]))
    assert missing == (load_table(tmp_path).values != load_table(tmp_path).values).mean()  # NaN: a hole
    assert abs(missing - bench_tables.MISSING_RATE) < 0.02


def test_the_jobs_settings_are_a_valid_table_config(tmp_path: Path) -> None:
    config = load_pipeline_config("table", bench_tables.job_settings(tmp_path, tmp_path / "run"))
    assert config.ingest.table_parallel_rows == 0 and config.scaling.shard_in_memory is False
    assert config.impute_stage.table_csv is False
    assert config.impute_stage.splits == ("train", "valid", "test")


def test_the_report_gives_each_stage_its_rate_per_cpu() -> None:
    result = {
        "seconds": {"ingest": 2.0, "train": 4.0, "impute": 10.0},
        "num_rows": {"train": 800, "valid": 100, "test": 100},
        "driver_peak_mib": 500.0,
        "driver_peak_by_stage_mib": {"start": 400.0, "ingest": 500.0},
        "worker_peak_by_stage_mib": {"ingest": 250.0, "impute": 300.0},
        "worker_peak_mib": 300.0,
        "worker_peak_title": "ray::ImputeActor",
        "cpus": 2,
    }
    assert bench_tables.stage_rows(result) == {"ingest": 1000, "train": 800, "impute": 1000}
    text = bench_tables.render({1000: result}, "python -m benchmarks.bench_tables --rows 1000")
    assert (
        "| 1,000 | train | 4.0 | 200 | 100 |" in text and "| 1,000 | 500 | 300 (ray::ImputeActor) |" in text
    )
    assert "| rows | start | ingest |" in text and "| 1,000 | 400 | 500 |" in text
    assert "| rows | ingest | impute |" in text and "| 1,000 | 250 | 300 |" in text


def test_the_driver_sampler_keeps_a_peak_per_stage_of_the_jobs_console() -> None:
    memory = {"now": 100.0}
    lines = io.StringIO()
    console = Console(("ingest", "train"), out=lines)
    with bench_tables.DriverSampler(console, interval=0.001, resident=lambda: memory["now"]) as sampler:
        with console.stage("ingest", "reading"):
            memory["now"] = 300.0  # held inside the stage only
        memory["now"] = 120.0
    assert sampler.peaks == {"start": 100.0, "ingest": 300.0, "after ingest": 120.0}
    assert "done in" in lines.getvalue()  # the console's own lines still printed


def test_the_worker_sampler_keeps_the_largest_worker_per_stage_it_is_told() -> None:
    stage = {"now": "ingest"}
    workers = {"now": [(1, "ray::ReadFiles", 300.0), (2, "ray::IDLE", 200.0)]}
    sampler = bench_tables.RaySampler(stage=lambda: stage["now"], workers=lambda: workers["now"])
    sampler.sample()
    stage["now"], workers["now"] = "impute", [(2, "ray::ImputeActor", 250.0)]
    sampler.sample()
    assert sampler.by_stage == {"ingest": 300.0, "impute": 250.0}
    assert sampler.peaks == {1: (300.0, "ray::ReadFiles"), 2: (250.0, "ray::ImputeActor")}
    assert sampler.by_title == {"ray::ReadFiles": 300.0, "ray::IDLE": 200.0, "ray::ImputeActor": 250.0}
