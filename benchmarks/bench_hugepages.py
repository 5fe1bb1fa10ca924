"""numpy's transparent huge pages on and off, side by side (why the Makefile sets
NUMPY_MADVISE_HUGEPAGE=0).

numpy asks the kernel for 2 MiB pages (madvise MADV_HUGEPAGE) for every array of 4 MiB or
more; the variable is read once, when numpy is imported. Each measurement is a fresh Python
process with the variable set to 1 or 0, the two interleaved in every repetition:

- ``first touch``: allocate and fill a 78 MB uint8 array (the size of the decompressed
  binarized MNIST training file);
- ``read train split``: ``load_static_binarized_mnist("train")`` (gunzip, parse the 50 000
  ``.amat`` rows, convert to float32), what every job's ingest does first.

    python -m benchmarks.bench_hugepages [--reps 5]

Prints medians and the on/off ratio; writes benchmarks/results/hugepages.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.common import REPO_ROOT, fmt, print_table, ratio, write_json

_WORKER = """
import json, sys, time
import numpy as np
t = time.perf_counter(); a = np.empty(78_000_000, np.uint8); a.fill(1)
touch = time.perf_counter() - t
from missiwae.data import load_static_binarized_mnist
t = time.perf_counter(); load_static_binarized_mnist("train")
read = time.perf_counter() - t
print(json.dumps({"first touch": touch, "read train split": read}))
"""
MEASURES = ("first touch", "read train split")


def measure(setting: str) -> dict[str, float]:
    """One fresh process with NUMPY_MADVISE_HUGEPAGE=setting: seconds per measure."""
    env = {**os.environ, "NUMPY_MADVISE_HUGEPAGE": setting}
    done = subprocess.run(
        [sys.executable, "-c", _WORKER], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions (median kept)")
    parser.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, float]]] = {"1": [], "0": []}
    for _ in range(args.reps):
        for setting in runs:
            runs[setting].append(measure(setting))
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    medians = {
        setting: {m: statistics.median(r[m] for r in reps) for m in MEASURES}
        for setting, reps in runs.items()
    }
    rows = [
        [m, fmt(medians["1"][m], 3), fmt(medians["0"][m], 3), fmt(ratio(medians["1"][m], medians["0"][m]), 1)]
        for m in MEASURES
    ]
    print_table(
        f"seconds, median of {args.reps} (THP policy: {thp.read_text().strip() if thp.is_file() else 'n/a'})",
        ["measure", "NUMPY_MADVISE_HUGEPAGE=1", "=0", "1 / 0"],
        rows,
    )
    payload = {
        "thp_policy": thp.read_text().strip() if thp.is_file() else None,
        "reps": args.reps,
        "medians": medians,
        "runs": runs,
    }
    return write_json("hugepages", payload, args.out)


if __name__ == "__main__":
    main()
