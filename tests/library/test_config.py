"""Config parsing: strict keys, typed values, clear messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from missiwae.cli import main
from missiwae.config import (
    ConfigError,
    ModelConfig,
    RunConfig,
    apply_overrides,
    load_config_file,
)


def test_round_trip_through_dict():
    config = RunConfig.from_dict({"model": {"hidden": [100, 50]}, "train": {"K": 5}})
    assert config.model.hidden == (100, 50)
    assert RunConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"trian": {}}, r"unknown config key\(s\) \['trian'\]"),
        ({"train": {"k": 5}}, r"\['k'\] in section 'train'"),
        ({"train": {"K": 0}}, "train.K must be >= 1"),
        ({"train": {"K": 2.5}}, "train.K must be an integer"),
        ({"impute": {"num_samples": 0}}, r"impute.num_samples \(L\) must be >= 1"),
        (
            {"impute": {"num_imputations": 4, "bootstrap_models": 5}},
            r"bootstrap_models \(B\) must be between 1 and",
        ),
        ({"impute": {"bootstrap_models": 0}}, r"bootstrap_models \(B\) must be between 1 and"),
        ({"model": {"observation": "poisson"}}, "model.observation must be one of"),
        ({"model": {"architecture": "conv", "num_features": 100}}, "image_shape"),
        ({"data": {"missing_rate": 1.5}}, "missing_rate"),
        ({"train": []}, "train must be a mapping"),
        ({"model": {"hidden": []}}, r"model.hidden must list at least one layer width .* got \[\]"),
    ],
)
def test_bad_settings_are_rejected_with_the_key_named(values, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict(values)


def test_overrides_parse_yaml_scalars_and_reach_nested_keys():
    merged = apply_overrides(
        {"train": {"K": 5}}, ["train.K=50", "train.learning_rate=3e-4", "model.hidden=[10, 20]"]
    )
    config = RunConfig.from_dict(merged)
    assert config.train.K == 50 and config.train.learning_rate == 3e-4
    assert config.model.hidden == (10, 20)
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        apply_overrides({}, ["no-equals-sign"])


def test_config_files_load_from_yaml_and_json(tmp_path):
    (tmp_path / "a.yaml").write_text("train:\n  K: 7\n")
    (tmp_path / "b.json").write_text('{"model": {"latent_dim": 3}}')
    assert RunConfig.from_dict(load_config_file(tmp_path / "a.yaml")).train.K == 7
    assert RunConfig.from_dict(load_config_file(tmp_path / "b.json")).model.latent_dim == 3
    with pytest.raises(ConfigError, match="not found"):
        load_config_file(tmp_path / "missing.yaml")
    (tmp_path / "c.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config_file(tmp_path / "c.yaml")


def test_model_config_defaults_are_the_burda_mlp():
    config = ModelConfig()
    assert (config.num_features, config.hidden, config.latent_dim) == (784, (200, 200), 50)
    assert config.imputation == "zero" and config.observation == "bernoulli"


def test_an_empty_hidden_list_is_refused_for_the_mlp_only():
    # The convolutional networks have no MLP widths: hidden is unused there.
    config = RunConfig.from_dict({"model": {"architecture": "conv", "hidden": []}})
    assert config.model.hidden == ()
    with pytest.raises(ConfigError, match=r"model\.hidden must list at least one layer width"):
        ModelConfig(hidden=())


def test_train_with_an_empty_hidden_list_exits_2_with_one_line_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It used to train, then crash in evaluate / impute with a traceback (issue 18).
    out = tmp_path / "run"
    tiny = ["data.num_train=50", "data.num_valid=10", "data.num_test=10", "train.epochs=1", "train.K=2"]
    code = main(["train", "--out", str(out), "--no-progress", "--set", *tiny, "model.hidden=[]"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.strip().splitlines() == [err.strip()] and "model.hidden" in err
    assert "Traceback" not in err and not out.exists()
