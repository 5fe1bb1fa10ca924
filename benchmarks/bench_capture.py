"""The training step replayed from a CUDA graph against the eager step, side by side in one run:
images per second of the paper's convolutional DLVM at batch 64 (K = 1 and K = 50), and whether
the same seed gives the same numbers (issue 16: target ≥ 3× images/s at batch 64).

    python -m benchmarks.bench_capture [--steps 1000] [--K 1,50] [--reps 3] [--out PATH]

Each measurement is one epoch of `missiwae.training.train_epoch` over `--steps` full batches of
64 rows of synthetic binary images with half their pixels missing, after a first epoch that
warms cuDNN's autotuner up (and, for the graph, captures it); the clock stops after a device
synchronisation. The modes alternate within each repetition and the median is kept. The
equality check trains both modes for two short epochs from the same seed with cuDNN's
deterministic algorithms (its autotuner may pick different kernels in two runs) and prints the
largest relative difference of the per-epoch bounds and the largest parameter difference.
Needs CUDA: on a machine without one it says so and exits 0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from benchmarks.common import fmt, print_table, ratio, write_json

BATCH_SIZE = 64
PAPER_CONV = {
    "architecture": "conv",
    "conv_channels": (16, 32, 32),
    "latent_dim": 50,
    "observation": "bernoulli",
}


def _data(rows: int, device: str, seed: int) -> tuple[Any, Any]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    x = (torch.rand(rows, 784, generator=generator) < 0.15).float()
    mask = torch.rand(rows, 784, generator=generator) < 0.5
    return x.masked_fill(~mask, float("nan")).to(device), mask.to(device)


def _trainer(K: int, cuda_graph: bool, rows: int, seed: int) -> tuple[Any, Any]:
    """A fresh paper model and a function that trains it for one epoch over `rows` rows."""
    import torch

    from missiwae.config import ModelConfig
    from missiwae.model import MissIWAE, make_generator
    from missiwae.train_step import TrainStep, make_optimizer
    from missiwae.training import train_epoch

    torch.manual_seed(seed)
    model = MissIWAE.from_config(ModelConfig(**PAPER_CONV)).cuda()  # type: ignore[arg-type]
    x, mask = _data(rows, "cuda", seed)
    optimizer = make_optimizer(model, 1e-3, capturable=cuda_graph)
    sample = make_generator(seed + 1, "cuda")
    step = TrainStep(model, optimizer, x, mask, K, sample, cuda_graph=cuda_graph, batch_size=BATCH_SIZE)
    shuffle = make_generator(seed + 2)

    def epoch() -> float:
        return train_epoch(step, BATCH_SIZE, shuffle)

    return model, epoch


def images_per_second(K: int, cuda_graph: bool, steps: int) -> float:
    import torch

    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = True, False
    _, epoch = _trainer(K, cuda_graph, steps * BATCH_SIZE, seed=0)
    epoch()  # warm-up: cuDNN's autotuner, the allocator, the capture
    torch.cuda.synchronize()
    started = time.perf_counter()
    epoch()  # returns a float: the device has finished the epoch's last step
    seconds = time.perf_counter() - started
    return steps * BATCH_SIZE / seconds


def same_numbers(K: int, steps: int) -> dict[str, float]:
    """Two epochs of `steps` batches in each mode from seed 0: the largest relative difference
    of the epoch bounds and the largest absolute difference of any parameter."""
    import torch

    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    runs = []
    for cuda_graph in (False, True):
        model, epoch = _trainer(K, cuda_graph, steps * BATCH_SIZE + 17, seed=0)  # + a short batch
        bounds = [epoch(), epoch()]
        runs.append((bounds, {k: v.detach().clone() for k, v in model.state_dict().items()}))
    (eager_bounds, eager_state), (graph_bounds, graph_state) = runs
    return {
        "eager_bounds": eager_bounds,
        "graph_bounds": graph_bounds,
        "max_relative_bound_difference": max(
            abs(a - b) / abs(a) for a, b in zip(eager_bounds, graph_bounds, strict=True)
        ),
        "max_parameter_difference": max(
            float((eager_state[k] - graph_state[k]).abs().max()) for k in eager_state
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_capture", description=__doc__)
    parser.add_argument("--steps", type=int, default=1000, help="batches of 64 per timed epoch")
    parser.add_argument("--K", default="1,50", help="importance samples, comma-separated")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (median kept)")
    parser.add_argument("--check-steps", type=int, default=50, help="batches per epoch of the equality check")
    parser.add_argument("--out", default=None, help="JSON output path")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("no GPU available: CUDA graphs need one (torch.cuda.is_available() is False)")
        return 0
    rows, raw = [], {}
    for K in (int(k) for k in args.K.split(",")):
        rates: dict[str, list[float]] = {"eager": [], "graph": []}
        for _ in range(args.reps):
            for mode in rates:
                rates[mode].append(images_per_second(K, mode == "graph", args.steps))
        check = same_numbers(K, args.check_steps)
        eager, graph = statistics.median(rates["eager"]), statistics.median(rates["graph"])
        raw[f"K={K}"] = {"images_per_s": rates, **check}
        rows.append(
            [
                K,
                eager,
                graph,
                f"{fmt(ratio(graph, eager), 2)}x",
                f"{check['max_relative_bound_difference']:.1e}",
                f"{check['max_parameter_difference']:.1e}",
            ]
        )
    print_table(
        f"Training step at batch {BATCH_SIZE}, {torch.cuda.get_device_name(0)}: images/s "
        f"(median of {args.reps}), CUDA graph vs eager",
        ["K", "eager", "CUDA graph", "speed-up", "max rel. bound diff", "max param diff"],
        rows,
    )
    from pathlib import Path

    write_json(
        "capture_cuda",
        {"gpu": torch.cuda.get_device_name(0), "batch_size": BATCH_SIZE, "steps": args.steps, "raw": raw},
        Path(args.out) if args.out else None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
