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
KEY, CREDENTIAL) becomes ``***``, in params, tags, dict/text artifacts and text files logged
as artifacts (a stage's ``_MANIFEST.json``, result tables).

Usage::

    with Tracker(config, "smoke") as tracker:        # parent run, config logged
        with tracker.stage("train") as stage:        # nested run, tag stage=train
            stage.log_metrics({"loss": 1.0}, step=1)
    # FINISHED on success; FAILED (stage and parent) when an exception escapes.

For comparison across runs (of the job, a sweep, the report) the experiment is created with
the model-training kind (tag ``mlflow.experimentKind``), the parent run gets the headline numbers
under stable names (``tracker.log_headline(...)``: ``table1/{dataset}/accuracy_mean``,
``impute/{method}/accuracy``, ``train/test_log_likelihood``, ``seconds/{stage}``, ...) and the
trained model is logged as an MLflow pyfunc model (``tracker.log_imputer(...)``) that
``mlflow.pyfunc.load_model(uri).predict(frame)`` uses to fill a DataFrame's NaN cells.

The package: ``store`` (where runs go), ``scrub`` (what is logged is cleaned), ``health``
(degrade to a warning), ``headline`` (the stable metric names), ``model`` (the checkpoint as a
DataFrame imputer) and ``runs`` (``RunLogger`` / ``Tracker`` / the pyfunc wrapper, the only
module that imports mlflow).
"""

from pipelines.tracking.headline import headline_metrics
from pipelines.tracking.health import TrackingWarning
from pipelines.tracking.model import Features, FrameImputer, pixel_columns
from pipelines.tracking.runs import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, RunLogger, Tracker
from pipelines.tracking.scrub import flatten_params, scrub
from pipelines.tracking.store import resolve_artifact_location, resolve_tracking_uri, ui_command, ui_url

__all__ = [
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "Features",
    "FrameImputer",
    "RunLogger",
    "Tracker",
    "TrackingWarning",
    "flatten_params",
    "headline_metrics",
    "pixel_columns",
    "resolve_artifact_location",
    "resolve_tracking_uri",
    "scrub",
    "ui_command",
    "ui_url",
]
