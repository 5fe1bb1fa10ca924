"""Worker: one imputation measurement in a fresh process (run by bench_impute.py).

SNIS single imputation (`impute_single`) or SIR multiple imputation (`impute_multiple`, M
copies) with L importance samples on the first `num_images` test images, with a freshly
initialised model of the given shape (throughput does not depend on the weights). Prints
images/s and the process's peak RSS (ru_maxrss): one process per L, so memory is per L.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import emit, load_npz, max_rss_mib, prepare_library, timed, worker_arguments


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", choices=["snis", "sir"], default="snis")
    parser.add_argument("--L", type=int, default=1000)
    parser.add_argument("--M", type=int, default=20)
    parser.add_argument("--num-images", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--observation", default="bernoulli")
    parser.add_argument("--activation", default="tanh")
    args = worker_arguments(parser)
    from missiwae.config import ModelConfig
    from missiwae.imputation import impute_multiple, impute_single
    from missiwae.model import MissIWAE, make_generator

    prepare_library(args.impl)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    x, mask = load_npz(args.data)
    x, mask = x[: args.num_images].to(device), mask[: args.num_images].to(device)
    x = x.masked_fill(~mask, float("nan"))
    torch.manual_seed(0)
    config = ModelConfig(observation=args.observation, activation=args.activation)
    model = MissIWAE.from_config(config).to(device).eval()
    rss_before = max_rss_mib()
    generator = make_generator(0, device)

    def run() -> None:
        if args.method == "snis":
            impute_single(model, x, mask, args.L, batch_size=args.batch_size, generator=generator)
        else:
            impute_multiple(model, x, mask, args.M, args.L, batch_size=args.batch_size, generator=generator)

    seconds = timed(run, sync)
    emit(
        {
            "impl": args.impl,
            "method": args.method,
            "L": args.L,
            "num_images": args.num_images,
            "threads": torch.get_num_threads(),
            "images_per_s": args.num_images / seconds,
            "seconds": seconds,
            "max_rss_mib": max_rss_mib(),
            "rss_before_mib": rss_before,
            "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        }
    )


if __name__ == "__main__":
    main()
