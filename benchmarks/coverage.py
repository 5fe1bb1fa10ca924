"""Does multiple imputation give honest intervals? Coverage of pooled OLS coefficients.

    python benchmarks/coverage.py --quick
    python benchmarks/coverage.py --tables linear --mechanisms mcar --rates 0.3 \
        --methods missiwae missiwae_boot iterative --replications 50 --jobs 2
    python benchmarks/coverage.py --ray --out runs/coverage      # the grid, fanned out over Ray

With --ray every (setting, replication) is one Ray task of one CPU, all settings at once, on the
cluster of $RAY_ADDRESS (`ray job submit`) or a local Ray; without it, joblib runs --jobs
replications at a time. With --out each replication's rows are written to
OUT/<table>-<mechanism>-<rate>/rep_NNNN.json as it finishes (atomically), so a run that stops
resumes where it was (the same settings, checked against OUT/settings.json; --replications may
grow), and the summary goes to OUT/coverage.md and OUT/coverage.json.

For each setting (table x mechanism x rate) and replication r:
  1. draw a complete table (X, y) with known regression coefficients β (seed = (--seed, r)),
  2. remove entries of the covariates X (never y) MCAR or MAR (on y) at the given rate,
  3. impute [X, y] M times with each method, fit OLS of y on X to each copy, pool by Rubin's
     rules (missiwae.pooling) with ν_com = N − P,
  4. record, per slope, the error of the pooled estimate, whether its 95% interval covers β,
     the interval's width and the fraction of missing information.
Printed per method: mean signed bias of the slopes, coverage ± its standard error (over
replications), mean interval width, mean FMI.

Tables: `linear` (3 correlated Gaussian covariates, ρ = 0.5, y = 1 + x1 − x2 + 0.5 x3 + ε);
`nonlinear` (x2, x3 nonlinear in x1, the same linear y | X, so β is still exact); `diabetes`
(scikit-learn's table; β = the OLS fit of the complete table, the target of the ForestDiffusion
protocol, and every replication reuses the rows: only the holes change).

Methods: `complete` (OLS on the complete table), `complete_case` (rows with every covariate
observed), `iterative` (IterativeImputer(sample_posterior=True), M seeds), `missiwae`
(MissIWAEImputer(...).sample(X, M)), `missiwae_boot` (missiwae.ensemble.BootstrapImputer with
--n-models bootstrap models), `missforest` (the project's MissForest with M seeds).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from missiwae.pooling import PooledEstimate, ols, pool_fits, rubin

TABLES = ("linear", "nonlinear", "diabetes")
METHODS = ("complete", "complete_case", "iterative", "missforest", "missiwae", "missiwae_boot")
BETA = np.array([1.0, 1.0, -1.0, 0.5])  # intercept, slopes of the synthetic tables


@dataclass(frozen=True)
class Table:
    X: np.ndarray  # (N, D) covariates
    y: np.ndarray  # (N,)
    truth: np.ndarray  # (D + 1,) intercept first


def make_table(name: str, num_rows: int, rng: np.random.Generator) -> Table:
    if name == "linear":
        covariance = 0.5 ** np.abs(np.subtract.outer(np.arange(3), np.arange(3)))
        X = rng.multivariate_normal(np.zeros(3), covariance, size=num_rows)
    elif name == "nonlinear":
        x1 = rng.normal(size=num_rows)
        x2 = (x1**2 - 1) / math.sqrt(2) + 0.5 * rng.normal(size=num_rows)
        x3 = np.sin(2 * x1) + 0.5 * rng.normal(size=num_rows)
        X = np.column_stack([x1, x2, x3])
    elif name == "diabetes":
        from sklearn.datasets import load_diabetes

        data = load_diabetes()
        X, y = np.asarray(data.data, dtype=np.float64), np.asarray(data.target, dtype=np.float64)
        X = (X - X.mean(0)) / X.std(0)  # standardised: slopes on one scale
        return Table(X, y, ols(X, y)[0])
    else:
        raise SystemExit(f"unknown table {name!r}; choose from {TABLES}")
    y = BETA[0] + X @ BETA[1:] + rng.normal(size=num_rows)
    return Table(X, y, BETA.copy())


def make_mask(
    y: np.ndarray, shape: tuple[int, int], mechanism: str, rate: float, rng: np.random.Generator
) -> np.ndarray:
    """True = observed, (N, D). MCAR: each entry missing with probability `rate`. MAR: entry
    (i, j) missing with probability 2 rate σ(±z_i), z = standardised y (observed), the sign
    alternating over columns; its mean over rows is `rate` (σ(z) + σ(−z) = 1, z symmetric)."""
    if mechanism == "mcar":
        probability = np.full(shape, rate)
    elif mechanism == "mar":
        z = (y - y.mean()) / y.std()
        signs = np.where(np.arange(shape[1]) % 2 == 0, 1.0, -1.0)
        probability = 2 * rate / (1 + np.exp(-np.outer(z, signs)))
    else:
        raise SystemExit(f"unknown mechanism {mechanism!r}")
    return rng.random(shape) >= probability


# ---------------------------------------------------------------- methods: (M, N, D + 1) copies


def impute_iterative(
    table: np.ndarray, num_imputations: int, seed: int, args: argparse.Namespace
) -> np.ndarray:
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer

    return np.stack(
        [
            IterativeImputer(sample_posterior=True, max_iter=10, random_state=seed + m).fit_transform(table)
            for m in range(num_imputations)
        ]
    )


def impute_missforest(
    table: np.ndarray, num_imputations: int, seed: int, args: argparse.Namespace
) -> np.ndarray:
    from missiwae.missforest import MissForest

    return np.stack([MissForest(random_state=seed + m).fit_transform(table) for m in range(num_imputations)])


def _missiwae(seed: int, args: argparse.Namespace) -> Any:
    from missiwae import MissIWAEImputer

    return MissIWAEImputer(
        latent_dim=args.latent_dim,
        hidden=tuple(args.hidden),
        epochs=args.epochs,
        K=args.K,
        num_samples=args.num_samples,
        observation=args.observation,
        random_state=seed,
        device=args.device,
    )


def impute_missiwae(
    table: np.ndarray, num_imputations: int, seed: int, args: argparse.Namespace
) -> np.ndarray:
    return _missiwae(seed, args).fit(table).sample(table, num_imputations)


def impute_missiwae_boot(
    table: np.ndarray, num_imputations: int, seed: int, args: argparse.Namespace
) -> np.ndarray:
    from missiwae.ensemble import BootstrapImputer

    ensemble = BootstrapImputer(_missiwae(seed, args), args.n_models, seed=seed)
    return ensemble.fit(table).sample(table, num_imputations)


IMPUTERS: dict[str, Callable[[np.ndarray, int, int, argparse.Namespace], np.ndarray]] = {
    "iterative": impute_iterative,
    "missforest": impute_missforest,
    "missiwae": impute_missiwae,
    "missiwae_boot": impute_missiwae_boot,
}


def analyse(
    method: str, data: Table, mask: np.ndarray, seed: int, args: argparse.Namespace
) -> PooledEstimate:
    """The pooled OLS of y on X by `method`; for single analyses, B = 0 (M = 2 equal copies)."""
    num_params = data.X.shape[1] + 1
    if method in ("complete", "complete_case"):
        rows = np.ones(len(data.y), bool) if method == "complete" else mask.all(axis=1)
        estimates, variances = ols(data.X[rows], data.y[rows])
        # One analysis: Rubin's rules on two identical copies give T = U, ν = ν_obs(ν_com).
        return rubin(
            np.stack([estimates] * 2), np.stack([variances] * 2), complete_df=rows.sum() - num_params
        )
    holed = np.column_stack([np.where(mask, data.X, np.nan), data.y])  # y is observed: imputers see it
    copies = IMPUTERS[method](holed, args.M, seed, args)
    return pool_fits(copies, lambda c: ols(c[:, :-1], c[:, -1]), complete_df=len(data.y) - num_params)


def replicate(
    setting: tuple[str, str, float], replication: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    import torch

    torch.set_num_threads(1)
    table_name, mechanism, rate = setting
    seed = args.seed * 100_003 + replication
    rng = np.random.default_rng([args.seed, replication, TABLES.index(table_name)])
    data = make_table(table_name, args.rows, rng)
    mask = make_mask(data.y, data.X.shape, mechanism, rate, rng)
    rows = []
    for method in args.methods:
        start = time.perf_counter()
        pooled = analyse(method, data, mask, seed, args)
        lower, upper = pooled.interval(0.95)
        slopes = slice(1, None)
        rows.append(
            {
                "method": method,
                "error": (pooled.estimate - data.truth)[slopes],
                "covered": pooled.covers(data.truth)[slopes],
                "width": (upper - lower)[slopes],
                "fmi": pooled.fmi[slopes],
                "seconds": time.perf_counter() - start,
            }
        )
    return rows


def summary_numbers(results: list[list[dict[str, Any]]], methods: list[str]) -> dict[str, dict[str, Any]]:
    """Per method: mean signed error per slope, coverage and its standard error over
    replications (the slopes of one replication share a table), mean width, FMI and seconds."""
    out = {}
    for method in methods:
        rows = [row for rep in results for row in rep if row["method"] == method]
        errors = np.stack([r["error"] for r in rows])
        covered = np.stack([r["covered"] for r in rows]).astype(float)
        per_rep = covered.mean(axis=1)
        se = per_rep.std(ddof=1) / math.sqrt(len(per_rep)) if len(per_rep) > 1 else float("nan")
        out[method] = {
            "bias": errors.mean(axis=0).tolist(),
            "coverage": float(covered.mean()),
            "coverage_se": float(se),
            "width": float(np.mean([r["width"] for r in rows])),
            "fmi": float(np.mean([r["fmi"] for r in rows])),
            "seconds": float(np.mean([r["seconds"] for r in rows])),
            "replications": len(rows),
        }
    return out


def summarise(results: list[list[dict[str, Any]]], methods: list[str]) -> list[str]:
    lines = [
        f"{'method':<14} {'bias (per slope)':<28} {'coverage ± se':>14} {'width':>7} {'FMI':>6} {'s/rep':>6} "
        f"{'reps':>5}",
    ]
    for method, n in summary_numbers(results, methods).items():
        bias = " ".join(f"{b:+.3f}" for b in n["bias"])
        lines.append(
            f"{method:<14} {bias:<28} {n['coverage']:>7.3f} ± {n['coverage_se']:.3f} "
            f"{n['width']:>7.3f} {n['fmi']:>6.3f} {n['seconds']:>6.1f} {n['replications']:>5}"
        )
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tables", nargs="+", default=["linear"], choices=TABLES)
    parser.add_argument("--mechanisms", nargs="+", default=["mcar", "mar"], choices=["mcar", "mar"])
    parser.add_argument("--rates", nargs="+", type=float, default=[0.2, 0.4])
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["complete", "complete_case", "iterative", "missiwae", "missiwae_boot"],
        choices=METHODS,
    )
    parser.add_argument("--replications", type=int, default=200)
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--M", type=int, default=10, help="imputations per method")
    parser.add_argument("--n-models", type=int, default=10, help="bootstrap models of missiwae_boot")
    parser.add_argument("--latent-dim", type=int, default=10)
    parser.add_argument("--hidden", nargs="+", type=int, default=[128, 128])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--K", type=int, default=20)
    parser.add_argument("--num-samples", type=int, default=1000, help="L for SIR")
    parser.add_argument("--observation", default="gaussian", choices=["gaussian", "student_t"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="replications in parallel (joblib processes)")
    parser.add_argument(
        "--ray", action="store_true", help="one Ray task per replication ($RAY_ADDRESS or local)"
    )
    parser.add_argument(
        "--out", default=None, help="folder for each replication's rows and the summary (resumable)"
    )
    parser.add_argument(
        "--summary-only", action="store_true", help="run nothing: summarise the replications in --out"
    )
    parser.add_argument("--device", default="cpu", help="where missIWAE trains and imputes (cpu, cuda)")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 4 replications, one setting, small models"
    )
    args = parser.parse_args(argv)
    if args.summary_only and not args.out:
        parser.error("--summary-only needs --out")
    if args.quick:
        args.tables, args.mechanisms, args.rates = args.tables[:1], ["mcar"], [0.3]
        args.replications, args.M, args.n_models = 4, 4, 4
        args.epochs, args.hidden, args.latent_dim, args.num_samples = 20, [32, 32], 3, 200
    return args


# The arguments that decide a replication's numbers: a resumed run must have the same ones.
RUN_ONLY = ("replications", "jobs", "ray", "out", "quick", "summary_only", "device")
Setting = tuple[str, str, float]


def setting_name(setting: Setting) -> str:
    table, mechanism, rate = setting
    return f"{table}-{mechanism}-{rate:g}"


def encode(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in row.items()} for row in rows]


def decode(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    arrays = ("error", "covered", "width", "fmi")
    return [{k: np.asarray(v) if k in arrays else v for k, v in row.items()} for row in rows]


def resume_state(
    out: Path, args: argparse.Namespace, settings: list[Setting]
) -> dict[tuple[Setting, int], Any]:
    """The replications already in `out` (after checking that they were made with these
    arguments: SystemExit naming the ones that differ); writes OUT/settings.json for a new run."""
    from missiwae.atomic import write_json_atomic

    decisive = {k: v for k, v in sorted(vars(args).items()) if k not in RUN_ONLY}
    recorded_path = out / "settings.json"
    if recorded_path.is_file():
        recorded = json.loads(recorded_path.read_text())
        changed = sorted(k for k in decisive.keys() | recorded.keys() if decisive.get(k) != recorded.get(k))
        if changed:
            raise SystemExit(
                f"{out} holds replications made with other settings ({', '.join(changed)}); "
                "choose another --out or the same settings"
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(recorded_path, decisive)
    done = {}
    for setting in settings:
        for path in sorted((out / setting_name(setting)).glob("rep_*.json")):
            done[(setting, int(path.stem.split("_")[1]))] = decode(json.loads(path.read_text()))
    return done


def fan_out(
    todo: list[tuple[Setting, int]], args: argparse.Namespace
) -> Iterator[tuple[tuple[Setting, int], list[dict[str, Any]]]]:
    """((setting, replication), rows) for every item of `todo`, as each finishes (Ray) or in
    order (joblib)."""
    if not todo:
        return
    if args.ray:
        import ray

        from pipelines.runtime import ensure_ray

        ensure_ray()
        task = ray.remote(num_cpus=1)(replicate)
        args_ref = ray.put(args)
        pending = {task.remote(setting, r, args_ref): (setting, r) for setting, r in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            yield pending.pop(ready[0]), ray.get(ready[0])
        return
    from joblib import Parallel, delayed

    results = Parallel(n_jobs=args.jobs, return_as="generator")(
        delayed(replicate)(setting, r, args) for setting, r in todo
    )
    yield from zip(todo, results, strict=True)


def run(args: argparse.Namespace) -> dict[Setting, list[list[dict[str, Any]]]]:
    """Every replication of every setting: setting -> [rows of replication r for r in range]."""
    from missiwae.atomic import write_json_atomic

    settings: list[Setting] = list(itertools.product(args.tables, args.mechanisms, args.rates))
    out = Path(args.out) if args.out else None
    done = resume_state(out, args, settings) if out else {}
    # Replication-major: a run stopped part way leaves every setting about as far along.
    todo = [(s, r) for r in range(args.replications) for s in settings if (s, r) not in done]
    if args.summary_only:
        return {s: [rows for (setting, _), rows in sorted(done.items()) if setting == s] for s in settings}
    if done:
        print(f"# resuming: {len(done)} replications on disk, {len(todo)} to run", flush=True)
    for key, rows in fan_out(todo, args):
        done[key] = rows
        if out:
            setting, r = key
            folder = out / setting_name(setting)
            folder.mkdir(exist_ok=True)
            write_json_atomic(folder / f"rep_{r:04d}.json", encode(rows))
    return {s: [done[(s, r)] for r in range(args.replications)] for s in settings}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    header = (
        f"# rows {args.rows}, M {args.M}, replications {args.replications}, missIWAE: d {args.latent_dim}, "
        f"hidden {args.hidden}, epochs {args.epochs}, K {args.K}, L {args.num_samples}, {args.observation}, "
        f"bootstrap models {args.n_models}; seed {args.seed}"
    )
    print(header, flush=True)
    start = time.perf_counter()
    results = run(args)
    seconds = time.perf_counter() - start
    lines = [header]
    summary = {}
    for setting, replications in results.items():
        table, mechanism, rate = setting
        if not replications:  # --summary-only before this setting's first replication finished
            lines += ["", f"## {table}, {mechanism.upper()} {rate:.0%}: no replication yet"]
            continue
        lines += ["", f"## {table}, {mechanism.upper()} {rate:.0%}", *summarise(replications, args.methods)]
        summary[setting_name(setting)] = summary_numbers(replications, args.methods)
    lines += ["", f"wall time {seconds:.0f} s (this invocation)"]
    print("\n".join(lines[1:]), flush=True)
    if args.out:
        from missiwae.atomic import write_json_atomic, write_text_atomic

        write_text_atomic(Path(args.out) / "coverage.md", "\n".join(lines) + "\n")
        write_json_atomic(Path(args.out) / "coverage.json", {"seconds": seconds, "settings": summary})


if __name__ == "__main__":
    main()
