"""Checks an entry point runs before anything heavy is imported: the right interpreter, the data.

Under `ray job submit` the entrypoint's `python` is whichever one the head's `PATH` names
(Ray runs the entrypoint through a shell with the head's environment plus the job's
`runtime_env["env_vars"]`), and the head's environment also decides `MISSIWAE_DATA_DIR`;
the client's shell passes neither. Without these checks a wrong interpreter shows up as a
traceback ending in `No module named 'torch'` and a missing data folder only minutes later,
inside Ray Data. Here each is one line naming the fix, and exit status 2, within a second:
nothing is imported (packages are looked up with `importlib.util.find_spec`), and the config
is read only far enough to know whether MNIST is needed and where it lives.

`missiwae.mnist_files` owns the data layout; it cannot be imported here (importing the
`missiwae` package imports torch, seconds on a loaded machine), so the few names below mirror
it and `tests/pipeline/test_preflight.py` checks that they agree.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["PreflightError", "check", "data_problem", "interpreter_problem", "mnist_root", "run_or_exit"]

# What an entry point imports, by top-level name; yaml reads the configs.
REQUIRED_PACKAGES: tuple[str, ...] = ("torch", "ray", "mlflow", "pyarrow", "yaml", "missiwae")

# Mirrors of missiwae.mnist_files (DATA_DIR_ENV, DEFAULT_DATA_DIR, the file names its loaders
# look for); a test keeps them equal.
DATA_DIR_ENV = "MISSIWAE_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.cache/missiwae/data")
# Per split of the pipeline: the Larochelle files, else the MNIST IDX pair it is binarized from.
BINARIZED_FILES = (
    "binarized_mnist/binarized_mnist_{split}.amat.gz",
    "binarized_mnist/binarized_mnist_{split}_mnist_index_labels.txt.gz",
)
MNIST_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "valid": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_FOLDERS = ("mnist", "torchvision/MNIST/raw")

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # as pipelines.config.CONFIG_DIR

FinderFn = Callable[[str], Any]


class PreflightError(Exception):
    """One line naming what is missing and the fix."""


def _under_ray_job(environ: Mapping[str, str]) -> bool:
    # Ray's job supervisor sets this for every entrypoint it runs (ray._private.runtime_env.constants).
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in environ


def interpreter_problem(
    find_spec: FinderFn = importlib.util.find_spec,
    executable: str = sys.executable,
    environ: Mapping[str, str] = os.environ,
) -> str | None:
    """None when this interpreter has every package an entry point imports, else the fix."""
    missing = []
    for name in REQUIRED_PACKAGES:
        try:
            found = find_spec(name) is not None
        except (ImportError, ValueError):  # a broken install counts as missing
            found = False
        if not found:
            missing.append(name)
    if not missing:
        return None
    lacks = f"this python ({executable}) lacks {', '.join(missing)}"
    if _under_ray_job(environ):
        return (
            f"{lacks}: under `ray job submit` `python` is the first one on the head's PATH; start the "
            "head from the project's venv (source .venv/bin/activate && ray start --head ...) or submit "
            'with --runtime-env-json \'{"env_vars": {"PATH": "/abs/path/to/.venv/bin:${PATH}"}}\''
        )
    return f"{lacks}: run it with the project's venv (make setup; source .venv/bin/activate)"


def _has_split(root: Path, split: str) -> bool:
    """Whether the pipeline can load `split` from `root` without downloading (as the library does:
    the Larochelle files if present, else the MNIST IDX files, gzipped or not)."""
    if all((root / name.format(split=split)).is_file() for name in BINARIZED_FILES):
        return True
    return all(
        any(
            (root / folder / f"{stem}{suffix}").is_file()
            for folder in MNIST_FOLDERS
            for suffix in (".gz", "")
        )
        for stem in MNIST_STEMS[split]
    )


def mnist_root(data_dir: str | None, environ: Mapping[str, str] = os.environ) -> Path:
    """The data root as missiwae.mnist_files.resolve_data_dir finds it: data.data_dir, else
    $MISSIWAE_DATA_DIR, else ~/.cache/missiwae/data."""
    env = environ.get(DATA_DIR_ENV, "").strip()
    path = Path(data_dir) if data_dir else Path(env) if env else DEFAULT_DATA_DIR
    return path.expanduser().resolve()


def data_problem(
    data_dir: str | None, environ: Mapping[str, str] = os.environ, *, uses_table: bool = False
) -> str | None:
    """None when MNIST can be read (or a user's table replaces it), else the fix."""
    if uses_table:
        return None
    root = mnist_root(data_dir, environ)
    missing = [split for split in MNIST_STEMS if not _has_split(root, split)]
    if not missing:
        return None
    if data_dir:
        where = f"data.data_dir is {root}"
    elif environ.get(DATA_DIR_ENV, "").strip():
        where = f"{DATA_DIR_ENV} is {root}"
    else:
        where = f"{DATA_DIR_ENV} is not set, so it is {root}"
    lacks = f"no MNIST for the {'/'.join(missing)} split(s): {where}, holding no mnist/ or binarized_mnist/"
    if _under_ray_job(environ):
        return (
            f"{lacks}; on the head, export {DATA_DIR_ENV}=/abs/path/to/data before `ray start --head`, "
            f'or submit with --runtime-env-json \'{{"env_vars": {{"{DATA_DIR_ENV}": "/abs/path/to/data"}}}}\''
        )
    return f"{lacks}; export {DATA_DIR_ENV}=/abs/path/to/data (a folder holding mnist/ and binarized_mnist/)"


def _data_settings(argv: Sequence[str]) -> tuple[str | None, bool]:
    """(data.data_dir, whether a user's table replaces MNIST) from the arguments and the config
    file, read just far enough for that; a config that does not read is left to the real loader."""
    import yaml  # present: interpreter_problem looked for it

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config", default=None)
    parser.add_argument("--data", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args, _ = parser.parse_known_args(list(argv))
    if args.data:
        return None, True
    settings: dict[str, Any] = {}
    config = args.config or "smoke"
    path = Path(config)
    if not path.suffix and (CONFIG_DIR / f"{config}.yaml").is_file():
        path = CONFIG_DIR / f"{config}.yaml"
    try:
        loaded = yaml.safe_load(path.read_text())
        section = loaded.get("data") if isinstance(loaded, dict) else None
        settings.update(section if isinstance(section, dict) else {})
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        pass
    for override in args.overrides:
        key, sep, raw = override.partition("=")
        if sep and key in ("data.data_dir", "data.path"):
            with contextlib.suppress(yaml.YAMLError):  # the real loader reports it
                settings[key.removeprefix("data.")] = yaml.safe_load(raw)
    data_dir = settings.get("data_dir")
    return (str(data_dir) if data_dir else None), bool(settings.get("path"))


def check(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> None:
    """Raise PreflightError (one line: what is missing, and the fix) unless this interpreter has the
    project's packages and, for MNIST, the data folder is readable; `--help` skips the data."""
    problem = interpreter_problem(environ=environ)
    if problem is None and not {"-h", "--help"} & set(argv):
        data_dir, uses_table = _data_settings(argv)
        problem = data_problem(data_dir, environ, uses_table=uses_table)
    if problem is not None:
        raise PreflightError(problem)


def run_or_exit(argv: Sequence[str], prog: str) -> None:
    """`check` for an entry point's `__main__`: on a problem print `prog: error: <fix>` and exit 2."""
    try:
        check(argv)
    except PreflightError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
