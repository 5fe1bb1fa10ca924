"""The `missiwae` command line: train, evaluate and impute on incomplete binarized MNIST.

    missiwae train    --config configs/demo.yaml --out runs/demo
    missiwae evaluate --checkpoint runs/demo
    missiwae impute   --checkpoint runs/demo

`main(argv)` returns the exit status (0 success, 2 user error, 130 interrupted) instead of
exiting, so tests can call it in-process. User errors (bad settings, missing data or checkpoint)
are reported as one line on stderr, never as a traceback.

This module only parses arguments and prints: what a command computes lives in the library,
`missiwae.runs` (config, data, checkpoints of a run directory) and `missiwae.run_results` (the
evaluation and imputation results), each tested on its own; the help texts are in `cli_help`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from missiwae import __version__, runs
from missiwae.allocator import retain_freed_memory
from missiwae.atomic import check_output_path
from missiwae.cli_help import (
    DESCRIPTION,
    EVALUATE_EPILOG,
    IMPUTE_EPILOG,
    MAIN_EPILOG,
    train_epilog,
    wrap,
)
from missiwae.config import ConfigError, load_config_file
from missiwae.run_results import (
    evaluate_run,
    impute_run,
    non_finite_metrics,
    write_imputations,
    write_json_record,
)
from missiwae.runs import EVALUATION_FILE, IMPUTATION_FILE, IMPUTATIONS_FILE, RUN_CONFIG_FILE, SPLITS
from missiwae.training import CONFIG_FILE, WEIGHTS_FILE, EpochStats, train

PROG = "missiwae"

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A user error the command line reports as one line (exit status 2)."""


# ---------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG, description=DESCRIPTION, epilog=MAIN_EPILOG, formatter_class=formatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    train = commands.add_parser(
        "train",
        help="train missIWAE on the incomplete training split (resumable)",
        description=wrap(
            "Train missIWAE by Adam on the missIWAE bound L_K of the incomplete "
            "training rows (data.num_train rows), reporting the bound on data.num_valid "
            "validation rows after every epoch. A checkpoint is written to DIR after every epoch."
        ),
        epilog=train_epilog(),
        formatter_class=formatter,
    )
    train.add_argument("--config", metavar="FILE", help="YAML or JSON config file (default: defaults)")
    _add_set(train, "train.epochs=5 data.missing_rate=0.8")
    train.add_argument("--out", metavar="DIR", required=True, help="checkpoint directory")
    _add_data_dir(train)
    train.add_argument("--no-progress", action="store_true", help="no per-batch progress bar")
    train.add_argument("--fresh", action="store_true", help="start over even if DIR holds a checkpoint")
    train.set_defaults(handler=cmd_train)

    _add_checkpoint_command(
        commands,
        "evaluate",
        summary="held-out log-likelihood of a trained model vs an independent-Bernoulli baseline",
        description="Estimate the test log-likelihood of the observed pixels log p(x_o) and of "
        "complete images log p(x) by importance sampling, next to an independent-Bernoulli "
        "baseline; print them and write them as JSON.",
        epilog=EVALUATE_EPILOG,
        set_example="evaluate.num_samples=5000 data.num_test=null",
        split_help="rows to score (default: test)",
        out_help=f"metrics JSON file (default: DIR/{EVALUATION_FILE})",
        handler=cmd_evaluate,
    )
    _add_checkpoint_command(
        commands,
        "impute",
        summary="single (SNIS) and multiple (SIR) imputation of the missing pixels",
        description="Impute the missing pixels of a split with a trained model: single "
        "imputation by self-normalised importance sampling and multiple imputation by sampling "
        "importance resampling; compare the accuracy with zero and mean imputation.",
        epilog=IMPUTE_EPILOG,
        set_example="impute.num_samples=5000 impute.num_imputations=20",
        split_help="rows to impute (default: test)",
        out_help=f"imputations .npz file (default: DIR/{IMPUTATIONS_FILE})",
        handler=cmd_impute,
    )
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


def _add_checkpoint_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    *,
    summary: str,
    description: str,
    epilog: str,
    set_example: str,
    split_help: str,
    out_help: str,
    handler: Callable[[argparse.Namespace], int],
) -> None:
    """A command that reads a trained checkpoint directory (evaluate, impute)."""
    command = commands.add_parser(
        name,
        help=summary,
        description=wrap(description),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument(
        "--checkpoint", metavar="DIR", required=True, help="directory written by `missiwae train`"
    )
    _add_set(command, set_example)
    command.add_argument("--split", choices=SPLITS, default="test", help=split_help)
    command.add_argument("--out", metavar="FILE", help=out_help)
    _add_data_dir(command)
    command.set_defaults(handler=handler)


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
    retain_freed_memory()  # an entry point opts in to this process-wide setting; the library never does
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


# ----------------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    base = load_config_file(args.config) if args.config else {}
    config = runs.resolve_config(base, args.overrides, args.data_dir)
    device = runs.resolve_device(config)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} exists and is not a directory")
    weights = out / WEIGHTS_FILE
    resuming = weights.is_file() and not args.fresh
    done = 0
    if resuming:
        resume = runs.resume_point(out, config)
        done = resume.epochs_done
        if resume.changed_settings:
            changed = "; ".join(resume.changed_settings)
            print(f"warning: resuming with changed settings: {changed}", file=sys.stderr)
    if resuming and done >= config.train.epochs:
        epochs = config.train.epochs
        _say(f"nothing to train: the checkpoint in {out} has {done} epoch(s) (train.epochs={epochs})")
        return EXIT_OK
    if not resuming and config.train.epochs == 0:
        raise CliError("train.epochs is 0: nothing would be trained or saved (set train.epochs >= 1)")

    started = time.perf_counter()
    train_data = runs.load_split(config, "train", args.download)
    valid_data = runs.load_split(config, "valid", args.download)
    model = runs.build_model(config)
    x_train = runs.model_input(train_data.x, train_data.mask, model.uses_oracle)
    x_valid = runs.model_input(valid_data.x, valid_data.mask, model.uses_oracle)
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
    write_json_record(out / RUN_CONFIG_FILE, config.to_dict())
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


# ------------------------------------------------------------------------ evaluate / impute


def cmd_evaluate(args: argparse.Namespace) -> int:
    model, config = runs.load_run(args.checkpoint, args.overrides, args.data_dir)
    # Checked before the work, not only when writing: a refused path costs no minutes.
    out = check_output_path(Path(args.out) if args.out else Path(args.checkpoint) / EVALUATION_FILE)
    started = time.perf_counter()
    train_data = runs.load_split(config, "train", args.download)
    data = runs.load_split(config, args.split, args.download)
    _say(
        f"evaluating {args.checkpoint} on {len(data)} {args.split} rows "
        f"({config.data.missing_rate:.0%} missing), S={config.evaluate.num_samples} importance samples"
    )
    result = evaluate_run(model, config, args.split, data, train_data)
    record = result.record(seconds=time.perf_counter() - started, checkpoint=args.checkpoint, config=config)
    _say(f"{'':28s}{'missIWAE':>12s}{'Bernoulli':>12s}")
    _say(
        f"{'log p(x_o) observed pixels':28s}{result.log_likelihood_observed:12.3f}"
        f"{result.bernoulli_log_likelihood_observed:12.3f}"
    )
    _say(
        f"{'log p(x)   complete images':28s}{result.log_likelihood_complete:12.3f}"
        f"{result.bernoulli_log_likelihood_complete:12.3f}"
    )
    _warn_non_finite(record)
    write_json_record(out, record)
    _say(f"wrote {out} ({record['seconds']:.1f} s)")
    return EXIT_OK


def cmd_impute(args: argparse.Namespace) -> int:
    model, config = runs.load_run(args.checkpoint, args.overrides, args.data_dir)
    if config.impute.bootstrap_models > 1:
        raise CliError(
            f"impute.bootstrap_models={config.impute.bootstrap_models}: the command line imputes "
            "from one checkpoint; the bootstrap ensemble is trained by the pipeline "
            "(pipelines/full.py) or by MissIWAEImputer(n_models=B)"
        )
    checkpoint = Path(args.checkpoint)
    # Both outputs are checked before the work, not only when writing: a refused path costs
    # no minutes of imputation.
    out = check_output_path(Path(args.out) if args.out else checkpoint / IMPUTATIONS_FILE)
    check_output_path(checkpoint / IMPUTATION_FILE)
    started = time.perf_counter()
    train_data = runs.load_split(config, "train", args.download)
    data = runs.load_split(config, args.split, args.download)
    if bool(data.mask.all()):  # before the announcement: nothing will be imputed
        raise CliError(f"no missing pixels to impute (data.missing_rate={config.data.missing_rate})")
    settings = config.impute
    _say(
        f"imputing {len(data)} {args.split} rows ({config.data.missing_rate:.0%} missing) with "
        f"{args.checkpoint}: L={settings.num_samples} particles, M={settings.num_imputations} imputations"
    )
    result = impute_run(model, config, args.split, data, train_data)
    write_imputations(out, result.arrays)
    metrics = result.metrics
    record = metrics.record(
        seconds=time.perf_counter() - started, imputations_file=out, checkpoint=checkpoint, config=config
    )
    _say(f"accuracy on the {result.num_missing} missing pixels (threshold 1/2):")
    _say(f"  missIWAE single imputation (SNIS) {metrics.accuracy_missiwae:.4f}")
    _say(f"  missIWAE multiple imputation (SIR, mean of M) {metrics.accuracy_multiple_mean:.4f}")
    _say(f"  zero imputation                   {metrics.accuracy_zero:.4f}")
    _say(f"  mean imputation                   {metrics.accuracy_mean:.4f}")
    _say(f"mean effective sample size {metrics.effective_sample_size_mean:.1f} of L={settings.num_samples}")
    _warn_non_finite(record)
    write_json_record(checkpoint / IMPUTATION_FILE, record)
    _say(f"wrote {out} and {checkpoint / IMPUTATION_FILE} ({record['seconds']:.1f} s)")
    return EXIT_OK


def _warn_non_finite(record: dict[str, object]) -> None:
    bad = non_finite_metrics(record)
    if bad:
        print(f"warning: non-finite metrics {bad}", file=sys.stderr, flush=True)
