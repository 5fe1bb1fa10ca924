"""MLflow tracking against a real sqlite store in tmp_path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipelines.config import PipelineConfig, TrackingConfig
from pipelines.tracking import (
    Tracker,
    flatten_params,
    resolve_artifact_location,
    resolve_tracking_uri,
    ui_command,
)


@pytest.fixture
def config(tmp_path, monkeypatch) -> PipelineConfig:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return PipelineConfig(run_dir=str(tmp_path / "run"), tracking=TrackingConfig(experiment="test-exp"))


def _children(client: MlflowClient, tracker: Tracker) -> dict[str, Run]:
    runs = client.search_runs(
        [tracker.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{tracker.run_id}'"
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
    assert MlflowClient(tracker.tracking_uri).get_run(tracker.run_id).info.status == "FINISHED"

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
    experiment = client.get_experiment(tracker.experiment_id)
    assert experiment.name == "test-exp"
    assert experiment.artifact_location == (config.run_path / "mlartifacts").as_uri()

    parent = client.get_run(tracker.run_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "pipeline"
    assert parent.data.params["train.K"] == str(config.train.K)
    assert parent.data.params == flatten_params(config.to_dict())
    assert parent.data.metrics["total_seconds"] == 1.5
    assert "config.yaml" in [f.path for f in client.list_artifacts(tracker.run_id)]

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
    parent = client.get_run(tracker.run_id)
    (child,) = _children(client, tracker).values()
    assert parent.info.status == "FAILED" and child.info.status == "FAILED"
    assert child.data.tags["error"] == "RuntimeError: boom"
    assert parent.info.end_time is not None

    # Without `with`, a stage failure still leaves nothing RUNNING.
    loose = Tracker(config, "loose")
    with pytest.raises(ValueError), loose.stage("train"):
        raise ValueError("bad")
    assert client.get_run(loose.run_id).info.status == "FAILED"
    assert not client.search_runs([tracker.experiment_id], filter_string="attributes.status = 'RUNNING'")
