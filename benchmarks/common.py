"""Shared plumbing of the benchmark scripts: data, implementations, subprocess workers, tables.

Every figure is measured in a fresh subprocess ("worker") so that the implementations compared
side by side cannot share caches, thread pools or allocator state, and so that peak RSS is the
worker's own. Workers print one JSON object on their last stdout line.

Implementations ("impl"):
- ``ours``      the library in this checkout, as its entry points run it (glibc told to keep
                freed memory: missiwae.allocator);
- ``ours-default-malloc``  the same code with MISSIWAE_RETAIN_FREED_MEMORY=0: how much of the
                gain is code and how much is the allocator setting;
- ``before``    the library as of BEFORE_REF (the commit before the performance work), exported
                with ``git archive`` into a temporary folder and put first on the worker's path;
- ``notebook``  benchmarks/notebook_reference.py: the original notebooks' style (torch
                distributions objects per step, no fusion), used only for comparison;
- ``peer``      hyperimpute's MIWAE plugin, run by benchmarks/peer_miwae.py inside its own
                virtual environment (PEER_PYTHON).

This module imports only numpy and torch so that the peer's environment can import it too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
# The last commit before the performance work: the "before" column of every table. Another
# commit can stand in (MISSIWAE_BENCH_BEFORE_REF=<rev>), e.g. to show a refactor left speed alone.
BEFORE_REF = os.environ.get("MISSIWAE_BENCH_BEFORE_REF", "5b790999849688082f15973b0092b5e5974b6e6c")
PEER_PYTHON = Path(os.environ.get("MISSIWAE_PEER_PYTHON", str(REPO_ROOT / ".peer-venv" / "bin" / "python")))
PEER_PACKAGE = "hyperimpute"

DEFAULT_MALLOC = "ours-default-malloc"

_before_dir: Path | None = None


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every worker")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (median kept)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--no-before", action="store_true", help="skip the BEFORE_REF column")
    parser.add_argument("--no-peer", action="store_true", help="skip the hyperimpute column")
    parser.add_argument("--out", type=Path, default=None, help="JSON output path")


def cuda_or_exit(device: str) -> None:
    """For --device cuda on a machine without a GPU: say so and exit cleanly (status 0)."""
    if device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        print("no GPU available: --device cuda skipped (torch.cuda.is_available() is False)")
        sys.exit(0)


def before_dir() -> Path | None:
    """A folder holding the `missiwae` package as of BEFORE_REF (None when git cannot give it)."""
    global _before_dir
    if _before_dir is not None:
        return _before_dir
    target = Path(tempfile.mkdtemp(prefix="missiwae-before-"))
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "archive", BEFORE_REF, "missiwae"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        print(f"[before] cannot export {BEFORE_REF[:10]} with git ({error}); column skipped")
        return None
    _before_dir = target
    return target


def peer_available() -> tuple[bool, str]:
    """(usable, version or the reason not) for the peer's virtual environment."""
    if not PEER_PYTHON.exists():
        return False, f"{PEER_PYTHON} missing: run `make bench-setup` (or set MISSIWAE_PEER_PYTHON)"
    probe = subprocess.run(
        [
            str(PEER_PYTHON),
            "-c",
            "import importlib.metadata as m, torch; "
            "import hyperimpute.plugins.imputers.plugin_miwae; "
            "print(m.version('hyperimpute'), torch.__version__)",
        ],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return False, f"hyperimpute does not import in {PEER_PYTHON}: {probe.stderr.strip()[-300:]}"
    return True, probe.stdout.strip()


def run_worker(script: str, impl: str, args: Sequence[str], timeout: float = 600) -> dict[str, Any]:
    """Run benchmarks/<script> for `impl` in a fresh process; its last stdout line is JSON."""
    env = dict(os.environ)
    python = sys.executable
    path = [str(REPO_ROOT)]
    if impl == "before":
        folder = before_dir()
        if folder is None:
            return {"error": "no before copy"}
        path.insert(0, str(folder))
    elif impl == "peer":
        python = str(PEER_PYTHON)
    elif impl == DEFAULT_MALLOC:
        env["MISSIWAE_RETAIN_FREED_MEMORY"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(path)
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [python, str(REPO_ROOT / "benchmarks" / script), "--impl", impl, *args]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if completed.returncode != 0:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail)}
    return dict(json.loads(completed.stdout.strip().splitlines()[-1]))


def interleaved(
    impls: Sequence[str], reps: int, measure: Callable[[str], dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """measure(impl) for impl in impls, `reps` rounds, impls interleaved within each round."""
    results: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
    for _ in range(reps):
        for impl in impls:
            results[impl].append(measure(impl))
    return results


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [float(run[key]) for run in runs if key in run and run[key] is not None]
    return statistics.median(values) if values else None


def first_error(runs: list[dict[str, Any]]) -> str | None:
    return next((str(run["error"]) for run in runs if "error" in run), None)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in header]] + [[fmt(c) if not isinstance(c, str) else c for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * width for width in widths))


def write_json(name: str, payload: dict[str, Any], out: Path | None) -> Path:
    """Write the results JSON (benchmarks/results/<name>.json unless --out says otherwise)."""
    path = out or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(), **payload}
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(payload, indent=2, sort_keys=True))
    temporary.replace(path)
    print(f"\nwrote {path}")
    return path


def machine_info() -> dict[str, Any]:
    import platform

    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }


# ------------------------------------------------------------------------------ worker side


def worker_arguments(parser: argparse.ArgumentParser) -> argparse.Namespace:
    parser.add_argument("--impl", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", type=Path, required=True, help="npz with x (N, D) and mask (N, D)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    return args


def prepare_library(impl: str) -> None:
    """What the library's own entry points do before tensor work (a no-op for `before`, whose
    library predates it, and for ours-default-malloc, whose environment opts out)."""
    try:
        from missiwae.allocator import retain_freed_memory
    except ImportError:
        return
    retain_freed_memory()


def library_optimizer(model: Any, learning_rate: float) -> Any:
    """The Adam the library under test builds (`before` predates make_optimizer)."""
    try:
        from missiwae.train_step import make_optimizer
    except ImportError:
        try:  # where it lived before missiwae.train_step
            from missiwae.training import make_optimizer
        except ImportError:
            import torch

            return torch.optim.Adam(model.parameters(), lr=learning_rate)
    return make_optimizer(model, learning_rate)


def load_npz(path: Path) -> tuple[Any, Any]:
    """(x float32 (N, D) true values, mask bool (N, D) True = observed) as torch tensors."""
    import numpy as np
    import torch

    data = np.load(path)
    return torch.from_numpy(data["x"].astype(np.float32)), torch.from_numpy(data["mask"].astype(bool))


def emit(payload: dict[str, Any]) -> None:
    print(json.dumps(payload))


def timed(fn: Callable[[], Any], sync: Callable[[], None] = lambda: None) -> float:
    """Wall seconds of fn(), synchronised before and after (for CUDA)."""
    sync()
    started = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - started


def max_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def mnist_npz(split: str, num_rows: int, folder: Path, seed: int = 0) -> Path:
    """Binarized MNIST rows with a 50% MCAR mask (missiwae.data), saved for the workers."""
    import numpy as np

    from missiwae.data import load_incomplete_mnist

    path = folder / f"{split}-{num_rows}.npz"
    if not path.exists():
        data = load_incomplete_mnist(split, missing_rate=0.5, seed=seed, num_rows=num_rows)  # type: ignore[arg-type]
        np.savez(path, x=data.x.numpy(), mask=data.mask.numpy())
    return path
