"""MLflow tracking against a real sqlite store in tmp_path."""

from __future__ import annotations

import ast
import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.config import PipelineConfig, TrackingConfig
from pipelines.table1 import RunRow, summarize
from pipelines.tracking import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    Features,
    FrameImputer,
    Tracker,
    TrackingWarning,
    flatten_params,
    headline_metrics,
    resolve_artifact_location,
    resolve_tracking_uri,
    ui_command,
    ui_url,
)
from tests.conftest import REPO


@pytest.fixture
def config(tmp_path, monkeypatch) -> PipelineConfig:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return PipelineConfig(run_dir=str(tmp_path / "run"), tracking=TrackingConfig(experiment="test-exp"))


def ids(tracker: Tracker) -> tuple[str, str]:
    """(run id, experiment id) of a tracker whose store worked (both are None otherwise)."""
    assert tracker.run_id is not None and tracker.experiment_id is not None
    return tracker.run_id, tracker.experiment_id


def _children(client: MlflowClient, tracker: Tracker) -> dict[str, Run]:
    runs = client.search_runs(
        [ids(tracker)[1]], filter_string=f"tags.`mlflow.parentRunId` = '{tracker.run_id}'"
    )
    return {run.data.tags["stage"]: run for run in runs}


def test_default_store_lives_under_run_path(config) -> None:
    uri = resolve_tracking_uri(config)
    assert uri == f"sqlite:///{config.run_path / 'mlflow.db'}" and uri.startswith("sqlite:////")
    assert resolve_artifact_location(config) == (config.run_path / "mlartifacts").as_uri()
    assert ui_command(config).startswith(f"mlflow ui --backend-store-uri {uri} ")
    assert "--host 127.0.0.1 --port 5000" in ui_command(config)


def test_environment_and_config_override_the_default(config, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
    assert resolve_tracking_uri(config) == f"sqlite:///{tmp_path / 'env.db'}"
    with Tracker(config, "env") as tracker:
        pass
    assert (tmp_path / "env.db").is_file() and not (config.run_path / "mlflow.db").exists()
    assert MlflowClient(tracker.tracking_uri).get_run(ids(tracker)[0]).info.status == "FINISHED"

    own = dataclasses.replace(config, tracking=TrackingConfig(tracking_uri="sqlite:///rel/own.db"))
    assert resolve_tracking_uri(own) == f"sqlite:///{Path('rel/own.db').resolve()}"  # made absolute
    remote = dataclasses.replace(config, tracking=TrackingConfig(tracking_uri="http://127.0.0.1:5000"))
    assert resolve_tracking_uri(remote) == "http://127.0.0.1:5000"
    assert resolve_artifact_location(remote) is None


def test_parent_and_nested_runs(config, tmp_path) -> None:
    note = tmp_path / "note.txt"
    note.write_text("hello")
    with Tracker(config, "pipeline") as tracker:
        with tracker.stage("train", params={"scaling": {"num_workers": 2}}) as stage:
            for step in range(3):
                stage.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
            stage.log_artifact(note)
        with tracker.stage("classify") as stage:
            stage.log_dict({"a": 1}, "summary.json")
            stage.log_text("| a |", "table1.md")
            figure = Figure()  # no pyplot: no GUI backend, no global figure state
            figure.subplots().plot([0, 1], [1, 0])
            stage.log_figure(figure, "curve.png")
        tracker.log_metrics({"total_seconds": 1.5})

    assert (config.run_path / "mlflow.db").is_file()
    client = MlflowClient(tracker.tracking_uri)
    experiment = client.get_experiment(ids(tracker)[1])
    assert experiment.name == "test-exp"
    assert experiment.artifact_location == (config.run_path / "mlartifacts").as_uri()

    parent = client.get_run(ids(tracker)[0])
    assert parent.info.status == "FINISHED" and parent.info.run_name == "pipeline"
    assert parent.data.params["train.K"] == str(config.train.K)
    assert parent.data.params == flatten_params(config.to_dict())
    assert parent.data.metrics["total_seconds"] == 1.5
    assert "config.yaml" in [f.path for f in client.list_artifacts(ids(tracker)[0])]

    children = _children(client, tracker)
    assert sorted(children) == ["classify", "train"]
    train, classify = children["train"], children["classify"]
    for run in (train, classify):
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == tracker.run_id
    assert train.data.params == {"scaling.num_workers": "2"}
    history = client.get_metric_history(train.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert [f.path for f in client.list_artifacts(train.info.run_id)] == ["note.txt"]
    listed = {f.path for f in client.list_artifacts(classify.info.run_id)}
    assert listed == {"summary.json", "table1.md", "curve.png"}
    assert (config.run_path / "mlartifacts").is_dir()


def test_exception_in_stage_fails_both_runs(config) -> None:
    with (
        pytest.raises(RuntimeError, match="boom"),
        Tracker(config, "broken") as tracker,
        tracker.stage("impute") as stage,
    ):
        stage.log_metrics({"x": 1.0})
        raise RuntimeError("boom")
    client = MlflowClient(tracker.tracking_uri)
    parent = client.get_run(ids(tracker)[0])
    (child,) = _children(client, tracker).values()
    assert parent.info.status == "FAILED" and child.info.status == "FAILED"
    assert child.data.tags["error"] == "RuntimeError: boom"
    assert parent.info.end_time is not None

    # Without `with`, a stage failure still leaves nothing RUNNING.
    loose = Tracker(config, "loose")
    with pytest.raises(ValueError), loose.stage("train"):
        raise ValueError("bad")
    assert client.get_run(ids(loose)[0]).info.status == "FAILED"
    assert not client.search_runs([ids(tracker)[1]], filter_string="attributes.status = 'RUNNING'")


# ------------------------------------------------------------------ a store that cannot be used


def _job_with_results(config: PipelineConfig) -> tuple[Tracker, Path, list[warnings.WarningMessage]]:
    """What full.py does, in small: a parent run and a stage that writes a result to disk and
    logs it. Returns the tracker, the result file and the TrackingWarnings raised."""
    result = config.run_path / "results" / "table1.md"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Tracker(config, "offline") as tracker, tracker.stage("classify") as stage:
            result.parent.mkdir(parents=True, exist_ok=True)
            result.write_text("| dataset | accuracy |\n| zero | 0.9 |\n")
            stage.log_metrics({"accuracy": 0.9}, step=1)
            stage.log_artifact(result)
        tracker.log_metrics({"seconds_total": 1.0})
    return tracker, result, [w for w in caught if issubclass(w.category, TrackingWarning)]


def test_an_unreachable_tracking_server_loses_only_the_tracking_and_says_what(config, monkeypatch) -> None:
    # MLflow retries a refused connection for minutes by default; one quick try is enough here.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    offline = dataclasses.replace(config, tracking=TrackingConfig(tracking_uri="http://127.0.0.1:9"))
    tracker, result, caught = _job_with_results(offline)

    assert result.is_file()  # the job's own output is there
    assert tracker.run_id is None and not tracker.health.ok
    assert len(caught) == 1  # one warning, at the end, listing what was not logged
    message = str(caught[0].message)
    assert "http://127.0.0.1:9" in message
    for lost in ("the parent run", "job: params", "job: artifact config.yaml", "classify: metrics"):
        assert lost in message, message
    assert "classify: artifact table1.md" in message and str(offline.run_path) in message


def test_a_read_only_store_loses_only_the_tracking_and_says_what(config, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # MLflow makes a "file:" folder in the working directory
    db = tmp_path / "store" / "mlflow.db"
    writable = dataclasses.replace(
        config, tracking=dataclasses.replace(config.tracking, tracking_uri=f"sqlite:///{db}")
    )
    with Tracker(writable, "first"):  # creates the schema and the experiment
        pass
    # SQLite's URI mode=ro opens the database read-only for every user, root included (chmod
    # would not stop root, and CI runs as root).
    read_only = dataclasses.replace(
        config,
        tracking=dataclasses.replace(config.tracking, tracking_uri=f"sqlite:///file:{db}?mode=ro&uri=true"),
    )
    tracker, result, caught = _job_with_results(read_only)

    assert result.is_file()
    assert not tracker.health.ok
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "readonly" in message.replace("-", "").replace(" ", "").lower(), message
    assert "classify: metrics" in message and "classify: artifact table1.md" in message
    assert len(MlflowClient(f"sqlite:///{db}").search_runs([ids_of_experiment(db)])) == 1  # only "first"


def test_a_store_path_that_cannot_be_created_loses_only_the_tracking(config, tmp_path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where the store's directory should be")
    broken = dataclasses.replace(
        config, tracking=TrackingConfig(tracking_uri=f"sqlite:///{blocker}/mlflow.db")
    )
    tracker, result, caught = _job_with_results(broken)
    assert result.is_file() and tracker.run_id is None
    assert len(caught) == 1 and "the parent run" in str(caught[0].message)


def ids_of_experiment(db: Path) -> str:
    experiment = MlflowClient(f"sqlite:///{db}").get_experiment_by_name("test-exp")
    assert experiment is not None
    return str(experiment.experiment_id)


def test_one_module_imports_mlflow() -> None:
    """MLflow is reached only through pipelines.tracking (its `runs` module); the library and
    every other stage stay free of it."""
    importers = set()
    for folder in ("missiwae", "pipelines"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                if any(name == "mlflow" or name.startswith("mlflow.") for name in names):
                    importers.add(path.relative_to(REPO).as_posix())
    assert importers == {"pipelines/tracking/runs.py"}


# ------------------------------------------------------------------ comparing runs in the UI


def test_the_experiment_opens_in_the_model_training_view(config) -> None:
    with Tracker(config, "first") as tracker:
        pass
    client = MlflowClient(tracker.tracking_uri)
    experiment_id = ids(tracker)[1]
    assert client.get_experiment(experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    # MLflow 3.17's UI follows its global GenAI / Model training switch: the link sets it.
    assert ui_url(experiment_id) == (
        f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    )

    # An experiment made before the kind was set gets it; a kind a user chose stays.
    client.delete_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG)
    Tracker(config, "second").end()
    assert client.get_experiment(experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, "genai_development")
    Tracker(config, "third").end()
    assert client.get_experiment(experiment_id).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_headline_metrics_have_stable_names() -> None:
    summary = summarize(
        [RunRow("zero", seed, 0.8 + seed / 100, 0.5, 1, 1, 1.0) for seed in range(2)]
        + [RunRow("complete", 0, 0.9, 0.3, 1, 1, 1.0)]
    )
    impute = {
        "train/accuracy/missiwae_single": 0.9,
        "train/accuracy/missiwae_multiple": 0.85,
        "train/accuracy/missiwae_multiple_00": 0.84,
        "train/accuracy/zero": 0.8,
        "train/ess_mean": 3.5,
        "train/num_rows": 300.0,
        "test/accuracy/zero": 0.1,
    }
    metrics = headline_metrics(
        summary=summary, impute=impute, test_log_likelihood=-120.5, seconds={"train": 2.0, "total": 5.0}
    )
    assert metrics == {
        "table1/zero/accuracy_mean": pytest.approx(0.805),
        "table1/zero/accuracy_sd": pytest.approx(0.00707107),
        "table1/zero/cross_entropy_mean": 0.5,
        "table1/zero/cross_entropy_sd": 0.0,
        "table1/complete/accuracy_mean": 0.9,  # one seed: no sd (NaN is left out)
        "table1/complete/cross_entropy_mean": 0.3,
        "impute/missiwae_single/accuracy": 0.9,
        "impute/missiwae_multiple/accuracy": 0.85,
        "impute/zero/accuracy": 0.8,
        "impute/ess_mean": 3.5,
        "train/test_log_likelihood": -120.5,
        "seconds/train": 2.0,
        "seconds/total": 5.0,
    }


def load_logged_model(tracking_uri: str, uri: str) -> Any:
    """``mlflow.pyfunc.load_model(uri)``, the standard way, with ``models:/<id>`` looked up in
    `tracking_uri`; the global tracking URI is put back afterwards."""
    import mlflow

    # set_tracking_uri also exports $MLFLOW_TRACKING_URI. Restoring get_tracking_uri()'s value
    # would leave the variable pointing at ./mlflow.db for every later test; restoring the
    # variable's own value (None unsets both) leaves the process as it was.
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    try:
        return mlflow.pyfunc.load_model(uri)
    finally:
        mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]  # None unsets both in mlflow 3.17


def test_the_logged_model_imputes_a_frame_in_the_tables_units(config, tmp_path) -> None:
    """An untrained checkpoint of a 3-column Gaussian table with a standardisation: the logged
    pyfunc model loads with mlflow.pyfunc.load_model and fills only the NaN cells."""
    import numpy as np
    import pandas as pd
    import torch

    from missiwae.config import ModelConfig
    from missiwae.model import MissIWAE
    from missiwae.training import save_checkpoint

    torch.manual_seed(0)
    model = MissIWAE.from_config(
        ModelConfig(num_features=3, hidden=(8,), latent_dim=2, observation="gaussian")
    )
    save_checkpoint(tmp_path / "ckpt", model, None, None, [])
    columns = ["height", "weight", "age"]
    mean, scale = [170.0, 70.0, 40.0], [10.0, 15.0, 12.0]
    features = Features.for_table(columns, num_samples=20, seed=3, mean=mean, scale=scale)
    with Tracker(config, "model") as tracker:
        uri = tracker.log_imputer(tmp_path / "ckpt", features)
    assert uri is not None and uri.startswith("models:/")
    run = MlflowClient(tracker.tracking_uri).get_run(ids(tracker)[0])
    assert run.data.tags["imputer_model_uri"] == uri

    loaded = load_logged_model(tracker.tracking_uri, uri)
    values = np.array([[180.0, np.nan, 30.0], [np.nan, np.nan, np.nan], [165.5, 60.25, 51.0]])
    frame = pd.DataFrame(values, columns=columns)
    filled = loaded.predict(frame)
    observed = ~np.isnan(values)
    assert list(filled.columns) == columns and np.isfinite(filled.to_numpy()).all()
    assert np.array_equal(filled.to_numpy()[observed], values[observed])  # bit for bit
    # In the table's units: the standardised estimate is O(1), so the cell is near its mean.
    assert abs(filled.loc[1, "height"] - 170.0) < 10.0 * 10
    assert np.array_equal(loaded.predict(frame).to_numpy(), filled.to_numpy())  # seeded
    # Direct use, no MLflow: the same numbers.
    assert model.config is not None
    direct = FrameImputer(MissIWAE.from_config(model.config), features)
    direct.model.load_state_dict(model.state_dict())
    assert np.array_equal(direct.impute(frame).to_numpy(), filled.to_numpy())
    # A frame without the model's columns: the logged signature refuses it, and so does the
    # imputer itself when used without MLflow.
    wrong = frame[["height", "weight"]].assign(other=1.0)
    with pytest.raises(MlflowException, match="missing inputs \\['age'\\]"):
        loaded.predict(wrong)
    with pytest.raises(ValueError, match="missing \\['age'\\], extra \\['other'\\]"):
        direct.impute(wrong)


# Run by a Python started with -I -S -B: no site-packages, no .pth files (so not the project's
# editable install), no current directory, no bytecode written into the model's code; it adds
# the venv's site-packages itself (mlflow, torch, pandas) and proves the project is out of
# reach before loading the model.
_LOAD_WITHOUT_PROJECT = """
import json, sys
from pathlib import Path
sys.path.append(sys.argv[1])
try:
    import missiwae
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("the project is importable here: " + missiwae.__file__)
import mlflow, numpy as np, pandas as pd
mlflow.set_tracking_uri(sys.argv[2])
model = mlflow.pyfunc.load_model(sys.argv[3])
frame = pd.DataFrame(json.loads(sys.argv[4]), columns=json.loads(sys.argv[5]), dtype=float)
code = Path(sys.modules["missiwae"].__file__).parents[1]
print(json.dumps({
    "filled": model.predict(frame).to_numpy().tolist(),
    "code": str(code),
    "files": sorted(str(p.relative_to(code)) for p in code.rglob("*") if p.is_file()),
}))
"""


def test_the_logged_model_loads_and_imputes_where_only_mlflow_and_torch_are_installed(
    config, tmp_path
) -> None:
    """The model carries the project's .py files (code_paths): a Python without the project on
    its path loads it with mlflow.pyfunc.load_model and imputes exactly as this process does."""
    import json
    import subprocess
    import sys
    import sysconfig

    import numpy as np
    import pandas as pd
    import torch

    from missiwae.config import ModelConfig
    from missiwae.model import MissIWAE
    from missiwae.training import save_checkpoint

    torch.manual_seed(0)
    model = MissIWAE.from_config(
        ModelConfig(num_features=2, hidden=(8,), latent_dim=2, observation="gaussian")
    )
    save_checkpoint(tmp_path / "ckpt", model, None, None, [])
    columns = ["x", "y"]
    with Tracker(config, "model") as tracker:
        uri = tracker.log_imputer(tmp_path / "ckpt", Features.for_table(columns, num_samples=10, seed=1))
    assert uri is not None
    values = [[1.5, None], [None, -2.0], [0.25, 4.0]]
    expected = load_logged_model(tracker.tracking_uri, uri).predict(
        pd.DataFrame(values, columns=columns, dtype=float)
    )

    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "MLFLOW_TRACKING_URI")
    }
    site_packages = sysconfig.get_paths()["purelib"]
    args = [site_packages, tracker.tracking_uri, uri, json.dumps(values), json.dumps(columns)]
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-B", "-c", _LOAD_WITHOUT_PROJECT, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert np.array_equal(np.array(loaded["filled"]), expected.to_numpy())  # same numbers, bit for bit
    assert "/code" in loaded["code"] and not loaded["code"].startswith(str(Path(__file__).parents[2]))
    # Only the source files: the library whole, of pipelines what the model's class imports.
    assert {Path(name).suffix for name in loaded["files"]} == {".py"}
    assert "missiwae/imputation.py" in loaded["files"] and "pipelines/tracking/runs.py" in loaded["files"]
    assert not any(name.startswith(("pipelines/impute", "pipelines/configs")) for name in loaded["files"])
