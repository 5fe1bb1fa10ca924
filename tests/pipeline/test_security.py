"""Security: checkpoints never unpickle code, nothing pickles what a user could be handed, the
embedded Ray refuses clients without its token, and MLflow gets no secrets or home paths.

(`ray start --head` + `ray job submit` with and without the token: tests/pipeline/test_pipeline_job.py.)
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.tracking import MlflowClient

from missiwae.config import ModelConfig, TrainConfig
from missiwae.model import MissIWAE
from missiwae.training import WEIGHTS_FILE, load_model, save_checkpoint
from pipelines.config import PipelineConfig, TrackingConfig
from tests.conftest import REPO

SOURCES = sorted(p for folder in ("missiwae", "pipelines") for p in (REPO / folder).rglob("*.py"))


def _calls(path: Path) -> list[tuple[str, ast.Call]]:
    """(dotted name, node) of every call in a source file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            out.append((ast.unparse(node.func), node))
    return out


def test_every_torch_load_in_the_project_is_weights_only() -> None:
    loads = [(path, node) for path in SOURCES for name, node in _calls(path) if name.endswith("torch.load")]
    assert loads, "expected the checkpoint loaders to call torch.load"
    for path, node in loads:
        weights_only = [k for k in node.keywords if k.arg == "weights_only"]
        assert weights_only and ast.literal_eval(weights_only[0].value) is True, f"{path}:{node.lineno}"


def test_nothing_the_project_reads_is_unpickled() -> None:
    """No pickle / joblib / numpy-pickle loading of files: data are Parquet, IDX or .amat,
    checkpoints are weights-only state dicts plus JSON."""
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + (
                    [node.module] if isinstance(node, ast.ImportFrom) else []
                )
                assert not {"pickle", "cloudpickle", "dill", "shelve"} & set(filter(None, names)), (
                    f"{path}:{node.lineno} imports a pickle module"
                )
        for name, node in _calls(path):
            assert not name.endswith(("joblib.load", "pickle.load", "pickle.loads")), f"{path}:{node.lineno}"
            if name.endswith("np.load") or name.endswith("numpy.load"):
                allow = [k for k in node.keywords if k.arg == "allow_pickle"]
                assert not allow or ast.literal_eval(allow[0].value) is False, f"{path}:{node.lineno}"


class _Payload:
    """Unpickling this runs code: it would create the file at `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.touch, (Path(self.path),))


def test_a_checkpoint_carrying_a_pickled_object_is_refused_without_running_it(tmp_path: Path) -> None:
    directory = tmp_path / "checkpoint"
    model = MissIWAE.from_config(ModelConfig(num_features=4, latent_dim=2, hidden=(3,)))
    save_checkpoint(directory, model, None, TrainConfig(), [])
    assert isinstance(load_model(directory), MissIWAE)  # the honest checkpoint loads

    ran = tmp_path / "payload-ran"
    state = torch.load(directory / WEIGHTS_FILE, weights_only=True)
    state["extra"] = _Payload(str(ran))
    torch.save(state, directory / WEIGHTS_FILE)  # what a malicious "checkpoint" would hold
    with pytest.raises(ValueError, match=r"model\.pt cannot be read"):
        load_model(directory)
    assert not ran.exists()  # refused before anything was unpickled and run


def test_the_embedded_ray_refuses_a_client_without_its_token(ray_cluster: Any) -> None:
    address = ray_cluster.get_runtime_context().gcs_address
    assert os.environ.get("RAY_AUTH_MODE") == "token" and os.environ.get("RAY_AUTH_TOKEN")
    probe = f"import ray; ray.init(address={address!r}); print('resources', ray.cluster_resources()['CPU'])"

    def connect(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=180
        )

    without = connect(
        {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    )
    assert without.returncode != 0 and "resources" not in without.stdout
    assert "token" in without.stderr.lower()  # refused for the missing token, not another reason
    with_token = connect(dict(os.environ))
    assert with_token.returncode == 0 and "resources" in with_token.stdout, with_token.stderr[-2000:]


def _python_without_ray_auth(code: str) -> subprocess.CompletedProcess[str]:
    """`python -c code` in the repository, in this environment less any Ray auth setting or
    cluster address (a fresh shell's)."""
    names = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")
    env = {k: v for k, v in os.environ.items() if k not in names}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_token_auth_is_set_through_the_environment_before_ray_is_imported() -> None:
    """Ray's public configuration only: no private Ray module is used, and the entry-point
    helper sets mode and a random token in the environment before Ray is imported."""
    for path in SOURCES:
        assert "_raylet" not in path.read_text(), f"{path} uses Ray's private _raylet module"
    probe = (
        "import os, sys; from pipelines.runtime import configure_ray_auth; configure_ray_auth(); "
        "configure_ray_auth(); "  # idempotent
        "print(os.environ['RAY_AUTH_MODE'], len(os.environ['RAY_AUTH_TOKEN']), 'ray' in sys.modules)"
    )
    done = _python_without_ray_auth(probe)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["token", "64", "False"]


def test_an_embedded_ray_is_refused_when_ray_was_imported_before_its_auth_was_set() -> None:
    """Ray reads its auth settings on import: starting one without them would run without
    auth, so ensure_ray fails with a message saying what to do, before Ray starts."""
    probe = "import ray; from pipelines.runtime import ensure_ray; ensure_ray()"
    done = _python_without_ray_auth(probe)
    assert done.returncode != 0
    assert "RayAuthError" in done.stderr and "configure_ray_auth()" in done.stderr, done.stderr[-2000:]
    assert "Started a local Ray instance" not in done.stderr + done.stdout


def test_mlflow_gets_no_home_paths_and_no_secrets(tmp_path: Path, monkeypatch) -> None:
    from pipelines.tracking import Tracker

    home = tmp_path / "home" / "alice"
    monkeypatch.setenv("HOME", str(home))
    secret = "s3cr3t-" + "x" * 24
    monkeypatch.setenv("MY_SERVICE_TOKEN", secret)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = home / "runs" / "smoke"
    config = PipelineConfig.from_dict(
        {
            "run_dir": str(run_dir),
            "data": {"data_dir": str(home / "data")},
            "tracking": {"experiment": "scrubbed", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        }
    )
    assert isinstance(config.tracking, TrackingConfig)
    with (
        Tracker(config, "scrubbed", tags={"note": f"token {secret}"}) as tracker,
        tracker.stage("ingest") as stage,
    ):
        stage.log_params({"data_dir": str(home / "data"), "url": "https://bob:hunter22@example.org/x"})
        stage.log_text(f"read from {home / 'data'} with {secret}", "notes.txt")
        stage.log_dict({"checkpoint_dir": str(run_dir / "model")}, "paths.json")

    client = MlflowClient(tracker.tracking_uri)
    experiment = client.get_experiment_by_name("scrubbed")
    assert experiment is not None
    texts: list[str] = []
    for run in client.search_runs([experiment.experiment_id]):
        texts += [f"{k}={v}" for k, v in run.data.params.items()]
        texts += [f"{k}={v}" for k, v in run.data.tags.items()]
        for artifact in client.list_artifacts(run.info.run_id):
            local = client.download_artifacts(run.info.run_id, artifact.path, str(tmp_path / "dl"))
            texts.append(Path(local).read_text())
    everything = "\n".join(texts)
    assert "run_dir=~/runs/smoke" in everything and "data_dir=~/data" in everything  # scrubbed, kept
    for leaked in (str(home), secret, "hunter22"):
        assert leaked not in everything, leaked


def test_cluster_config_and_local_services_expose_nothing_without_auth() -> None:
    import yaml

    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in cluster[key]]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2
    for command in ray_starts:
        assert "RAY_AUTH_MODE=token" in command and "RAY_AUTH_TOKEN_PATH=" in command, command
        assert "0.0.0.0" not in command
    head = next(c for c in ray_starts if "--head" in c)
    assert "--dashboard-host=127.0.0.1" in head
    inbound = cluster["provider"]["security_group"]["IpPermissions"]
    assert [(rule["FromPort"], rule["ToPort"]) for rule in inbound] == [(22, 22)]  # SSH only
    makefile = (REPO / "Makefile").read_text()
    assert "--host 127.0.0.1" in makefile and "0.0.0.0" not in makefile
    readme = (REPO / "README.md").read_text()
    assert "ray dashboard cluster.yaml" in readme and "ssh -N -L 8265:127.0.0.1:8265" in readme
