"""The paper's Figure 1 (left, right) and Figures 2-3 on one GPU in a fixed wall-clock budget.

    python -m paper.gpu run --out DIR --budget-s 300    # on the GPU machine
    python -m paper.gpu render DIR --report reports/gpu # anywhere: README + figures

`paper.report --config paper` is the full report for a GPU *cluster* (Ray Tune, Ray Data,
MLflow). A lent single-GPU machine that cannot install Ray or MLflow still lets the paper's
models be trained at the paper's settings: the convolutional DLVM on all 50 000 training
images, batch 64, Adam 1e-3. `run` uses the library alone (torch + numpy + scikit-learn):

- the six Figure 1 (left) models (K ∈ {1, 50} × ι ∈ {zero, oracle}, and the complete-data VAE
  and IWAE) train side by side, one process each on the one GPU, each until its validation
  bound has not improved for PATIENCE epochs, or the epoch cap, or the training deadline
  (`--cuda-graph`: every step replayed from a CUDA graph); the complete-data VAE and missIWAE
  (K=50, zero ι) also score a fixed test subset after every epoch;
- each then estimates the test log-likelihood of complete test images with 5000 importance
  samples by the naive proposal and the defensive mixture (`missiwae.evaluation`), 100 rows at
  a time in a fixed order, until the evaluation deadline;
- the missVAE (K=1 zero) and missIWAE (K=50 zero) models measure imputation accuracy on the
  missing pixels of 1000 training images for L = 1 … 10 000 (Figure 1 right), and missIWAE
  imputes 8 digits with L = 10 000 (Figure 3);
- missForest runs on the CPU cores on the same 1000 images, killed at the deadline if it has
  not finished.

Everything a stage did not finish by its deadline is recorded as such (epochs reached, rows
evaluated, the L values reached), never extrapolated; each stage does at least its first unit
(one minibatch, 100 test rows, the smallest L) so that a late start still yields a number.
Training is `missiwae.training.train` with a deadline (the library's one epoch loop).
`render` (`paper.gpu_render`) turns the run folder into reports/gpu/README.md with the verdict
functions of `paper.verdicts`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from paper.gpu_render import render
from paper.gpu_specs import (
    ACCURACY_ROWS,
    ACCURACY_SAMPLES,
    BATCH_SIZE,
    CURVE_ROWS,
    CURVE_SAMPLES,
    EVAL_BATCH,
    EVAL_SAMPLES,
    LEARNING_RATE,
    MISSFOREST,
    MISSING_RATE,
    PAPER_MODEL,
    RESULT_FILE,
    VALID_ROWS,
    ModelSpec,
    figure1_specs,
    folder_name,
)
from pipelines.storage import write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from missiwae.training import EpochStats

REPO = Path(__file__).resolve().parents[1]


def run_model(spec: ModelSpec) -> dict[str, Any]:
    """Train, evaluate and (optionally) impute with one model; writes <out>/result.json."""
    import torch

    from missiwae.allocator import retain_freed_memory
    from missiwae.config import ModelConfig, TrainConfig
    from missiwae.data import load_incomplete_mnist
    from missiwae.evaluation import (
        DEFENSIVE_MASKS,
        estimate_log_likelihood,
        estimate_log_likelihood_defensive,
        imputation_accuracy,
    )
    from missiwae.imputation import impute_single
    from missiwae.model import MissIWAE, make_generator
    from missiwae.training import train

    # This process is an entry point (one per model): it opts in to the process-wide settings.
    torch.set_num_threads(1)
    retain_freed_memory()
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    device = torch.device(spec.device)
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(spec.seed)
    config = ModelConfig(**PAPER_MODEL, imputation=spec.imputation)  # type: ignore[arg-type]
    model = MissIWAE.from_config(config).to(device)
    data = load_incomplete_mnist("train", spec.missing_rate, seed=spec.seed, num_rows=spec.train_rows)
    x, mask = _model_view(data.x, data.mask, model.uses_oracle)
    # Early stopping watches the bound on validation images masked as the training ones are.
    valid = load_incomplete_mnist("valid", spec.missing_rate, seed=spec.seed, num_rows=spec.valid_rows)
    train_config = TrainConfig(
        K=spec.K,
        batch_size=BATCH_SIZE,
        epochs=spec.max_epochs,
        learning_rate=LEARNING_RATE,
        seed=spec.seed,
        device=spec.device,
        early_stopping_patience=spec.patience,
        cuda_graph=spec.cuda_graph,
    )
    test = load_incomplete_mnist("test", 0.0, seed=spec.seed, num_rows=spec.eval_rows)
    tx, tmask = test.x.to(device), test.mask.to(device)

    def mixture_log_likelihood(rows: slice, num_samples: int, generator: torch.Generator) -> list[float]:
        """log p(x) of the complete test images `rows` by the defensive mixture, the same
        mixture for every model: masks at the paper's training missing rate."""
        return estimate_log_likelihood_defensive(
            model,
            tx[rows],
            tmask[rows],
            num_samples,
            num_masks=DEFENSIVE_MASKS,
            missing_rate=MISSING_RATE,
            batch_size=EVAL_BATCH,
            generator=generator,
        ).tolist()

    def log_likelihood(rows: slice, num_samples: int, generator: torch.Generator) -> dict[str, list[float]]:
        """log p(x) of the complete test images `rows` by both estimators (same images)."""
        naive = estimate_log_likelihood(
            model, tx[rows], tmask[rows], num_samples, batch_size=EVAL_BATCH, generator=generator
        )
        return {"naive": naive.tolist(), "mixture": mixture_log_likelihood(rows, num_samples, generator)}

    test_curve: list[float] = []

    def after_epoch(_: EpochStats) -> None:
        # The test log-likelihood per epoch of the models whose gap the paper states, on a
        # fixed subset (the same draws every epoch), so the trend shows where the budget ends.
        if spec.test_curve:
            with torch.inference_mode():
                values = mixture_log_likelihood(
                    slice(0, spec.curve_rows), spec.curve_samples, make_generator(spec.seed + 4, device)
                )
            test_curve.append(float(np.mean(values)))

    started = time.time()
    # The library's loop: early stopping on the validation bound, else the cap, else the
    # deadline at a minibatch boundary (at least one minibatch even past it: an untrained
    # model would say nothing). The model ends with its best validation epoch's weights.
    stats = train(
        model,
        x,
        mask,
        train_config,
        valid=_model_view(valid.x, valid.mask, model.uses_oracle),
        checkpoint_dir=out / "checkpoint",
        resume=False,
        progress=False,
        on_epoch_end=after_epoch,
        deadline=spec.train_until,
    )
    train_seconds = time.time() - started
    history = training_curve(stats, x.shape[0])
    for point, value in zip(history, test_curve, strict=False):
        point["test_log_likelihood"] = value
    rows_seen = sum(_rows(entry, x.shape[0]) for entry in stats)
    result: dict[str, Any] = {
        "spec": dataclasses.asdict(spec),
        "epochs": rows_seen / x.shape[0],
        "steps": sum(math.ceil(_rows(entry, x.shape[0]) / BATCH_SIZE) for entry in stats),
        "train_seconds": train_seconds,
        "stopped_by": stopped_by(stats, spec.patience, spec.max_epochs),
        "history": history,
    }
    write_json_atomic(out / RESULT_FILE, result)

    # Figure 1 (left): log p(x) of complete test images, rows in the fixed permuted order, by
    # the naive proposal and the defensive mixture on the same rows.
    generator = make_generator(spec.seed + 2, device)
    per_row: dict[str, list[float]] = {"naive": [], "mixture": []}
    started = time.time()
    with torch.inference_mode():
        for begin in range(0, tx.shape[0], EVAL_BATCH):
            if time.time() >= spec.eval_until and per_row["naive"]:
                break
            batch = log_likelihood(slice(begin, begin + EVAL_BATCH), spec.eval_samples, generator)
            for estimator, values in batch.items():
                per_row[estimator] += values
    result["eval_seconds"] = time.time() - started
    result["test_log_likelihood_per_row"] = per_row["naive"]
    result["test_log_likelihood_mixture_per_row"] = per_row["mixture"]
    write_json_atomic(out / RESULT_FILE, result)

    if spec.accuracy or spec.figure3:
        torch.set_grad_enabled(False)  # imputation needs no gradients
        subset = load_incomplete_mnist("train", MISSING_RATE, seed=spec.seed, num_rows=ACCURACY_ROWS)
        ax, amask = _model_view(subset.x, subset.mask, model.uses_oracle)
        ax, amask, truth = ax.to(device), amask.to(device), subset.x.to(device)
        accuracy: dict[str, float] = {}
        started = time.time()
        for n in spec.accuracy_samples if spec.accuracy else ():
            if accuracy and time.time() >= spec.accuracy_until:
                break
            imputed = impute_single(
                model,
                ax,
                amask,
                n,
                threshold=0.5,
                batch_size=100,
                generator=make_generator(spec.seed + 3, device),
            )
            accuracy[str(n)] = imputation_accuracy(imputed.imputed, truth, amask)
        result["accuracy_vs_L"] = accuracy
        result["accuracy_seconds"] = time.time() - started
        if spec.figure3:
            imputed = impute_single(
                model,
                ax[:8],
                amask[:8],
                spec.figure3_samples,
                batch_size=8,
                generator=make_generator(7, device),
            )
            np.savez_compressed(
                out / "figure3.npz",
                x=subset.x[:8].numpy(),
                mask=subset.mask[:8].numpy(),
                imputed=imputed.imputed.cpu().numpy(),
            )
        write_json_atomic(out / RESULT_FILE, result)
    return result


def _rows(entry: EpochStats, num_rows: int) -> int:
    """Rows an epoch of the history saw (None: a whole epoch)."""
    return num_rows if entry.rows is None else entry.rows


def training_curve(stats: list[EpochStats], num_rows: int) -> list[dict[str, float]]:
    """result.json's curve from train()'s history (EpochStats): one point per epoch, the last
    one possibly cut by the deadline, with epochs as a fraction (rows seen / N), seconds
    summed over the epochs, and the validation bound."""
    curve, seen, seconds = [], 0, 0.0
    for entry in stats:
        seen += _rows(entry, num_rows)
        seconds += entry.seconds
        point = {"epochs": seen / num_rows, "train_bound": entry.train_bound, "seconds": seconds}
        if entry.valid_bound is not None:
            point["valid_bound"] = entry.valid_bound
        curve.append(point)
    return curve


def stopped_by(stats: list[EpochStats], patience: int | None, max_epochs: int) -> str:
    """What ended training: "plateau" (early stopping), "epoch cap" or "deadline"."""
    from missiwae.training import plateaued

    if plateaued(stats, patience):
        return "plateau"
    return "epoch cap" if len(stats) >= max_epochs else "deadline"


def _model_view(x: Any, mask: Any, uses_oracle: bool) -> tuple[Any, Any]:
    """What the model is handed: true values for the oracle ι, NaN in the holes otherwise."""
    import torch

    return (x if uses_oracle else x.masked_fill(~mask, float("nan"))), mask.to(torch.bool)


def run_missforest(out: Path, n_jobs: int, seed: int = 0) -> dict[str, Any]:
    """missForest on the Figure 1 (right) rows: accuracy on their missing pixels."""
    import torch

    from missiwae.data import load_incomplete_mnist
    from missiwae.evaluation import imputation_accuracy
    from missiwae.missforest import MissForest

    rows = load_incomplete_mnist("train", MISSING_RATE, seed=seed, num_rows=ACCURACY_ROWS)
    x_nan = rows.x.masked_fill(~rows.mask, float("nan")).numpy().astype(np.float64)
    started = time.time()
    imputer = MissForest(**MISSFOREST, n_jobs=n_jobs, random_state=seed)  # type: ignore[arg-type]
    filled = np.asarray(imputer.fit_transform(x_nan), dtype=np.float32)
    result = {
        "settings": {**MISSFOREST, "rows": ACCURACY_ROWS, "n_jobs": n_jobs},
        "accuracy": imputation_accuracy(torch.from_numpy(filled), rows.x, rows.mask),
        "iterations": int(imputer.n_iter_),
        "seconds": time.time() - started,
    }
    (out / "missforest").mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "missforest" / RESULT_FILE, result)
    return result


def run(
    out: Path,
    budget_s: float,
    device: str,
    train_rows: int | None,
    missforest_jobs: int,
    eval_samples: int = EVAL_SAMPLES,
    accuracy_samples: tuple[int, ...] = ACCURACY_SAMPLES,
    figure3_samples: int = 10_000,
    grace_s: float = 20.0,
    cuda_graph: bool = False,
    valid_rows: int = VALID_ROWS,
    curve: tuple[int, int] = (CURVE_ROWS, CURVE_SAMPLES),
) -> int:
    """All six models at once (one process each) plus missForest; returns 0 when all finished.

    A model process still running `grace_s` after the budget is killed (each stage has already
    done its first unit by then on a GPU); missForest is killed at the budget itself.
    """
    import torch

    out = out.resolve()  # the children run in the repository root
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    specs = figure1_specs(
        out,
        start,
        budget_s,
        device,
        train_rows,
        eval_samples,
        accuracy_samples,
        figure3_samples,
        cuda_graph=cuda_graph,
        valid_rows=valid_rows,
        curve=curve,
    )
    machine: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "budget_s": budget_s,
        "cuda_graph": cuda_graph,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(out / "machine.json", machine)
    children = []
    for spec in specs:
        log = open(Path(spec.out + ".log"), "w")  # noqa: SIM115 - closed after the child ends
        command = [
            sys.executable,
            "-m",
            "paper.gpu",
            "model",
            json.dumps(dataclasses.asdict(spec)),
        ]
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        children.append((spec.label, child, log))
    forest_log = open(out / "missforest.log", "w")  # noqa: SIM115
    forest_command = [
        sys.executable,
        "-m",
        "paper.gpu",
        "missforest",
        str(out),
        str(missforest_jobs),
    ]
    forest = subprocess.Popen(forest_command, stdout=forest_log, stderr=subprocess.STDOUT, cwd=REPO)
    deadline = start + budget_s
    status = {}
    for label, child, log in children:
        status[label] = _wait(child, deadline + grace_s)
        log.close()
    status["missforest"] = _wait(forest, deadline)
    forest_log.close()
    machine["seconds"] = time.time() - start
    machine["exit"] = status
    write_json_atomic(out / "machine.json", machine)
    print(json.dumps(status))
    return 0 if all(code == 0 for code in status.values()) else 1


def _wait(child: subprocess.Popen[bytes], until: float) -> int | str:
    try:
        return child.wait(timeout=max(1.0, until - time.time()))
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        return "killed at the deadline"


def proposal_check(folder: Path, labels: list[str], rows: int, samples: int, seed: int = 0) -> str:
    """log p(x) of complete test images with two proposals: q(z | x) from the complete image (as
    in Figure 1 left) and q(z | x_o') from a masked copy at the training missing rate. Any q
    is a valid proposal; the second shows the encoder inputs like those it was trained on."""
    import torch

    from missiwae.data import load_incomplete_mnist
    from missiwae.evaluation import estimate_log_likelihood
    from missiwae.model import make_generator
    from missiwae.training import load_model

    test = load_incomplete_mnist("test", 0.0, seed=seed, num_rows=10_000)
    x, complete = test.x[:rows], test.mask[:rows]
    half = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed + 5)) < MISSING_RATE
    lines = [
        f"log p(x) of the first {rows} complete test images, {samples} importance samples (± SE over images)",
        "",
        "| model | q(z given the complete image) | q(z given a 50%-masked copy) | difference |",
        "|---|---:|---:|---:|",
    ]
    for label in labels:
        model = load_model(folder / folder_name(label) / "checkpoint")
        values = []
        for proposal in (None, half):
            estimate = estimate_log_likelihood(
                model, x, complete, samples, generator=make_generator(seed + 3), proposal_mask=proposal
            )
            values.append(estimate)
        a, b = (float(v.mean()) for v in values)
        se = float((values[1] - values[0]).std() / math.sqrt(rows))
        lines.append(f"| {label} | {a:.2f} | {b:.2f} | {b - a:+.2f} ± {se:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paper.gpu", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="train, evaluate and impute within --budget-s seconds")
    run_parser.add_argument("--out", type=Path, required=True)
    run_parser.add_argument("--budget-s", type=float, default=300.0)
    run_parser.add_argument("--device", default="cuda")
    run_parser.add_argument("--train-rows", type=int, default=None, help="default: all 50 000")
    run_parser.add_argument("--missforest-jobs", type=int, default=8)
    run_parser.add_argument("--eval-samples", type=int, default=EVAL_SAMPLES, help="smoke tests: fewer")
    run_parser.add_argument(
        "--accuracy-samples", default=",".join(map(str, ACCURACY_SAMPLES)), help="comma-separated L values"
    )
    run_parser.add_argument(
        "--cuda-graph",
        action="store_true",
        help="replay each training step from a CUDA graph (train.cuda_graph)",
    )
    run_parser.add_argument(
        "--valid-rows", type=int, default=VALID_ROWS, help="validation images (early stopping)"
    )
    model_parser = sub.add_parser("model", help="(internal) one model, from a JSON ModelSpec")
    model_parser.add_argument("spec")
    forest_parser = sub.add_parser("missforest", help="(internal) the missForest baseline")
    forest_parser.add_argument("out", type=Path)
    forest_parser.add_argument("n_jobs", type=int)
    check_parser = sub.add_parser("proposal", help="complete-image log p(x) under two proposals")
    check_parser.add_argument("folder", type=Path)
    check_parser.add_argument("--models", default="K=1 zero,K=50 zero,K=50 oracle")
    check_parser.add_argument("--rows", type=int, default=200)
    check_parser.add_argument("--samples", type=int, default=1000)
    check_parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    render_parser = sub.add_parser("render", help="README and figures from a run folder")
    render_parser.add_argument("folder", type=Path)
    render_parser.add_argument("--report", type=Path, default=Path("reports/gpu"))
    render_parser.add_argument("--run-command", default="python -m paper.gpu run")
    args = parser.parse_args(argv)
    if args.command == "run":
        accuracy_samples = tuple(int(v) for v in args.accuracy_samples.split(","))
        return run(
            args.out,
            args.budget_s,
            args.device,
            args.train_rows,
            args.missforest_jobs,
            args.eval_samples,
            accuracy_samples,
            cuda_graph=args.cuda_graph,
            valid_rows=args.valid_rows,
        )
    if args.command == "model":
        run_model(ModelSpec(**json.loads(args.spec)))
        return 0
    if args.command == "missforest":
        run_missforest(args.out, args.n_jobs)
        return 0
    if args.command == "proposal":
        table = proposal_check(args.folder, args.models.split(","), args.rows, args.samples)
        if args.out is not None:
            write_text_atomic(args.out, table)
        print(table)
        return 0
    print(render(args.folder, args.report, args.run_command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
