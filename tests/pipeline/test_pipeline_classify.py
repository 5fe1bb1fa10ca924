"""The classification fan-out on a real local Ray cluster with a small slice of real MNIST."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ray.data.extensions import ArrowTensorArray

from missiwae.data import load_incomplete_mnist
from pipelines.classify import (
    PAPER_TABLE1,
    ClassifyError,
    _gather,
    _rubin_accuracy,
    _train_task,
    format_table,
    read_imputed,
    run_classification,
    write_table,
)
from pipelines.config import ClassifyConfig, PipelineConfig

NUM_TRAIN, NUM_TEST = 300, 200


def _table(row_id: np.ndarray, labels: np.ndarray, x: np.ndarray, tensor_column: bool) -> pa.Table:
    if tensor_column:  # what Ray Data writes: the ArrowTensorTypeV2 extension
        pixels: pa.Array = ArrowTensorArray.from_numpy(x)
    else:  # a plain list<float> column
        pixels = pa.array(list(x), type=pa.list_(pa.float32()))
    return pa.table(
        {"row_id": pa.array(row_id, pa.int64()), "label": pa.array(labels, pa.int64()), "pixels": pixels}
    )


def _write(directory: Path, x: np.ndarray, labels: np.ndarray, tensor_column: bool) -> Path:
    """Two shards in shuffled row order (the reader must sort by row_id)."""
    directory.mkdir(parents=True)
    order = np.random.default_rng(0).permutation(len(labels))
    for i, part in enumerate(np.array_split(order, 2)):
        pq.write_table(_table(part, labels[part], x[part], tensor_column), directory / f"part-{i}.parquet")
    return directory


@pytest.fixture(scope="module")
def imputed(tmp_path_factory, data_root) -> tuple[dict[str, Path], tuple[np.ndarray, np.ndarray]]:
    train = load_incomplete_mnist("train", 0.5, seed=0, num_rows=NUM_TRAIN, data_dir=data_root)
    test = load_incomplete_mnist("test", 0.5, seed=0, num_rows=NUM_TEST, data_dir=data_root)
    x, mask, labels = train.x.numpy(), train.mask.numpy(), train.labels.numpy()
    root = tmp_path_factory.mktemp("imputed")
    rng = np.random.default_rng(1)
    datasets = {
        "zero": _write(root / "zero", np.where(mask, x, 0.0).astype(np.float32), labels, True),
        "complete": _write(root / "complete", x, labels, False),
    }
    for m in range(2):  # stand-ins for SIR draws: random pixels where missing
        draw = np.where(mask, x, rng.random(x.shape) < 0.3).astype(np.float32)
        datasets[f"missiwae_multiple_{m:02d}"] = _write(root / f"mi{m}", draw, labels, m == 0)
    return datasets, (test.x.numpy(), test.labels.numpy())


def _config(tmp_path: Path, num_seeds: int = 2) -> PipelineConfig:
    classify = ClassifyConfig(num_seeds=num_seeds, epochs=1, batch_size=100, patience=1, cpus_per_task=0.5)
    return dataclasses.replace(PipelineConfig(run_dir=str(tmp_path)), classify=classify)


def test_read_imputed_sorts_rows_and_reads_both_column_kinds(imputed) -> None:
    datasets, _ = imputed
    for name in ("zero", "complete"):
        x, labels, row_id = read_imputed(datasets[name], name)
        assert x.shape == (NUM_TRAIN, 784) and x.dtype == np.float32
        assert labels.dtype == np.int64 and (row_id == np.arange(NUM_TRAIN)).all()
    files = sorted(datasets["complete"].glob("*.parquet"))
    assert np.array_equal(read_imputed(files, "complete")[0], read_imputed(datasets["complete"])[0])


def test_fan_out_table_and_files(ray_cluster, imputed, tmp_path) -> None:
    datasets, test = imputed
    # A second family of copies (the bootstrap ensemble's) gets its own union and pooled rows.
    ensemble = {f"missiwae_ensemble_{m:02d}": datasets[f"missiwae_multiple_{1 - m:02d}"] for m in range(2)}
    result = run_classification(_config(tmp_path), {**datasets, **ensemble}, test)

    pooled = ("missiwae_multiple_pooled", "missiwae_ensemble_pooled")
    expected = ["zero", "missiwae_multiple", pooled[0], "missiwae_ensemble", pooled[1], "complete"]
    assert [(r.dataset, r.seed) for r in result.runs] == [(d, s) for d in expected for s in (0, 1)]
    assert [row.dataset for row in result.summary] == expected
    for run in result.runs:
        assert 0.0 <= run.test_accuracy <= 1.0 and math.isfinite(run.test_cross_entropy)
        assert run.epochs_run == 1 and run.seconds > 0
        assert run.num_networks == (2 if run.dataset in pooled else 1)
        # Rubin's rules over the M networks' accuracies: for the pooled readings only.
        assert (0 <= run.accuracy_fmi <= 1 and run.accuracy_interval_width > 0) == (run.dataset in pooled)
    union = result.run("missiwae_multiple", 0)
    # epoch_steps "rows": the union of M=2 copies gets one copy's 3 steps (270 rows, 100 a batch).
    assert union.history[0]["num_train_examples"] == 3 * 100
    assert result.run("zero", 0).history[0]["num_train_examples"] == NUM_TRAIN - 30
    for row in result.summary:
        runs = [r.test_accuracy for r in result.runs if r.dataset == row.dataset]
        assert row.num_seeds == 2 and row.accuracy_mean == pytest.approx(np.mean(runs))
        assert row.accuracy_sd == pytest.approx(np.std(runs, ddof=1))
        assert math.isfinite(row.cross_entropy_sd)
    assert result.row("complete").paper_accuracy == PAPER_TABLE1["complete"][0]
    assert result.row("missiwae_multiple_pooled").paper_accuracy is None

    paths = write_table(result, tmp_path / "tables")
    assert paths["csv"].read_text().splitlines()[0].startswith("dataset,num_seeds,accuracy_mean")
    assert len(paths["csv"].read_text().splitlines()) == 1 + len(expected)
    assert paths["markdown"].read_text() == format_table(result)
    assert "0.98663" in format_table(result) and "missiwae_multiple_pooled" in format_table(result)
    assert len(paths["runs"].read_text().splitlines()) == 1 + 2 * len(expected)
    assert not [p for p in paths["csv"].parent.iterdir() if p.name.startswith(".")]  # no temp files

    # Same seeds, same numbers (a second, smaller run reproduces the first one's rows).
    again = run_classification(
        _config(tmp_path, num_seeds=1),
        {"zero": datasets["zero"]},
        test,
        seeds=[1],
        max_in_flight=1,
    )
    assert again.run("zero", 1).test_accuracy == result.run("zero", 1).test_accuracy
    assert again.run("zero", 1).test_cross_entropy == result.run("zero", 1).test_cross_entropy


def test_rubin_pooling_of_the_networks_accuracies_treats_each_as_a_binomial_proportion() -> None:
    """Worked by hand for a = (0.90, 0.92) on n = 1000 test images: U_m = a_m (1 - a_m) / n,
    W = 8.18e-5, B = 2e-4, T = W + 1.5 B, r = 1.5 B / W, λ = 1.5 B / T, ν = (M - 1) / λ²,
    FMI = (r + 2 / (ν + 3)) / (1 + r), width = 2 t_{ν, 0.975} √T."""
    from scipy import stats

    within, between = (0.9 * 0.1 + 0.92 * 0.08) / 2 / 1000, 0.0002
    total = within + 1.5 * between
    r, share = 1.5 * between / within, 1.5 * between / total
    df = 1 / share**2
    fmi, width = _rubin_accuracy([0.90, 0.92], 1000)
    assert fmi == pytest.approx((r + 2 / (df + 3)) / (1 + r), rel=1e-9)
    assert width == pytest.approx(2 * stats.t.ppf(0.975, df) * math.sqrt(total), rel=1e-9)
    # Networks that agree exactly: nothing is missing, and the interval is the binomial one.
    fmi, width = _rubin_accuracy([0.9, 0.9], 1000)
    assert width == pytest.approx(2 * stats.norm.ppf(0.975) * math.sqrt(0.09 / 1000), rel=1e-6)


def test_incomplete_dataset_is_refused_by_name(ray_cluster, imputed, tmp_path) -> None:
    datasets, test = imputed
    x, labels, _ = read_imputed(datasets["zero"])
    x[3, 10] = np.nan
    holes = _write(tmp_path / "holes", x, labels, True)
    with pytest.raises(ValueError, match="'with_holes' is not complete"):
        run_classification(_config(tmp_path), {"complete": datasets["complete"], "with_holes": holes}, test)


def test_failed_task_names_dataset_and_seed(ray_cluster) -> None:
    """A worker exception and a dead worker (after its one retry) surface as ClassifyError
    naming the task."""
    x = np.zeros((20, 784), np.float32)
    x[0, 0] = np.nan  # bypasses the driver's check: the worker's train_classifier refuses it
    labels = np.arange(20) % 10
    raises = _train_task.remote(labels, x[1:], labels[1:], {"seed": 3, "epochs": 1}, False, x)

    @ray_cluster.remote(max_retries=1)
    def dies() -> None:
        os._exit(1)

    with pytest.raises(ClassifyError, match=r"dataset 'zero', seed 3: ValueError: imputed data must be"):
        _gather({"a": raises}, {"a": "dataset 'zero', seed 3"})
    with pytest.raises(ClassifyError, match=r"dataset 'complete', seed 0: WorkerCrashedError"):
        _gather({"b": dies.remote()}, {"b": "dataset 'complete', seed 0"})
