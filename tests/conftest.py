"""Shared fixtures. Real MNIST must be present: tests fail (never skip) without it."""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from missiwae.mnist_files import DATA_DIR_ENV
from pipelines.runtime import configure_ray_auth

REPO = Path(__file__).resolve().parents[1]

# Token auth for every Ray the tests start (the session cluster, subprocess jobs): Ray reads
# RAY_AUTH_MODE / RAY_AUTH_TOKEN when first imported, and test modules import it at collection.
configure_ray_auth()

# Property tests are deterministic in CI: a fixed derandomised search, no example database on
# disk, no per-example deadline (a busy 2-core machine makes timings meaningless).
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Generated bad inputs tried per property test (`count_example`), printed at the end of the run.
EXAMPLES_TRIED: collections.Counter[str] = collections.Counter()


def count_example(test: str) -> None:
    EXAMPLES_TRIED[test] += 1


# Markers by folder, so `-m` selects a layer's cost without a decorator on every test:
# everything above the library starts Ray or a subprocess job and takes seconds to minutes.
FOLDER_MARKERS = {
    "library": (),
    "pipeline": ("ray", "slow"),
    "tune": ("ray", "slow"),
    "report": ("ray", "slow"),
    "benchmarks": ("slow",),
    # Claims that need hundreds of model fits to test honestly (half an hour on 2 cores): not
    # in `make test` (pyproject's addopts deselect them); `make test-statistical` runs them.
    "statistical": ("slow", "statistical"),
}
# Library tests that train on real MNIST, run hundreds of generated cases or measure a fresh
# subprocess (the allocator's page faults): seconds each.
SLOW_LIBRARY_MODULES = {
    "test_mnist_training",
    "test_bad_input",
    "test_missforest",
    "test_classifier",
    "test_allocator",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.path))
        folder = path.parent.name
        if folder not in FOLDER_MARKERS:
            raise pytest.UsageError(f"{path}: tests live in one of tests/{{{', '.join(FOLDER_MARKERS)}}}/")
        names = set(FOLDER_MARKERS[folder])
        if folder == "library" and path.stem in SLOW_LIBRARY_MODULES:
            names.add("slow")
        if "data_root" in getattr(item, "fixturenames", ()):
            names.add("mnist")
        if "ray_cluster" in getattr(item, "fixturenames", ()):
            names.add("ray")
        for name in sorted(names):
            item.add_marker(getattr(pytest.mark, name))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if EXAMPLES_TRIED:
        total = sum(EXAMPLES_TRIED.values())
        terminalreporter.section("generated bad inputs")
        for test, count in sorted(EXAMPLES_TRIED.items()):
            terminalreporter.write_line(f"{count:6d}  {test}")
        terminalreporter.write_line(f"{total:6d}  in all")


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


# Process-wide settings a test may change only for itself: a leaked value redirects every later
# test (a leaked MLFLOW_TRACKING_URI once sent a Tune sweep's runs to ./mlflow.db).
GUARDED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")


@pytest.fixture(autouse=True)
def _no_leaked_environment() -> Iterator[None]:
    before = {name: os.environ.get(name) for name in GUARDED_ENV}
    yield
    leaked = {name: os.environ.get(name) for name in GUARDED_ENV if os.environ.get(name) != before[name]}
    for name in leaked:  # put back first, so one leak fails one test and not the rest
        if before[name] is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = str(before[name])
    assert not leaked, f"the test left process-wide settings changed: {leaked}"
