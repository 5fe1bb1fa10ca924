"""The embedded Ray's own settings (pipelines.runtime.LOCAL_RAY_ENV): Ray's cluster-sized
defaults that cost a single machine seconds per stage, replaced unless the user chose, and the
workers' allocator settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pipelines.runtime import LOCAL_RAY_ENV, use_local_ray_env


def test_the_single_machine_settings_fill_only_what_the_user_left_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in LOCAL_RAY_ENV:
        monkeypatch.setenv(name, "recorded")  # so that monkeypatch restores each one after
        monkeypatch.delenv(name)
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "3")  # the user's
    use_local_ray_env()
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "3"
    assert os.environ["RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"] == "1"
    assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"


def test_the_embedded_rays_workers_run_with_the_single_machine_settings(ray_cluster: Any) -> None:
    @ray_cluster.remote(num_cpus=0)
    def worker_environment() -> dict[str, str | None]:
        return {name: os.environ.get(name) for name in LOCAL_RAY_ENV}

    seen = ray_cluster.get(worker_environment.remote())
    assert seen == {name: os.environ.get(name) for name in LOCAL_RAY_ENV}
    assert seen["RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"] is not None


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc (Linux)")
def test_a_ray_worker_gives_back_the_memory_of_the_arrow_buffers_it_freed(ray_cluster: Any) -> None:
    """pipelines.runtime.WORKER_ALLOCATOR_ENV: 128 column chunks of 4 MiB, as Ray Data's reads
    make them, are back with the OS once freed. With glibc's dynamic mmap threshold the same
    process kept about 540 of the 545 MiB; with Arrow's jemalloc pool, 90."""

    # Its own runtime env: a fresh worker process, not one a classifier task tuned before.
    @ray_cluster.remote(num_cpus=0, runtime_env={"env_vars": {"MISSIWAE_FRESH_WORKER": "1"}})
    def allocate_and_free() -> tuple[str, float, float, float]:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        def private_mib() -> float:  # resident less shared pages
            resident, shared = (int(v) for v in Path("/proc/self/statm").read_text().split()[1:3])
            return (resident - shared) * os.sysconf("SC_PAGE_SIZE") / 2**20

        before = private_mib()
        chunks = [pc.add(pa.array(np.arange(2**19, dtype=np.float64)), 1.0) for _ in range(128)]
        held = private_mib()
        del chunks
        return pa.default_memory_pool().backend_name, before, held, private_mib()

    pool, before, held, after = ray_cluster.get(allocate_and_free.remote())
    assert pool == "system"
    assert held - before > 400, (before, held)  # the chunks were really there
    assert after - before < 64, (before, held, after)
