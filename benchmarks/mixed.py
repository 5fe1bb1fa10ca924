"""Mixed tables (numbers and labels) bundled with scikit-learn: how well each imputer fills them.

    python benchmarks/mixed.py                                # 4 tables x 5 repetitions
    python benchmarks/mixed.py --datasets iris --repetitions 2 --steps 300

Each table is a scikit-learn dataset read from files shipped inside the package (no network),
with its class as a categorical column of labels:

    iris            4 measurements + species (3 levels)
    wine            13 measurements + cultivar (3 levels)
    breast_cancer   30 measurements + diagnosis (2 levels)
    diabetes        9 measurements + sex (2 levels) + disease progression in tertiles (3 levels)

For each table and repetition r: the numeric columns are standardised (mean 0, sd 1), 30% of
all cells are removed completely at random (seeded by (--seed, table, r)), every method imputes
from the holed table alone, and the removed cells are scored: RMSE on the numeric ones
(standardised units), accuracy on the categorical ones.

Methods:
  missiwae    MissIWAEImputer on the DataFrame (category columns -> one-hot Categorical blocks;
              SNIS single imputation, the most probable level)
  mean_mode   the column's observed mean, or its most frequent level
  missforest  the project's MissForest with per-column types (a classifier forest for each
              categorical column, the levels as integer codes)
  mice        chained equations: BayesianRidge for each number, multinomial logistic
              regression for each label, --mice-iterations rounds from mean / mode

Writes --out.{md,json}: mean ± sd over repetitions per table and method (best in bold), the
per-repetition numbers and the settings. Every number comes from the run itself.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.uci import add_protocol_arguments, mcar_holes

if TYPE_CHECKING:
    import pandas as pd

DATASETS = ("iris", "wine", "breast_cancer", "diabetes")
METHODS = ("missiwae", "mean_mode", "missforest", "mice")


def load_mixed(name: str) -> pd.DataFrame:
    """The complete table: numeric columns standardised, categorical ones as pandas categories."""
    import pandas as pd
    from sklearn import datasets

    if name == "diabetes":
        bunch = datasets.load_diabetes(scaled=False)
        frame = pd.DataFrame(bunch.data, columns=bunch.feature_names)
        sex = frame.pop("sex")
        tertiles = np.quantile(bunch.target, [1 / 3, 2 / 3])
        frame = _standardise(frame)
        frame["sex"] = pd.Categorical(np.where(sex == sex.min(), "sex_a", "sex_b"))
        frame["progression"] = pd.Categorical(
            np.array(["low", "mid", "high"])[np.searchsorted(tertiles, bunch.target)],
            categories=["low", "mid", "high"],
        )
        return frame
    loaders = {
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
    }
    if name not in loaders:
        raise SystemExit(f"unknown dataset {name!r}; choose from {sorted([*loaders, 'diabetes'])}")
    bunch = loaders[name]()
    frame = _standardise(pd.DataFrame(bunch.data, columns=bunch.feature_names))
    label = {"iris": "species", "wine": "cultivar", "breast_cancer": "diagnosis"}[name]
    frame[label] = pd.Categorical(np.asarray(bunch.target_names)[bunch.target])
    return frame


def _standardise(frame: pd.DataFrame) -> pd.DataFrame:
    return (frame - frame.mean()) / frame.std(ddof=0).replace(0.0, 1.0)


def _categorical(frame: pd.DataFrame) -> list[bool]:
    import pandas as pd

    return [isinstance(dtype, pd.CategoricalDtype) for dtype in frame.dtypes]


def impute(method: str, holed: pd.DataFrame, seed: int, args: argparse.Namespace) -> pd.DataFrame:
    """`holed` with every hole filled by `method` (same columns and dtypes)."""
    categorical = _categorical(holed)
    if method == "missiwae":
        from missiwae.estimator import MissIWAEImputer

        imputer = MissIWAEImputer(
            latent_dim=max(1, min(holed.shape[1] - 1, 10)),
            K=20,
            epochs=max(1, math.ceil(args.steps * 64 / len(holed))),
            num_samples=args.num_samples,
            random_state=seed,
        )
        return imputer.set_output(transform="pandas").fit_transform(holed)
    if method == "mean_mode":
        filled = holed.copy()
        for name, is_categorical in zip(holed.columns, categorical, strict=True):
            value = holed[name].mode()[0] if is_categorical else holed[name].mean()
            filled[name] = holed[name].fillna(value)
        return filled
    codes = np.column_stack(
        [
            np.where(holed[name].isna(), np.nan, holed[name].cat.codes) if is_categorical else holed[name]
            for name, is_categorical in zip(holed.columns, categorical, strict=True)
        ]
    ).astype(np.float64)
    if method == "missforest":
        from missiwae.missforest import FeatureTypes, MissForest

        types: list[FeatureTypes] = ["categorical" if c else "continuous" for c in categorical]
        forest = MissForest(n_estimators=args.trees, feature_types=types, n_jobs=1, random_state=seed)
        return _from_codes(holed, np.asarray(forest.fit_transform(codes), dtype=np.float64), categorical)
    if method == "mice":
        return _from_codes(holed, _chained_equations(codes, categorical, args.mice_iterations), categorical)
    raise SystemExit(f"unknown method {method!r}; choose from {list(METHODS)}")


def _chained_equations(codes: np.ndarray, categorical: list[bool], iterations: int) -> np.ndarray:
    """MICE as the R package runs it on a mixed table, as a single imputation: start from the
    mean / mode, then, column by column and `iterations` times, refit on the column's observed
    rows and predict its holes from every other column (the levels one-hot as predictors):
    BayesianRidge for a number (its mean), a multinomial logistic regression for a label (its
    most probable level). scikit-learn's IterativeImputer has no classifier per column, and on
    one-hot columns it predicts each level from its siblings, which a hole leaves at their
    means: every hole then gets the same level."""
    from sklearn.linear_model import BayesianRidge, LogisticRegression

    holes = np.isnan(codes)
    filled = codes.copy()
    for j in range(codes.shape[1]):
        observed = codes[~holes[:, j], j]
        if categorical[j]:
            levels, counts = np.unique(observed, return_counts=True)
            filled[holes[:, j], j] = levels[counts.argmax()]
        else:
            filled[holes[:, j], j] = observed.mean()

    def predictors(j: int) -> np.ndarray:
        parts = []
        for k in range(codes.shape[1]):
            if k == j:
                continue
            if categorical[k]:
                levels = np.unique(filled[:, k])
                parts.append((filled[:, [k]] == levels[None, 1:]).astype(np.float64))
            else:
                parts.append(filled[:, [k]])
        return np.column_stack(parts)

    for _ in range(iterations):
        for column in np.flatnonzero(holes.any(axis=0)).tolist():
            X, rows = predictors(column), ~holes[:, column]
            if categorical[column] and len(np.unique(codes[rows, column])) > 1:
                model: Any = LogisticRegression(max_iter=1000).fit(X[rows], codes[rows, column])
            elif categorical[column]:
                continue  # one observed level: the mode it already holds
            else:
                model = BayesianRidge().fit(X[rows], codes[rows, column])
            filled[~rows, column] = model.predict(X[~rows])
    return filled


def _from_codes(holed: pd.DataFrame, filled: np.ndarray, categorical: list[bool]) -> pd.DataFrame:
    """A filled code matrix (N, D) back into `holed`'s frame: holes only, levels from codes."""
    out = holed.copy()
    for j, (name, is_categorical) in enumerate(zip(holed.columns, categorical, strict=True)):
        holes = holed[name].isna().to_numpy()
        if is_categorical:
            levels = np.asarray(holed[name].cat.categories)
            out.loc[holes, name] = levels[np.rint(filled[holes, j]).astype(int)]
        else:
            out.loc[holes, name] = filled[holes, j]
    return out


def score(complete: pd.DataFrame, filled: pd.DataFrame, holes: np.ndarray) -> dict[str, float]:
    """RMSE over the removed numeric cells, accuracy over the removed categorical ones."""
    categorical = _categorical(complete)
    errors, hits = [], []
    for j, (name, is_categorical) in enumerate(zip(complete.columns, categorical, strict=True)):
        truth, guess = complete[name][holes[:, j]], filled[name][holes[:, j]]
        if is_categorical:
            hits.extend((truth.astype(str).to_numpy() == guess.astype(str).to_numpy()).tolist())
        else:
            errors.extend(((truth.to_numpy() - guess.to_numpy(dtype=np.float64)) ** 2).tolist())
    return {"rmse": float(np.sqrt(np.mean(errors))), "accuracy": float(np.mean(hits))}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {}
    for dataset in args.datasets:
        complete = load_mixed(dataset)
        entry: dict[str, Any] = {
            "shape": list(complete.shape),
            "categorical": [
                c for c, is_cat in zip(complete.columns, _categorical(complete), strict=True) if is_cat
            ],
            "rmse": {m: [] for m in args.methods},
            "accuracy": {m: [] for m in args.methods},
            "seconds": {m: [] for m in args.methods},
        }
        for repetition in range(args.repetitions):
            holes = mcar_holes(complete.shape, args.missing_rate, args.seed, dataset, repetition)
            holed = complete.mask(holes)
            for method in args.methods:
                started = time.perf_counter()
                filled = impute(method, holed, args.seed * 1000 + repetition, args)
                seconds = time.perf_counter() - started
                if filled.isna().any().any() or not filled.mask(holes).equals(holed):
                    raise RuntimeError(f"{method} left a hole or changed an observed cell of {dataset}")
                scores = score(complete, filled, holes)
                for key in ("rmse", "accuracy"):
                    entry[key][method].append(scores[key])
                entry["seconds"][method].append(seconds)
                print(
                    f"{dataset:14s} rep {repetition}  {method:10s} RMSE {scores['rmse']:.3f}  "
                    f"accuracy {scores['accuracy']:.3f}  ({seconds:.1f} s)",
                    flush=True,
                )
        results[dataset] = entry
    return results


def markdown_table(results: dict[str, Any], methods: list[str]) -> str:
    lines = [
        "| dataset (N x D; categorical) | measure | " + " | ".join(methods) + " |",
        "|---|---|" + "---:|" * len(methods),
    ]
    for dataset, entry in results.items():
        rows, cols = entry["shape"]
        label = f"{dataset} ({rows} x {cols}; {', '.join(entry['categorical'])})"
        for measure, better in (("rmse", min), ("accuracy", max)):
            means = {m: float(np.mean(entry[measure][m])) for m in methods}
            best = better(means, key=lambda m: means[m])
            cells = []
            for method in methods:
                values = entry[measure][method]
                sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
                cell = f"{means[method]:.3f} ± {sd:.3f}"
                cells.append(f"**{cell}**" if method == best else cell)
            name = "RMSE (numbers)" if measure == "rmse" else "accuracy (labels)"
            lines.append(f"| {label if measure == 'rmse' else ''} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/mixed.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_protocol_arguments(parser, DATASETS, METHODS, missing_rate=0.3, out="benchmarks/results/mixed")
    parser.add_argument("--mice-iterations", type=int, default=10, help="MICE rounds over the columns")
    args = parser.parse_args(argv)
    if args.repetitions < 1:
        parser.error("--repetitions must be >= 1")
    from missiwae.allocator import retain_freed_memory

    retain_freed_memory()
    started = time.perf_counter()
    results = run(args)
    wall = time.perf_counter() - started
    table = markdown_table(results, args.methods)
    caption = (
        f"{int(args.missing_rate * 100)}% MCAR over all cells; RMSE on the removed numeric cells "
        f"(standardised units, lower is better) and accuracy on the removed labels (higher is "
        f"better), mean ± sd over {args.repetitions} repetitions; best in bold."
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(f"{caption}\n\n{table}\n")
    settings = {
        **{k: v for k, v in vars(args).items() if k != "out"},
        "command": "python benchmarks/mixed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "wall_seconds": wall,
        "machine": f"{platform.machine()} {platform.system()}, torch threads {args.threads}",
    }
    out.with_suffix(".json").write_text(
        json.dumps({"settings": settings, "results": results}, indent=2) + "\n"
    )
    print(f"\n{caption}\n\n{table}\n\nwall time {wall:.0f} s; wrote {out}.{{md,json}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
