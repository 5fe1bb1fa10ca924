"""The `missiwae` command line: train, evaluate and impute on incomplete binarized MNIST.

    missiwae train    --config configs/demo.yaml --out runs/demo
    missiwae evaluate --checkpoint runs/demo
    missiwae impute   --checkpoint runs/demo

`main(argv)` returns the exit status (0 success, 2 user error, 130 interrupted) instead of
exiting, so tests can call it in-process. User errors (bad settings, missing data or checkpoint)
are reported as one line on stderr, never as a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from missiwae import __version__
from missiwae.allocator import retain_freed_memory
from missiwae.baselines import (
    independent_bernoulli_log_likelihood,
    mean_impute,
    observed_feature_means,
    zero_impute,
)
from missiwae.config import ConfigError, RunConfig, apply_overrides, load_config_file, to_dict
from missiwae.data import IncompleteDataset, load_incomplete_mnist
from missiwae.evaluation import estimate_log_likelihood, imputation_accuracy
from missiwae.imputation import impute_multiple, impute_single
from missiwae.model import MissIWAE, make_generator
from missiwae.training import CONFIG_FILE, WEIGHTS_FILE, EpochStats, load_model, train

PROG = "missiwae"
RUN_CONFIG_FILE = "run_config.json"
EVALUATION_FILE = "evaluation.json"
IMPUTATION_FILE = "imputation.json"
IMPUTATIONS_FILE = "imputations.npz"
SPLITS = ("train", "valid", "test")
SPLIT_SIZES = {"train": 50_000, "valid": 10_000, "test": 10_000}  # static binarized MNIST

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A user error the command line reports as one line (exit status 2)."""


# --------------------------------------------------------------------------------------- help

_DESCRIPTION = """\
missIWAE (Mattei & Frellsen, ICML 2019): a deep latent variable model p(z) p_θ(x | z) trained
on incomplete data by maximising the missIWAE bound L_K on the observed pixels only, then used
to estimate held-out log-likelihoods log p(x_o) and to impute the missing pixels (single
imputation by self-normalised importance sampling, multiple imputation by sampling importance
resampling).

The data are statically binarized MNIST (Larochelle & Murray) with pixels missing completely
at random (data.missing_rate). A run is three commands:

  train     fit the model on the incomplete training split; writes a checkpoint directory
  evaluate  test log-likelihood of the observed pixels, of complete images, and an
            independent-Bernoulli baseline
  impute    single and multiple imputation of the missing pixels, with their accuracy against
            zero and mean imputation
"""

_COMMON_EPILOG_TEMPLATE = """\
settings:
  A config file is YAML (or JSON when its name ends in .json) holding one mapping per section:
  data, model, train, evaluate, impute. Omitted keys keep their defaults; unknown keys and
  ill-typed values are errors. `--set section.key=value` overrides one setting (the value is
  read as YAML: 5, 1e-3, true, null, [200, 200]); several may follow one --set.
  {settings_pointer}

data:
  The data root holds binarized_mnist/ (binarized_mnist_{train,valid,test}.amat.gz and their
  *_mnist_index_labels.txt.gz) and/or mnist/ (the LeCun IDX files, binarized with data.seed
  when binarized_mnist/ is absent). It is --data-dir, else data.data_dir, else the environment
  variable MISSIWAE_DATA_DIR, else ~/.cache/missiwae/data.
"""

_COMMON_EPILOG = _COMMON_EPILOG_TEMPLATE.replace(
    "{settings_pointer}", "`missiwae train --help` lists every setting and its default."
)

_MAIN_EPILOG = (
    """\
examples:
  export MISSIWAE_DATA_DIR=/path/to/data        # holds binarized_mnist/ and mnist/
  missiwae train --config configs/demo.yaml --out runs/demo
  missiwae evaluate --checkpoint runs/demo      # writes runs/demo/evaluation.json
  missiwae impute --checkpoint runs/demo        # writes runs/demo/imputations.npz
  missiwae train --config configs/demo.yaml --out runs/k1 --set train.K=1   # the missVAE bound

"""
    + _COMMON_EPILOG
    + """
exit status: 0 success, 2 user error (bad setting, missing data or checkpoint), 130 interrupted.
Everything is deterministic given the seeds in the config (data.seed, train.seed,
evaluate.seed, impute.seed) on one device and torch version.
"""
)

_SECTION_NOTES = {
    "data": "num_*: rows used (a fixed random subset); null: the whole split (50000 / 10000 / 10000)",
    "model": "observation: bernoulli for binary pixels; imputation: ι, what the encoder sees in the holes",
    "train": "K: importance samples of the bound L_K (K = 1: missVAE); device: cpu or cuda",
    "evaluate": "num_samples: importance samples S of the log p(x_o) estimate",
    "impute": "num_samples: L particles; num_imputations: M copies; chunk_size null: from memory",
}


def _settings_listing() -> str:
    """Every setting with its default, as a YAML config file (generated from RunConfig)."""
    defaults = RunConfig()
    lines = []
    for field in dataclasses.fields(RunConfig):
        section = getattr(defaults, field.name)
        lines.append(f"  # {(type(section).__doc__ or '').strip().splitlines()[0]}")
        if field.name in _SECTION_NOTES:
            lines.append(f"  # {_SECTION_NOTES[field.name]}")
        lines.append(f"  {field.name}:")
        # JSON scalars and lists are valid YAML: null, true, "cpu", [200, 200].
        lines.extend(f"    {key}: {json.dumps(value)}" for key, value in to_dict(section).items())
    return "\n".join(lines)


def _train_epilog() -> str:
    return f"""\
examples:
  missiwae train --config configs/demo.yaml --out runs/demo
  missiwae train --config configs/demo.yaml --out runs/demo --set train.epochs=20   # resumes
  missiwae train --out runs/full --set train.K=5 data.missing_rate=0.8 --fresh

outputs in DIR:
  model.pt         weights, optimiser state, random streams and per-epoch history (every epoch)
  config.json      the model and train settings of the checkpoint
  run_config.json  the whole resolved config; evaluate and impute read it

resume:
  If DIR already holds a checkpoint, training continues after its last epoch up to train.epochs
  with the same optimiser state and random streams (same result as an uninterrupted run).
  --fresh discards it and starts over. Model settings must match the checkpoint's.

{_COMMON_EPILOG_TEMPLATE.replace("{settings_pointer}", "Every setting and its default are listed below.")}
every setting and its default (a valid config file):
{_settings_listing()}
"""


_EVALUATE_EPILOG = f"""\
metrics (means over the rows, in nats):
  log p(x_o)      importance-sampling estimate with S = evaluate.num_samples samples of the
                  observed pixels of each masked row (a stochastic lower bound that tightens
                  as S grows; 5000 is the paper's convention)
  log p(x)        the same estimate for the complete rows (mask all True)
  Bernoulli       independent per-pixel Bernoullis fitted to the observed training pixels
                  (data.num_train rows), scored on the same rows and masks

The test rows are a fixed random subset of data.num_test rows of the split (not a prefix: the
test split is sorted by label), masked with data.missing_rate and data.seed as in
run_config.json. --set may override the data and
evaluate sections (not the model).

examples:
  missiwae evaluate --checkpoint runs/demo
  missiwae evaluate --checkpoint runs/demo --set evaluate.num_samples=5000 data.num_test=null
  missiwae evaluate --checkpoint runs/demo --split valid --out runs/demo/valid.json

{_COMMON_EPILOG}"""


_IMPUTE_EPILOG = f"""\
method:
  Single imputation: E[x_m | x_o] by self-normalised importance sampling with
  L = impute.num_samples particles (the probability P(x_j = 1 | x_o) for binary pixels), then
  thresholded at 1/2. Multiple imputation: M = impute.num_imputations copies drawn by sampling
  importance resampling over the same kind of L particles. Observed pixels are never changed.

printed metrics:
  accuracy on the missing pixels (threshold 1/2) of missIWAE single imputation, of the M
  multiple imputations (mean), of zero imputation and of per-pixel mean imputation (means of
  the observed training pixels), and the mean effective sample size of the L weights.

outputs:
  FILE.npz (default DIR/{IMPUTATIONS_FILE}), written atomically:
    imputed          (N, 784)     single imputation (0/1 for binary pixels)
    conditional_mean (N, 784)     E[x | x_o]: observed pixels, SNIS means in the holes
    imputations      (M, N, 784)  multiple imputations (uint8 for binary pixels)
    mask             (N, 784)     True = observed
    labels           (N,)         digit labels
    effective_sample_size, log_likelihood  (N,)  per row
  DIR/{IMPUTATION_FILE}: the metrics.

examples:
  missiwae impute --checkpoint runs/demo
  missiwae impute --checkpoint runs/demo --split valid --set impute.num_imputations=20
  missiwae impute --checkpoint runs/demo --out /tmp/demo_imputations.npz

{_COMMON_EPILOG}"""


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=95)


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG, description=_DESCRIPTION, epilog=_MAIN_EPILOG, formatter_class=formatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    train = commands.add_parser(
        "train",
        help="train missIWAE on the incomplete training split (resumable)",
        description=_wrap(
            "Train missIWAE by Adam on the missIWAE bound L_K of the incomplete "
            "training rows (data.num_train rows), reporting the bound on data.num_valid "
            "validation rows after every epoch. A checkpoint is written to DIR after every epoch."
        ),
        epilog=_train_epilog(),
        formatter_class=formatter,
    )
    train.add_argument("--config", metavar="FILE", help="YAML or JSON config file (default: defaults)")
    _add_set(train, "train.epochs=5 data.missing_rate=0.8")
    train.add_argument("--out", metavar="DIR", required=True, help="checkpoint directory")
    _add_data_dir(train)
    train.add_argument("--no-progress", action="store_true", help="no per-batch progress bar")
    train.add_argument("--fresh", action="store_true", help="start over even if DIR holds a checkpoint")
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="held-out log-likelihood of a trained model vs an independent-Bernoulli baseline",
        description=_wrap(
            "Estimate the test log-likelihood of the observed pixels log p(x_o) and of "
            "complete images log p(x) by importance sampling, next to an independent-Bernoulli "
            "baseline; print them and write them as JSON."
        ),
        epilog=_EVALUATE_EPILOG,
        formatter_class=formatter,
    )
    _add_checkpoint(evaluate)
    _add_set(evaluate, "evaluate.num_samples=5000 data.num_test=null")
    evaluate.add_argument("--split", choices=SPLITS, default="test", help="rows to score (default: test)")
    evaluate.add_argument("--out", metavar="FILE", help=f"metrics JSON file (default: DIR/{EVALUATION_FILE})")
    _add_data_dir(evaluate)
    evaluate.set_defaults(handler=cmd_evaluate)

    impute = commands.add_parser(
        "impute",
        help="single (SNIS) and multiple (SIR) imputation of the missing pixels",
        description=_wrap(
            "Impute the missing pixels of a split with a trained model: single "
            "imputation by self-normalised importance sampling and multiple imputation by sampling "
            "importance resampling; compare the accuracy with zero and mean imputation."
        ),
        epilog=_IMPUTE_EPILOG,
        formatter_class=formatter,
    )
    _add_checkpoint(impute)
    _add_set(impute, "impute.num_samples=5000 impute.num_imputations=20")
    impute.add_argument("--split", choices=SPLITS, default="test", help="rows to impute (default: test)")
    impute.add_argument(
        "--out", metavar="FILE", help=f"imputations .npz file (default: DIR/{IMPUTATIONS_FILE})"
    )
    _add_data_dir(impute)
    impute.set_defaults(handler=cmd_impute)
    return parser


def _add_set(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="SECTION.KEY=VALUE",
        nargs="+",
        action="extend",
        default=[],
        help=f"override settings, e.g. --set {example}",
    )


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="data root (default: data.data_dir, else $MISSIWAE_DATA_DIR, else ~/.cache/missiwae/data)",
    )
    parser.add_argument(
        "--download",
        action="store_true",
        help="if the data root holds no MNIST files, download MNIST with torchvision (needs internet "
        "and the [download] extra) and binarize it with data.seed",
    )


def _add_checkpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", metavar="DIR", required=True, help="directory written by `missiwae train`"
    )


# ----------------------------------------------------------------------------------- entry


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a usage error (already printed)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USER_ERROR
    handler: Callable[[argparse.Namespace], int] = args.handler
    retain_freed_memory()
    try:
        return handler(args)
    except KeyboardInterrupt:
        hint = "; rerun the same command to resume after the last finished epoch"
        _error(args.command, "interrupted" + (hint if args.command == "train" else ""))
        return EXIT_INTERRUPTED
    except (CliError, ConfigError, OSError, ValueError) as error:
        # DataError is a ValueError; the library's argument checks raise ValueError too.
        _error(args.command, _one_line(error))
        return EXIT_USER_ERROR


def _error(command: str, message: str) -> None:
    print(f"{PROG} {command}: error: {message}", file=sys.stderr, flush=True)


def _one_line(error: BaseException) -> str:
    text = (
        str(error)
        if not isinstance(error, FileNotFoundError) or not error.filename
        else (f"{error.strerror or 'file not found'}: {error.filename}")
    )
    return " ".join(text.split()) or type(error).__name__


def _say(message: str = "") -> None:
    print(message, flush=True)


# -------------------------------------------------------------------------------- settings


def resolve_config(base: Mapping[str, Any], overrides: Sequence[str], data_dir: str | None) -> RunConfig:
    """Defaults <- `base` (file contents) <- `--set` overrides <- --data-dir, validated."""
    values = apply_overrides(base, list(overrides))
    if data_dir is not None:
        values = apply_overrides(values, [f"data.data_dir={json.dumps(str(Path(data_dir).resolve()))}"])
    return RunConfig.from_dict(values)


def _device(config: RunConfig) -> torch.device:
    try:
        device = torch.device(config.train.device)
    except RuntimeError as error:
        raise CliError(f"train.device={config.train.device!r} is not a torch device") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"train.device={config.train.device!r} but CUDA is not available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CliError(f"train.device={config.train.device!r} but MPS is not available here")
    return device


def _load_split(config: RunConfig, split: str, download: bool = False) -> IncompleteDataset:
    """`split` masked as configured, with data.num_<split> rows (a fixed random subset).

    The subset is data.py's: a fixed permutation of the split, not a prefix (the binarized
    MNIST test split is sorted by label), and each row keeps the mask it has in the full split.
    """
    if config.data.path is not None:
        raise CliError(
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
            raise CliError(f"data.num_{split}={num_rows} but the {split} split has only {size} rows")
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
        raise CliError(f"downloading MNIST failed: {error}") from error


def _model_input(x: torch.Tensor, mask: torch.Tensor, uses_oracle: bool) -> torch.Tensor:
    """What the model may see: the observed pixels (holes zeroed) unless ι is the oracle."""
    return x if uses_oracle else torch.where(mask, x, torch.zeros_like(x))


def _atomic_write(target: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write `target` through a temporary file in its directory, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; give a normal file's mode
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_json(target: Path, values: Mapping[str, Any]) -> None:
    text = json.dumps(values, indent=2) + "\n"
    _atomic_write(target, lambda stream: stream.write(text.encode()))


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    old_flat, new_flat = _flatten(old), _flatten(new)
    return [
        f"{key}: {old_flat.get(key)!r} -> {new_flat.get(key)!r}"
        for key in sorted(set(old_flat) | set(new_flat))
        if old_flat.get(key) != new_flat.get(key)
    ]


# ----------------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    base = load_config_file(args.config) if args.config else {}
    config = resolve_config(base, args.overrides, args.data_dir)
    device = _device(config)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} exists and is not a directory")
    weights = out / WEIGHTS_FILE
    resuming = weights.is_file() and not args.fresh
    done = _checkpoint_epochs(out, config) if resuming else 0
    if resuming and done >= config.train.epochs:
        epochs = config.train.epochs
        _say(f"nothing to train: the checkpoint in {out} has {done} epoch(s) (train.epochs={epochs})")
        return EXIT_OK
    if not resuming and config.train.epochs == 0:
        raise CliError("train.epochs is 0: nothing would be trained or saved (set train.epochs >= 1)")

    started = time.perf_counter()
    train_data = _load_split(config, "train", args.download)
    valid_data = _load_split(config, "valid", args.download)
    with torch.random.fork_rng(devices=[]):  # seeded weight init, without touching global RNG
        torch.manual_seed(config.train.seed)
        model = MissIWAE.from_config(config.model)
    oracle = model.uses_oracle
    x_train = _model_input(train_data.x, train_data.mask, oracle)
    x_valid = _model_input(valid_data.x, valid_data.mask, oracle)
    _say(
        f"data: {len(train_data)} train / {len(valid_data)} valid rows of binarized MNIST, "
        f"{config.data.missing_rate:.0%} of pixels missing (MCAR, seed {config.data.seed})"
    )
    _say(
        f"model: {config.model.architecture} {config.model.observation}, latent {config.model.latent_dim}, "
        f"{sum(p.numel() for p in model.parameters())} parameters; K={config.train.K}, "
        f"batch {config.train.batch_size}, lr {config.train.learning_rate:g}, device {device}"
    )

    out.mkdir(parents=True, exist_ok=True)
    if args.fresh:
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            (out / name).unlink(missing_ok=True)
    _write_json(out / RUN_CONFIG_FILE, config.to_dict())
    if resuming:
        _say(f"resuming from {weights}: {done} epoch(s) done, training up to {config.train.epochs}")

    def report(stats: EpochStats) -> None:
        valid = "n/a" if stats.valid_bound is None else f"{stats.valid_bound:9.3f}"
        _say(
            f"epoch {stats.epoch:3d}/{config.train.epochs}  train L_K {stats.train_bound:9.3f}  "
            f"valid L_K {valid}  {stats.seconds:6.1f} s"
        )

    history = train(
        model,
        x_train,
        train_data.mask,
        config.train,
        valid=(x_valid, valid_data.mask),
        checkpoint_dir=out,
        resume=not args.fresh,
        progress=not args.no_progress,
        on_epoch_end=report,
    )
    last = history[-1] if history else None
    summary = f"trained {len(history) - done} epoch(s) in {time.perf_counter() - started:.1f} s"
    if last is not None and last.valid_bound is not None:
        summary += f"; epoch {last.epoch}: valid L_K {last.valid_bound:.3f}"
    _say(summary)
    _say(f"checkpoint: {out} ({WEIGHTS_FILE}, {CONFIG_FILE}, {RUN_CONFIG_FILE})")
    return EXIT_OK


def _checkpoint_epochs(out: Path, config: RunConfig) -> int:
    """Epochs in the checkpoint at `out`; refuses one whose model settings differ from `config`."""
    config_path = out / CONFIG_FILE
    if not config_path.is_file():
        raise CliError(f"{out / WEIGHTS_FILE} exists without {config_path}: pass --fresh to start over")
    saved = json.loads(config_path.read_text()).get("model", {})
    changed = _differences({"model": saved}, {"model": config.to_dict()["model"]})
    if changed:
        raise CliError(
            f"the checkpoint in {out} has other model settings ({'; '.join(changed)}): "
            "pass --fresh to start over, or choose another --out"
        )
    run_config = out / RUN_CONFIG_FILE
    if run_config.is_file():
        previous = json.loads(run_config.read_text())
        changed = [
            change
            for change in _differences(previous, config.to_dict())
            if not change.startswith(("train.epochs:", "evaluate.", "impute."))
        ]
        if changed:
            print(f"warning: resuming with changed settings: {'; '.join(changed)}", file=sys.stderr)
    try:
        state = torch.load(out / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CliError(f"checkpoint {out / WEIGHTS_FILE} cannot be read ({error}); pass --fresh") from error
    if "optimizer" not in state:
        raise CliError(f"{out / WEIGHTS_FILE} holds no optimiser state to resume from: pass --fresh")
    return len(state.get("history", []))


# ------------------------------------------------------------------------ evaluate / impute


def _load_run(directory: str, overrides: Sequence[str], data_dir: str | None) -> tuple[MissIWAE, RunConfig]:
    """The trained model and run config of a checkpoint directory, with `--set` applied."""
    checkpoint = Path(directory)
    if not checkpoint.is_dir():
        raise CliError(f"checkpoint directory not found: {checkpoint}")
    run_config = checkpoint / RUN_CONFIG_FILE
    if not (checkpoint / WEIGHTS_FILE).is_file() or not run_config.is_file():
        raise CliError(
            f"no trained checkpoint in {checkpoint} (needs {WEIGHTS_FILE} and {RUN_CONFIG_FILE}): "
            f"run `missiwae train --out {checkpoint}` first"
        )
    model_keys = [o for o in overrides if o.strip().startswith("model.")]
    if model_keys:
        raise CliError(f"model settings are fixed by the checkpoint; cannot override {model_keys}")
    try:
        base = json.loads(run_config.read_text())
    except json.JSONDecodeError as error:
        raise CliError(f"{run_config} is not valid JSON ({error})") from error
    config = resolve_config(base, overrides, data_dir)
    device = _device(config)
    model = load_model(checkpoint, device)
    return model, config


def cmd_evaluate(args: argparse.Namespace) -> int:
    model, config = _load_run(args.checkpoint, args.overrides, args.data_dir)
    out = Path(args.out) if args.out else Path(args.checkpoint) / EVALUATION_FILE
    started = time.perf_counter()
    train_data = _load_split(config, "train", args.download)
    data = _load_split(config, args.split, args.download)
    device = model.device
    x, mask = data.x.to(device), data.mask.to(device)
    complete = torch.ones_like(mask)
    settings = config.evaluate
    _say(
        f"evaluating {args.checkpoint} on {len(data)} {args.split} rows "
        f"({config.data.missing_rate:.0%} missing), S={settings.num_samples} importance samples"
    )

    def estimate(observed: torch.Tensor, seed: int) -> torch.Tensor:
        return estimate_log_likelihood(
            model,
            _model_input(x, observed, model.uses_oracle),
            observed,
            settings.num_samples,
            batch_size=settings.batch_size,
            chunk_size=config.impute.chunk_size,
            generator=make_generator(seed, device),
        ).cpu()

    observed_ll = estimate(mask, settings.seed)
    complete_ll = estimate(complete, settings.seed + 1)
    bernoulli_observed = independent_bernoulli_log_likelihood(
        train_data.x, train_data.mask, data.x, data.mask
    )
    bernoulli_complete = independent_bernoulli_log_likelihood(
        train_data.x, train_data.mask, data.x, torch.ones_like(data.mask)
    )
    metrics = {
        "split": args.split,
        "num_rows": len(data),
        "missing_rate": config.data.missing_rate,
        "mean_observed_pixels": float(data.mask.float().sum(1).mean()),
        "num_samples": settings.num_samples,
        "log_likelihood_observed": float(observed_ll.mean()),
        "log_likelihood_complete": float(complete_ll.mean()),
        "bernoulli_log_likelihood_observed": float(bernoulli_observed.mean()),
        "bernoulli_log_likelihood_complete": float(bernoulli_complete.mean()),
        "seconds": time.perf_counter() - started,
        "checkpoint": str(Path(args.checkpoint).resolve()),
        "config": config.to_dict(),
    }
    _say(f"{'':28s}{'missIWAE':>12s}{'Bernoulli':>12s}")
    _say(
        f"{'log p(x_o) observed pixels':28s}{metrics['log_likelihood_observed']:12.3f}"
        f"{metrics['bernoulli_log_likelihood_observed']:12.3f}"
    )
    _say(
        f"{'log p(x)   complete images':28s}{metrics['log_likelihood_complete']:12.3f}"
        f"{metrics['bernoulli_log_likelihood_complete']:12.3f}"
    )
    _warn_non_finite(metrics)
    _write_json(out, metrics)
    _say(f"wrote {out} ({metrics['seconds']:.1f} s)")
    return EXIT_OK


def cmd_impute(args: argparse.Namespace) -> int:
    model, config = _load_run(args.checkpoint, args.overrides, args.data_dir)
    checkpoint = Path(args.checkpoint)
    out = Path(args.out) if args.out else checkpoint / IMPUTATIONS_FILE
    started = time.perf_counter()
    train_data = _load_split(config, "train", args.download)
    data = _load_split(config, args.split, args.download)
    if bool(data.mask.all()):
        raise CliError(f"no missing pixels to impute (data.missing_rate={config.data.missing_rate})")
    settings = config.impute
    device = model.device
    x, mask = data.x.to(device), data.mask.to(device)
    x_in = _model_input(x, mask, model.uses_oracle)
    _say(
        f"imputing {len(data)} {args.split} rows ({config.data.missing_rate:.0%} missing) with "
        f"{args.checkpoint}: L={settings.num_samples} particles, M={settings.num_imputations} imputations"
    )
    single = impute_single(
        model,
        x_in,
        mask,
        settings.num_samples,
        batch_size=settings.batch_size,
        chunk_size=settings.chunk_size,
        generator=make_generator(settings.seed, device),
    )
    multiple = impute_multiple(
        model,
        x_in,
        mask,
        settings.num_imputations,
        settings.num_samples,
        batch_size=settings.batch_size,
        chunk_size=settings.chunk_size,
        generator=make_generator(settings.seed + 1, device),
    )
    conditional_mean = torch.where(mask, x, single.imputed).cpu()
    binary = model.config is not None and model.config.observation == "bernoulli"
    imputed = torch.where(data.mask, data.x, (conditional_mean > 0.5).float()) if binary else conditional_mean
    imputations = multiple.imputations.cpu()
    truth, holes = data.x, data.mask
    means = observed_feature_means(train_data.x, train_data.mask)
    metrics = {
        "split": args.split,
        "num_rows": len(data),
        "missing_rate": config.data.missing_rate,
        "num_samples": settings.num_samples,
        "num_imputations": settings.num_imputations,
        "accuracy_missiwae": imputation_accuracy(imputed, truth, holes),
        "accuracy_multiple_mean": float(
            np.mean([imputation_accuracy(copy, truth, holes) for copy in imputations])
        ),
        "accuracy_zero": imputation_accuracy(zero_impute(truth, holes), truth, holes),
        "accuracy_mean": imputation_accuracy(mean_impute(truth, holes, means), truth, holes),
        "effective_sample_size_mean": float(single.effective_sample_size.mean()),
        "effective_sample_size_multiple_mean": float(multiple.effective_sample_size.mean()),
        "log_likelihood_observed": float(single.log_likelihood.mean()),
        "seconds": 0.0,
        "imputations_file": str(out.resolve()),
        "checkpoint": str(checkpoint.resolve()),
        "config": config.to_dict(),
    }
    image_dtype = np.uint8 if binary else np.float32
    arrays = {
        "imputed": imputed.numpy().astype(image_dtype),
        "conditional_mean": conditional_mean.numpy().astype(np.float32),
        "imputations": imputations.numpy().astype(image_dtype),
        "mask": data.mask.numpy(),
        "labels": data.labels.numpy(),
        "effective_sample_size": single.effective_sample_size.cpu().numpy(),
        "log_likelihood": single.log_likelihood.cpu().numpy(),
    }
    _atomic_write(out, lambda stream: np.savez(stream, **arrays))  # type: ignore[arg-type]
    metrics["seconds"] = time.perf_counter() - started
    _say(f"accuracy on the {int((~data.mask).sum())} missing pixels (threshold 1/2):")
    _say(f"  missIWAE single imputation (SNIS) {metrics['accuracy_missiwae']:.4f}")
    _say(f"  missIWAE multiple imputation (SIR, mean of M) {metrics['accuracy_multiple_mean']:.4f}")
    _say(f"  zero imputation                   {metrics['accuracy_zero']:.4f}")
    _say(f"  mean imputation                   {metrics['accuracy_mean']:.4f}")
    _say(
        f"mean effective sample size {metrics['effective_sample_size_mean']:.1f} of L={settings.num_samples}"
    )
    _warn_non_finite(metrics)
    _write_json(checkpoint / IMPUTATION_FILE, metrics)
    _say(f"wrote {out} and {checkpoint / IMPUTATION_FILE} ({metrics['seconds']:.1f} s)")
    return EXIT_OK


def _warn_non_finite(metrics: Mapping[str, Any]) -> None:
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not np.isfinite(v)]
    if bad:
        print(f"warning: non-finite metrics {bad}", file=sys.stderr, flush=True)
