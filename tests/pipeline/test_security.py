"""Security: checkpoints never unpickle code, nothing pickles what a user could be handed, the
embedded Ray listens on loopback only and refuses clients without its token, and MLflow gets
no secrets or home paths.

(`ray start --head` + `ray job submit` with and without the token: tests/pipeline/test_pipeline_job.py.)
"""

from __future__ import annotations

import ast
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
import warnings
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


# ------------------------------------------------------------------ what the embedded Ray listens on


def _tcp_listeners() -> dict[str, str]:
    """Socket inode -> "address:port" of every listening TCP socket (IPv4 and IPv6) on this
    machine, from /proc/net (Linux; psutil is not a dependency)."""
    listeners = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A":  # TCP_LISTEN
                listeners[fields[9]] = _proc_net_address(fields[1])
    return listeners


def _proc_net_address(text: str) -> str:
    """/proc/net/tcp's "0100007F:1F90" (host-order 32-bit words) -> "127.0.0.1:8080"."""
    hex_ip, hex_port = text.split(":")
    raw = bytes.fromhex(hex_ip)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return f"{socket.inet_ntop(family, words)}:{int(hex_port, 16)}"


def _process_tree(root: int) -> list[int]:
    """`root` and every process descended from it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _listening_sockets(root: int) -> set[tuple[str, int, str]]:
    """(address:port, pid, process name) of every TCP socket the processes under `root` listen
    on. A Ray worker's name is its process title, which changes while it runs a task."""
    listeners = _tcp_listeners()
    found = set()
    for pid in _process_tree(root):
        try:
            name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue  # ended meanwhile
        for link in links:
            inode = link[len("socket:[") : -1] if link.startswith("socket:[") else None
            if inode in listeners:
                found.add((listeners[inode], pid, Path(name).name or name))
    return found


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.rsplit(":", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1, how gRPC reports IPv4
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


# The one listener that no documented Ray or torch setting can put on loopback (see
# pipelines/runtime.py): torch.distributed's TCPStore, the rendezvous key-value store that the
# rank-0 Ray Train worker opens while training runs, binds to every interface ("::"). Allowed
# here once, on a wildcard address, in a process seen under that actor's name only (while it
# runs a task its title is the task's, e.g. "ray::execute._setup_torch_process_group"), and
# reported as a warning.
TORCH_STORE_PROCESS = "ray::RayTrainWorker"


def test_the_embedded_ray_listens_on_loopback_only_during_a_run(tmp_path: Path) -> None:
    """A table run of pipelines/full.py with its own embedded Ray (two Ray Train workers, so
    Gloo connects them); every second, the listening TCP sockets of the job and all its
    descendants (GCS, raylet, dashboard agent with its metrics endpoint, runtime-env agent, Ray
    Train and Ray Data workers) are listed. Only loopback addresses may appear, except the
    TCPStore named above."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    values = rng.standard_normal((60, 3))
    values[rng.random(values.shape) < 0.2] = np.nan
    pd.DataFrame(values, columns=["a", "b", "c"]).to_csv(tmp_path / "t.csv", index=False)
    settings = [
        f"run_dir={tmp_path / 'run'}",
        "model.hidden=[8]",
        "model.latent_dim=2",
        "train.epochs=3",
        "train.K=2",
        "scaling.num_workers=2",
        "evaluate.num_samples=5",
        "impute.num_samples=5",
        "impute.num_imputations=1",
        "impute_stage.num_actors=1",
    ]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_URI", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    }
    job = subprocess.Popen(
        [sys.executable, "pipelines/full.py", "--data", str(tmp_path / "t.csv"), "--set", *settings],
        cwd=REPO,
        env=env,  # a fresh shell's: the job itself must set what keeps Ray on loopback
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: set[tuple[str, int, str]] = set()
    deadline = time.monotonic() + 600
    while job.poll() is None and time.monotonic() < deadline:
        seen |= _listening_sockets(job.pid)
        time.sleep(1.0)
    job.kill()
    _, err = job.communicate()
    assert job.returncode == 0, err[-3000:]
    names = {name for _, _, name in seen}
    # The sampling saw Ray's servers (not only the driver), or the check below proves nothing.
    assert {"gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names, seen
    train_workers = {pid for _, pid, name in seen if name == TORCH_STORE_PROCESS}
    exposed = sorted({(address, pid, name) for address, pid, name in seen if not _is_loopback(address)})
    store = sorted(
        {
            address
            for address, pid, _ in exposed
            if pid in train_workers and ipaddress.ip_address(address.rsplit(":", 1)[0]).is_unspecified
        }
    )
    assert len(store) <= 1, f"more than torch.distributed's one TCPStore: {store}"
    others = [entry for entry in exposed if entry[0] not in store or entry[1] not in train_workers]
    assert not others, f"listening beyond loopback: {others}"
    if store:
        warnings.warn(
            f"torch.distributed's TCPStore in {TORCH_STORE_PROCESS} listened on {store[0]} "
            "(no documented Ray or torch setting binds it to loopback)",
            stacklevel=1,
        )


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


def test_a_manifest_logged_as_a_file_artifact_reaches_mlflow_without_the_home_path(
    tmp_path: Path, monkeypatch
) -> None:
    """What the impute stage does with its _MANIFEST.json (checkpoint_dir under the home
    directory), for a single file and for a folder: MLflow gets ~, the files on disk keep theirs,
    and binary artifacts are logged byte for byte."""
    from pipelines.tracking import Tracker

    home = tmp_path / "home" / "alice"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = home / "runs" / "table"
    manifest = {"checkpoint_dir": str(run_dir / "model"), "rows": 3}
    single = tmp_path / "imputed" / "_MANIFEST.json"
    folder = tmp_path / "results"
    for directory in (single.parent, folder):
        directory.mkdir(parents=True)
    single.write_text(json.dumps(manifest))
    (folder / "table.csv").write_text(f"dataset,path\nsingle,{run_dir / 'x.parquet'}\n")
    binary = bytes(range(256)) + str(home).encode()
    (folder / "figure.png").write_bytes(binary)
    config = PipelineConfig.from_dict(
        {
            "run_dir": str(run_dir),
            "tracking": {"experiment": "manifest", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        }
    )
    with Tracker(config, "manifest") as tracker, tracker.stage("impute") as stage:
        stage.log_artifact(single)
        stage.log_artifact(folder, "results")
        run_id = stage.run_id
    assert tracker.health.ok and run_id is not None

    client = MlflowClient(tracker.tracking_uri)
    logged = Path(client.download_artifacts(run_id, "", str(tmp_path / "dl")))
    assert json.loads((logged / "_MANIFEST.json").read_text()) == {
        "checkpoint_dir": "~/runs/table/model",
        "rows": 3,
    }
    assert (logged / "results" / "table.csv").read_text() == "dataset,path\nsingle,~/runs/table/x.parquet\n"
    assert (logged / "results" / "figure.png").read_bytes() == binary  # not a text format: as is
    assert json.loads(single.read_text()) == manifest  # the run_dir's own files are unchanged
    assert str(run_dir) in (folder / "table.csv").read_text()


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
