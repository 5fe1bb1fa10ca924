"""A synthetic mixed table through the table job (ingest -> train -> impute) on local Ray, at
sizes 10x apart: rows per second per stage and per CPU, and the peak memory of the driver and
of the Ray worker processes.

    python -m benchmarks.bench_tables [--rows 500000,5000000] [--rows-per-file 625000]

The table is generated, never stored: two latent factors drive four continuous columns, an
integer count, two 0/1 flags and two text columns of 4 and 3 levels; 30% of the cells are
missing completely at random. Each size is written into a temporary folder as Parquet files of
`--rows-per-file` rows (the last one shorter; row groups of ROW_GROUP_ROWS): a growing table
as a data lake stores it, more files rather than bigger ones. The ingest cuts every file into
pieces of at most pipelines.table_files.PIECE_ROWS rows, so a process's working set is bounded
by a piece whatever the file's size; files smaller than a piece at one size and not at the
other would compare piece sizes, not table sizes. The job runs in a fresh process (the driver)
with the `table` preset made small and fast: the ingest's Ray Data tasks at both sizes, an MLP of
width 32, latent 4, K = 1, one epoch of batches of 1024 rows on each of 2 Ray Train workers
streaming their shards, L = 10, M = 1, 2 imputation actors, no CSV. While it runs, a thread in
the driver samples every Ray worker process twice a second; a worker's memory is its private
resident memory (RSS less shared pages, so the object store's mapped blocks are not counted
against every process that reads them).

What the issue asks of the streaming path: the driver's peak must not grow with the table
(within 10% between the sizes), nor a worker's. The script prints the ratios and whether they
are within 10%, and a projection of each stage's time for 10^9 rows from the per-CPU rates
(assumptions printed beside it). Writes benchmarks/results/tables.json and tables.md.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Self

import numpy as np

from benchmarks.common import REPO_ROOT, RESULTS_DIR, fmt, print_table, ratio, write_json

STAGES = ("ingest", "train", "impute")
MISSING_RATE = 0.3
ROW_GROUP_ROWS = 65_536  # bounded row groups, as Spark and Arrow's dataset writers make them
FLAT = 1.10  # the bound on peak memory between the sizes
PROJECTED_ROWS = 10**9
PROJECTED_NODES, PROJECTED_CPUS_PER_NODE = 64, 16
_MIB = 2**20


# ------------------------------------------------------------------------------ the table


def make_table(num_rows: int, folder: Path, num_files: int, seed: int = 0) -> list[Path]:
    """Write `num_rows` rows of the synthetic mixed table as `num_files` Parquet files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    loadings = rng.normal(size=(2, 4))
    regions, sizes = np.array(["north", "south", "east", "west"]), np.array(["S", "M", "L"])
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    bounds = np.linspace(0, num_rows, num_files + 1).astype(int)
    for index, (start, stop) in enumerate(itertools.pairwise(bounds)):
        n = int(stop - start)
        z = rng.standard_normal((n, 2))
        continuous = z @ loadings + 0.3 * rng.standard_normal((n, 4))
        columns: dict[str, Any] = {f"x{j}": continuous[:, j] * 10.0**j + 5.0 * j for j in range(4)}
        columns["count"] = rng.poisson(np.exp(0.5 * z[:, 0] + 1.0)).astype(np.int64)
        for j in range(2):
            columns[f"flag{j}"] = (rng.random(n) < 1 / (1 + np.exp(-2 * z[:, j]))).astype(np.float64)
        gumbel = -np.log(-np.log(rng.random((n, 4))))
        columns["region"] = regions[np.argmax(z @ rng.normal(size=(2, 4)) * 2 + gumbel, axis=1)]
        columns["size"] = sizes[np.digitize(z[:, 1], [-0.5, 0.5])]
        arrays = {}
        for name, values in columns.items():
            holes = rng.random(n) < MISSING_RATE
            arrays[name] = pa.array(values, mask=holes)
        path = folder / f"part-{index:03d}.parquet"
        pq.write_table(pa.table(arrays), path, row_group_size=ROW_GROUP_ROWS)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------ the driver


def job_settings(data: Path, run_dir: Path) -> list[str]:
    """The `table` preset made small and fast (module docstring)."""
    return [
        f"data.path={data}",
        f"run_dir={run_dir}",
        "ingest.table_parallel_rows=0",  # both sizes through the Ray Data tasks (the cluster path)
        "scaling.shard_in_memory=false",  # the training shards streamed, as beyond a node's memory
        "model.hidden=[32]",
        "model.latent_dim=4",
        "train.K=1",
        "train.epochs=1",
        "train.batch_size=1024",
        "scaling.num_workers=2",
        "evaluate.num_samples=2",
        "evaluate.batch_size=4096",
        "impute.num_samples=10",
        "impute.num_imputations=1",
        "impute.batch_size=4096",
        "impute_stage.num_actors=2",
        "impute_stage.table_csv=false",
    ]


class Sampler:
    """A thread that calls :meth:`sample` every `interval` seconds while the block runs, and
    once more as it ends."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


def _ray_workers() -> Iterator[tuple[int, str, float]]:
    """(pid, title, private resident MiB = RSS - shared) of every Ray worker process on the
    machine: their titles start with ``ray::`` (Linux; no psutil in the project's environment)."""
    page_mib = os.sysconf("SC_PAGE_SIZE") / _MIB
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            resident, shared = (int(v) for v in (entry / "statm").read_text().split()[1:3])
        except (OSError, ValueError):
            continue  # gone meanwhile
        if title.startswith("ray::"):  # not the driver, nor Ray's own servers
            yield int(entry.name), title, (resident - shared) * page_mib


class RaySampler(Sampler):
    """The private resident memory of every Ray worker process (the embedded Ray's raylet
    starts them detached from the driver, so they are found by title, and the benchmark assumes
    no other Ray runs): the peak per process, per title, and per stage of the job (`stage`)."""

    def __init__(
        self,
        interval: float = 0.5,
        stage: Callable[[], str] = lambda: "job",
        workers: Callable[[], Iterable[tuple[int, str, float]]] = _ray_workers,
    ) -> None:
        super().__init__(interval)
        self.stage = stage  # the job's stage now (DriverSampler's)
        self.workers = workers
        self.peaks: dict[int, tuple[float, str]] = {}  # pid -> (peak MiB, its title at the peak)
        self.by_title: dict[str, float] = {}  # title -> the largest memory a process had under it
        self.by_stage: dict[str, float] = {}  # stage -> the largest memory of any worker in it

    def sample(self) -> None:
        stage = self.stage()
        for pid, title, private in self.workers():
            if private > self.peaks.get(pid, (0.0, ""))[0]:
                self.peaks[pid] = (private, title)
            self.by_title[title] = max(self.by_title.get(title, 0.0), private)
            self.by_stage[stage] = max(self.by_stage.get(stage, 0.0), private)


def _resident_mib() -> float:
    """This process's resident memory (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / _MIB


class DriverSampler(Sampler):
    """This process's resident memory (RSS, as ru_maxrss counts it), the peak kept per stage
    of the job's `console`, whose stage blocks it wraps to know the stage: where the driver's
    memory goes, stage by stage (``after x``: between stage x and the next)."""

    def __init__(
        self, console: Any, interval: float = 0.5, resident: Callable[[], float] | None = None
    ) -> None:
        super().__init__(interval)
        self.console = console
        self.resident = resident or _resident_mib  # MiB now
        self.stage = "start"
        self.peaks: dict[str, float] = {}  # stage -> peak RSS (MiB)

    def __enter__(self) -> Self:
        original = self.console.stage

        @contextlib.contextmanager
        def stage(name: str, doing: str) -> Iterator[Any]:
            self.sample()
            self.stage = name
            with original(name, doing) as shown:
                yield shown
            self.sample()
            self.stage = f"after {name}"

        self.console.stage = stage
        return super().__enter__()

    def sample(self) -> None:
        self.peaks[self.stage] = max(self.peaks.get(self.stage, 0.0), self.resident())


def run_driver(data: Path, run_dir: Path, num_rows: int) -> dict[str, Any]:
    """The job in this process; its stage seconds and the memory peaks."""
    import resource

    from pipelines.runtime import configure_ray_auth

    configure_ray_auth()
    from pipelines.config import load_pipeline_config
    from pipelines.console import Console
    from pipelines.full import TABLE_STAGES, run_table
    from pipelines.runtime import stop_ray

    config = load_pipeline_config("table", job_settings(data, run_dir))
    console = Console(TABLE_STAGES)
    with DriverSampler(console) as driver, RaySampler(stage=lambda: driver.stage) as sampler:
        seconds = run_table(config, console)
    stop_ray()
    manifest = json.loads((run_dir / "data" / "_MANIFEST.json").read_text())
    peaks = sorted(sampler.peaks.values(), reverse=True)
    return {
        "seconds": seconds,
        "num_rows": {split: entry["num_rows"] for split, entry in manifest["splits"].items()},
        "driver_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "driver_peak_by_stage_mib": driver.peaks,
        "worker_peak_mib": peaks[0][0] if peaks else None,
        "worker_peak_title": peaks[0][1] if peaks else None,
        "workers_sampled": len(peaks),
        "worker_peak_by_stage_mib": sampler.by_stage,
        "worker_peak_by_title_mib": dict(sorted(sampler.by_title.items(), key=lambda item: -item[1])),
        "cpus": os.cpu_count(),
    }


# ------------------------------------------------------------------------------ the report


def stage_rows(result: dict[str, Any]) -> dict[str, int]:
    """Rows each stage went through: all of them for ingest and impute (the `table` preset
    imputes every split), the training split once for one epoch."""
    total = sum(result["num_rows"].values())
    return {"ingest": total, "train": result["num_rows"]["train"], "impute": total}


def projection(per_cpu: dict[str, float]) -> list[list[str]]:
    cpus = PROJECTED_NODES * PROJECTED_CPUS_PER_NODE
    rows = []
    for stage in STAGES:
        rate = per_cpu.get(stage)
        hours = None if not rate else PROJECTED_ROWS / (rate * cpus) / 3600
        rows.append([stage, fmt(rate, 0), fmt(hours, 2)])
    return rows


# The peaks kept per stage of the job: (result key, the title of its table).
BY_STAGE = (
    ("driver_peak_by_stage_mib", "Driver RSS peak"),
    ("worker_peak_by_stage_mib", "Largest Ray worker's private memory"),
)


def render(results: dict[int, dict[str, Any]], command: str) -> str:
    sizes = sorted(results)
    lines = [
        "# Tables at scale: `benchmarks/bench_tables.py`",
        "",
        f"Command: `{command}`; machine: {results[sizes[0]]['cpus']} CPUs. A generated mixed table "
        "(4 continuous, 1 count, 2 flags, 2 text columns; 30% MCAR) through ingest -> train (one "
        "epoch, batches of 1024 on 2 workers) -> impute (L = 10, M = 1) on local Ray.",
        "",
        "| rows | stage | seconds | rows/s | rows/s per CPU |",
        "|---:|---|---:|---:|---:|",
    ]
    for size in sizes:
        result = results[size]
        for stage, rows in stage_rows(result).items():
            seconds = result["seconds"][stage]
            lines.append(
                f"| {size:,} | {stage} | {seconds:.1f} | {rows / seconds:,.0f} | "
                f"{rows / seconds / result['cpus']:,.0f} |"
            )
    lines += [
        "",
        "| rows | driver peak RSS (MiB) | largest Ray worker peak, private (MiB) |",
        "|---:|---:|---:|",
    ]
    for size in sizes:
        result = results[size]
        lines.append(
            f"| {size:,} | {result['driver_peak_mib']:,.0f} | {fmt(result['worker_peak_mib'], 0)} "
            f"({result['worker_peak_title']}) |"
        )
    for key, title in BY_STAGE:
        by_stage = [results[size].get(key, {}) for size in sizes]
        phases = list(dict.fromkeys(itertools.chain(*by_stage)))
        lines += [
            "",
            f"{title} by stage (MiB; `after x`: between stage x and the next):",
            "",
            "| rows | " + " | ".join(phases) + " |",
            "|---:|" + "---:|" * len(phases),
        ]
        for size, peaks in zip(sizes, by_stage, strict=True):
            lines.append(f"| {size:,} | " + " | ".join(fmt(peaks.get(phase), 0) for phase in phases) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default="500000,5000000", help="table sizes, comma-separated")
    parser.add_argument("--rows-per-file", type=int, default=625_000, help="rows per Parquet file")
    parser.add_argument("--timeout", type=float, default=7200, help="seconds per size")
    parser.add_argument("--out", type=Path, default=None, help="JSON output path")
    parser.add_argument("--markdown", type=Path, default=RESULTS_DIR / "tables.md")
    parser.add_argument("--driver", nargs=3, metavar=("DATA", "RUN_DIR", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.driver:  # the child: one job, one JSON line
        data, run_dir, rows = args.driver
        print(json.dumps(run_driver(Path(data), Path(run_dir), int(rows))))
        return Path(run_dir)

    sizes = sorted(int(size) for size in args.rows.split(","))
    results: dict[int, dict[str, Any]] = {}
    for size in sizes:
        scratch = Path(tempfile.mkdtemp(prefix=f"bench-tables-{size}-"))
        try:
            started = time.perf_counter()
            make_table(size, scratch / "data", math.ceil(size / args.rows_per_file))
            print(f"{size:,} rows generated in {time.perf_counter() - started:.0f} s", flush=True)
            env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}"}
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.bench_tables", "--driver",
                 str(scratch / "data"), str(scratch / "run"), str(size)],
                cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=args.timeout,
            )  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(
                    f"the {size}-row job failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
                )
            results[size] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{size:,} rows: stage times {results[size]['seconds']}", flush=True)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    rows = []
    for size in sizes:
        result = results[size]
        for stage, count in stage_rows(result).items():
            rate = count / result["seconds"][stage]
            rows.append(
                [
                    f"{size:,}",
                    stage,
                    fmt(result["seconds"][stage], 1),
                    fmt(rate, 0),
                    fmt(rate / result["cpus"], 0),
                ]
            )
    print_table("throughput", ["rows", "stage", "seconds", "rows/s", "rows/s per CPU"], rows)
    small, large = results[sizes[0]], results[sizes[-1]]
    memory = [
        [name, fmt(small[key], 0), fmt(large[key], 0), fmt(ratio(large[key], small[key]), 2),
         "yes" if (ratio(large[key], small[key]) or math.inf) <= FLAT else "no"]
        for name, key in (("driver peak RSS", "driver_peak_mib"), ("worker peak, private", "worker_peak_mib"))
    ]  # fmt: skip
    print_table(
        "peak memory (MiB)",
        ["process", f"{sizes[0]:,} rows", f"{sizes[-1]:,} rows", "ratio", f"within {FLAT - 1:.0%}"],
        memory,
    )
    for key, title in BY_STAGE:
        by_stage = [small.get(key, {}), large.get(key, {})]
        print_table(
            f"{title} by stage (MiB)",
            ["stage", f"{sizes[0]:,} rows", f"{sizes[-1]:,} rows", "ratio"],
            [
                [phase, fmt(by_stage[0].get(phase), 0), fmt(by_stage[1].get(phase), 0),
                 fmt(ratio(by_stage[1].get(phase), by_stage[0].get(phase)), 2)]
                for phase in dict.fromkeys(itertools.chain(*by_stage))
            ],
        )  # fmt: skip
    per_cpu = {
        stage: count / large["seconds"][stage] / large["cpus"] for stage, count in stage_rows(large).items()
    }
    print_table(
        f"projection: {PROJECTED_ROWS:.0e} rows on {PROJECTED_NODES} nodes x {PROJECTED_CPUS_PER_NODE} CPUs, "
        f"at the {sizes[-1]:,}-row run's rate per CPU (linear in CPUs, nothing on the driver)",
        ["stage", "rows/s per CPU", "hours"],
        projection(per_cpu),
    )
    command = "python -m benchmarks.bench_tables " + " ".join(argv if argv is not None else sys.argv[1:])
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(render(results, command.strip()))
    payload = {"sizes": sizes, "results": {str(k): v for k, v in results.items()}, "per_cpu": per_cpu}
    return write_json("tables", payload, args.out)


if __name__ == "__main__":
    main()
