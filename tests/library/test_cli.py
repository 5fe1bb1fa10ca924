"""The `missiwae` command line, run in-process through `main(argv)` on tiny settings.

The data root is ``$MISSIWAE_DATA_DIR`` or ``<repo>/../shared/data``. The tests never skip when
it is missing: CI always has the data, so absence is a setup error.
"""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from missiwae.cli import main
from missiwae.config import RunConfig

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("MISSIWAE_DATA_DIR") or REPO.parent / "shared" / "data")

TINY = [
    "data.num_train=500",
    "data.num_valid=100",
    "data.num_test=100",
    "train.epochs=1",
    "train.K=5",
    "evaluate.num_samples=20",
    "impute.num_samples=20",
    "impute.num_imputations=2",
]


def require_data() -> str:
    missing = [d for d in ("binarized_mnist",) if not (DATA_DIR / d).is_dir()]
    if missing:
        pytest.fail(
            f"MNIST data not found: {DATA_DIR} lacks {missing}. Set MISSIWAE_DATA_DIR to the "
            "directory holding mnist/ and binarized_mnist/ (see the data README).",
            pytrace=False,
        )
    return str(DATA_DIR)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def train_args(out: Path, *overrides: str) -> list[str]:
    return [
        "train",
        "--out",
        str(out),
        "--data-dir",
        require_data(),
        "--no-progress",
        "--set",
        *TINY,
        *overrides,
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny training run shared by the evaluate / impute tests."""
    out = tmp_path_factory.mktemp("run") / "demo"
    assert main(train_args(out)) == 0
    return out


def finite_numbers(metrics: dict[str, object]) -> dict[str, float]:
    numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    assert all(math.isfinite(v) for v in numbers.values()), numbers
    return numbers


def test_train_writes_checkpoint_and_resolved_config(trained: Path) -> None:
    for name in ("model.pt", "config.json", "run_config.json"):
        assert (trained / name).is_file(), name
    config = RunConfig.from_dict(json.loads((trained / "run_config.json").read_text()))
    assert config.data.num_train == 500 and config.train.epochs == 1 and config.train.K == 5
    assert config.data.data_dir == str(Path(require_data()).resolve())
    state = torch.load(trained / "model.pt", weights_only=True)
    assert [entry["epoch"] for entry in state["history"]] == [1]


def test_train_prints_one_line_per_epoch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(train_args(tmp_path / "run", "train.epochs=2"), capsys)
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2
    assert lines[0].startswith("epoch   1/2") and "train L_K" in lines[0] and "valid L_K" in lines[0]
    assert lines[1].rstrip().endswith(" s")


def test_evaluate(trained: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(["evaluate", "--checkpoint", str(trained)], capsys)
    assert code == 0, err
    metrics = json.loads((trained / "evaluation.json").read_text())
    numbers = finite_numbers(metrics)
    assert metrics["num_rows"] == 100 and metrics["num_samples"] == 20 and metrics["split"] == "test"
    for key in (
        "log_likelihood_observed",
        "log_likelihood_complete",
        "bernoulli_log_likelihood_observed",
        "bernoulli_log_likelihood_complete",
    ):
        assert numbers[key] < 0, key
    # Observed pixels are about half of each image: their log-likelihood is the larger one.
    assert numbers["log_likelihood_observed"] > numbers["log_likelihood_complete"]
    assert "log p(x_o)" in out and "Bernoulli" in out

    # Deterministic given the seeds: a second run to another file gives the same numbers.
    again = tmp_path / "again.json"
    code, _, err = run(["evaluate", "--checkpoint", str(trained), "--out", str(again)], capsys)
    assert code == 0, err
    repeated = json.loads(again.read_text())
    for key in ("log_likelihood_observed", "log_likelihood_complete"):
        assert repeated[key] == metrics[key]


def test_impute_refuses_a_bootstrap_ensemble_it_cannot_train(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["impute", "--checkpoint", str(trained), "--set", "impute.bootstrap_models=2"], capsys)
    assert code == 2
    assert "impute.bootstrap_models=2" in err and "MissIWAEImputer(n_models=B)" in err
    assert len(err.strip().splitlines()) == 1


def test_impute(trained: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "imputed.npz"
    code, out, err = run(["impute", "--checkpoint", str(trained), "--out", str(target)], capsys)
    assert code == 0, err
    assert "zero imputation" in out and "mean imputation" in out and "effective sample size" in out
    assert not list(tmp_path.glob(".*")), "temporary file left behind"
    metrics = json.loads((trained / "imputation.json").read_text())
    numbers = finite_numbers(metrics)
    for key in ("accuracy_missiwae", "accuracy_multiple_mean", "accuracy_zero", "accuracy_mean"):
        assert 0.0 <= numbers[key] <= 1.0, key
    assert 1.0 <= numbers["effective_sample_size_mean"] <= 20.0

    from missiwae.runs import load_split

    config = RunConfig.from_dict(json.loads((trained / "run_config.json").read_text()))
    data = load_split(config, "test")
    with np.load(target) as saved:
        imputed, imputations = saved["imputed"], saved["imputations"]
        mask, labels = saved["mask"], saved["labels"]
        conditional_mean = saved["conditional_mean"]
    assert imputed.shape == (100, 784) and imputations.shape == (2, 100, 784)
    np.testing.assert_array_equal(mask, data.mask.numpy())
    np.testing.assert_array_equal(labels, data.labels.numpy())
    truth = data.x.numpy()
    np.testing.assert_array_equal(imputed[mask], truth[mask])
    np.testing.assert_array_equal(conditional_mean[mask], truth[mask])
    for copy in imputations:
        np.testing.assert_array_equal(copy[mask], truth[mask])
    assert set(np.unique(imputed)) <= {0, 1} and set(np.unique(imputations)) <= {0, 1}
    assert ((conditional_mean >= 0) & (conditional_mean <= 1)).all()


def _not_a_regular_file(kind: str, path: Path) -> None:
    """A FIFO, a symbolic link to a file, or (as root) a character device like /dev/null."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        (path.parent / "target.npz").write_bytes(b"keep")
        path.symlink_to(path.parent / "target.npz")
    elif os.geteuid() == 0:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a /dev/null twin, in tmp_path
    else:
        pytest.skip("making a device node needs root")


@pytest.mark.parametrize("command", ["impute", "evaluate"])
@pytest.mark.parametrize("kind", ["fifo", "symlink", "character device"])
def test_an_out_path_that_is_not_a_regular_file_is_refused_with_rc_2_and_left_untouched(
    trained: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str, command: str
) -> None:
    target = tmp_path / "out.npz"
    _not_a_regular_file(kind, target)
    before = os.lstat(target)
    code, out, err = run([command, "--checkpoint", str(trained), "--out", str(target)], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"missiwae {command}: error: refusing to write {target}")
    assert out == ""  # refused before the work started
    after = os.lstat(target)
    assert (after.st_ino, after.st_mode, after.st_rdev) == (before.st_ino, before.st_mode, before.st_rdev)
    if kind == "symlink":
        assert (tmp_path / "target.npz").read_bytes() == b"keep"


def test_help_mentions_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for word in ("train", "evaluate", "impute", "MISSIWAE_DATA_DIR", "--set", "examples"):
        assert word in out, word
    for command, words in {
        "train": ("--config", "--fresh", "run_config.json", "missing_rate", "num_imputations"),
        "evaluate": ("--checkpoint", "log p(x_o)", "Bernoulli", "examples"),
        "impute": ("--checkpoint", "--split", "imputations", "examples"),
    }.items():
        code, out, _ = run([command, "--help"], capsys)
        assert code == 0, command
        for word in words:
            assert word in out, (command, word)


def test_python_dash_m(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "missiwae", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "evaluate" in result.stdout


def test_no_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run([], capsys)
    assert code == 2 and "usage" in err


def test_unknown_config_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(train_args(tmp_path / "run", "train.bogus_key=1"), capsys)
    assert code == 2
    assert "bogus_key" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1

    config = tmp_path / "config.yaml"
    config.write_text("model:\n  latent_dimm: 10\n")
    code, _, err = run(["train", "--config", str(config), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "latent_dimm" in err


def test_bad_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for override, words in {
        "train.K=0": ("train.K", ">= 1"),
        "impute.num_samples=0": ("impute.num_samples",),
        "data.missing_rate=1.5": ("data.missing_rate",),
        "train.learning_rate=fast": ("train.learning_rate",),
    }.items():
        code, _, err = run(train_args(tmp_path / "bad", override), capsys)
        assert code == 2, override
        assert "Traceback" not in err
        for word in words:
            assert word in err, (override, err)
    code, _, err = run(["--set", "oops"], capsys)
    assert code == 2
    code, _, err = run(["train", "--out", str(tmp_path / "x"), "--set", "no_equals_sign"], capsys)
    assert code == 2 and "section.key=value" in err
    code, _, err = run(["train", "--config", str(tmp_path / "absent.yaml"), "--out", str(tmp_path)], capsys)
    assert code == 2 and "absent.yaml" in err


def test_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("evaluate", "impute"):
        code, _, err = run([command, "--checkpoint", str(tmp_path / "nowhere")], capsys)
        assert code == 2 and "nowhere" in err and "Traceback" not in err
        code, _, err = run([command, "--checkpoint", str(tmp_path)], capsys)  # exists, but empty
        assert code == 2 and "missiwae train" in err


def test_bad_evaluation_settings(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["evaluate", "--checkpoint", str(trained), "--set", "model.latent_dim=3"], capsys)
    assert code == 2 and "model.latent_dim" in err
    code, _, err = run(["impute", "--checkpoint", str(trained), "--set", "data.num_test=20000"], capsys)
    assert code == 2 and "data.num_test" in err and "10000" in err
    code, _, err = run(["evaluate", "--checkpoint", str(trained), "--set", "evaluate.num_samples=0"], capsys)
    assert code == 2 and "evaluate.num_samples" in err


def test_empty_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("MISSIWAE_DATA_DIR", str(empty))
    code, _, err = run(["train", "--out", str(tmp_path / "run"), "--no-progress", "--set", *TINY], capsys)
    assert code == 2
    assert "MISSIWAE_DATA_DIR" in err and str(empty) in err and "Traceback" not in err
    assert not (tmp_path / "run" / "model.pt").exists()


def test_train_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code, _, err = run(train_args(out), capsys)
    assert code == 0, err
    first = torch.load(out / "model.pt", weights_only=True)

    code, stdout, err = run(train_args(out, "train.epochs=2"), capsys)
    assert code == 0, err
    assert "resuming" in stdout and "1 epoch(s) done" in stdout
    epochs = [line.split()[1] for line in stdout.splitlines() if line.startswith("epoch")]
    assert epochs == ["2/2"]
    second = torch.load(out / "model.pt", weights_only=True)
    assert [entry["epoch"] for entry in second["history"]] == [1, 2]
    assert second["history"][0] == first["history"][0]

    # Already trained that far: nothing to do, the checkpoint is unchanged.
    code, stdout, err = run(train_args(out, "train.epochs=2"), capsys)
    assert code == 0 and "nothing to train" in stdout
    assert len(torch.load(out / "model.pt", weights_only=True)["history"]) == 2

    # Other model settings cannot resume; --fresh starts over.
    code, _, err = run(train_args(out, "train.epochs=2", "model.latent_dim=8"), capsys)
    assert code == 2 and "--fresh" in err and "model.latent_dim" in err
    code, stdout, err = run([*train_args(out, "model.latent_dim=8"), "--fresh"], capsys)
    assert code == 0 and "resuming" not in stdout
    assert len(torch.load(out / "model.pt", weights_only=True)["history"]) == 1
