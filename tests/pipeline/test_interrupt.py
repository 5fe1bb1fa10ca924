"""How `pipelines/full.py` ends when it does not finish: Ctrl-C is exit status 130 with one line
(no traceback), a user error is 2 with one line; only a bug shows a traceback.

The Ctrl-C tests run the script as a person does, in a subprocess sent SIGINT.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import pytest

from missiwae.mnist_files import DataError
from pipelines import full, runtime
from pipelines.console import INTERRUPTED
from tests.conftest import REPO

# Small, but with enough epochs that the run is still training when it is interrupted.
TABLE_SETTINGS = [
    "model.hidden=[8]",
    "model.latent_dim=2",
    "train.epochs=2000",
    "train.K=2",
    "scaling.num_workers=1",
    "evaluate.num_samples=5",
    "impute.num_samples=5",
    "impute.num_imputations=1",
    "impute_stage.num_actors=1",
]


def _write_table(path: Path) -> None:
    rng = np.random.default_rng(0)
    values = rng.standard_normal((60, 3))
    values[rng.random(values.shape) < 0.2] = np.nan
    pd.DataFrame(values, columns=["a", "b", "c"]).to_csv(path, index=False)


class _Job:
    """`python pipelines/full.py ...` in a subprocess, its stdout and stderr collected as they
    come (stage lines on stdout, progress bars on stderr)."""

    def __init__(self, args: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env["PYTHONUNBUFFERED"] = "1"
        self.process = subprocess.Popen(
            [sys.executable, "pipelines/full.py", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [
            threading.Thread(target=_collect, args=(stream, into), daemon=True)
            for stream, into in ((self.process.stdout, self.out), (self.process.stderr, self.err))
        ]
        for reader in self.readers:
            reader.start()

    def wait_for(self, text: str, timeout: float) -> None:
        """Until `text` shows on stdout or stderr (e.g. a progress bar's figure)."""
        deadline = time.monotonic() + timeout
        while text not in "".join(self.out) + "".join(self.err):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                self.process.wait()
                raise AssertionError(
                    f"never printed {text!r}: {''.join(self.out)}\n{''.join(self.err)[-3000:]}"
                )
            time.sleep(0.2)

    def wait_for_library(self, name: str, timeout: float) -> None:
        """Until the process has mapped a shared library whose path contains `name` (Linux)."""
        maps = Path(f"/proc/{self.process.pid}/maps")
        deadline = time.monotonic() + timeout
        while name not in maps.read_text():
            assert self.process.poll() is None and time.monotonic() < deadline, "".join(self.err)[-3000:]
            time.sleep(0.05)

    def interrupt(self, timeout: float = 180) -> tuple[int, str, str]:
        """SIGINT (what Ctrl-C sends), then the exit status, stdout and stderr."""
        self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        for reader in self.readers:
            reader.join(timeout=10)
        return code, "".join(self.out), "".join(self.err)


def _collect(stream: IO[str], into: list[str]) -> None:
    for chunk in iter(lambda: stream.read(256), ""):  # bars end lines with \r, not \n
        into.append(chunk)


def _assert_one_interrupted_line(code: int, out: str, err: str) -> None:
    assert code == 130, f"rc {code}\n{out}\n{err[-3000:]}"
    assert "Traceback" not in err + out and "KeyboardInterrupt" not in err + out, err[-3000:]
    assert err.count(INTERRUPTED) == 1, err[-3000:]
    assert err.strip().splitlines()[-1] == f"pipelines/full.py: {INTERRUPTED}"  # the last word


def test_ctrl_c_while_training_exits_130_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    _write_table(table)
    run_dir = tmp_path / "run"
    job = _Job(["--data", str(table), "--set", f"run_dir={run_dir}", *TABLE_SETTINGS])
    job.wait_for("train bound", timeout=300)  # an epoch has ended: Ray Train is running
    code, out, err = job.interrupt()
    _assert_one_interrupted_line(code, out, err)
    assert (run_dir / "data").is_dir()  # the finished ingest is kept for the rerun


class _FakeRay:
    """Stands in for the `ray` module: connected, and counts ray.shutdown() calls."""

    def __init__(self) -> None:
        self.shutdowns = 0

    def is_initialized(self) -> bool:
        return self.shutdowns == 0

    def shutdown(self) -> None:
        self.shutdowns += 1


def test_ray_is_not_shut_down_under_a_thread_still_inside_it(monkeypatch) -> None:
    """ray.shutdown() under a thread blocked in a Ray call segfaults the process (it did, after
    a Ctrl-C while Ray Train's fit() was waiting): stop_ray waits for no thread, it declines."""
    fake = _FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    leave = threading.Event()
    thread = runtime.start_ray_thread(leave.wait, name="blocked-in-ray")
    try:
        assert runtime.ray_threads_alive()
        assert runtime.stop_ray() is False and fake.shutdowns == 0
    finally:
        leave.set()
        thread.join()
    assert not runtime.ray_threads_alive()
    assert runtime.stop_ray() is True and fake.shutdowns == 1
    runtime.exit_now(3)  # nothing left inside Ray: returns, for a normal exit


def test_exit_now_ends_the_process_with_the_status_and_flushed_output_while_a_thread_is_in_ray() -> None:
    child = textwrap.dedent(
        """
        import atexit, sys, threading
        from pipelines import runtime
        atexit.register(lambda: print("atexit ran"))  # Ray's own handler would call ray.shutdown()
        runtime.start_ray_thread(threading.Event().wait, name="blocked-in-ray")
        print("last words", end="")
        runtime.exit_now(130)
        print("never")
        """
    )
    done = subprocess.run([sys.executable, "-c", child], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (130, "last words"), done.stderr


def test_ctrl_c_while_the_script_starts_exits_130_with_one_line(tmp_path: Path) -> None:
    """Interrupted in its first second (importing torch, Ray, MLflow), before main() runs."""
    job = _Job(["--data", str(tmp_path / "t.csv"), "--set", f"run_dir={tmp_path / 'run'}"])
    job.wait_for_library("libtorch", timeout=60)  # importing torch: after the preflight, before main()
    _assert_one_interrupted_line(*job.interrupt(timeout=60))


def test_one_set_takes_several_settings_like_the_cli() -> None:
    args = full._parser().parse_args(["--set", "a.b=1", "c.d=2", "--set", "e.f=3"])
    assert args.overrides == ["a.b=1", "c.d=2", "e.f=3"]


def test_several_settings_after_one_set_reach_the_config(tmp_path: Path, capsys) -> None:
    code = full.main(["--set", f"run_dir={tmp_path / 'run'}", "data.seed=1", "nonsense.key=2"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("pipelines/full.py: error:") and "nonsense" in err
    assert err.count("\n") == 1


def test_a_user_error_raised_inside_a_ray_task_is_one_line_and_exit_2(
    monkeypatch, capsys, tmp_path: Path
) -> None:
    """Ray hands a remote error back wrapped, with the remote traceback in its text: the job
    reports the error itself, in one line."""
    from ray.exceptions import RayTaskError

    wrapped = RayTaskError(
        "read_shard", "Traceback (most recent call last):\n  ...", DataError("bad shard x.parquet")
    )

    def failing_run(config: object, console: object = None) -> dict[str, float]:
        raise wrapped.as_instanceof_cause()

    monkeypatch.setattr(full, "run", failing_run)
    monkeypatch.setattr(full, "stop_ray", lambda: None)
    code = full.main(["--set", f"run_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and err == "pipelines/full.py: error: bad shard x.parquet\n"


def test_a_user_error_raised_in_a_ray_train_worker_is_one_line_and_exit_2(
    monkeypatch, capsys, tmp_path: Path
) -> None:
    from ray.train import TrainingFailedError
    from ray.train.v2.api.exceptions import WorkerGroupError

    assert issubclass(WorkerGroupError, TrainingFailedError)
    failure = WorkerGroupError(
        "training failed", {1: ValueError("rank 1"), 0: DataError("bad rows in t.csv")}
    )

    def failing_run(config: object, console: object = None) -> dict[str, float]:
        raise failure

    monkeypatch.setattr(full, "run", failing_run)
    monkeypatch.setattr(full, "stop_ray", lambda: None)
    assert full.main(["--set", f"run_dir={tmp_path / 'run'}"]) == 2
    assert capsys.readouterr().err == "pipelines/full.py: error: bad rows in t.csv\n"
    # A bug in a worker is not dressed up as a user error: it propagates, traceback and all.
    failure = WorkerGroupError("training failed", {0: ZeroDivisionError("a bug")})
    with pytest.raises(WorkerGroupError):
        full.main(["--set", f"run_dir={tmp_path / 'run'}"])


def test_a_job_failing_with_its_store_prints_the_real_error_before_any_tracking_line(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """A full disk fails both the MLflow store (first) and the ingest: the ingest's error is the
    first line on stderr, what tracking lost comes after it."""
    from pipelines import ingest
    from pipelines.storage import OutputError
    from pipelines.tracking.runs import TRACKING_NOTE_PREFIX

    def disk_full(config: object) -> None:
        raise OutputError(28, f"writing the shards under {tmp_path / 'run'} failed (No space left on device)")

    monkeypatch.setattr(ingest, "run_ingest", disk_full)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    blocker = tmp_path / "a_file"
    blocker.write_text("where the store's folder should be")
    table = tmp_path / "t.csv"
    _write_table(table)
    store = f"tracking.tracking_uri=sqlite:///{blocker}/mlflow.db"
    code = full.main(["--data", str(table), "--set", f"run_dir={tmp_path / 'run'}", store])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2
    assert lines[0].startswith("pipelines/full.py: error: [Errno 28] writing the shards"), lines
    assert len(lines) == 2 and lines[1].startswith("pipelines/full.py: warning: MLflow tracking to"), lines
    assert "the parent run" in lines[1]
    assert full.TRACKING_NOTE == TRACKING_NOTE_PREFIX
