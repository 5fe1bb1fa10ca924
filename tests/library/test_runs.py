"""missiwae.runs: config resolution, split checks, resume points and loading a run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from missiwae.config import ConfigError, RunConfig
from missiwae.model import MissIWAE
from missiwae.runs import (
    RUN_CONFIG_FILE,
    RunError,
    build_model,
    config_differences,
    load_run,
    load_split,
    model_input,
    resolve_config,
    resolve_device,
    resume_point,
)
from missiwae.training import CONFIG_FILE, WEIGHTS_FILE, EpochStats, save_checkpoint

TINY_MODEL = {"num_features": 16, "hidden": [8], "latent_dim": 2}


def _config(**sections: dict[str, object]) -> RunConfig:
    return resolve_config({"model": TINY_MODEL, **sections}, [], None)


def _same_weights(a: MissIWAE, b: MissIWAE) -> bool:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return all(torch.equal(x, y) for x, y in pairs)


def _write_run(directory: Path, config: RunConfig, epochs: int = 2, optimizer: bool = True) -> MissIWAE:
    """A checkpoint directory as `missiwae train` leaves it after `epochs` epochs."""
    model = build_model(config)
    adam = torch.optim.Adam(model.parameters()) if optimizer else None
    history = [EpochStats(epoch, -1.0, None, 0.1) for epoch in range(1, epochs + 1)]
    save_checkpoint(directory, model, adam, config.train, history)
    (directory / RUN_CONFIG_FILE).write_text(json.dumps(config.to_dict()))
    return model


def test_resolve_config_layers_overrides_and_an_absolute_data_dir(tmp_path: Path) -> None:
    config = resolve_config({"train": {"K": 3}}, ["train.K=7", "data.missing_rate=0.8"], "relative/dir")
    assert config.train.K == 7 and config.data.missing_rate == 0.8
    assert config.data.data_dir == str(Path("relative/dir").resolve())
    assert resolve_config({}, [], None) == RunConfig()
    with pytest.raises(ConfigError, match="bogus"):
        resolve_config({}, ["train.bogus=1"], None)


def test_config_differences_name_each_changed_leaf() -> None:
    old = {"model": {"latent_dim": 50, "hidden": [200]}, "train": {"K": 5}}
    new = {"model": {"latent_dim": 8, "hidden": [200]}, "train": {"K": 5, "seed": 1}}
    assert config_differences(old, new) == ["model.latent_dim: 50 -> 8", "train.seed: None -> 1"]
    assert config_differences(old, old) == []


def test_resolve_device_refuses_what_this_machine_lacks() -> None:
    assert resolve_device(_config()) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RunError, match="CUDA is not available"):
            resolve_device(_config(train={"device": "cuda"}))


def test_load_split_checks_settings_before_reading_any_file(tmp_path: Path) -> None:
    empty = str(tmp_path)  # no data here: the checks must come first
    with pytest.raises(RunError, match=r"data.num_test=20000 .* only 10000 rows"):
        load_split(_config(data={"num_test": 20_000, "data_dir": empty}), "test")
    with pytest.raises(RunError, match=r"data\.path"):
        load_split(_config(data={"path": "table.csv", "data_dir": empty}), "train")


def test_model_input_zeroes_the_holes_unless_the_encoder_is_the_oracle() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0]])
    mask = torch.tensor([[True, False, True]])
    assert torch.equal(model_input(x, mask, uses_oracle=False), torch.tensor([[1.0, 0.0, 3.0]]))
    assert torch.equal(model_input(x, mask, uses_oracle=True), x)


def test_build_model_is_seeded_and_leaves_the_global_random_state_alone() -> None:
    config = _config(train={"seed": 3})
    before = torch.random.get_rng_state()
    first, second = build_model(config), build_model(config)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert _same_weights(first, second)
    assert not _same_weights(first, build_model(_config(train={"seed": 4})))


def test_resume_point_counts_epochs_and_reports_changed_settings(tmp_path: Path) -> None:
    config = _config()
    _write_run(tmp_path, config, epochs=2)
    assert resume_point(tmp_path, config).epochs_done == 2
    assert resume_point(tmp_path, config).changed_settings == []
    # More epochs, other evaluate/impute settings: resumable silently; other training settings:
    # resumable, but reported.
    quiet = _config(train={"epochs": 9}, evaluate={"num_samples": 7}, impute={"num_samples": 3})
    assert resume_point(tmp_path, quiet).changed_settings == []
    assert resume_point(tmp_path, _config(train={"K": 9})).changed_settings == ["train.K: 50 -> 9"]


def test_resume_point_refuses_what_cannot_be_resumed(tmp_path: Path) -> None:
    config = _config()
    _write_run(tmp_path, config)
    with pytest.raises(RunError, match=r"other model settings \(model.latent_dim: 2 -> 3\).*--fresh"):
        resume_point(tmp_path, resolve_config({"model": {**TINY_MODEL, "latent_dim": 3}}, [], None))

    (tmp_path / WEIGHTS_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(RunError, match=f"(?s){WEIGHTS_FILE} cannot be read.*; pass --fresh$"):
        resume_point(tmp_path, config)

    no_optimizer = tmp_path / "no_optimizer"
    _write_run(no_optimizer, config, optimizer=False)
    with pytest.raises(RunError, match="no optimiser state"):
        resume_point(no_optimizer, config)

    (no_optimizer / CONFIG_FILE).unlink()
    with pytest.raises(RunError, match=f"exists without .*{CONFIG_FILE}"):
        resume_point(no_optimizer, config)


def test_load_run_gives_the_trained_model_and_its_config(tmp_path: Path) -> None:
    config = _config(evaluate={"num_samples": 11})
    saved = _write_run(tmp_path, config)
    model, loaded = load_run(tmp_path, ["evaluate.num_samples=13"])
    assert loaded.evaluate.num_samples == 13 and loaded.model == config.model
    assert not model.training
    assert _same_weights(model, saved)


def test_load_run_refuses_by_name(tmp_path: Path) -> None:
    with pytest.raises(RunError, match=r"checkpoint directory not found: .*nowhere"):
        load_run(tmp_path / "nowhere")
    with pytest.raises(RunError, match="missiwae train --out"):
        load_run(tmp_path)  # exists, but holds no checkpoint
    _write_run(tmp_path, _config())
    with pytest.raises(RunError, match="model settings are fixed"):
        load_run(tmp_path, ["model.latent_dim=3"])
    (tmp_path / RUN_CONFIG_FILE).write_text("{not json")
    with pytest.raises(RunError, match=f"{RUN_CONFIG_FILE} is not valid JSON"):
        load_run(tmp_path)
