"""The Figure 1 (left) differences the verdicts read, with each difference's standard error
paired over the test images, beside the one `paper.verdicts` uses (√(se_A² + se_B²), which treats
the two estimates as independent).

Two models scored on the same test images share the images' spread in log p(x), which dominates
the standard error of each mean; the paired error (sd of the per-image differences / √N) keeps
only what differs. This recomputes the report's per-image estimates from the sweep's checkpoints
on disk (`paper.report._log_likelihood_task`: the same images, samples, masks and seed, so the
means equal the report's) and prints both errors for each pair; the report is left as it is.

    python -m paper.paired_differences --config cpu      # about 4 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import numpy as np

from paper.report import mean_and_se
from paper.verdicts import COMPLETE_VAE, Difference

PAIRS = (("K=1 oracle", "K=1 zero"), ("K=50 oracle", "K=50 zero"), (COMPLETE_VAE, "K=50 zero"))


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Per-image estimates a, b (N,) of two models -> (mean of a − b, paired se, independent se):
    the paired one is the report's standard error of the per-image differences, the independent
    one what `paper.verdicts.Difference` makes of the two means' standard errors."""
    paired, mean_a, mean_b = mean_and_se(a - b), mean_and_se(a), mean_and_se(b)
    independent = Difference.of(mean_a["mean"], mean_b["mean"], mean_a["se"], mean_b["se"])
    return paired["mean"], paired["se"], independent.se


def main(argv: list[str] | None = None) -> int:
    import torch

    from paper.report import _log_likelihood_task, _trial_checkpoints
    from pipelines.config import load_pipeline_config
    from pipelines.ingest import run_ingest
    from pipelines.shards import load_split_numpy
    from tune.space import load_space
    from tune.sweep import sweep_dir_of
    from tune.trial import data_run_dir

    parser = argparse.ArgumentParser(prog="python -m paper.paired_differences", description=__doc__)
    parser.add_argument("--config", default="cpu", help="the report's preset")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = load_pipeline_config(args.config)
    sweep_dir = sweep_dir_of(config, load_space(config.report.space), None)
    checkpoints = _trial_checkpoints(sweep_dir)
    missing = sorted({label for pair in PAIRS for label in pair} - set(checkpoints))
    if missing:
        print(f"paper.paired_differences: no finished trial in {sweep_dir} for {missing}", file=sys.stderr)
        return 2
    ingest = run_ingest(dataclasses.replace(config, run_dir=str(data_run_dir(sweep_dir, config))))
    x = load_split_numpy(ingest, "test")[0]
    evaluate = config.evaluate
    per_image = {
        label: _log_likelihood_task(
            str(checkpoints[label]), x, evaluate.num_samples, config.data.missing_rate, evaluate.seed
        )
        for label in dict.fromkeys(label for pair in PAIRS for label in pair)
    }
    print(f"{len(x)} test images, {evaluate.num_samples} importance samples")
    for estimator in ("mixture", "naive"):
        for a, b in PAIRS:
            diff, paired, independent = paired_difference(per_image[a][estimator], per_image[b][estimator])
            print(
                f"{estimator:<8} {a} − {b}: {diff:+.2f} nats, paired se {paired:.2f}, "
                f"independent se {independent:.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
