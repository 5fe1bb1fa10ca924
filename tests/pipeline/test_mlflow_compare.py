"""Runs compare in MLflow: two tiny jobs with different settings, the better one found by a
metric filter and ordering on the parent runs, and its logged model loaded with the standard
``mlflow.pyfunc.load_model`` to impute a pandas frame with NaN holes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipelines.config import PipelineConfig, TrackingConfig
from pipelines.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, pixel_columns
from tests.pipeline.test_pipeline_faults import tiny_job
from tests.pipeline.test_pipeline_tracking import load_logged_model

EXPERIMENT = "compare"
LOG_LIKELIHOOD = "train/test_log_likelihood"


@dataclasses.dataclass(frozen=True)
class Jobs:
    tracking_uri: str
    configs: dict[str, PipelineConfig]  # run name -> the job's config


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory, data_root: Path, _ray_session: Any) -> Jobs:
    """Two whole jobs into one sqlite store: 1 training epoch ("full-short") and 6 ("full-long",
    which also trains a bootstrap ensemble of B = 2 models: impute.bootstrap_models)."""
    from pipelines.full import run
    from pipelines.runtime import ensure_ray

    ensure_ray()
    root = tmp_path_factory.mktemp("compare")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    configs = {}
    for name, epochs in (("short", 1), ("long", 6)):
        config = tiny_job(root / name, data_root, tracking_uri)
        config = dataclasses.replace(
            config,
            train=dataclasses.replace(config.train, epochs=epochs),
            impute=dataclasses.replace(config.impute, bootstrap_models=2 if name == "long" else 1),
            tracking=TrackingConfig(experiment=EXPERIMENT, tracking_uri=tracking_uri),
        )
        run(config)
        configs[f"full-{name}"] = config
    return Jobs(tracking_uri, configs)


def test_the_better_job_is_found_by_a_metric_filter_and_ordering(jobs: Jobs) -> None:
    client = MlflowClient(jobs.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND  # the UI's model-training view

    # Parent runs only: they carry the headline numbers, the stage runs do not.
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="metrics.`impute/missiwae_single/accuracy` > 0 and metrics.`seconds/total` > 0",
        order_by=[f"metrics.`{LOG_LIKELIHOOD}` DESC"],
    )
    assert [run.info.run_name for run in runs] == ["full-long", "full-short"]
    best, other = runs
    assert best.data.metrics[LOG_LIKELIHOOD] > other.data.metrics[LOG_LIKELIHOOD]
    # The resolved config as params: the setting that differs is a column of its own.
    assert (best.data.params["train.epochs"], other.data.params["train.epochs"]) == ("6", "1")

    # Every headline number under its stable name, on both runs.
    for run in runs:
        metrics = run.data.metrics
        for dataset in ("zero", "missiwae_single", "missiwae_multiple", "complete"):
            for name in ("accuracy_mean", "cross_entropy_mean"):
                assert 0 <= metrics[f"table1/{dataset}/{name}"] < 10, (dataset, name)
        for method in ("missiwae_single", "missiwae_multiple", "zero"):
            assert 0 < metrics[f"impute/{method}/accuracy"] <= 1
        assert metrics["impute/ess_mean"] >= 1
        assert metrics[LOG_LIKELIHOOD] < 0
        for stage in ("ingest", "train", "impute", "classify", "total"):
            assert metrics[f"seconds/{stage}"] > 0
        assert run.data.tags["imputer_model_uri"].startswith("models:/")

    # The bootstrap ensemble's proper imputations: their own rows beside the one model's, only
    # in the run that asked for them (B = 1 is the job as it was).
    ensemble = ["impute/missiwae_ensemble/accuracy"] + [
        f"table1/{dataset}/accuracy_mean" for dataset in ("missiwae_ensemble", "missiwae_ensemble_pooled")
    ]
    assert all(0 < best.data.metrics[name] <= 1 for name in ensemble)
    assert not any(name in other.data.metrics for name in ensemble)
    # Rubin's rules over each pooled reading's M networks: FMI and interval width as metrics.
    for dataset in ("missiwae_multiple_pooled", "missiwae_ensemble_pooled"):
        assert 0 <= best.data.metrics[f"table1/{dataset}/accuracy_fmi"] <= 1
        assert best.data.metrics[f"table1/{dataset}/accuracy_interval_width"] > 0


def test_the_logged_model_loads_with_pyfunc_and_imputes_a_frame(jobs: Jobs, data_root: Path) -> None:
    from missiwae.data import load_static_binarized_mnist

    client = MlflowClient(jobs.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'full-long'")
    uri = run.data.tags["imputer_model_uri"]
    assert run.outputs is not None
    assert [output.model_id for output in run.outputs.model_outputs] == [uri.removeprefix("models:/")]

    model = load_logged_model(jobs.tracking_uri, uri)

    pixels = load_static_binarized_mnist("test", data_root)[0][:40].astype(np.float64)  # (40, 784) in {0, 1}
    holes = np.random.default_rng(0).random(pixels.shape) < 0.5
    frame = pd.DataFrame(np.where(holes, np.nan, pixels), columns=pixel_columns(784), index=range(100, 140))

    imputed = model.predict(frame)
    assert isinstance(imputed, pd.DataFrame)
    assert list(imputed.columns) == list(frame.columns) and list(imputed.index) == list(frame.index)
    values = imputed.to_numpy()
    assert np.array_equal(values[~holes], pixels[~holes])  # observed cells unchanged
    assert np.isfinite(values).all() and ((values >= 0) & (values <= 1)).all()  # P(x_j = 1 | x_o)
    assert np.array_equal(model.predict(frame).to_numpy(), values)  # seeded: same frame, same output
    # The same model as the pipeline's SNIS imputation: its accuracy on these holes (threshold
    # 1/2, the paper's rule) matches the job's own on the train split's holes, within what
    # 40 other images (~16 000 holes) and other random draws allow.
    accuracy = ((values[holes] > 0.5) == (pixels[holes] == 1)).mean()
    assert accuracy == pytest.approx(run.data.metrics["impute/missiwae_single/accuracy"], abs=0.05)
