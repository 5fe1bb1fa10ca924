"""What the job shows a person: one line per stage as it starts and ends, a progress bar for
the long stages, and Ray's (and its libraries') own log lines in a file instead of the console.

    [1/4] ingest    started: MNIST -> Parquet shards
    [1/4] ingest    done in 9 s: 2000 train, 500 valid, 1000 test rows written
    [2/4] train     started: 3 epochs, K=20, 2 Ray Train workers
    train epochs 100%|##########| 3/3 [00:41<00:00, valid bound=-131.2]
    [2/4] train     done in 48 s: final valid bound -131.2, test log p(x_o) -68.4
    ...
    Ray's own log lines: runs/smoke/logs/ray.log

Usage (the entry point chooses; nothing here runs at import)::

    with route_library_logs(run_dir / "logs" / "ray.log", verbose=False) as log_file:
        console = Console(["ingest", "train"], verbose=False)
        with console.stage("train", "3 epochs") as stage:
            bar = stage.progress(3, "train epochs", unit="epoch")
            ...; bar.update(1)
            stage.result = "final bound -131.2"

Routing replaces the console handlers of the loggers named in ``LIBRARY_LOGGERS`` (Ray, Ray
Data, Ray Train, MLflow and the database layers it logs through) by one file handler, and sends
the Python warnings those packages raise to the same file. Worker processes' stdout/stderr are
Ray's ``log_to_driver`` (pipelines.runtime); they keep their own files in Ray's session
directory. What Ray's C++ core writes to descriptor 2 itself is filtered by
:mod:`pipelines.native_stderr`. ``verbose=True`` keeps every console handler and also writes
the file. Errors are untouched: an exception still propagates with its full message and traceback.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from pipelines.native_stderr import divert_native_stderr

# Top-level logger names whose console output is routed to the file (their children follow).
LIBRARY_LOGGERS = ("ray", "mlflow", "alembic", "huey", "sqlalchemy")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What Ray's driver prints itself, not through a logger: messages the raylet pushes to the job
# (worker start-up warnings, workers killed) arrive on a background thread that writes
# "(raylet) ..." straight to sys.stdout (ray._private.worker.listen_error_messages), whatever
# log_to_driver says.
_RAY_PRINTED = re.compile(r"^\s*(\x1b\[[0-9;]*m)*\((raylet|autoscaler|gcs_server)\)")
_NAME_WIDTH = 9  # the widest stage name ("classify") and a space


def _is_console_handler(handler: logging.Handler) -> bool:
    """A handler that writes to a terminal stream (Ray's PlainRayHandler, MLflow's
    StreamHandler), as opposed to one writing a file (Ray Data's session log)."""
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


def _package_dirs(names: Sequence[str]) -> tuple[str, ...]:
    """Install directories of the installed packages among `names` (for routing warnings)."""
    dirs: list[str] = []
    for name in names:
        with contextlib.suppress(ImportError, ValueError):
            spec = importlib.util.find_spec(name)
            if spec is not None and spec.submodule_search_locations:
                dirs.extend(str(Path(p)) for p in spec.submodule_search_locations)
    return tuple(dirs)


class DivertedStdout:
    """A stand-in for sys.stdout that sends whole lines matching _RAY_PRINTED to `handler`
    and passes everything else through to `stream` (line-buffered, so a line is judged whole)."""

    def __init__(self, stream: TextIO, handler: logging.Handler):
        self.stream = stream
        self.handler = handler
        self.pending = ""
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            self.pending += text
            *lines, self.pending = self.pending.split("\n")
            for line in lines:
                if _RAY_PRINTED.match(line):
                    record = logging.makeLogRecord(
                        {
                            "name": "ray.driver_print",
                            "levelno": logging.INFO,
                            "levelname": "INFO",
                            "msg": line,
                        }
                    )
                    self.handler.handle(record)
                else:
                    self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        with self.lock:
            if self.pending:
                self.stream.write(self.pending)
                self.pending = ""
            self.stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ...
        return getattr(self.stream, name)


class LogRouting:
    """The routing state of :func:`route_library_logs`; :meth:`apply` is idempotent and is
    called again when a stage starts, so loggers a library configures late (MLflow on first
    import, Ray on ``ray.init``) are routed too."""

    def __init__(self, path: Path, verbose: bool):
        self.path = path
        self.verbose = verbose
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter(LOG_FORMAT))
        self.handler.setLevel(logging.INFO)  # Ray Data's DEBUG stays in its own session file
        self.removed: list[tuple[logging.Logger, logging.Handler]] = []
        self.attached: list[logging.Logger] = []
        self.package_dirs = _package_dirs(LIBRARY_LOGGERS)
        self.original_showwarning = warnings.showwarning

    def _library_loggers(self) -> list[logging.Logger]:
        names = [
            name
            for name, logger in list(logging.root.manager.loggerDict.items())
            if isinstance(logger, logging.Logger) and name.split(".")[0] in LIBRARY_LOGGERS
        ]
        return [logging.getLogger(name) for name in sorted({*LIBRARY_LOGGERS, *names})]

    def apply(self) -> None:
        for logger in self._library_loggers():
            # The file gets a logger's records once: where it has handlers of its own or
            # does not propagate (Ray's and MLflow's top loggers do not), attach there.
            owns_output = bool(logger.handlers) or logger.name in LIBRARY_LOGGERS
            if not self.verbose:
                for handler in [h for h in logger.handlers if _is_console_handler(h)]:
                    logger.removeHandler(handler)
                    self.removed.append((logger, handler))
            if owns_output and not logger.propagate and logger not in self.attached:
                logger.addHandler(self.handler)
                self.attached.append(logger)

    def showwarning(
        self,
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        """Warnings raised inside a routed package, or of a routed package's own category
        (RayDeprecationWarning names the caller's line), go to the file; the rest to the console."""
        own = getattr(category, "__module__", "").split(".")[0] in LIBRARY_LOGGERS
        if not self.verbose and (own or filename.startswith(self.package_dirs)):
            text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
            record = logging.makeLogRecord(
                {"name": "py.warnings", "levelno": logging.WARNING, "levelname": "WARNING", "msg": text}
            )
            self.handler.handle(record)
        else:
            self.original_showwarning(message, category, filename, lineno, file, line)

    def restore(self) -> None:
        for logger in self.attached:
            logger.removeHandler(self.handler)
        for logger, handler in reversed(self.removed):
            if handler not in logger.handlers:
                logger.addHandler(handler)
        warnings.showwarning = self.original_showwarning
        self.handler.close()


_ACTIVE: list[LogRouting] = []  # the routing in force, so stages can re-apply it


@contextlib.contextmanager
def route_library_logs(path: Path, verbose: bool = False) -> Iterator[Path]:
    """Within the block, Ray's and its libraries' log lines and warnings, and Ray's C++ noise
    on descriptor 2, go to `path` (also on the console when `verbose`); yields `path`.
    Everything is put back on exit."""
    routing = LogRouting(Path(path), verbose)
    routing.apply()
    warnings.showwarning = routing.showwarning
    stdout = sys.stdout
    if not verbose:
        sys.stdout = DivertedStdout(stdout, routing.handler)
    _ACTIVE.append(routing)
    try:
        with contextlib.nullcontext() if verbose else divert_native_stderr(routing.path):
            yield routing.path
    finally:
        _ACTIVE.remove(routing)
        if sys.stdout is not stdout:
            sys.stdout.flush()
            sys.stdout = stdout
        routing.restore()


def reapply_routing() -> None:
    """Route loggers configured since the routing began (no-op outside one)."""
    for routing in _ACTIVE:
        routing.apply()


class Stage:
    """One running stage: set :attr:`result` to its key figure; :meth:`progress` opens a bar
    that is closed when the stage ends."""

    def __init__(self, console: Console, name: str):
        self.console = console
        self.name = name
        self.result = ""
        self.bars: list[Any] = []

    def progress(self, total: int | None, description: str, unit: str = "it") -> Any:
        """A tqdm bar on the console's bar stream; `total` None when the count is unknown."""
        bar = tqdm(
            total=total,
            desc=description,
            unit=unit,
            file=self.console.bar_stream,
            leave=True,
            dynamic_ncols=True,
            mininterval=0.5,
        )
        self.bars.append(bar)
        return bar

    def close_bars(self) -> None:
        for bar in self.bars:
            bar.close()
        self.bars.clear()


class Console:
    """Stage lines on `out` (stdout), progress bars on `bar_stream` (stderr), numbered
    against the job's `stages` in order."""

    def __init__(self, stages: Sequence[str], out: TextIO | None = None, bar_stream: TextIO | None = None):
        self.stages = list(stages)
        self.out = out if out is not None else sys.stdout
        self.bar_stream = bar_stream if bar_stream is not None else sys.stderr

    def line(self, text: str) -> None:
        """One line on the console, flushed so it lands before any bar drawn after it."""
        self.bar_stream.flush()
        print(text, file=self.out, flush=True)

    def _prefix(self, name: str) -> str:
        number = self.stages.index(name) + 1 if name in self.stages else "?"
        return f"[{number}/{len(self.stages)}] {name:<{_NAME_WIDTH}}"

    @contextlib.contextmanager
    def stage(self, name: str, doing: str) -> Iterator[Stage]:
        """Start line now; end line (seconds and the stage's result) on leaving the block, an
        'interrupted' line on Ctrl-C, or a FAILED line when another exception escapes (the
        exception itself propagates unchanged)."""
        reapply_routing()
        self.line(f"{self._prefix(name)} started: {doing}")
        stage = Stage(self, name)
        started = time.perf_counter()
        try:
            yield stage
        except BaseException as error:
            stage.close_bars()
            seconds = time.perf_counter() - started
            # Ctrl-C is not a failure: the entry point says so once, with how to resume.
            ending = "interrupted" if isinstance(error, KeyboardInterrupt) else "FAILED"
            reason = "" if isinstance(error, KeyboardInterrupt) else f": {type(error).__name__}"
            self.line(f"{self._prefix(name)} {ending} after {seconds:.0f} s{reason}")
            raise
        stage.close_bars()
        seconds = time.perf_counter() - started
        result = f": {stage.result}" if stage.result else ""
        self.line(f"{self._prefix(name)} done in {seconds:.0f} s{result}")


# ------------------------------------------------------------------------------ Ctrl-C

INTERRUPTED = "interrupted; run the same command again to resume"
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a Ctrl-C
_STARTING_HANDLERS: list[Callable[[int, Any], None]] = []  # installed by exit_quietly_on_interrupt


def say_interrupted(prog: str) -> None:
    """The one line an entry point prints on Ctrl-C (on stderr, like its errors)."""
    print(f"{prog}: {INTERRUPTED}", file=sys.stderr, flush=True)


def exit_quietly_on_interrupt(prog: str) -> None:
    """Until :func:`raise_on_interrupt`, Ctrl-C prints :func:`say_interrupted`'s line and
    exits with EXIT_INTERRUPTED: for a script's first seconds, spent importing torch, Ray and
    MLflow, where a KeyboardInterrupt would print a traceback from inside some import."""

    def handler(signum: int, frame: Any) -> None:
        say_interrupted(prog)
        raise SystemExit(EXIT_INTERRUPTED)

    _STARTING_HANDLERS.append(handler)
    signal.signal(signal.SIGINT, handler)


def raise_on_interrupt() -> None:
    """Ctrl-C raises KeyboardInterrupt again (Python's default), so a running job unwinds
    (MLflow runs ended, the embedded Ray stopped) before its entry point reports it; only when
    :func:`exit_quietly_on_interrupt` installed the handler, so a caller's own one (a test, a
    notebook) stays."""
    if signal.getsignal(signal.SIGINT) in _STARTING_HANDLERS:
        signal.signal(signal.SIGINT, signal.default_int_handler)


__all__ = [
    "EXIT_INTERRUPTED",
    "INTERRUPTED",
    "LIBRARY_LOGGERS",
    "Console",
    "LogRouting",
    "Stage",
    "exit_quietly_on_interrupt",
    "raise_on_interrupt",
    "reapply_routing",
    "route_library_logs",
    "say_interrupted",
]
