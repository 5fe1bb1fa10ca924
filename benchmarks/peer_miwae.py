"""Worker: hyperimpute's MIWAE plugin (the peer), run inside the peer's own virtual environment.

The plugin's networks are built by its own `_fit` (n_epochs=1 builds them and returns before
any epoch), then its own code path is timed:
- train: `plugin._miwae_loss(iota_x, mask)` + backward + Adam step (its `_fit` loop body), on
  the same binarized MNIST batches, batch size and K as ours;
- impute: `plugin._miwae_impute(iota_x, mask, L)` (its `_transform`), which materialises all
  L samples at once, so rows go `--rows-per-call` at a time; wrapped in torch.no_grad (its own
  `_transform` builds an autograd graph; no_grad only makes the peer faster).
The plugin's model is fixed: ReLU MLP 784-h-h-d, Student-t observation model (3 x 784 decoder
outputs). Ours is benchmarked against it with the same model (observation=student_t,
activation=relu, hidden (h, h), latent d).
"""

from __future__ import annotations

import argparse
import contextlib
import io

import numpy as np
import torch

from benchmarks.common import emit, load_npz, max_rss_mib, timed, worker_arguments


def build_plugin(x: torch.Tensor, mask: torch.Tensor, hidden: int, latent: int, K: int, batch_size: int):
    from hyperimpute.plugins.imputers.plugin_miwae import MIWAEPlugin

    plugin = MIWAEPlugin(n_epochs=1, batch_size=batch_size, latent_size=latent, n_hidden=hidden, K=K)
    x_nan = np.where(mask.numpy(), x.numpy(), np.nan).astype(np.float32)
    with contextlib.redirect_stdout(io.StringIO()):
        plugin._fit(x_nan)  # n_epochs=1: builds encoder, decoder and p_z; no epoch runs
    return plugin


def _train(args: argparse.Namespace, K: int, x: torch.Tensor, mask: torch.Tensor) -> dict[str, object]:
    import importlib.metadata

    steps = max(2, min(args.max_steps, round(args.rows / (K * args.batch_size))))
    rows = args.batch_size * (steps + args.warmup)
    x, mask = x[:rows], mask[:rows]
    torch.manual_seed(0)
    plugin = build_plugin(x, mask, args.hidden, args.latent, K, args.batch_size)
    params = list(plugin.encoder.parameters()) + list(plugin.latent_sizeecoder.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3)
    iota_x, mask_float = x * mask, mask.float()  # the plugin's xhat_0 and b_mask

    def run(first: int, count: int) -> None:
        for step in range(first, first + count):
            batch = slice(step * args.batch_size, (step + 1) * args.batch_size)
            optimizer.zero_grad()
            loss = plugin._miwae_loss(iota_x=iota_x[batch], mask=mask_float[batch])
            loss.backward()
            optimizer.step()

    run(0, args.warmup)
    seconds = timed(lambda: run(args.warmup, steps))
    return {
        "impl": "peer",
        "version": importlib.metadata.version("hyperimpute"),
        "arch": "mlp",
        "K": K,
        "batch_size": args.batch_size,
        "steps": steps,
        "threads": torch.get_num_threads(),
        "seconds_per_step": seconds / steps,
        "images_per_s": steps * args.batch_size / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["train", "impute"], default="train")
    parser.add_argument("--K", default="1,50")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rows", type=int, default=32000)
    parser.add_argument("--max-steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=200)
    parser.add_argument("--latent", type=int, default=50)
    parser.add_argument("--L", type=int, default=1000)
    parser.add_argument("--num-images", type=int, default=10)
    parser.add_argument("--rows-per-call", type=int, default=1)
    args = worker_arguments(parser)
    import importlib.metadata

    import hyperimpute  # noqa: F401  (sets thread environment variables; torch is already set)

    torch.set_num_threads(args.threads)
    x, mask = load_npz(args.data)
    torch.manual_seed(0)
    if args.mode == "train":
        emit({"runs": [_train(args, int(K), x, mask) for K in args.K.split(",")]})
        return
    x, mask = x[: args.num_images], mask[: args.num_images]
    plugin = build_plugin(x, mask, args.hidden, args.latent, 1, args.num_images)
    iota_x = x * mask

    def impute() -> None:
        with torch.no_grad():
            for start in range(0, args.num_images, args.rows_per_call):
                rows = slice(start, start + args.rows_per_call)
                plugin._miwae_impute(iota_x=iota_x[rows], mask=mask[rows], L=args.L)

    seconds = timed(impute)
    emit(
        {
            "impl": "peer",
            "version": importlib.metadata.version("hyperimpute"),
            "L": args.L,
            "num_images": args.num_images,
            "threads": torch.get_num_threads(),
            "images_per_s": args.num_images / seconds,
            "max_rss_mib": max_rss_mib(),
        }
    )


if __name__ == "__main__":
    main()
