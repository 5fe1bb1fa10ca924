"""Imputation throughput (images/s) and peak memory for L in {100, 1000, 10 000}.

Side by side in one run, one fresh process per measurement (peak RSS is that process's):
- SNIS single imputation and SIR multiple imputation (M = 20) on binarized MNIST test images,
  Bernoulli MLP 784-200-200-50: ours and before (BEFORE_REF);
- the peer's model (ReLU MLP, Student-t observations): ours' SNIS vs hyperimpute's
  `_miwae_impute` at the same L (the peer holds all L samples at once, so it goes one row /
  a few rows per call).
Each L runs on min(num_images, work / L) images so the whole script stays within minutes:
throughput is per image and linear in L when the implementation is; `--num-images 1000
--work 10000000` gives the full 1000-image figure.

    python benchmarks/bench_impute.py [--reps 2] [--threads 1] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import common


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_common_arguments(parser)
    parser.set_defaults(reps=2)
    parser.add_argument("--L", default="100,1000,10000")
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--work", type=int, default=100_000, help="images x L per measurement (cap)")
    parser.add_argument("--M", type=int, default=20)
    args = parser.parse_args()
    common.cuda_or_exit(args.device)
    peer_ok, peer_info = (False, "--no-peer") if args.no_peer else common.peer_available()
    if not peer_ok:
        print(f"[peer] not run: {peer_info}")
    before = not args.no_before and common.before_dir() is not None
    Ls = [int(v) for v in args.L.split(",")]
    impls = ["ours", *(["before"] if before else [])]
    raw: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        data = common.mnist_npz("test", args.num_images, Path(folder))
        base = ["--data", str(data), "--threads", str(args.threads), "--device", args.device]
        for rep in range(args.reps):
            for L in Ls:
                images = max(1, min(args.num_images, args.work // L))
                flags = [*base, "--L", str(L), "--num-images", str(images), "--M", str(args.M)]
                for method in ("snis", "sir"):
                    for impl in impls:
                        _record(
                            raw,
                            f"{method}/L={L}/{impl}",
                            "worker_impute.py",
                            impl,
                            [*flags, "--method", method],
                        )
                student = ["--observation", "student_t", "--activation", "relu"]
                _record(raw, f"peer_model/L={L}/ours", "worker_impute.py", "ours", [*flags, *student])
                if peer_ok and args.device == "cpu":
                    peer_flags = [*base, "--mode", "impute", "--L", str(L), "--num-images", str(images)]
                    peer_flags += ["--rows-per-call", str(max(1, 10_000 // L))]
                    _record(raw, f"peer_model/L={L}/peer", "peer_miwae.py", "peer", peer_flags)
            print(f"repetition {rep + 1}/{args.reps} done")
    summary = summarise(raw, Ls)
    report(summary, args, peer_info if peer_ok else None)
    common.write_json(
        f"impute_{args.device}",
        {
            "settings": {
                "threads": args.threads,
                "reps": args.reps,
                "M": args.M,
                "work": args.work,
                "device": args.device,
                "before_ref": common.BEFORE_REF,
                "peer": peer_info,
            },
            "summary": summary,
            "raw": raw,
        },
        args.out,
    )


def _record(raw: dict[str, list[dict[str, Any]]], key: str, script: str, impl: str, flags: list[str]) -> None:
    result = common.run_worker(script, impl, flags)
    if "error" in result:
        print(f"[{key}] failed: {result['error']}")
    raw.setdefault(key, []).append(result)


def summarise(raw: dict[str, list[dict[str, Any]]], Ls: list[int]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for method in ("snis", "sir", "peer_model"):
        for L in Ls:
            entry: dict[str, Any] = {}
            for impl in ("ours", "before", "peer"):
                runs = raw.get(f"{method}/L={L}/{impl}", [])
                if not runs:
                    continue
                entry[f"{impl}_images_per_s"] = common.median_of(runs, "images_per_s")
                entry[f"{impl}_max_rss_mib"] = common.median_of(runs, "max_rss_mib")
                entry["num_images"] = runs[0].get("num_images")
            for other in ("before", "peer"):
                if f"{other}_images_per_s" in entry:
                    entry[f"ours_over_{other}"] = common.ratio(
                        entry.get("ours_images_per_s"), entry[f"{other}_images_per_s"]
                    )
            if entry.get("ours_images_per_s"):
                entry["ours_samples_per_s"] = entry["ours_images_per_s"] * L
            summary[f"{method}/L={L}"] = entry
    return summary


def report(summary: dict[str, Any], args: argparse.Namespace, peer: str | None) -> None:
    rows = []
    for key, entry in summary.items():
        rows.append(
            [
                key,
                entry.get("num_images"),
                entry.get("ours_images_per_s"),
                entry.get("ours_samples_per_s"),
                entry.get("ours_max_rss_mib"),
                entry.get("before_images_per_s"),
                entry.get("before_max_rss_mib"),
                entry.get("peer_images_per_s"),
                entry.get("peer_max_rss_mib"),
                _x(entry.get("ours_over_before")),
                _x(entry.get("ours_over_peer")),
            ]
        )
    common.print_table(
        f"Imputation ({args.device}, {args.threads} thread(s), median of {args.reps}; "
        f"peer: hyperimpute {peer or 'not run'}); images/s, L·images/s, peak RSS MiB",
        [
            "method/L",
            "images",
            "ours img/s",
            "ours L·img/s",
            "ours RSS",
            "before img/s",
            "before RSS",
            "peer img/s",
            "peer RSS",
            "ours/before",
            "ours/peer",
        ],
        rows,
    )


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


if __name__ == "__main__":
    main()
