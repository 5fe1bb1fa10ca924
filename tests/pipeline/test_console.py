"""The job's console (pipelines.console, pipelines/full.py): one start and one end line per
stage, progress bars, the table, Ray's own log lines in {run_dir}/logs/ray.log and not on the
console, errors in full."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

# Imported at collection, not first inside a test: Ray's console handler keeps the stderr it was
# created with, and a test's captured stderr is closed after the test.
import ray  # noqa: F401

from pipelines.console import Console, DivertedStdout, route_library_logs
from tests.conftest import REPO
from tests.pipeline.test_pipeline_faults import tiny_job

STAGES = ("ingest", "train", "impute", "classify")
# A Ray (or MLflow) log line as their handlers format it: "<time>\tINFO worker.py:2038 -- ...",
# "2026/12/02 15:25:28 INFO mlflow...",
# "(raylet) WARNING: ...", and what Ray's C++ core writes itself: "[<time> E 3267 3267] core_worker.cc:"
RAY_LINE = re.compile(r"\sINFO\s|WARNING|\[\S+ \S+ [DIWEF] \d+ \d+\] \S+\.cc:\d+")


# ----------------------------------------------------------------------------- the console


def test_a_stage_prints_one_start_and_one_end_line_with_seconds_and_its_result() -> None:
    out, bars = io.StringIO(), io.StringIO()
    console = Console(STAGES, out=out, bar_stream=bars)
    with console.stage("train", "3 epochs") as stage:
        bar = stage.progress(3, "train epochs", unit="epoch")
        for _ in range(3):
            bar.update(1)
        stage.result = "final bound -100.00"
    lines = out.getvalue().splitlines()
    assert lines[0] == "[2/4] train     started: 3 epochs"
    assert re.fullmatch(r"\[2/4\] train     done in \d+ s: final bound -100\.00", lines[1]), lines
    assert len(lines) == 2
    assert "3/3" in bars.getvalue() and "train epochs" in bars.getvalue()


def test_a_failing_stage_prints_a_failed_line_and_the_error_propagates_unchanged() -> None:
    out = io.StringIO()
    console = Console(STAGES, out=out, bar_stream=io.StringIO())
    error = RuntimeError("boom")
    with pytest.raises(RuntimeError) as raised, console.stage("impute", "L=10"):
        raise error
    assert raised.value is error
    lines = out.getvalue().splitlines()
    assert lines[0] == "[3/4] impute    started: L=10"
    assert re.fullmatch(r"\[3/4\] impute    FAILED after \d+ s: RuntimeError", lines[1]), lines


# ---------------------------------------------------------------------------- log routing


@pytest.fixture
def fake_ray_logger() -> Any:
    """A logger under "ray" with a console handler of its own, as Ray Data configures one."""
    logger = logging.getLogger("ray.test_console_fake")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    previous = logger.propagate
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)
    logger.propagate = previous


def test_ray_log_lines_go_to_the_file_not_the_console_and_everything_is_put_back(
    fake_ray_logger: Any, tmp_path: Path
) -> None:
    logger, console = fake_ray_logger
    handlers = set(logger.handlers)
    path = tmp_path / "logs" / "ray.log"
    with route_library_logs(path) as routed:
        logger.info("Started a local Ray instance.")
        logger.debug("not even in the file")
    assert routed == path
    assert "Started a local Ray instance." in path.read_text()
    assert "not even in the file" not in path.read_text()
    assert console.getvalue() == ""
    assert set(logger.handlers) == handlers  # restored
    logger.info("after")
    assert "after" in console.getvalue() and "after" not in path.read_text()


def test_verbose_shows_ray_log_lines_live_and_still_writes_the_file(
    fake_ray_logger: Any, tmp_path: Path
) -> None:
    logger, console = fake_ray_logger
    path = tmp_path / "ray.log"
    with route_library_logs(path, verbose=True):
        logger.warning("Progress bars disabled.")
    assert "Progress bars disabled." in console.getvalue()
    assert "Progress bars disabled." in path.read_text()


def test_warnings_of_ray_go_to_the_file_and_other_warnings_stay_on_the_console(tmp_path: Path) -> None:
    ray_warning = type("RayDeprecationWarning", (DeprecationWarning,), {"__module__": "ray.util.annotations"})
    path = tmp_path / "ray.log"
    shown: list[str] = []
    original = warnings.showwarning
    warnings.showwarning = lambda message, *args, **kwargs: shown.append(str(message))
    try:
        with warnings.catch_warnings(), route_library_logs(path):
            warnings.simplefilter("always")
            warnings.warn("`ray_remote_args` is deprecated", ray_warning, stacklevel=1)
            warnings.warn("the MLflow store is unreachable", UserWarning, stacklevel=1)
    finally:
        warnings.showwarning = original
    assert shown == ["the MLflow store is unreachable"]
    assert "`ray_remote_args` is deprecated" in path.read_text()


def test_lines_ray_prints_itself_go_to_the_file_and_the_rest_pass_through(tmp_path: Path) -> None:
    console = io.StringIO()
    path = tmp_path / "ray.log"
    handler = logging.FileHandler(path)
    diverted = DivertedStdout(console, handler)
    print("\x1b[33m(raylet)\x1b[0m WARNING: 8 PYTHON worker processes have been started", file=diverted)
    print("[1/4] ingest    started: MNIST", file=diverted)
    diverted.write("partial")
    diverted.flush()
    handler.close()
    assert console.getvalue() == "[1/4] ingest    started: MNIST\npartial"
    assert "8 PYTHON worker processes" in path.read_text()


# ------------------------------------------------------------------------------ the job


def _job_config(tmp_path: Path, data_root: Path, **data: Any) -> Path:
    """tiny_job's settings (seconds per stage) as a JSON file for `--config`."""
    config = tiny_job(tmp_path / "run", data_root, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    settings = config.to_dict()
    settings["data"].update(data)
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(settings))
    return path


def test_the_job_console_shows_stage_lines_bars_and_the_table_and_no_ray_log_line(
    data_root: Path, tmp_path: Path
) -> None:
    """The job as `make run` starts it (its own process, its own embedded Ray), tiny."""
    config = _job_config(tmp_path, data_root)
    env = {**os.environ, "MISSIWAE_DATA_DIR": str(data_root), "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, "pipelines/full.py", "--config", str(config)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    console = done.stdout + done.stderr
    assert done.returncode == 0, console[-6000:]
    lines = done.stdout.splitlines()
    for number, name in enumerate(STAGES, start=1):
        prefix = f"[{number}/4] {name:<9}"
        assert sum(line.startswith(f"{prefix} started: ") for line in lines) == 1, (name, done.stdout)
        assert sum(line.startswith(f"{prefix} done in ") for line in lines) == 1, (name, done.stdout)
    for bar in ("train epochs", "impute rows", "classifier runs"):
        assert bar in done.stderr, (bar, done.stderr[-3000:])
    assert "| missiwae_single |" in done.stdout  # the table
    log_file = tmp_path / "run" / "logs" / "ray.log"
    assert f"Ray's own log lines: {log_file}" in lines
    logged = log_file.read_text()
    assert "Started a local Ray instance" in logged
    assert "has constructor arguments in the object store" in logged  # Ray Data's (#57733)
    noise = [line for line in console.replace("\r", "\n").splitlines() if RAY_LINE.search(line)]
    assert noise == [], noise


def test_a_failing_stage_still_prints_its_error_and_names_the_log_file(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines import full, runtime

    monkeypatch.setattr(runtime, "ensure_ray", lambda *args, **kwargs: None)  # ingest fails first
    monkeypatch.setitem(runtime._START, "log_to_driver", True)  # main's choice, undone after
    config = _job_config(tmp_path, data_root, data_dir=str(tmp_path / "no-such-data"))
    code = full.main(["--config", str(config)])
    captured = capsys.readouterr()
    assert code == 2
    assert "[1/4] ingest    started: " in captured.out
    assert re.search(r"\[1/4\] ingest    FAILED after \d+ s: \w+", captured.out), captured.out
    assert "no-such-data" in captured.err and "error:" in captured.err
    assert f"Ray's own log lines: {tmp_path / 'run' / 'logs' / 'ray.log'}" in captured.out

    # An unexpected error is not caught: it propagates with its traceback.
    import pipelines.ingest

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("an unexpected failure")

    monkeypatch.setattr(pipelines.ingest, "run_ingest", broken)
    with pytest.raises(RuntimeError, match="an unexpected failure"):
        full.main(["--config", str(_job_config(tmp_path, data_root))])
    assert "FAILED after" in capsys.readouterr().out
