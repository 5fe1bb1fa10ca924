"""Ray overhead and scaling, on an embedded local Ray (pipelines.runtime.ensure_ray).

1. Training: one epoch through Ray Train (TorchTrainer, 1 worker, 1 CPU, 1 torch thread,
   rows streamed by Ray Data) against the plain library loop (`missiwae.training.train_epoch`,
   1 thread) on the same ingested rows, K and batch size. Ray Train's figure is the worker's own
   per-epoch images/s of epoch 2 (the loop, not the cluster start); the ratio is ray / plain.
2. Imputation: the Ray Data actor pool of pipelines/impute.py (its lazy dataset, materialised)
   with 1 and then 2 actors (1 CPU, 1 thread each): rows/s of the job, and the scaling efficiency
   rows/s(2 actors) / rows/s(1 actor) (2.0 is perfect on two free cores).

    python benchmarks/bench_ray.py [--reps 2] [--num-train 3000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    common.add_common_arguments(parser)
    parser.set_defaults(reps=2)
    parser.add_argument("--num-train", type=int, default=3000)
    parser.add_argument("--K", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--L", type=int, default=200)
    args = parser.parse_args()
    common.cuda_or_exit(args.device)
    if args.device != "cpu":
        print("bench_ray measures CPU scaling only; use bench_train / bench_impute for the GPU")
        return
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by Ray's workers and actors
    import torch

    torch.set_num_threads(args.threads)
    from pipelines.config import PipelineConfig
    from pipelines.impute_job import imputation_dataset
    from pipelines.ingest import run_ingest
    from pipelines.runtime import ensure_ray
    from pipelines.shards import load_split_numpy
    from pipelines.train import run_training

    ensure_ray()
    results: dict[str, list[float]] = {"plain": [], "ray_train": [], "actors_1": [], "actors_2": []}
    with tempfile.TemporaryDirectory() as folder:
        config = PipelineConfig.from_dict(
            {
                "run_dir": str(Path(folder) / "run"),
                "data": {"num_train": args.num_train, "num_valid": 200, "num_test": 100},
                "ingest": {"num_shards": 2},
                "train": {"K": args.K, "batch_size": args.batch_size, "epochs": 2, "seed": 0},
                "scaling": {"num_workers": 1, "cpus_per_worker": float(args.threads), "max_failures": 0},
                "evaluate": {"num_samples": 10, "batch_size": 100},
                "impute": {"num_samples": args.L, "num_imputations": 3, "batch_size": 250},
                "impute_stage": {"num_actors": 1, "cpus_per_actor": float(args.threads)},
                "missforest": {"enabled": False},
            }
        )
        ingest = run_ingest(config)
        x_np, mask_np, _, _ = load_split_numpy(ingest, "train")
        x, mask = torch.from_numpy(x_np).float(), torch.from_numpy(mask_np)
        for rep in range(args.reps):
            results["plain"].append(_plain_epoch(config, x, mask))
            trained = run_training(config, ingest, resume=False)
            results["ray_train"].append(float(trained.history[-1]["images_per_second"]))
            checkpoint = trained.checkpoint_dir
            for actors in (1, 2):
                stage = {"num_actors": actors, "cpus_per_actor": float(args.threads)}
                run = PipelineConfig.from_dict({**config.to_dict(), "impute_stage": stage})
                # The actor-pool job of pipelines/impute.py alone (what its "impute_job" time
                # measures), without the Parquet writes of the stage around it.
                files = sorted(Path(p) for p in ingest.shards["train"])
                started = time.perf_counter()
                rows = imputation_dataset(run, files, checkpoint).materialize().count()
                results[f"actors_{actors}"].append(rows / (time.perf_counter() - started))
            print(f"repetition {rep + 1}/{args.reps} done")
    summary = {key: statistics.median(values) for key, values in results.items()}
    summary["ray_train_over_plain"] = summary["ray_train"] / summary["plain"]
    summary["actor_scaling_efficiency"] = summary["actors_2"] / summary["actors_1"]
    common.print_table(
        f"Ray ({args.threads} thread(s) per worker/actor, median of {args.reps})",
        ["figure", "value"],
        [
            [f"plain loop, images/s (K={args.K}, batch {args.batch_size})", summary["plain"]],
            ["Ray Train 1 worker, images/s (epoch 2)", summary["ray_train"]],
            ["Ray Train / plain", f"{summary['ray_train_over_plain']:.3f}"],
            [f"Ray Data imputation 1 actor, rows/s (L={args.L}, M=3)", summary["actors_1"]],
            ["Ray Data imputation 2 actors, rows/s", summary["actors_2"]],
            ["scaling efficiency (2 actors / 1 actor)", f"{summary['actor_scaling_efficiency']:.2f}"],
        ],
    )
    common.write_json(
        "ray",
        {
            "settings": {
                "threads": args.threads,
                "reps": args.reps,
                "num_train": args.num_train,
                "K": args.K,
                "batch_size": args.batch_size,
                "L": args.L,
            },
            "summary": summary,
            "raw": results,
        },
        args.out,
    )


def _plain_epoch(config: Any, x: Any, mask: Any) -> float:
    """images/s of one epoch of the library loop, after one warm-up epoch (as Ray's epoch 2)."""
    import torch

    from missiwae.allocator import retain_freed_memory
    from missiwae.model import MissIWAE, make_generator
    from missiwae.train_step import TrainStep, make_optimizer
    from missiwae.training import train_epoch

    retain_freed_memory()  # as the Ray Train worker does
    torch.manual_seed(config.train.seed)
    model = MissIWAE.from_config(config.model)
    optimizer = make_optimizer(model, config.train.learning_rate)
    shuffle, sample = make_generator(0), make_generator(1)
    x_nan = x.masked_fill(~mask, float("nan"))
    step = TrainStep(model, optimizer, x_nan, mask, config.train.K, sample)
    train_epoch(step, config.train.batch_size, shuffle)
    seconds = common.timed(lambda: train_epoch(step, config.train.batch_size, shuffle))
    return x.shape[0] / seconds


if __name__ == "__main__":
    main()
