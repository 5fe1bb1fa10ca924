"""Shared fixtures. Real MNIST must be present: tests fail (never skip) without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from missiwae.data import DATA_DIR_ENV

REPO = Path(__file__).resolve().parents[1]


def real_data_root() -> Path:
    """$MISSIWAE_DATA_DIR, else <repo>/../shared/data; fails with a clear message when absent."""
    root = Path(os.environ.get(DATA_DIR_ENV, str(REPO.parent / "shared" / "data")))
    missing = [d for d in ("mnist", "binarized_mnist") if not (root / d).is_dir()]
    if missing:
        pytest.fail(
            f"MNIST data not found: {root} lacks {missing}. Set {DATA_DIR_ENV} to the "
            "directory holding mnist/ and binarized_mnist/.",
            pytrace=False,
        )
    return root


@pytest.fixture(scope="session")
def data_root() -> Path:
    return real_data_root()


@pytest.fixture(scope="session")
def _ray_session():
    import ray

    yield
    ray.shutdown()


@pytest.fixture
def ray_cluster(_ray_session):
    """A real local Ray cluster shared by the pipeline tests (more logical CPUs than cores).

    Started on first use and kept for the session; a test that needs Ray down (the
    `ray job submit` test runs its own head) may shut it down, and the next user restarts it.
    """
    import ray

    from pipelines.runtime import ensure_ray

    ensure_ray()
    return ray
