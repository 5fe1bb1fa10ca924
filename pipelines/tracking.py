"""MLflow tracking for the pipeline: one parent run per job, one nested run per stage.

The only module that imports mlflow. Everything goes through an explicit ``MlflowClient`` and
run ids -- never the fluent ``mlflow.start_run`` stack -- so no active-run state leaks between
tests or jobs, and Ray workers need no MLflow state at all (the driver logs what they return).

Where runs go (:func:`resolve_tracking_uri`): ``config.tracking.tracking_uri``, else
``$MLFLOW_TRACKING_URI``, else ``sqlite:///<run_path>/mlflow.db``. MLflow 3 wants a database
store (the plain file store needs an opt-in) and absolute paths, so relative sqlite paths are
made absolute. Artifacts of a newly created experiment go to ``<run_path>/mlartifacts``
(a ``file://`` URI) unless the tracking URI is a remote server, which then decides.

When the store is unreachable or read-only, tracking degrades instead of failing the job: the
first failing call switches the tracker (parent and stages alike) to a no-op, one log line says
so at once, and when the parent run ends one ``TrackingWarning`` lists everything that was not
logged. Results and artifacts are written to ``run_dir`` by the stages themselves, so nothing
but the MLflow copy is lost. (For an http store, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` and
``MLFLOW_HTTP_REQUEST_TIMEOUT`` bound how long the first failing call takes.)

What is logged is scrubbed (:func:`scrub`): the user's home directory becomes ``~`` and the
value of any environment variable whose name looks like a secret (TOKEN, SECRET, PASSWORD,
KEY, CREDENTIAL) becomes ``***``, in params, tags and dict/text artifacts.

Usage::

    with Tracker(config, "smoke") as tracker:        # parent run, config logged
        with tracker.stage("train") as stage:        # nested run, tag stage=train
            stage.log_metrics({"loss": 1.0}, step=1)
    # FINISHED on success; FAILED (stage and parent) when an exception escapes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import time
import warnings
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
    "TrackingWarning",
    "flatten_params",
    "resolve_artifact_location",
    "resolve_tracking_uri",
    "scrub",
    "ui_command",
]

_log = logging.getLogger(__name__)

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
    if not path or path == ":memory:" or path.startswith(("/", "file:")):  # file: = sqlite URI mode
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

_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY", re.I)
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def _secret_values() -> list[str]:
    """Values of environment variables named like secrets, longest first (8+ characters: a
    short value would blank out ordinary words)."""
    values = {v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 8}
    return sorted(values, key=len, reverse=True)


def scrub(text: str) -> str:
    """`text` without secrets or the home directory: secret env values -> ***, user:password@
    in URLs -> ***@, the home directory -> ~."""
    for secret in _secret_values():
        text = text.replace(secret, "***")
    text = _URL_USERINFO.sub("***@", text)
    home = os.path.expanduser("~").rstrip("/")
    if home and home != "/":  # root's home is "/root"; a bare "/" would match every path
        text = re.sub(re.escape(home) + r"(?![\w.-])", "~", text)
    return text


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_value(v) for v in value]
    return value


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return scrub(text)[:MAX_PARAM_VALUE]


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


class TrackingWarning(UserWarning):
    """MLflow could not be written to: the job went on, and the warning lists what was lost."""


class _Health:
    """Shared by a parent run and its stages: whether the store still works, what was skipped."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self.error: BaseException | None = None
        self.skipped: list[str] = []

    @property
    def ok(self) -> bool:
        return self.error is None

    def fail(self, what: str, error: BaseException) -> None:
        if self.error is None:
            self.error = error
            _log.warning(
                "MLflow store %s failed while logging %s (%s: %s); tracking is off for the rest of "
                "the job, results are still written to disk",
                scrub(self.tracking_uri),
                what,
                type(error).__name__,
                _short(error),
            )
        self.skipped.append(what)

    def skip(self, what: str) -> None:
        self.skipped.append(what)

    def report(self, run_path: Path) -> None:
        """One TrackingWarning naming the store, the error and everything not logged."""
        if self.error is None:
            return
        counts: dict[str, int] = {}
        for what in self.skipped:
            counts[what] = counts.get(what, 0) + 1
        lost = ", ".join(f"{what} x{n}" if n > 1 else what for what, n in counts.items())
        warnings.warn(
            f"MLflow tracking to {scrub(self.tracking_uri)} failed ({type(self.error).__name__}: "
            f"{_short(self.error)}); not logged: {lost}. The results themselves are on disk under "
            f"{scrub(str(run_path))}.",
            TrackingWarning,
            stacklevel=3,
        )


def _short(error: BaseException) -> str:
    return scrub(" ".join(str(error).split()))[:300]


class RunLogger:
    """Logging into one MLflow run by id (the parent run, or a stage's nested run).

    Every call is guarded: after the store fails once (see the module docstring) calls only
    record what they would have logged. ``run_id`` is None when the run could not be created.
    """

    def __init__(
        self,
        client: MlflowClient | None,
        run_id: str | None,
        experiment_id: str | None,
        health: _Health | None = None,
        name: str = "run",
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.health = health if health is not None else _Health("")
        self.name = name
        self._ended = False

    @classmethod
    def connect(cls, tracking_uri: str, run_id: str | None, experiment_id: str | None) -> RunLogger:
        """Log into an existing run from another object or process (e.g. a Tune callback)."""
        return cls(MlflowClient(tracking_uri=tracking_uri), run_id, experiment_id, _Health(tracking_uri))

    @property
    def artifact_uri(self) -> str:
        assert self.client is not None and self.run_id is not None, "tracking is off"
        return str(self.client.get_run(self.run_id).info.artifact_uri)

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def active(self) -> bool:
        """Whether calls still reach MLflow."""
        return self.health.ok and self.client is not None and self.run_id is not None

    def _guard(self, what: str, call: Any) -> None:
        """call() against the store, or record `what` as not logged."""
        what = f"{self.name}: {what}"
        if not self.active:
            self.health.skip(what)
            return
        try:
            call()
        except Exception as error:  # any store failure: connection, permission, read-only db
            self.health.fail(what, error)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Nested mappings are flattened to dotted keys (see :func:`flatten_params`)."""
        batch = [Param(k, v) for k, v in flatten_params(params).items()]

        def call() -> None:
            assert self.client is not None and self.run_id is not None
            for chunk in _chunks(batch, PARAMS_PER_BATCH):
                self.client.log_batch(self.run_id, params=chunk)

        self._guard("params", call)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        timestamp = _now_ms()
        batch = [Metric(k, float(v), timestamp, int(step or 0)) for k, v in metrics.items()]

        def call() -> None:
            assert self.client is not None and self.run_id is not None
            for chunk in _chunks(batch, METRICS_PER_BATCH):
                self.client.log_batch(self.run_id, metrics=chunk)

        self._guard("metrics", call)

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        self.log_metrics({key: value}, step=step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        batch = [RunTag(k, scrub(str(v))[:MAX_TAG_VALUE]) for k, v in tags.items()]

        def call() -> None:
            assert self.client is not None and self.run_id is not None
            for chunk in _chunks(batch, PARAMS_PER_BATCH):
                self.client.log_batch(self.run_id, tags=chunk)

        self._guard("tags", call)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """A file, or a directory's contents, under ``artifact_path`` of the run."""
        local = Path(path)

        def call() -> None:
            assert self.client is not None and self.run_id is not None
            if local.is_dir():
                self.client.log_artifacts(self.run_id, str(local), artifact_path)
            else:
                self.client.log_artifact(self.run_id, str(local), artifact_path)

        self._guard(f"artifact {local.name}", call)

    def log_dict(self, dictionary: Mapping[str, Any], artifact_file: str) -> None:
        """JSON or YAML by the file's extension."""
        clean = _scrub_value(dict(dictionary))

        def call() -> None:
            assert self.client is not None and self.run_id is not None
            self.client.log_dict(self.run_id, clean, artifact_file)

        self._guard(f"artifact {artifact_file}", call)

    def log_text(self, text: str, artifact_file: str) -> None:
        def call() -> None:
            assert self.client is not None and self.run_id is not None
            self.client.log_text(self.run_id, scrub(text), artifact_file)

        self._guard(f"artifact {artifact_file}", call)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """A matplotlib (or plotly) figure saved as ``artifact_file`` (e.g. "curves.png")."""

        def call() -> None:
            assert self.client is not None and self.run_id is not None
            self.client.log_figure(self.run_id, figure, artifact_file)

        self._guard(f"artifact {artifact_file}", call)

    def end(self, status: str = "FINISHED", error: BaseException | None = None) -> None:
        """Terminate the run once (later calls do nothing); ``error`` is kept as a tag."""
        if self._ended:
            return
        self._ended = True
        if error is not None:
            self.set_tags({"error": f"{type(error).__name__}: {error}"})

        def call() -> None:
            assert self.client is not None and self.run_id is not None
            self.client.set_terminated(self.run_id, status=status, end_time=_now_ms())

        self._guard(f"status {status}", call)

    def _fail(self, error: BaseException) -> None:
        with contextlib.suppress(Exception):  # never mask the original error
            self.end("FAILED", error)

    def child(self, name: str, tags: Mapping[str, Any] | None = None) -> RunLogger:
        """A new nested run (tag ``mlflow.parentRunId`` = this run); the caller ends it. With
        the store down it is an inactive logger that only records what was not logged."""
        holder: dict[str, str] = {}

        def call() -> None:
            assert self.client is not None and self.run_id is not None and self.experiment_id is not None
            run = self.client.create_run(
                self.experiment_id,
                run_name=name,
                tags={**{k: scrub(str(v)) for k, v in (tags or {}).items()}, PARENT_RUN_TAG: self.run_id},
            )
            holder["run_id"] = run.info.run_id

        self._guard(f"nested run {name}", call)
        return RunLogger(self.client, holder.get("run_id"), self.experiment_id, self.health, name)

    def reopen(self, run_id: str, name: str = "run") -> RunLogger:
        """An existing run of this experiment, set RUNNING again (a resumed sweep's trial)."""

        def call() -> None:
            assert self.client is not None
            self.client.update_run(run_id, status="RUNNING")

        self._guard(f"reopen {name}", call)
        return RunLogger(self.client, run_id, self.experiment_id, self.health, name)

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
        health = _Health(self.tracking_uri)
        client: MlflowClient | None = None
        run_id = experiment_id = None
        try:
            if self.tracking_uri.startswith("sqlite:///"):
                db = self.tracking_uri[len("sqlite:///") :].partition("?")[0]
                if db and db != ":memory:" and not db.startswith("file:"):
                    Path(db).parent.mkdir(parents=True, exist_ok=True)
            client = MlflowClient(tracking_uri=self.tracking_uri)
            experiment_id = self._experiment(client, config.tracking.experiment)
            if resume_run_id is not None and _run_exists(client, resume_run_id, experiment_id):
                # An interrupted job run again (a restored sweep): keep logging into its run.
                client.update_run(resume_run_id, status="RUNNING")
                run_id = resume_run_id
            else:
                run_tags = _scrub_tags(_context_tags(tags))
                run = client.create_run(experiment_id, run_name=run_name, tags=run_tags)
                run_id = run.info.run_id
        except Exception as error:  # unreachable, read-only, or a broken store: go on without it
            health.fail("the parent run", error)
        super().__init__(client, run_id, experiment_id, health, "job")
        if run_id is not None and run_id == resume_run_id:
            return
        values = config.to_dict()
        self.log_params(values)
        self.log_dict(values, "config.yaml")

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
        self.health.report(self.config.run_path)


def _scrub_tags(tags: Mapping[str, str]) -> dict[str, str]:
    return {k: scrub(v) for k, v in tags.items()}


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
