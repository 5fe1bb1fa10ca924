"""A run directory of the command line: its resolved config, its data, its checkpoint.

`missiwae train --out DIR` writes the checkpoint (model.pt, config.json) and run_config.json,
the whole resolved `RunConfig`; `evaluate` and `impute` read them back. This module holds what
those commands compute before any printing: the config a run resolves to, the rows each split
contributes, whether a checkpoint can be resumed, and the trained model of a directory. Every
problem a user can fix is a `RunError` (a ValueError) with a one-line message.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from missiwae.config import RunConfig, apply_overrides
from missiwae.data import IncompleteDataset, load_incomplete_mnist
from missiwae.model import MissIWAE
from missiwae.training import CONFIG_FILE, WEIGHTS_FILE, load_model, read_checkpoint_state

RUN_CONFIG_FILE = "run_config.json"  # the whole resolved RunConfig, written by `train`
EVALUATION_FILE = "evaluation.json"  # `evaluate`'s metrics (default place)
IMPUTATION_FILE = "imputation.json"  # `impute`'s metrics
IMPUTATIONS_FILE = "imputations.npz"  # `impute`'s arrays (default place)
SPLITS = ("train", "valid", "test")
SPLIT_SIZES = {"train": 50_000, "valid": 10_000, "test": 10_000}  # static binarized MNIST

# Settings that may change when a run resumes without a warning: they do not shape training.
_RESUMABLE_CHANGES = ("train.epochs:", "evaluate.", "impute.")


class RunError(ValueError):
    """A run cannot go ahead as asked (settings, data or checkpoint); the message says why."""


# -------------------------------------------------------------------------------- settings


def resolve_config(base: Mapping[str, Any], overrides: Sequence[str], data_dir: str | None) -> RunConfig:
    """Defaults <- `base` (file contents) <- `--set` overrides <- `data_dir`, validated.

    `data_dir` is stored resolved (absolute), so a run config stays valid from any directory.
    """
    values = apply_overrides(base, list(overrides))
    if data_dir is not None:
        values = apply_overrides(values, [f"data.data_dir={json.dumps(str(Path(data_dir).resolve()))}"])
    return RunConfig.from_dict(values)


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """`"section.key: old -> new"` for every setting that differs between two nested config
    dicts (a key missing on one side reads as None), sorted by key."""
    old_flat, new_flat = _flatten(old), _flatten(new)
    return [
        f"{key}: {old_flat.get(key)!r} -> {new_flat.get(key)!r}"
        for key in sorted(set(old_flat) | set(new_flat))
        if old_flat.get(key) != new_flat.get(key)
    ]


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resolve_device(config: RunConfig) -> torch.device:
    """The torch device of train.device, refused when it is not available on this machine."""
    try:
        device = torch.device(config.train.device)
    except RuntimeError as error:
        raise RunError(f"train.device={config.train.device!r} is not a torch device") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"train.device={config.train.device!r} but CUDA is not available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RunError(f"train.device={config.train.device!r} but MPS is not available here")
    return device


# ------------------------------------------------------------------------------------ data


def load_split(config: RunConfig, split: str, download: bool = False) -> IncompleteDataset:
    """`split` masked as configured, with data.num_<split> rows (a fixed random subset).

    The subset is data.py's: a fixed permutation of the split, not a prefix (the binarized
    MNIST test split is sorted by label), and each row keeps the mask it has in the full split.
    """
    if config.data.path is not None:
        raise RunError(
            "data.path (a user table) is read by `python pipelines/full.py --data PATH` or the "
            "scikit-learn MissIWAEImputer; the `missiwae` command line trains on MNIST"
        )
    num_rows = {
        "train": config.data.num_train,
        "valid": config.data.num_valid,
        "test": config.data.num_test,
    }[split]
    if num_rows is not None:  # checked here so the error names the setting, before any reading
        size = SPLIT_SIZES[split]
        if num_rows > size:
            raise RunError(f"data.num_{split}={num_rows} but the {split} split has only {size} rows")
    try:
        return load_incomplete_mnist(
            split,  # type: ignore[arg-type]
            missing_rate=config.data.missing_rate,
            seed=config.data.seed,
            num_rows=num_rows,
            data_dir=config.data.data_dir,
            download=download,
        )
    except RuntimeError as error:  # torchvision's download failed (no network, bad mirror)
        if not download:
            raise
        raise RunError(f"downloading MNIST failed: {error}") from error


def model_input(x: torch.Tensor, mask: torch.Tensor, uses_oracle: bool) -> torch.Tensor:
    """What the model may see of x (N, D): the observed entries with the holes zeroed, unless
    ι is the oracle (which sees the true values of the missing entries)."""
    return x if uses_oracle else torch.where(mask, x, torch.zeros_like(x))


def build_model(config: RunConfig) -> MissIWAE:
    """A fresh model of config.model, its weights drawn from train.seed without touching the
    caller's global random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        return MissIWAE.from_config(config.model)


# ------------------------------------------------------------------------------ checkpoints


@dataclasses.dataclass(frozen=True)
class ResumePoint:
    """What a checkpoint directory offers to resume from."""

    epochs_done: int  # epochs in the checkpoint's history
    changed_settings: list[str]  # "key: old -> new" of run_config.json settings that changed


def resume_point(directory: str | Path, config: RunConfig) -> ResumePoint:
    """The checkpoint in `directory` as a starting point for `config`; refused (RunError) when
    its model settings differ, its files are missing or unreadable, or it holds no optimiser.

    Changed settings other than train.epochs, evaluate.* and impute.* are returned, not
    refused: resuming with them is allowed, but the caller should say so.
    """
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    weights = directory / WEIGHTS_FILE
    if not config_path.is_file():
        raise RunError(f"{weights} exists without {config_path}: pass --fresh to start over")
    saved = _read_json(config_path, "pass --fresh to start over")
    saved_model = saved.get("model", {}) if isinstance(saved, dict) else {}
    changed = config_differences({"model": saved_model}, {"model": config.to_dict()["model"]})
    if changed:
        raise RunError(
            f"the checkpoint in {directory} has other model settings ({'; '.join(changed)}): "
            "pass --fresh to start over, or choose another --out"
        )
    warnings: list[str] = []
    run_config = directory / RUN_CONFIG_FILE
    if run_config.is_file():
        previous = _read_json(run_config, "pass --fresh to start over")
        if isinstance(previous, dict):
            warnings = [
                change
                for change in config_differences(previous, config.to_dict())
                if not change.startswith(_RESUMABLE_CHANGES)
            ]
    try:
        state = read_checkpoint_state(directory)
    except ValueError as error:
        raise RunError(f"{error}; pass --fresh") from error
    if "optimizer" not in state:
        raise RunError(f"{weights} holds no optimiser state to resume from: pass --fresh")
    return ResumePoint(len(state.get("history", [])), warnings)


def load_run(
    directory: str | Path, overrides: Sequence[str] = (), data_dir: str | None = None
) -> tuple[MissIWAE, RunConfig]:
    """The trained model (on train.device, eval mode) and run config of a checkpoint directory
    written by `missiwae train`, with `overrides` applied (data, evaluate and impute settings:
    the model is fixed by the checkpoint)."""
    checkpoint = Path(directory)
    if not checkpoint.is_dir():
        raise RunError(f"checkpoint directory not found: {checkpoint}")
    run_config = checkpoint / RUN_CONFIG_FILE
    if not (checkpoint / WEIGHTS_FILE).is_file() or not run_config.is_file():
        raise RunError(
            f"no trained checkpoint in {checkpoint} (needs {WEIGHTS_FILE} and {RUN_CONFIG_FILE}): "
            f"run `missiwae train --out {checkpoint}` first"
        )
    model_keys = [o for o in overrides if o.strip().startswith("model.")]
    if model_keys:
        raise RunError(f"model settings are fixed by the checkpoint; cannot override {model_keys}")
    base = _read_json(run_config)
    config = resolve_config(base, overrides, data_dir)
    model = load_model(checkpoint, resolve_device(config))
    return model, config


def _read_json(path: Path, hint: str = "") -> Any:
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunError(f"{path} is not valid JSON ({error})" + (f"; {hint}" if hint else "")) from error
