"""Where MLflow runs go: the tracking URI, the artifact location, the UI command line.

``config.tracking.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else
``sqlite:///<run_path>/mlflow.db``. MLflow 3 wants a database store (the plain file store needs
an opt-in) and absolute paths, so relative sqlite paths are made absolute.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from pipelines.config import PipelineConfig

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
_REMOTE_SCHEMES = ("http://", "https://", "databricks")


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


def ui_url(experiment_id: str | None, base: str = "http://127.0.0.1:5000") -> str:
    """The experiment's runs in the UI's model-training view. MLflow 3.17's UI picks the view
    from a global GenAI / Model training switch (default GenAI, remembered by the browser), not
    from the experiment's kind tag alone; ``workflowType=machine_learning`` sets it."""
    page = f"experiments/{experiment_id}/runs" if experiment_id is not None else "experiments"
    return f"{base.rstrip('/')}/#/{page}?workflowType=machine_learning"


__all__ = ["TRACKING_URI_ENV", "resolve_artifact_location", "resolve_tracking_uri", "ui_command", "ui_url"]
