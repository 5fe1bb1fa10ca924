"""MLflow runs by id: ``RunLogger`` (one run: params, metrics, tags, artifacts, nested runs)
and ``Tracker`` (the job's parent run, as a context manager). The only module that imports mlflow.

Everything goes through an explicit ``MlflowClient`` and run ids -- never the fluent
``mlflow.start_run`` stack -- so no active-run state leaks between tests or jobs, and Ray
workers need no MLflow state at all (the driver logs what they return). Every call is guarded
by the shared ``TrackingHealth`` (pipelines.tracking.health).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd
from mlflow.entities import LoggedModelOutput, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.pyfunc import PythonModel, save_model
from mlflow.tracking import MlflowClient

from pipelines.config import PipelineConfig
from pipelines.tracking.headline import headline_metrics
from pipelines.tracking.health import TrackingHealth
from pipelines.tracking.model import FEATURES_FILE, Features, FrameImputer, pip_requirements, stage_model_code
from pipelines.tracking.scrub import MAX_TAG_VALUE, flatten_params, scrub, scrub_value
from pipelines.tracking.store import resolve_artifact_location, resolve_tracking_uri

PARENT_RUN_TAG = "mlflow.parentRunId"
# Starts the note a failed job's exception carries when tracking failed too (Tracker.__exit__).
TRACKING_NOTE_PREFIX = "TrackingWarning: "
STAGE_TAG = "stage"
# The UI (MLflow 3) chooses an experiment's view from this tag: the model-training view (runs
# table, metrics, charts) rather than the GenAI overview (traces, token usage).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# Batch limits of MLflow's built-in stores (mlflow.utils.validation).
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000


def _now_ms() -> int:
    return int(time.time() * 1000)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
        health: TrackingHealth | None = None,
        name: str = "run",
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.health = health if health is not None else TrackingHealth("")
        self.name = name
        self._ended = False

    @classmethod
    def connect(cls, tracking_uri: str, run_id: str | None, experiment_id: str | None) -> RunLogger:
        """Log into an existing run from another object or process (e.g. a Tune callback)."""
        return cls(
            MlflowClient(tracking_uri=tracking_uri), run_id, experiment_id, TrackingHealth(tracking_uri)
        )

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
        """A file, or a directory's contents, under ``artifact_path`` of the run. Text files
        (JSON, YAML, CSV, Markdown, plain text) are scrubbed like params (``scrub``: e.g. a
        manifest's ``checkpoint_dir`` under the home directory is logged as ``~/...``); the
        files on disk are not changed, a scrubbed copy is logged instead."""
        local = Path(path)

        def call() -> None:
            assert self.client is not None and self.run_id is not None
            with _scrubbed(local) as clean:
                if clean.is_dir():
                    self.client.log_artifacts(self.run_id, str(clean), artifact_path)
                else:
                    self.client.log_artifact(self.run_id, str(clean), artifact_path)

        self._guard(f"artifact {local.name}", call)

    def log_dict(self, dictionary: Mapping[str, Any], artifact_file: str) -> None:
        """JSON or YAML by the file's extension."""
        clean = scrub_value(dict(dictionary))

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

    def log_headline(self, **results: Any) -> dict[str, float]:
        """The job's headline numbers under their stable names (``table1/{dataset}/...``,
        ``impute/{method}/accuracy``, ``train/test_log_likelihood``, ``seconds/{stage}``; see
        pipelines.tracking.headline, whose ``headline_metrics`` takes these keyword arguments).
        Returns what was logged."""
        metrics = headline_metrics(**results)
        self.log_metrics(metrics)
        return metrics

    def log_imputer(
        self, checkpoint_dir: str | os.PathLike[str], features: Features, name: str = "imputer"
    ) -> str | None:
        """The trained checkpoint as an MLflow model of this run (pyfunc flavour, a LoggedModel
        linked as the run's output). Returns its URI ``models:/<id>``, None when not logged.

        ``mlflow.pyfunc.load_model(uri).predict(frame)`` fills the NaN cells of a DataFrame with
        ``features.columns`` by SNIS (pipelines.tracking.model.FrameImputer). The model carries
        the project code it imports (``code_paths``: model.stage_model_code), so loading needs
        mlflow and torch, not this project; it never resolves packages: the pip requirements
        are given, not inferred.
        """
        holder: dict[str, str] = {}

        def call() -> None:
            assert self.client is not None and self.run_id is not None and self.experiment_id is not None
            with tempfile.TemporaryDirectory() as tmp, _quiet_save():
                local = Path(tmp) / "model"
                example = pd.DataFrame(np.zeros((1, len(features.columns))), columns=list(features.columns))
                save_model(
                    path=str(local),
                    python_model=PyfuncImputer(),
                    artifacts={
                        "checkpoint": str(checkpoint_dir),
                        "features": str(features.write(Path(tmp) / FEATURES_FILE)),
                    },
                    signature=infer_signature(example, example),
                    pip_requirements=pip_requirements(),
                    code_paths=stage_model_code(Path(tmp) / "code"),
                )
                model = self.client.create_logged_model(
                    self.experiment_id, name=name, source_run_id=self.run_id
                )
                try:
                    self.client.log_model_artifacts(model.model_id, str(local))
                except BaseException:
                    with contextlib.suppress(Exception):  # never PENDING forever in the UI
                        self.client.finalize_logged_model(model.model_id, "FAILED")
                    raise
                self.client.finalize_logged_model(model.model_id, "READY")
                self.client.log_outputs(self.run_id, [LoggedModelOutput(model.model_id, step=0)])
                holder["uri"] = f"models:/{model.model_id}"

        self._guard(f"model {name}", call)
        if "uri" in holder:
            self.set_tags({f"{name}_model_uri": holder["uri"]})
        return holder.get("uri")

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
        self.health.flush_notice()


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
        # The job's tracker: a store failing is said once a stage ends well, never before the
        # error of a job that fails anyway (e.g. a full disk fails both).
        health = TrackingHealth(self.tracking_uri, defer_notice=True)
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
        """The experiment's id, created (model-training kind) when missing, restored when deleted."""
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return str(
                    client.create_experiment(
                        name,
                        artifact_location=self.artifact_location,
                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
                    )
                )
            except MlflowException:  # created meanwhile by another process
                experiment = client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        # Made before the kind was set: tag it; a kind a user chose stays.
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
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
            self.health.report(self.config.run_path)
            return
        self._fail(exc)
        # After the job's own error, not before it: a note on the exception (shown under its
        # traceback; pipelines/full.py prints it after the error line).
        summary = self.health.summary(self.config.run_path)
        if summary is not None:
            exc.add_note(f"{TRACKING_NOTE_PREFIX}{summary}")


class PyfuncImputer(PythonModel):
    """The logged model: ``FrameImputer`` behind MLflow's pyfunc interface (artifacts
    ``checkpoint``: a missiwae checkpoint directory, ``features``: the features file)."""

    def load_context(self, context: Any) -> None:
        self.imputer = FrameImputer.load(context.artifacts["checkpoint"], context.artifacts["features"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        # DataFrame hints: MLflow 3 reads predict's hints, and warns at class definition for
        # anything else; the column schema is the signature logged with the model.
        return self.imputer.impute(pd.DataFrame(model_input))


@contextmanager
def _quiet_save() -> Iterator[None]:
    """Without MLflow's advice printed on the job's console at every save: the model is a
    pickled PythonModel (trusted, our own class) and has a signature but no input example."""
    logger = logging.getLogger("mlflow.pyfunc")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*input example", category=UserWarning)
            yield
    finally:
        logger.setLevel(level)


# Artifacts read as text and scrubbed before logging; anything else (images, Parquet, models)
# is logged byte for byte.
TEXT_SUFFIXES = frozenset({".json", ".yaml", ".yml", ".txt", ".csv", ".md", ".log"})


@contextmanager
def _scrubbed(local: Path) -> Iterator[Path]:
    """`local` itself when scrubbing changes none of its text files, else a temporary copy
    (same name; for a directory, the whole tree) whose text files are scrubbed."""
    files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else [local]
    changed = {f: text for f in files if (text := _scrubbed_text(f)) is not None}
    if not changed:
        yield local
        return
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / local.name
        if local.is_dir():
            shutil.copytree(local, copy)
        else:
            shutil.copy2(local, copy)
        for original, text in changed.items():
            target = copy / original.relative_to(local) if local.is_dir() else copy
            target.write_text(text, encoding="utf-8")
        yield copy


def _scrubbed_text(path: Path) -> str | None:
    """The scrubbed text of a text artifact, None when it is not one or needs no change."""
    if path.suffix.lower() not in TEXT_SUFFIXES:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):  # unreadable: logging it reports the error
        return None
    clean = scrub(text)
    return clean if clean != text else None


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


__all__ = [
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "PARENT_RUN_TAG",
    "STAGE_TAG",
    "TRACKING_NOTE_PREFIX",
    "PyfuncImputer",
    "RunLogger",
    "Tracker",
]
