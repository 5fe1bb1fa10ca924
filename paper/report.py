"""The paper's experiments as one generated report: Figure 1 (left, right), Table 1, Figures 2, 3.

    python -m paper.report --config cpu        # 2-core machine, ~2 h; writes reports/cpu/
    python -m paper.report --config paper      # the paper's settings on a GPU cluster
    ray job submit --working-dir . -- python -m paper.report --config paper

    Figure 1 (left)  the `report.space` sweep (tune.sweep): K=1/K=50 × zero/oracle ι + complete data,
                     test log-likelihood of complete test images (evaluate.num_samples samples)
    Figure 1 (right) imputation accuracy on missing training pixels vs L, missVAE and missIWAE
                     (one Ray task per model × L), beside missForest on the same rows
    Table 1          the impute stage (SNIS single, M SIR copies, zero, missForest, complete) with
                     the missIWAE model, then the classifier fan-out (classify.num_seeds seeds)
    Figures 2, 3     samples from the missIWAE model; incomplete digits beside their imputations

Everything lands in ``--out`` (default reports/<preset>/): README.md with the paper's numbers
beside ours and a verdict per claim, the figures, tables as CSV/markdown, and results.json;
the same files are MLflow artifacts of the report run. The verdicts are computed from the
numbers by `paper.verdicts`, never written by hand; `paper.render` writes the README.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import shlex
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from missiwae.atomic import write_bytes_atomic
from missiwae.config import ConfigError
from missiwae.evaluation import DEFENSIVE_MASKS
from missiwae.mnist_files import DataError
from paper.render import (
    accuracy_figure,
    epoch_test_ll_figure,
    git_commit,
    learning_curves_figure,
    machine_description,
    render_report,
)
from paper.verdicts import COMPLETE_VAE, verdicts_of
from pipelines.config import PipelineConfig, add_override_argument, load_pipeline_config

REPO = Path(__file__).resolve().parents[1]


def measured_seconds(config: PipelineConfig) -> dict[str, Any]:
    """The compute times recorded where the work was done, so that a report whose sweep or
    imputations were reused from an earlier run of the same command still shows what they cost:
    each trial's training seconds (trial_result.json) and the impute stage's manifest."""
    from pipelines.publish import MANIFEST
    from pipelines.shards import imputed_dir
    from tune.space import load_space
    from tune.sweep import sweep_dir_of

    out: dict[str, Any] = {}
    trials = _trial_results(sweep_dir_of(config, load_space(config.report.space)))
    if trials:
        out["trial_train_seconds"] = {
            label: float(result.get("train_seconds", math.nan)) for label, result in trials.items()
        }
    manifest_path = imputed_dir(config) / "train" / MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        out["impute_seconds"] = manifest.get("seconds", {})
        out["impute_created"] = manifest.get("created")
    return out


def table1_cross_entropy(path: Path) -> dict[str, float]:
    """dataset -> mean test cross-entropy, from a report's table1.csv."""
    with path.open(newline="") as handle:
        return {row["dataset"]: float(row["cross_entropy_mean"]) for row in csv.DictReader(handle)}


def rerender(out_dir: Path) -> dict[str, Any]:
    """Recompute the verdicts of an existing report from its results.json and rewrite its
    README (after a verdict function is corrected; the numbers are not touched)."""
    from pipelines.storage import write_json_atomic, write_text_atomic

    results = json.loads((out_dir / "results.json").read_text())
    if "cross_entropy" not in results["table1"] and (out_dir / "table1.csv").is_file():
        # Reports written before results.json carried the cross-entropy have it in table1.csv.
        results["table1"]["cross_entropy"] = table1_cross_entropy(out_dir / "table1.csv")
    results["verdicts"] = [dataclasses.asdict(v) for v in verdicts_of(results)]
    results["verdicts_commit"] = git_commit()
    results.setdefault("measured_seconds", measured_seconds(PipelineConfig.from_dict(results["config"])))
    write_json_atomic(out_dir / "results.json", results)
    write_text_atomic(out_dir / "README.md", render_report(results, (out_dir / "ranking.md").read_text()))
    return results


def _accuracy_task(
    checkpoint_dir: str, x: np.ndarray, mask: np.ndarray, num_samples: int, seed: int
) -> float:
    """One Ray task: SNIS imputation thresholded at 1/2 with L samples -> accuracy on the holes."""
    import torch

    from missiwae.evaluation import imputation_accuracy
    from missiwae.imputation import impute_single
    from missiwae.model import make_generator
    from missiwae.training import load_model

    model = load_model(checkpoint_dir)
    xt, mt = torch.tensor(x), torch.tensor(mask)  # copies: Ray's object store hands arrays out read-only
    imputed = impute_single(
        model, xt, mt, num_samples, threshold=0.5, batch_size=250, generator=make_generator(seed)
    )
    return imputation_accuracy(imputed.imputed, xt, mt)


# R: the random masks of the defensive mixture proposal (R + 1 components with the naive one).
MIXTURE_MASKS = DEFENSIVE_MASKS


def _log_likelihood_task(
    checkpoint_dir: str, x: np.ndarray, num_samples: int, missing_rate: float, seed: int
) -> dict[str, np.ndarray]:
    """One Ray task: per-row log p(x) of complete test images x (N, D) -> (N,) under the naive
    proposal (the encoder on the complete image) and under the defensive mixture."""
    import torch

    from missiwae.evaluation import estimate_log_likelihood, estimate_log_likelihood_defensive
    from missiwae.model import make_generator
    from missiwae.training import load_model

    model = load_model(checkpoint_dir)
    xt = torch.tensor(x)  # a copy: Ray's object store hands arrays out read-only
    mask = torch.ones_like(xt, dtype=torch.bool)
    naive = estimate_log_likelihood(model, xt, mask, num_samples, generator=make_generator(seed))
    mixture = estimate_log_likelihood_defensive(
        model,
        xt,
        mask,
        num_samples,
        num_masks=MIXTURE_MASKS,
        missing_rate=missing_rate,
        generator=make_generator(seed),
    )
    return {"naive": naive.numpy(), "mixture": mixture.numpy()}


def mean_and_se(values: np.ndarray) -> dict[str, float]:
    """The mean over rows and its standard error (sample sd / √N; NaN for one row)."""
    se = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan
    return {"mean": float(np.mean(values)), "se": se}


def likelihood_estimates(
    config: PipelineConfig, checkpoints: Mapping[str, Path], x: np.ndarray
) -> dict[str, dict[str, dict[str, float]]]:
    """Figure 1 (left) by both estimators, one Ray task per model: estimator ("naive",
    "mixture") -> sweep label -> mean and standard error over the complete test images x.
    Every model gets the same mixture: MIXTURE_MASKS masks at the data's missing rate."""
    import ray

    task = ray.remote(_log_likelihood_task).options(
        num_cpus=config.impute_stage.cpus_per_actor, num_gpus=config.impute_stage.gpus_per_actor
    )
    x_ref = ray.put(x)
    refs = {
        label: task.remote(
            str(path), x_ref, config.evaluate.num_samples, config.data.missing_rate, config.evaluate.seed
        )
        for label, path in checkpoints.items()
    }
    per_row = {label: ray.get(ref) for label, ref in refs.items()}
    return {
        estimator: {label: mean_and_se(rows[estimator]) for label, rows in per_row.items()}
        for estimator in ("naive", "mixture")
    }


def accuracy_curves(
    config: PipelineConfig, checkpoints: Mapping[str, Path], x: np.ndarray, mask: np.ndarray
) -> dict[str, list[float]]:
    """model name -> accuracy per L in config.report.accuracy_samples, one Ray task each."""
    import ray

    task = ray.remote(_accuracy_task).options(
        num_cpus=config.impute_stage.cpus_per_actor, num_gpus=config.impute_stage.gpus_per_actor
    )
    x_ref, mask_ref = ray.put(x), ray.put(mask)
    refs = {
        name: [
            task.remote(str(path), x_ref, mask_ref, n, config.impute.seed)
            for n in config.report.accuracy_samples
        ]
        for name, path in checkpoints.items()
    }
    return {name: [float(v) for v in ray.get(r)] for name, r in refs.items()}


def _trial_results(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """sweep label -> the trial's trial_result.json (checkpoint directory, training seconds...)."""
    from tune.trial import TRIAL_RESULT

    out = {}
    for path in sorted((sweep_dir / "trials").glob(f"*/{TRIAL_RESULT}")):
        result = json.loads(path.read_text())
        out[str(result["label"])] = result
    return out


def _trial_checkpoints(sweep_dir: Path) -> dict[str, Path]:
    """sweep label -> the trial's checkpoint directory."""
    return {label: Path(result["checkpoint_dir"]) for label, result in _trial_results(sweep_dir).items()}


def learning_curves(checkpoints: dict[str, Path]) -> dict[str, list[float]]:
    """sweep label -> the validation bound of each epoch the trial trained (its checkpoint's
    history; NaN for an epoch that diverged)."""
    from pipelines.train_worker import read_pipeline_state

    return {
        label: [float(entry["valid_bound"]) for entry in read_pipeline_state(path)[0]]
        for label, path in checkpoints.items()
    }


def epoch_test_lls(checkpoints: dict[str, Path]) -> dict[str, list[float]]:
    """sweep label -> the test curve (evaluate.curve_rows) of each epoch the trial trained, for
    the trials whose history recorded one."""
    from pipelines.train_worker import TEST_CURVE_KEY, read_pipeline_state

    curves = {label: read_pipeline_state(path)[0] for label, path in checkpoints.items()}
    return {
        label: [float(entry[TEST_CURVE_KEY]) for entry in history]
        for label, history in curves.items()
        if history and all(TEST_CURVE_KEY in entry for entry in history)
    }


def save_figure(figure: Any, path: Path, logger: Any) -> None:
    """Write a report figure to `path`, log it to MLflow under its file name, and free it."""
    from pipelines import figures

    figure.savefig(path, dpi=120, bbox_inches="tight")
    logger.log_figure(figure, path.name)
    figures.close(figure)


def complete_data_trials(config: PipelineConfig) -> set[str]:
    """The sweep's labels of the models trained on complete data (data.missing_rate 0)."""
    from tune.space import load_space

    space = load_space(config.report.space)
    return {label for label, overrides in space.references.items() if overrides.get("data.missing_rate") == 0}


def preset_notes(preset: str) -> str:
    """The leading comment of pipelines/configs/<preset>.yaml (what the preset reduces), if any."""
    from pipelines.config import CONFIG_DIR

    path = CONFIG_DIR / f"{preset}.yaml"
    if not path.is_file():
        return ""
    notes = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        notes.append(line.lstrip("# ").rstrip())
    return "\n".join(notes)


def run_report(config: PipelineConfig, preset: str, out_dir: Path, command: str) -> dict[str, Any]:
    """Run every experiment and write the report; returns results.json's content."""
    import torch

    from missiwae.evaluation import imputation_accuracy
    from missiwae.training import load_model
    from pipelines import figures
    from pipelines.classify import format_table, run_classification, write_table
    from pipelines.impute import MISSFOREST, read_dataset, run_imputation
    from pipelines.ingest import run_ingest
    from pipelines.runtime import ensure_ray
    from pipelines.shards import load_split_numpy
    from pipelines.storage import write_json_atomic, write_text_atomic
    from pipelines.tracking import Tracker
    from tune.space import load_space
    from tune.sweep import run_sweep
    from tune.trial import data_run_dir

    ensure_ray()
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    # The commit the run starts from (the code that ran), not the one it ends at.
    results: dict[str, Any] = {
        "preset": preset,
        "command": command,
        "preset_notes": preset_notes(preset),
        "git_commit": git_commit(),
    }
    with Tracker(config, run_name=f"report-{preset}") as tracker:
        with tracker.stage("figure1_left") as stage:
            clock = time.perf_counter()
            sweep = run_sweep(config, load_space(config.report.space), preset=preset)
            seconds["figure1_left"] = time.perf_counter() - clock
            if not sweep.complete:
                raise RuntimeError(
                    f"the sweep in {sweep.sweep_dir} did not finish; run the report again to resume"
                )
            test_ll = {row.trial: row.test_log_likelihood for row in sweep.rows}
            results["figure1_left"] = {"test_log_likelihood": test_ll, "sweep_run_id": sweep.mlflow_run_id}
            for name in ("markdown", "csv", "figure"):
                target = out_dir / sweep.outputs[name].name
                write_bytes_atomic(target, sweep.outputs[name].read_bytes())
            stage.log_metrics({"stage_seconds": seconds["figure1_left"]})

        checkpoints = _trial_checkpoints(sweep.sweep_dir)
        miss_vae, miss_iwae = checkpoints[config.report.miss_vae], checkpoints[config.report.miss_iwae]
        curves = learning_curves(checkpoints)
        figure = learning_curves_figure(curves, complete_data_trials(config))
        save_figure(figure, out_dir / "learning_curves.png", tracker)
        results["learning_curves"] = curves
        gap = epoch_test_lls(checkpoints)
        if gap:
            figure = epoch_test_ll_figure(gap, COMPLETE_VAE, config.report.miss_iwae)
            save_figure(figure, out_dir / "test_curves.png", tracker)
            results["test_curves"] = {
                "curves": gap,
                "vae": COMPLETE_VAE,
                "miss_iwae": config.report.miss_iwae,
                "rows": config.evaluate.curve_rows,
                "num_samples": config.evaluate.curve_samples,
            }
        ingest = run_ingest(dataclasses.replace(config, run_dir=str(data_run_dir(sweep.sweep_dir, config))))

        with tracker.stage("figure1_left_estimators") as stage:
            clock = time.perf_counter()
            test_x = load_split_numpy(ingest, "test")[0]
            results["figure1_left"]["estimators"] = likelihood_estimates(config, checkpoints, test_x)
            results["figure1_left"]["mixture"] = {
                "num_masks": MIXTURE_MASKS,
                "missing_rate": config.data.missing_rate,
                "num_samples": config.evaluate.num_samples,
                "rows": len(test_x),
            }
            seconds["figure1_left_estimators"] = time.perf_counter() - clock
            stage.log_metrics({"stage_seconds": seconds["figure1_left_estimators"]})

        with tracker.stage("table1") as stage:
            clock = time.perf_counter()
            imputed = run_imputation(config, ingest.shards, miss_iwae)
            test_x, _, test_labels, _ = load_split_numpy(ingest, "test")
            classified = run_classification(config, dict(imputed.datasets), (test_x, test_labels))
            tables = write_table(classified, out_dir)
            seconds["table1"] = time.perf_counter() - clock
            for path in tables.values():
                stage.log_artifact(path)
            stage.log_metrics({**imputed.metrics, "stage_seconds": seconds["table1"]})
            results["table1"] = {
                "markdown": format_table(classified),
                "accuracy": {row.dataset: row.accuracy_mean for row in classified.summary},
                "cross_entropy": {row.dataset: row.cross_entropy_mean for row in classified.summary},
                "imputation_metrics": imputed.metrics,
            }

        with tracker.stage("figure1_right") as stage:
            clock = time.perf_counter()
            x, mask, _, row_id = load_split_numpy(ingest, "train")
            rows = np.arange(len(x))
            if config.report.accuracy_rows is not None and config.report.accuracy_rows < len(x):
                rows = np.sort(
                    np.random.default_rng(config.impute.seed).choice(
                        len(x), config.report.accuracy_rows, replace=False
                    )
                )
            names = (f"missVAE ({config.report.miss_vae})", f"missIWAE ({config.report.miss_iwae})")
            curves = accuracy_curves(
                config, dict(zip(names, (miss_vae, miss_iwae), strict=True)), x[rows], mask[rows]
            )
            missforest = math.nan
            if MISSFOREST in imputed.datasets:
                mf_ids, _, mf_pixels = read_dataset(imputed.datasets[MISSFOREST])
                assert np.array_equal(mf_ids, row_id), (
                    "missForest rows do not line up with the training split"
                )
                missforest = imputation_accuracy(
                    torch.from_numpy(mf_pixels[rows]), torch.from_numpy(x[rows]), torch.from_numpy(mask[rows])
                )
            seconds["figure1_right"] = time.perf_counter() - clock
            samples = list(config.report.accuracy_samples)
            figure = accuracy_figure(samples, curves, missforest)
            save_figure(figure, out_dir / "figure1_right.png", stage)
            results["figure1_right"] = {
                "L": samples,
                "curves": curves,
                "missforest": missforest,
                "rows": len(rows),
            }
            stage.log_metrics({"stage_seconds": seconds["figure1_right"]})

        with tracker.stage("figures") as stage:
            clock = time.perf_counter()
            _, _, single = read_dataset(imputed.datasets["missiwae_single"])
            for figure, name in (
                (figures.samples_figure(load_model(miss_iwae)), "figure2_samples.png"),
                (figures.imputations_figure(x, mask, single), "figure3_imputations.png"),
            ):
                save_figure(figure, out_dir / name, stage)
            seconds["figures"] = time.perf_counter() - clock

        # Table 1 and the imputation under the job's stable metric names (pipelines.tracking.headline).
        tracker.log_headline(summary=classified.summary, impute=imputed.metrics, seconds=seconds)
        results["verdicts"] = [dataclasses.asdict(v) for v in verdicts_of(results)]
        results["seconds"] = seconds
        results["measured_seconds"] = measured_seconds(config)
        results["config"] = config.to_dict()
        results["machine"] = machine_description()
        write_json_atomic(out_dir / "results.json", results)
        write_text_atomic(
            out_dir / "README.md", render_report(results, sweep_table=(out_dir / "ranking.md").read_text())
        )
        tracker.log_artifact(out_dir)
    return results


def main(argv: list[str] | None = None) -> int:
    from pipelines.runtime import configure_ray_auth

    configure_ray_auth()  # before anything imports Ray: Ray reads its auth settings on import
    parser = argparse.ArgumentParser(
        prog="python -m paper.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", default="cpu", help="preset (tiny, cpu, paper) or a YAML/JSON file")
    add_override_argument(parser)
    parser.add_argument("--out", default=None, help="report directory (default: reports/<preset>)")
    parser.add_argument(
        "--rerender",
        action="store_true",
        help="run nothing: recompute the verdicts of the report in --out from its results.json",
    )
    args = parser.parse_args(argv)
    preset = Path(args.config).stem
    if args.rerender:
        out_dir = Path(args.out) if args.out else REPO / "reports" / preset
        rerender(out_dir)
        print((out_dir / "README.md").read_text())
        return 0
    try:
        config = load_pipeline_config(args.config, args.overrides)
    except (ConfigError, DataError) as error:
        print(f"paper.report: error: {error}", file=sys.stderr)
        return 2
    out_dir = Path(args.out) if args.out else REPO / "reports" / preset
    command = "python -m paper.report " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    results = run_report(config, preset, out_dir, command)
    print((out_dir / "README.md").read_text())
    failed = [v for v in results["verdicts"] if v["verdict"] != "holds"]
    print(
        f"report: {out_dir / 'README.md'} ({len(failed)} of {len(results['verdicts'])} claims not confirmed)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
