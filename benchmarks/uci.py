"""The MIWAE paper's UCI protocol on tables bundled with scikit-learn (no download).

    python benchmarks/uci.py                                  # 4 tables x 5 repetitions
    python benchmarks/uci.py --datasets iris wine --repetitions 2 --steps 500

For each table and repetition r (Mattei & Frellsen 2019, section 4.3):
  1. standardise the complete table (mean 0, sd 1 per column),
  2. remove 50% of the entries completely at random (seed = (--seed, table, r)),
  3. impute with every method from the NaN-holed table alone,
  4. score the mean squared error over the removed entries (standardised units).

Methods: missIWAE (MissIWAEImputer, SNIS single imputation), mean imputation, MICE
(IterativeImputer + BayesianRidge), missForest (the project's MissForest: one random forest per
column, Stekhoven & Bühlmann's stopping rule), and KNN imputation (KNNImputer, 5 neighbours).

Writes --out.{md,json,csv}: a markdown table of mean ± sd over the repetitions (lowest mean in
bold), the per-repetition numbers and the settings. Every number comes from the run itself.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Run as a script: make the repository root importable so `missiwae` is this checkout's.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Tables whose loaders read files shipped inside scikit-learn (no network).
DATASETS = ("breast_cancer", "wine", "diabetes", "iris")
METHODS = ("missiwae", "mean", "mice", "missforest", "knn")


def load_table(name: str) -> np.ndarray:
    """The complete (N, D) float64 feature table of a bundled scikit-learn dataset."""
    from sklearn import datasets

    loaders: dict[str, Callable[..., Any]] = {
        "breast_cancer": datasets.load_breast_cancer,
        "wine": datasets.load_wine,
        "diabetes": datasets.load_diabetes,
        "iris": datasets.load_iris,
        "digits": datasets.load_digits,
    }
    if name not in loaders:
        raise SystemExit(f"unknown dataset {name!r}; choose from {sorted(loaders)}")
    return np.asarray(loaders[name]().data, dtype=np.float64)


def standardise(X: np.ndarray) -> np.ndarray:
    std = X.std(axis=0)
    return (X - X.mean(axis=0)) / np.where(std > 0, std, 1.0)


def mcar_holes(shape: tuple[int, int], rate: float, seed: int, dataset: str, repetition: int) -> np.ndarray:
    """Boolean (N, D), True = removed; seeded by (seed, dataset, repetition)."""
    rng = np.random.default_rng([seed, zlib.crc32(dataset.encode()), repetition])
    return rng.random(shape) < rate


def missiwae_settings(num_features: int, num_rows: int, args: argparse.Namespace) -> dict[str, Any]:
    """MLP 128-128 (tanh), d = min(D - 1, 10), K = 20, Student-t, `--steps` Adam steps of 64 rows."""
    batch_size = 64
    return {
        "observation": args.observation,
        "column_types": None,  # standardised tables: every column continuous, as in the paper
        "latent_dim": max(1, min(num_features - 1, 10)),
        "hidden": (128, 128),
        "activation": "tanh",
        "K": 20,
        "batch_size": batch_size,
        "epochs": max(1, math.ceil(args.steps * batch_size / num_rows)),
        "learning_rate": 1e-3,
        "num_samples": args.num_samples,
    }


def impute(method: str, X_missing: np.ndarray, seed: int, args: argparse.Namespace) -> np.ndarray:
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer, KNNImputer, SimpleImputer
    from sklearn.linear_model import BayesianRidge

    from missiwae.estimator import MissIWAEImputer
    from missiwae.missforest import MissForest

    if method == "missiwae":
        settings = missiwae_settings(X_missing.shape[1], X_missing.shape[0], args)
        return MissIWAEImputer(**settings, random_state=seed).fit_transform(X_missing)
    if method == "mean":
        return SimpleImputer(strategy="mean").fit_transform(X_missing)
    if method == "mice":
        mice = IterativeImputer(estimator=BayesianRidge(), max_iter=20, random_state=seed)
        return mice.fit_transform(X_missing)
    if method == "missforest":
        forest = MissForest(n_estimators=args.trees, feature_types="continuous", n_jobs=1, random_state=seed)
        return np.asarray(forest.fit_transform(X_missing), dtype=np.float64)
    if method == "knn":
        return KNNImputer(n_neighbors=5).fit_transform(X_missing)
    raise SystemExit(f"unknown method {method!r}; choose from {list(METHODS)}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)  # small MLPs: one thread is as fast, and fair to neighbours
    results: dict[str, Any] = {}
    for dataset in args.datasets:
        X = standardise(load_table(dataset))
        entry: dict[str, Any] = {"shape": list(X.shape), "mse": {m: [] for m in args.methods}}
        entry["seconds"] = {m: [] for m in args.methods}
        for repetition in range(args.repetitions):
            holes = mcar_holes(X.shape, args.missing_rate, args.seed, dataset, repetition)
            X_missing = np.where(holes, np.nan, X)
            for method in args.methods:
                started = time.perf_counter()
                X_imputed = impute(method, X_missing, args.seed * 1000 + repetition, args)
                seconds = time.perf_counter() - started
                if not np.array_equal(X_imputed[~holes], X[~holes]):
                    raise RuntimeError(f"{method} changed observed entries of {dataset}")
                mse = float(np.mean((X_imputed[holes] - X[holes]) ** 2))
                entry["mse"][method].append(mse)
                entry["seconds"][method].append(seconds)
                line = f"{dataset:14s} rep {repetition}  {method:10s} MSE {mse:.4f}  ({seconds:.1f} s)"
                print(line, flush=True)
        results[dataset] = entry
    return results


def markdown_table(results: dict[str, Any], methods: list[str]) -> str:
    header = "| dataset (N x D) | " + " | ".join(methods) + " |"
    lines = [header, "|---|" + "---:|" * len(methods)]
    for dataset, entry in results.items():
        means = {m: float(np.mean(entry["mse"][m])) for m in methods}
        best = min(means, key=lambda m: means[m])
        cells = []
        for method in methods:
            values = entry["mse"][method]
            sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            cell = f"{means[method]:.3f} ± {sd:.3f}"
            cells.append(f"**{cell}**" if method == best else cell)
        rows, cols = entry["shape"]
        lines.append(f"| {dataset} ({rows} x {cols}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(results: dict[str, Any], args: argparse.Namespace, wall_seconds: float) -> str:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = markdown_table(results, args.methods)
    settings = {
        "repetitions": args.repetitions,
        "missing_rate": args.missing_rate,
        "seed": args.seed,
        "threads": args.threads,
        "missiwae": {
            dataset: missiwae_settings(entry["shape"][1], entry["shape"][0], args)
            for dataset, entry in results.items()
        },
        "missiwae_steps": args.steps,
        "mice": "IterativeImputer(BayesianRidge(), max_iter=20)",
        "missforest": f"MissForest(n_estimators={args.trees}, feature_types='continuous', max_iter=10)",
        "knn": "KNNImputer(n_neighbors=5)",
        "wall_seconds": wall_seconds,
        "machine": f"{platform.machine()} {platform.system()}, torch threads {args.threads}",
    }
    caption = (
        f"MSE on the removed entries (standardised units), {int(args.missing_rate * 100)}% MCAR, "
        f"mean ± sd over {args.repetitions} repetitions; lowest mean in bold."
    )
    out.with_suffix(".md").write_text(f"{caption}\n\n{table}\n")
    payload = {"settings": settings, "results": results}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    with out.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dataset", "method", "repetition", "mse", "seconds"])
        for dataset, entry in results.items():
            for method in args.methods:
                for repetition, (mse, seconds) in enumerate(
                    zip(entry["mse"][method], entry["seconds"][method], strict=True)
                ):
                    writer.writerow([dataset, method, repetition, f"{mse:.6f}", f"{seconds:.3f}"])
    return f"{caption}\n\n{table}"


def add_protocol_arguments(
    parser: argparse.ArgumentParser,
    datasets: Sequence[str],
    methods: Sequence[str],
    *,
    missing_rate: float,
    out: str,
) -> None:
    """The settings of an imputation benchmark over bundled tables (this script's and
    benchmarks/mixed.py's): which tables and methods, the repetitions, the MCAR rate, the seed,
    missIWAE's steps and L, missForest's trees, torch's threads and the output path."""
    parser.add_argument("--datasets", nargs="+", default=list(datasets), help="bundled sklearn tables")
    parser.add_argument("--methods", nargs="+", default=list(methods), choices=methods)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--missing-rate", type=float, default=missing_rate)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=2000, help="missIWAE Adam steps (batches of 64)")
    parser.add_argument("--num-samples", type=int, default=1000, help="missIWAE L for SNIS imputation")
    parser.add_argument("--trees", type=int, default=100, help="missForest trees per column")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", default=out, help="output path without suffix")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/uci.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_protocol_arguments(parser, DATASETS, METHODS, missing_rate=0.5, out="benchmarks/results/uci")
    parser.add_argument("--observation", default="student_t", choices=("gaussian", "student_t"))
    args = parser.parse_args(argv)
    if args.repetitions < 1:
        parser.error("--repetitions must be >= 1")
    from missiwae.allocator import retain_freed_memory

    retain_freed_memory()  # an entry point opts in; MissIWAEImputer.fit no longer does it for us
    started = time.perf_counter()
    results = run(args)
    text = write_outputs(results, args, time.perf_counter() - started)
    print()
    print(text)
    print(f"\nwall time {time.perf_counter() - started:.0f} s; wrote {Path(args.out)}.{{md,json,csv}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
