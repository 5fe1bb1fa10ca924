"""End to end: `ray start --head` on 127.0.0.1 with token auth, `ray job submit` the smoke job,
wait for SUCCEEDED, then read the MLflow store with the MLflow client."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

RAY = str(Path(sys.executable).with_name("ray"))
STAGES = {"ingest", "train", "impute", "classify"}
_SERVICE_PORTS = (
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "runtime-env-agent-port",
    "ray-client-server-port",
    "node-manager-port",
    "object-manager-port",
)


def _free_ports(count: int) -> list[int]:
    """`count` distinct free ports (held open together, so none is handed out twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


@pytest.fixture
def ray_head(data_root: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A real Ray head on loopback, token-authenticated; stopped (with its workers) afterwards."""
    import ray

    ray.shutdown()  # the in-process test cluster: one Ray at a time on 2 cores
    dashboard_port, gcs_port, *service_ports = _free_ports(2 + len(_SERVICE_PORTS))
    env = {
        **os.environ,
        # The job's `python` is this environment's, as for a user with the venv activated.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),  # random per run: nothing written to disk
        "MISSIWAE_DATA_DIR": str(data_root),
    }
    # Its own temp dir and process group: teardown stops this head and nothing else (a plain
    # `ray stop` would kill every Ray on the machine, e.g. another test session's or a user's).
    temp_dir = tempfile.mkdtemp(prefix="rayhead-", dir="/tmp")  # short: Ray's socket paths
    start = subprocess.Popen(
        [
            RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
            "--num-cpus=8", "--disable-usage-stats", f"--temp-dir={temp_dir}",
            # Ray's fixed default ports (52365 agent, 10001 client...) would collide with any
            # other Ray on the machine; the job agent then never comes up ("No available agent").
            *(f"--{name}={port}" for name, port in zip(_SERVICE_PORTS, service_ports, strict=True)),
        ],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = start.communicate(timeout=180)
        assert start.returncode == 0, output[-3000:]
        yield f"http://127.0.0.1:{dashboard_port}", env
    finally:
        _stop_head(start.pid, temp_dir)


def _stop_head(group: int, temp_dir: str) -> None:
    """SIGTERM the head's process group (the daemons `ray start` left behind and the workers
    their raylet forked), SIGKILL what outlives a grace period, then remove its temp dir."""
    for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _group_alive(group):
            time.sleep(0.5)
    shutil.rmtree(temp_dir, ignore_errors=True)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _job_status(address: str, job_id: str, env: dict[str, str]) -> str:
    output = subprocess.run(
        [RAY, "job", "status", "--address", address, job_id],
        env=env, capture_output=True, text=True, timeout=120,
    ).stdout.lower()  # fmt: skip
    # e.g. "Job 'x' succeeded", "Job 'x' failed", "Job 'x' is currently running"
    for status in ("succeeded", "failed", "stopped", "running", "pending"):
        if status in output:
            return status.upper()
    return "UNKNOWN"


def test_smoke_job_submitted_to_a_ray_head_succeeds_and_is_tracked_in_mlflow(ray_head, tmp_path):
    address, env = ray_head
    run_dir = tmp_path / "run"
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job_id = f"missiwae-smoke-{secrets.token_hex(4)}"
    runtime_env = {
        "env_vars": {"MISSIWAE_DATA_DIR": env["MISSIWAE_DATA_DIR"], "MLFLOW_TRACKING_URI": tracking_uri}
    }
    unauthenticated = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
    refused = subprocess.run(
        [RAY, "job", "list", "--address", address],
        env=unauthenticated, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode != 0, "a client without the token must be refused"

    def submit(submission_id: str, environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
        # The head's job agent may come up after `ray start` returns; until it does, Ray answers
        # "No available agent to submit job, please try again later" (seen on a loaded machine).
        patience = time.monotonic() + 180
        while True:
            done = subprocess.run(
                [
                    RAY, "job", "submit", "--address", address, "--submission-id", submission_id, "--no-wait",
                    "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env),
                    "--", "python", "pipelines/full.py", "--config", "smoke", "--set", f"run_dir={run_dir}",
                    # What is tested is the submission and the tracking, not the preset's
                    # numbers (`make run` shows those): fewer images, epochs and samples.
                    "data.num_train=600", "train.epochs=4", "evaluate.num_samples=20",
                    "impute.num_samples=20", "classify.epochs=2", "classify.num_seeds=2",
                ],
                env=environment, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            if "No available agent" not in done.stderr or time.monotonic() > patience:
                return done
            time.sleep(5)

    # The same job without the token: refused, and nothing was queued.
    intruder = submit(f"{job_id}-no-token", unauthenticated)
    assert intruder.returncode != 0, intruder.stdout[-2000:]
    assert "token" in (intruder.stdout + intruder.stderr).lower()
    accepted = submit(job_id, env)
    assert accepted.returncode == 0, accepted.stderr[-2000:]
    listed = subprocess.run(
        [RAY, "job", "list", "--address", address], env=env, capture_output=True, text=True, timeout=120
    ).stdout
    assert job_id in listed and f"{job_id}-no-token" not in listed
    deadline = time.monotonic() + 1500
    status = "PENDING"
    while time.monotonic() < deadline:
        status = _job_status(address, job_id, env)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(10)
    logs = subprocess.run(
        [RAY, "job", "logs", "--address", address, job_id],
        env=env, capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    assert status == "SUCCEEDED", logs[-6000:]
    assert "missiwae_single" in logs and "MLflow" in logs  # the table and the pointer were printed

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("missiwae-smoke")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert {r.data.tags.get("stage") for r in children} >= STAGES
    assert all(r.info.status == "FINISHED" for r in children)
    from pipelines.config import load_pipeline_config

    # The preset's own value (the smoke preset's sizes are tuned; the param must follow them).
    assert parent.data.params["train.K"] == str(load_pipeline_config("smoke", []).train.K)
    train_run = next(r for r in children if r.data.tags.get("stage") == "train")
    assert "test_log_likelihood" in train_run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert any(path.endswith("table1.md") for path in artifacts), artifacts
