"""Worker: training-step throughput of one implementation (run by bench_train.py, one process each).

--impl ours / ours-default-malloc / before: the library's one-process loop
  (`missiwae.training.train_epoch`) on steps x batch_size rows, after `warmup` steps; which
  `missiwae` is imported is decided by the worker's PYTHONPATH (common.run_worker).
--impl notebook: benchmarks/notebook_reference.py, same networks, batches and K.
With --peak, also times the MLP's own GEMMs alone (forward and both backward products of every
Linear layer at the step's exact shapes) and a 1024^3 torch.mm: the machine's matmul peak.
"""

from __future__ import annotations

import argparse
import itertools
from typing import Any

import torch

from benchmarks.common import emit, library_optimizer, load_npz, prepare_library, timed, worker_arguments


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", choices=["mlp", "conv"], default="mlp")
    parser.add_argument("--K", default="1,50", help="comma-separated sample counts")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rows", type=int, default=32000, help="K x B x steps per measurement")
    parser.add_argument("--max-steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--observation", default="bernoulli")
    parser.add_argument("--activation", default="tanh")
    parser.add_argument("--peak", action="store_true")
    args = worker_arguments(parser)
    x_all, mask_all = load_npz(args.data)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    runs = []
    for K in (int(k) for k in args.K.split(",")):
        steps = train_steps(K, args.batch_size, args.rows, args.max_steps)
        rows = args.batch_size * (steps + args.warmup)
        if x_all.shape[0] < rows:
            raise SystemExit(f"need {rows} rows, the data file has {x_all.shape[0]}")
        x, mask = x_all[:rows].to(device), mask_all[:rows].to(device)
        warm, timed_rows = slice(0, args.batch_size * args.warmup), slice(args.batch_size * args.warmup, rows)
        if args.impl == "notebook":
            seconds = _notebook(args, K, x, mask, warm, timed_rows, sync)
        else:
            seconds = _library(args, K, x, mask, warm, timed_rows, sync, device)
        result: dict[str, Any] = {
            "impl": args.impl,
            "arch": args.arch,
            "K": K,
            "batch_size": args.batch_size,
            "steps": steps,
            "threads": torch.get_num_threads(),
            "seconds_per_step": seconds / steps,
            "images_per_s": steps * args.batch_size / seconds,
        }
        if args.peak:
            result.update(_matmul_peak(K, args.batch_size, device, sync))
        runs.append(result)
    emit({"runs": runs})


def train_steps(K: int, batch_size: int, rows: int, max_steps: int) -> int:
    """Timed steps for one measurement: about `rows` decoder rows, 2 .. max_steps steps."""
    return max(2, min(max_steps, round(rows / (K * batch_size))))


def _library(args, K, x, mask, warm, timed_rows, sync, device) -> float:
    from missiwae.config import ModelConfig
    from missiwae.model import MissIWAE, make_generator
    from missiwae.train_step import TrainStep
    from missiwae.training import train_epoch

    prepare_library(args.impl)
    torch.manual_seed(0)
    config = ModelConfig(architecture=args.arch, observation=args.observation, activation=args.activation)
    model = MissIWAE.from_config(config).to(device)
    optimizer = library_optimizer(model, 1e-3)
    x_nan = x.masked_fill(~mask, float("nan"))  # what a user holds: the holes are NaN
    shuffle, sample = make_generator(0), make_generator(1, device)

    def epoch(rows: slice) -> None:
        train_epoch(TrainStep(model, optimizer, x_nan[rows], mask[rows], K, sample), args.batch_size, shuffle)

    epoch(warm)
    return timed(lambda: epoch(timed_rows), sync)


def _notebook(args, K, x, mask, warm, timed_rows, sync) -> float:
    from benchmarks.notebook_reference import NotebookMIWAE

    torch.manual_seed(0)
    model = NotebookMIWAE(args.arch)
    if args.device != "cpu":
        raise SystemExit("the notebook reference runs on the CPU only")

    def epoch(rows: slice) -> None:
        xs, ms = x[rows], mask[rows]
        order = torch.randperm(xs.shape[0])
        for index in order.split(args.batch_size):
            model.step(xs[index], ms[index], K)

    epoch(warm)
    return timed(lambda: epoch(timed_rows), sync)


def mlp_gemm_shapes(K: int, batch_size: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every GEMM of one MLP training step: forward, grad-input, grad-weight.

    Encoder 784-200-200-100 on B rows, decoder 50-200-200-784 on K·B rows. The first encoder
    layer needs no input gradient, so it has two GEMMs; every other layer three.
    """
    shapes: list[tuple[int, int, int]] = []
    for rows, widths in ((batch_size, [784, 200, 200, 100]), (K * batch_size, [50, 200, 200, 784])):
        for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
            shapes.append((rows, fan_in, fan_out))  # y = x W^T
            shapes.append((fan_out, rows, fan_in))  # dW = dy^T x
            if not (rows == batch_size and layer == 0):
                shapes.append((rows, fan_out, fan_in))  # dx = dy W
    return shapes


def mlp_step_flops(K: int, batch_size: int) -> float:
    """Matmul FLOPs of one MLP step, counted as 3 x forward (the convention the issue asks)."""
    forward = 0.0
    for rows, widths in ((batch_size, [784, 200, 200, 100]), (K * batch_size, [50, 200, 200, 784])):
        forward += sum(2.0 * rows * a * b for a, b in itertools.pairwise(widths))
    return 3.0 * forward


def _matmul_peak(K: int, batch_size: int, device: torch.device, sync) -> dict[str, Any]:
    shapes = mlp_gemm_shapes(K, batch_size)
    operands = [
        (torch.randn(m, k, device=device), torch.randn(k, n, device=device), torch.empty(m, n, device=device))
        for m, k, n in shapes
    ]

    def gemms() -> None:
        for a, b, out in operands:
            torch.mm(a, b, out=out)

    gemms()
    repeats = max(3, int(0.3 / max(timed(gemms, sync), 1e-6)))
    best = min(timed(gemms, sync) for _ in range(repeats))
    flops = sum(2.0 * m * k * n for m, k, n in shapes)
    big_a, big_b = torch.randn(1024, 1024, device=device), torch.randn(1024, 1024, device=device)
    big_out = torch.empty(1024, 1024, device=device)
    torch.mm(big_a, big_b, out=big_out)
    big = min(timed(lambda: torch.mm(big_a, big_b, out=big_out), sync) for _ in range(5))
    return {
        "step_flops": mlp_step_flops(K, batch_size),
        "gemm_flops": flops,
        "matched_gemm_flops_per_s": flops / best,
        "square_1024_flops_per_s": 2.0 * 1024**3 / big,
    }


if __name__ == "__main__":
    main()
