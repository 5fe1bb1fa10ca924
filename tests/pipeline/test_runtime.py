"""The embedded Ray's own settings (pipelines.runtime.LOCAL_RAY_ENV): Ray's cluster-sized
defaults that cost a single machine seconds per stage, replaced unless the user chose."""

from __future__ import annotations

import os
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
