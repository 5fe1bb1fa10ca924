"""MLflow tracking for the pipeline: one parent run per job, one nested run per stage.

The only module that imports mlflow. Everything goes through an explicit ``MlflowClient`` and
run ids -- never the fluent ``mlflow.start_run`` stack -- so no active-run state leaks between
tests or jobs, and Ray workers need no MLflow state at all (the driver logs what they return).

Where runs go (:func:`resolve_tracking_uri`): ``config.tracking.tracking_uri``, else
``$MLFLOW_TRACKING_URI``, else ``sqlite:///<run_path>/mlflow.db``. MLflow 3 wants a database
store (the plain file store needs an opt-in) and absolute paths, so relative sqlite paths are
made absolute. Artifacts of a newly created experiment go to ``<run_path>/mlartifacts``
(a ``file://`` URI) unless the tracking URI is a remote server, which then decides.

Usage::

    with Tracker(config, "smoke") as tracker:        # parent run, config logged
        with tracker.stage("train") as stage:        # nested run, tag stage=train
            stage.log_metrics({"loss": 1.0}, step=1)
    # FINISHED on success; FAILED (stage and parent) when an exception escapes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.config import PipelineConfig

__all__ = [
    "RunLogger",
    "Tracker",
    "flatten_params",
    "resolve_artifact_location",
    "resolve_tracking_uri",
    "ui_command",
]

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
PARENT_RUN_TAG = "mlflow.parentRunId"
STAGE_TAG = "stage"
# Limits of MLflow's built-in stores (mlflow.utils.validation).
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
_REMOTE_SCHEMES = ("http://", "https://", "databricks")


# ------------------------------------------------------------------------------- where


def _absolute_sqlite(uri: str) -> str:
    """``sqlite:///relative.db`` -> ``sqlite:////abs/relative.db`` (4 slashes = absolute)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return uri
    path, sep, query = uri[len(prefix) :].partition("?")
    if not path or path == ":memory:" or path.startswith("/"):
        return uri
    return f"{prefix}{Path(path).expanduser().resolve()}{sep}{query}"


def resolve_tracking_uri(config: PipelineConfig) -> str:
    """``config.tracking.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else
    ``sqlite:///<run_path>/mlflow.db``; sqlite paths are made absolute."""
    uri = config.tracking.tracking_uri or os.environ.get(TRACKING_URI_ENV) or ""
    if not uri.strip():
        uri = f"sqlite:///{config.run_path / 'mlflow.db'}"
    return _absolute_sqlite(uri.strip())


def resolve_artifact_location(config: PipelineConfig, tracking_uri: str | None = None) -> str | None:
    """``file://<run_path>/mlartifacts`` for local stores; None (the server decides) for a
    remote tracking server."""
    uri = tracking_uri if tracking_uri is not None else resolve_tracking_uri(config)
    if uri.startswith(_REMOTE_SCHEMES):
        return None
    return (config.run_path / "mlartifacts").as_uri()


def ui_command(config: PipelineConfig) -> str:
    """The shell line that opens the MLflow UI on this pipeline's runs (local only)."""
    uri = resolve_tracking_uri(config)
    if uri.startswith(_REMOTE_SCHEMES):
        return f"# runs are on the tracking server {uri}: open it in a browser"
    parts = ["mlflow", "ui", "--backend-store-uri", uri]
    artifacts = resolve_artifact_location(config, uri)
    if artifacts:
        parts += ["--default-artifact-root", artifacts]
    parts += ["--host", "127.0.0.1", "--port", "5000", "--workers", "1"]
    return " ".join(shlex.quote(p) for p in parts)


# ------------------------------------------------------------------------------ values


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:MAX_PARAM_VALUE]


def flatten_params(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> ``{"train.K": "50", "model.hidden": "[200, 200]", ...}``: dotted keys,
    non-strings as JSON, values cut at MLflow's 6000 characters."""
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, f"{name}."))
        else:
            out[name] = _param_value(value)
    return out


def _now_ms() -> int:
    return int(time.time() * 1000)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ------------------------------------------------------------------------------- runs


class RunLogger:
    """Logging into one MLflow run by id (the parent run, or a stage's nested run)."""

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self._ended = False

    @classmethod
    def connect(cls, tracking_uri: str, run_id: str, experiment_id: str) -> RunLogger:
        """Log into an existing run from another object or process (e.g. a Tune callback)."""
        return cls(MlflowClient(tracking_uri=tracking_uri), run_id, experiment_id)

    @property
    def artifact_uri(self) -> str:
        return str(self.client.get_run(self.run_id).info.artifact_uri)

    @property
    def ended(self) -> bool:
        return self._ended

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Nested mappings are flattened to dotted keys (see :func:`flatten_params`)."""
        batch = [Param(k, v) for k, v in flatten_params(params).items()]
        for chunk in _chunks(batch, PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=chunk)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        timestamp = _now_ms()
        batch = [Metric(k, float(v), timestamp, int(step or 0)) for k, v in metrics.items()]
        for chunk in _chunks(batch, METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=chunk)

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        self.log_metrics({key: value}, step=step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        batch = [RunTag(k, str(v)[:MAX_TAG_VALUE]) for k, v in tags.items()]
        for chunk in _chunks(batch, PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=chunk)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """A file, or a directory's contents, under ``artifact_path`` of the run."""
        local = Path(path)
        if local.is_dir():
            self.client.log_artifacts(self.run_id, str(local), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(local), artifact_path)

    def log_dict(self, dictionary: Mapping[str, Any], artifact_file: str) -> None:
        """JSON or YAML by the file's extension."""
        self.client.log_dict(self.run_id, dict(dictionary), artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """A matplotlib (or plotly) figure saved as ``artifact_file`` (e.g. "curves.png")."""
        self.client.log_figure(self.run_id, figure, artifact_file)

    def end(self, status: str = "FINISHED", error: BaseException | None = None) -> None:
        """Terminate the run once (later calls do nothing); ``error`` is kept as a tag."""
        if self._ended:
            return
        self._ended = True
        if error is not None:
            with contextlib.suppress(Exception):  # never mask the original error
                self.set_tags({"error": f"{type(error).__name__}: {error}"})
        self.client.set_terminated(self.run_id, status=status, end_time=_now_ms())

    def _fail(self, error: BaseException) -> None:
        with contextlib.suppress(Exception):  # the store may be the failure: keep the original
            self.end("FAILED", error)

    def child(self, name: str, tags: Mapping[str, Any] | None = None) -> RunLogger:
        """A new nested run (tag ``mlflow.parentRunId`` = this run); the caller ends it."""
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={**{k: str(v) for k, v in (tags or {}).items()}, PARENT_RUN_TAG: self.run_id},
        )
        return RunLogger(self.client, run.info.run_id, self.experiment_id)

    def reopen(self, run_id: str) -> RunLogger:
        """An existing run of this experiment, set RUNNING again (a resumed sweep's trial)."""
        self.client.update_run(run_id, status="RUNNING")
        return RunLogger(self.client, run_id, self.experiment_id)

    @contextmanager
    def stage(self, name: str, params: Mapping[str, Any] | None = None) -> Iterator[RunLogger]:
        """A nested run (tags ``mlflow.parentRunId`` = this run, ``stage`` = name), FINISHED
        when the block completes; when an exception escapes, the nested run and this run are
        both ended FAILED and the exception propagates."""
        child = self.child(name, {STAGE_TAG: name})
        try:
            if params:
                child.log_params(params)
            yield child
        except BaseException as error:
            child._fail(error)
            self._fail(error)
            raise
        child.end()


class Tracker(RunLogger):
    """The pipeline's parent run, as a context manager.

    ``Tracker(config, run_name)`` resolves the tracking URI, creates the experiment
    ``config.tracking.experiment`` when missing (artifacts under ``<run_path>/mlartifacts``),
    starts the parent run, logs the whole config flattened as params (``train.K``, ...) and as
    the artifact ``config.yaml``. Leaving the ``with`` block ends the run FINISHED, or FAILED
    when an exception escapes; without ``with``, call :meth:`end`.
    """

    def __init__(
        self,
        config: PipelineConfig,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        *,
        resume_run_id: str | None = None,
    ) -> None:
        self.config = config
        self.tracking_uri = resolve_tracking_uri(config)
        self.artifact_location = resolve_artifact_location(config, self.tracking_uri)
        if self.tracking_uri.startswith("sqlite:///"):
            db = self.tracking_uri[len("sqlite:///") :].partition("?")[0]
            if db and db != ":memory:":
                Path(db).parent.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=self.tracking_uri)
        experiment_id = self._experiment(client, config.tracking.experiment)
        if resume_run_id is not None and _run_exists(client, resume_run_id, experiment_id):
            # An interrupted job run again (a restored sweep): keep logging into its run.
            client.update_run(resume_run_id, status="RUNNING")
            super().__init__(client, resume_run_id, experiment_id)
            return
        run = client.create_run(experiment_id, run_name=run_name, tags=_context_tags(tags))
        super().__init__(client, run.info.run_id, experiment_id)
        try:
            values = config.to_dict()
            self.log_params(values)
            self.log_dict(values, "config.yaml")
        except BaseException as error:
            self._fail(error)
            raise

    def _experiment(self, client: MlflowClient, name: str) -> str:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return str(client.create_experiment(name, artifact_location=self.artifact_location))
            except MlflowException:  # created meanwhile by another process
                experiment = client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return str(experiment.experiment_id)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            self.end()
        else:
            self._fail(exc)


def _run_exists(client: MlflowClient, run_id: str, experiment_id: str) -> bool:
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return False
    return bool(run.info.experiment_id == experiment_id and run.info.lifecycle_stage == "active")


def _context_tags(tags: Mapping[str, Any] | None) -> dict[str, str]:
    """MLflow's default run tags (user, source, git commit) as the fluent API would set them."""
    extra = {k: str(v) for k, v in (tags or {}).items()}
    try:
        from mlflow.tracking.context.registry import resolve_tags

        return {str(k): str(v) for k, v in resolve_tags(extra).items()}
    except Exception:  # an internal API: fall back to the caller's tags
        return extra
