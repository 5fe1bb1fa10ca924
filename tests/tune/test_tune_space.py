"""Search spaces as data and the ranking, without Ray: strict loading, labels, order, tables."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from missiwae.config import ConfigError
from pipelines.config import load_pipeline_config
from tune.ranking import TrialRow, markdown_table, rank, trial_row, write_ranking
from tune.space import check_space, load_space, trial_config


def _row(trial: str, test_ll: float, status: str = "done") -> TrialRow:
    return TrialRow(trial, 1, "zero", "50% MCAR", 1e-3, 50, 3, -100.0, test_ll, -50.0, status, trial)


def test_paper_space_is_the_figure_1_left_grid_plus_complete_data_references():
    space = load_space("paper")
    labels = [v.label for v in space.variants()]
    assert labels == [
        "K=1 zero",
        "K=1 oracle",
        "K=50 zero",
        "K=50 oracle",
        "complete VAE (K=1)",
        "complete IWAE (K=50)",
    ]
    base = load_pipeline_config("smoke").to_dict()
    check_space(space, base)
    configs = {v.label: trial_config(base, v.overrides) for v in space.variants()}
    assert configs["K=50 oracle"].train.K == 50 and configs["K=50 oracle"].model.imputation == "oracle"
    assert configs["complete IWAE (K=50)"].data.missing_rate == 0.0
    assert configs["K=1 zero"].data.missing_rate == base["data"]["missing_rate"]


def test_wide_space_samples_learning_rate_and_latent_size_with_asha():
    space = load_space("wide")
    assert len(space.variants()) == 4 * 3 and space.scheduler == "asha"
    param_space = space.param_space()
    assert set(param_space) == {"variant", "train.learning_rate", "model.latent_dim"}
    check_space(space, load_pipeline_config("paper").to_dict())


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_unknown_space_keys_and_misspelled_config_keys_are_refused_before_any_trial(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        load_space(_write(tmp_path, "grid: {train.K: [1]}\nschedular: asha\n"))
    with pytest.raises(ConfigError, match="scheduler"):
        load_space(_write(tmp_path, "grid: {train.K: [1]}\nscheduler: hyperband\n"))
    with pytest.raises(ConfigError, match=r"sample\.train\.learning_rate"):
        load_space(
            _write(tmp_path, "grid: {train.K: [1]}\nsample: {train.learning_rate: {normal: [0, 1]}}\n")
        )
    with pytest.raises(ConfigError, match="not found"):
        load_space("no-such-space")
    misspelled = load_space(_write(tmp_path, "grid: {train.k: [1, 50]}\n"))
    with pytest.raises(ConfigError, match=r"trial 'k=1'.*unknown config key"):
        check_space(misspelled, load_pipeline_config("smoke").to_dict())
    bad_value = load_space(_write(tmp_path, "grid: {model.imputation: [zero, mean]}\n"))
    with pytest.raises(ConfigError, match="mean"):
        check_space(bad_value, load_pipeline_config("smoke").to_dict())


def test_ranking_puts_the_best_test_log_likelihood_first_and_unfinished_trials_last():
    rows = [_row("a", -90.0), _row("b", math.nan, "unfinished"), _row("c", -85.0), _row("d", -120.0)]
    assert [r.trial for r in rank(rows)] == ["c", "a", "d", "b"]
    table = markdown_table(rows, "title")
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[1].startswith("| 1 | c |") and lines[-1].startswith("| 4 | b |")
    assert "—" in lines[-1]


def test_trial_row_reads_k_iota_and_status_from_the_trial_params():
    base = load_pipeline_config("smoke").to_dict()
    params = {
        "variant": {"label": "complete IWAE", "overrides": {"data.missing_rate": 0.0, "train.K": 50}},
        "train.learning_rate": 3e-4,
    }
    done = trial_row(base, params, {"epoch": 3.0, "test_log_likelihood": -90.0}, "TERMINATED", "t1")
    assert (done.K, done.iota, done.data, done.learning_rate, done.status) == (
        50,
        "complete",
        "complete",
        3e-4,
        "done",
    )
    stopped = trial_row(base, params, {"epoch": 1.0, "valid_bound": -120.0}, "TERMINATED", "t2")
    assert stopped.status == "stopped early (epoch 1)"
    assert trial_row(base, params, {"epoch": 1.0}, "", "t3").status == "unfinished"
    assert trial_row(base, params, {}, "ERROR", "t4").status == "error"


def test_ranking_files_are_written_whole(tmp_path):
    rows = [_row("K=1 zero", -95.0), _row("K=50 zero", -90.0)]
    paths = write_ranking(rows, tmp_path / "results", "demo")
    csv_lines = paths["csv"].read_text().splitlines()
    assert csv_lines[0].startswith("rank,trial,K,iota") and csv_lines[1].startswith("1,K=50 zero")
    assert paths["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == sorted(p.name for p in paths.values())
