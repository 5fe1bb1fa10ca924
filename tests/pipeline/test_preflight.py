"""pipelines/preflight.py: a wrong interpreter or no MNIST stops `python pipelines/full.py` (and the
same command under `ray job submit`) in its first second, in one line naming the fix, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from missiwae import mnist_files
from pipelines import preflight
from tests.conftest import REPO

# Runs full.py as `python pipelines/full.py` does, then reports whether torch had been imported.
RUN_FULL = (
    "import runpy, sys\n"
    "sys.argv = ['pipelines/full.py', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_path('pipelines/full.py', run_name='__main__')\n"
    "finally:\n"
    "    print('torch imported' if 'torch' in sys.modules else 'torch not imported')\n"
)

# A sitecustomize that makes this interpreter look like one without torch.
HIDE_TORCH = (
    "import sys\n"
    "class _HideTorch:\n"
    "    @staticmethod\n"
    "    def find_spec(name, path=None, target=None):\n"
    "        if name == 'torch' or name.startswith('torch.'):\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "        return None\n"
    "sys.meta_path.insert(0, _HideTorch)\n"
)


def _run_full(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """full.py in a subprocess with HOME (hence the ~/.cache fallback) an empty folder."""
    environ = {
        k: v for k, v in os.environ.items() if k not in ("MISSIWAE_DATA_DIR", "RAY_JOB_CONFIG_JSON_ENV_VAR")
    }
    environ.update({"HOME": str(tmp_path / "home"), **env})
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", RUN_FULL, *args],
        cwd=REPO, env=environ, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return done, time.monotonic() - started


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("pipelines/full.py: error: ")
    assert done.stdout.strip() == "torch not imported"  # it stopped before the heavy imports
    return lines[0]


def test_a_missing_data_dir_fails_in_seconds_with_one_line_naming_the_variable(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    done, seconds = _run_full(tmp_path, "--config", "smoke", MISSIWAE_DATA_DIR=str(empty))
    line = _one_error_line(done)
    assert seconds < 10, seconds
    assert f"MISSIWAE_DATA_DIR is {empty.resolve()}" in line and "export MISSIWAE_DATA_DIR=" in line


def test_an_unset_data_dir_names_the_variable_and_the_fallback_it_looked_in(tmp_path):
    done, seconds = _run_full(tmp_path)  # the default preset, smoke: MNIST
    line = _one_error_line(done)
    assert seconds < 10, seconds
    fallback = (tmp_path / "home" / ".cache" / "missiwae" / "data").resolve()
    assert f"MISSIWAE_DATA_DIR is not set, so it is {fallback}" in line


def test_under_a_ray_job_the_data_fix_is_the_heads_environment_or_the_runtime_env(tmp_path):
    done, _ = _run_full(
        tmp_path, MISSIWAE_DATA_DIR=str(tmp_path / "nowhere"), RAY_JOB_CONFIG_JSON_ENV_VAR="{}"
    )
    line = _one_error_line(done)
    assert "before `ray start --head`" in line
    assert """--runtime-env-json '{"env_vars": {"MISSIWAE_DATA_DIR": """ in line


def test_an_interpreter_without_torch_fails_with_one_line_naming_the_venv(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HIDE_TORCH)
    pythonpath = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    done, seconds = _run_full(tmp_path, PYTHONPATH=pythonpath, MISSIWAE_DATA_DIR=str(tmp_path))
    line = _one_error_line(done)
    assert seconds < 10, seconds
    assert f"this python ({sys.executable}) lacks torch:" in line
    assert "source .venv/bin/activate" in line


def test_under_a_ray_job_the_interpreter_fix_is_the_heads_path():
    def finder(name: str) -> object:
        return None if name in ("torch", "mlflow") else object()

    line = preflight.interpreter_problem(finder, "/usr/bin/python3", {"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"})
    assert line is not None and "\n" not in line
    assert line.startswith("this python (/usr/bin/python3) lacks torch, mlflow: ")
    assert "source .venv/bin/activate && ray start --head" in line
    assert """--runtime-env-json '{"env_vars": {"PATH": "/abs/path/to/.venv/bin:${PATH}"}}'""" in line
    assert preflight.interpreter_problem(lambda name: object(), "/x/python", {}) is None


def test_this_venv_passes_and_a_users_table_needs_no_mnist(tmp_path, data_root):
    nowhere = {"MISSIWAE_DATA_DIR": str(tmp_path / "nowhere")}
    preflight.check(["--config", "smoke"], {"MISSIWAE_DATA_DIR": str(data_root)})
    preflight.check(["--data", "my_table.csv"], nowhere)
    preflight.check(["--config", "table", "--set", "data.path=t.csv"], nowhere)
    preflight.check(["--set", f"data.data_dir={data_root}"], nowhere)  # data.data_dir wins, as in the library
    preflight.check(["--help"], nowhere)
    with pytest.raises(preflight.PreflightError, match=r"data\.data_dir is"):
        preflight.check(["--set", f"data.data_dir={tmp_path}"], {"MISSIWAE_DATA_DIR": str(data_root)})
    with pytest.raises(preflight.PreflightError, match="MISSIWAE_DATA_DIR is"):
        preflight.check(["--config", "smoke"], nowhere)


@pytest.mark.parametrize("present", [(), ("mnist",), ("binarized_mnist",), ("mnist", "binarized_mnist")])
def test_preflight_agrees_with_the_librarys_data_layout(tmp_path, data_root, monkeypatch, present):
    """The names preflight mirrors (it cannot import missiwae without torch) match mnist_files."""
    assert preflight.DATA_DIR_ENV == mnist_files.DATA_DIR_ENV
    assert preflight.DEFAULT_DATA_DIR == mnist_files.DEFAULT_DATA_DIR
    monkeypatch.delenv(mnist_files.DATA_DIR_ENV, raising=False)
    assert preflight.mnist_root(None, {}) == mnist_files.resolve_data_dir()
    monkeypatch.setenv(mnist_files.DATA_DIR_ENV, str(tmp_path))
    assert preflight.mnist_root(None, os.environ) == mnist_files.resolve_data_dir()
    assert preflight.mnist_root("/elsewhere", os.environ) == mnist_files.resolve_data_dir("/elsewhere")

    for folder in present:
        (tmp_path / folder).symlink_to(data_root / folder, target_is_directory=True)
    for split, stems in preflight.MNIST_STEMS.items():
        library_can_load = mnist_files.binarized_files_present(tmp_path, split) or all(
            mnist_files._find_mnist_file(tmp_path, stem) is not None for stem in stems
        )
        assert preflight._has_split(tmp_path, split) == library_can_load == bool(present)
    assert set(preflight.MNIST_STEMS) == set(mnist_files.BINARIZED_SPLITS)
    assert {preflight.MNIST_STEMS["train"], preflight.MNIST_STEMS["test"]} == set(
        mnist_files._MNIST_FILES.values()
    )


def test_cluster_nodes_start_ray_with_the_venv_the_data_dir_and_the_workers_allocator() -> None:
    """cluster.yaml: every `ray start` runs from the activated venv with MISSIWAE_DATA_DIR and
    the workers' allocator settings exported, and the setup commands put MNIST there, so a
    submitted job passes preflight and its workers allocate as the embedded Ray's do."""
    import yaml

    from pipelines.runtime import WORKER_ALLOCATOR_ENV

    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in cluster[key]]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2
    for command in ray_starts:
        assert command.startswith("source ~/venv/bin/activate && "), command
        assert "export MISSIWAE_DATA_DIR=$HOME/missiwae-data" in command, command
        exported = " ".join(f"{name}={value}" for name, value in WORKER_ALLOCATOR_ENV.items())
        assert f"export {exported} && " in command, command
    assert any("'~/missiwae-data', download=True" in c for c in cluster["setup_commands"])
