"""Training-step throughput (images/s) and the fraction of the machine's matmul peak.

Three comparisons, each measured side by side in one run (implementations interleaved within
every repetition, medians over repetitions), K in {1, 50}, batch size 64, binarized MNIST with
50% MCAR (missiwae.data), the same thread count everywhere:

1. Bernoulli MLP 784-200-200-50 (tanh): ours, before (BEFORE_REF), notebook-style reference;
   plus the model's matmul FLOPs per step / step time against the GEMM peak torch reaches on
   this machine at the step's own shapes (timed in the same worker, same threads).
2. Bernoulli convolutional pair (16-32-32 maps): ours, before, notebook-style reference.
3. The peer's model (ReLU MLP 784-200-200-50, Student-t observations, as hyperimpute's MIWAE
   plugin hard-codes): ours with observation=student_t, activation=relu vs hyperimpute.

    python benchmarks/bench_train.py [--reps 3] [--threads 1] [--device cpu|cuda]
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
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--K", default="1,50")
    args = parser.parse_args()
    common.cuda_or_exit(args.device)
    peer_ok, peer_info = (False, "--no-peer") if args.no_peer else common.peer_available()
    if not peer_ok:
        print(f"[peer] not run: {peer_info}")
    before = not args.no_before and common.before_dir() is not None
    with tempfile.TemporaryDirectory() as folder:
        # Enough rows for the warm-up and the timed steps of the largest batch (at most 50 000).
        data = common.mnist_npz("train", min(50_000, max(4000, 52 * args.batch_size)), Path(folder))
        base = ["--data", str(data), "--threads", str(args.threads), "--device", args.device]
        base += ["--batch-size", str(args.batch_size), "--K", args.K]
        cpu = args.device == "cpu"
        # ours-default-malloc: the same code without the allocator setting (CPU only: on a GPU
        # the tensors do not live in glibc's heap).
        ours = ["ours", *([common.DEFAULT_MALLOC] if cpu else []), *(["before"] if before else [])]
        suites: dict[str, tuple[list[str], list[str]]] = {
            "mlp": ([*ours, *(["notebook"] if cpu else [])], ["--arch", "mlp"]),
            "conv": (
                [*ours, *(["notebook"] if cpu else [])],
                ["--arch", "conv", "--rows", "3200", "--max-steps", "10"],
            ),
            "peer_model": (
                [*ours, *(["peer"] if peer_ok and cpu else [])],
                ["--arch", "mlp", "--observation", "student_t", "--activation", "relu"],
            ),
        }
        raw: dict[str, dict[str, list[dict[str, Any]]]] = {name: {} for name in suites}
        for rep in range(args.reps):
            for name, (impls, extra) in suites.items():
                for impl in impls:
                    script = "peer_miwae.py" if impl == "peer" else "worker_train.py"
                    flags = [*base, *extra]
                    if impl == "peer":
                        flags = [
                            f
                            for f in flags
                            if f not in ("--observation", "student_t", "--activation", "relu")
                        ]
                        flags = _drop_option(flags, "--arch")
                        flags += ["--mode", "train"]
                    elif name == "mlp" and impl in _PEAK_IMPLS:
                        flags.append("--peak")
                    result = common.run_worker(script, impl, flags)
                    raw[name].setdefault(impl, []).append(result)
                    if "error" in result:
                        print(f"[{name}/{impl} rep {rep}] failed: {result['error']}")
            print(f"repetition {rep + 1}/{args.reps} done")
    summary = summarise(raw, [int(k) for k in args.K.split(",")])
    report(summary, args, peer_info if peer_ok else None)
    common.write_json(
        f"train_{args.device}",
        {
            "settings": {
                "threads": args.threads,
                "reps": args.reps,
                "batch_size": args.batch_size,
                "device": args.device,
                "before_ref": common.BEFORE_REF,
                "peer": peer_info,
            },
            "summary": summary,
            "raw": raw,
        },
        args.out,
    )


def _drop_option(flags: list[str], option: str) -> list[str]:
    if option not in flags:
        return flags
    at = flags.index(option)
    return flags[:at] + flags[at + 2 :]


def summarise(raw: dict[str, dict[str, list[dict[str, Any]]]], Ks: list[int]) -> dict[str, Any]:
    """Median images/s per (suite, impl, K), the ratios, and the MLP's fraction of peak."""
    summary: dict[str, Any] = {}
    for suite, by_impl in raw.items():
        for K in Ks:
            entry: dict[str, Any] = {}
            for impl, reps in by_impl.items():
                runs = [run for rep in reps for run in rep.get("runs", []) if run["K"] == K]
                entry[f"{impl}_images_per_s"] = common.median_of(runs, "images_per_s")
                if suite == "mlp" and impl in _PEAK_IMPLS:
                    fractions = [
                        run["step_flops"] / run["seconds_per_step"] / run["matched_gemm_flops_per_s"]
                        for run in runs
                    ]
                    entry[f"{impl}_fraction_of_matched_gemm_peak"] = (
                        sorted(fractions)[len(fractions) // 2] if fractions else None
                    )
                    entry[f"{impl}_model_gflops_per_s"] = common.median_of(
                        [{"v": r["step_flops"] / r["seconds_per_step"] / 1e9} for r in runs], "v"
                    )
                    entry["matched_gemm_gflops_per_s"] = common.median_of(
                        [{"v": r["matched_gemm_flops_per_s"] / 1e9} for r in runs], "v"
                    )
                    entry["square_1024_gflops_per_s"] = common.median_of(
                        [{"v": r["square_1024_flops_per_s"] / 1e9} for r in runs], "v"
                    )
            ours = entry.get("ours_images_per_s")
            for other in (common.DEFAULT_MALLOC, "before", "notebook", "peer"):
                if f"{other}_images_per_s" in entry:
                    entry[f"ours_over_{other}"] = common.ratio(ours, entry[f"{other}_images_per_s"])
            summary[f"{suite}/K={K}"] = entry
    return summary


def report(summary: dict[str, Any], args: argparse.Namespace, peer: str | None) -> None:
    rows = []
    for key, entry in summary.items():
        rows.append(
            [
                key,
                entry.get("ours_images_per_s"),
                entry.get(f"{common.DEFAULT_MALLOC}_images_per_s"),
                entry.get("before_images_per_s"),
                entry.get("notebook_images_per_s"),
                entry.get("peer_images_per_s"),
                _x(entry.get(f"ours_over_{common.DEFAULT_MALLOC}")),
                _x(entry.get("ours_over_before")),
                _x(entry.get("ours_over_notebook")),
                _x(entry.get("ours_over_peer")),
            ]
        )
    common.print_table(
        f"Training throughput, images/s ({args.device}, {args.threads} thread(s), batch {args.batch_size}, "
        f"median of {args.reps}; peer: hyperimpute {peer or 'not run'})",
        [
            "suite/K",
            "ours",
            "ours, default malloc",
            "before",
            "notebook",
            "peer",
            "ours/default malloc",
            "ours/before",
            "ours/notebook",
            "ours/peer",
        ],
        rows,
    )
    peak_rows = []
    for key, entry in summary.items():
        if key.startswith("mlp/"):
            peak_rows.append(
                [
                    key,
                    entry.get("ours_model_gflops_per_s"),
                    entry.get(f"{common.DEFAULT_MALLOC}_model_gflops_per_s"),
                    entry.get("before_model_gflops_per_s"),
                    entry.get("matched_gemm_gflops_per_s"),
                    entry.get("square_1024_gflops_per_s"),
                    _pct(entry.get("ours_fraction_of_matched_gemm_peak")),
                    _pct(entry.get(f"{common.DEFAULT_MALLOC}_fraction_of_matched_gemm_peak")),
                    _pct(entry.get("before_fraction_of_matched_gemm_peak")),
                ]
            )
    common.print_table(
        "MLP 784-200-200-50: model matmul GFLOP/s (3 x forward) vs torch.mm at the step's shapes",
        [
            "K",
            "ours GF/s",
            "default malloc GF/s",
            "before GF/s",
            "GEMM peak",
            "mm 1024^3",
            "ours % peak",
            "default malloc % peak",
            "before % peak",
        ],
        peak_rows,
    )


_PEAK_IMPLS = ("ours", common.DEFAULT_MALLOC, "before")


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


if __name__ == "__main__":
    main()
