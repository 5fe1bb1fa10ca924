"""Ray's C++ log lines written to this process's file descriptor 2, into the log file.

Ray's core (the C++ ``core_worker`` inside the driver) writes its ERROR lines straight to file
descriptor 2, past Python's logging and ``sys.stderr``, so :mod:`pipelines.console`'s routing
never sees them. One of them is printed by every Ray Data actor pool whatever the job does
(ray-project/ray#57733: "has constructor arguments in the object store and max_restarts > 0",
about Ray Data's own map transformer). Within :func:`divert_native_stderr`, descriptor 2 is a
pipe read by this file run as a script, in a process of its own:

    [2026-12-02 22:31:08,083 E 3267 3267] core_worker.cc:2465: Actor ... has constructor ...
        -> the log file (known noise, NOISE below)
    [2026-12-02 22:31:08,083 W 3267 3267] raylet_client.cc:77: ...   -> the log file
    [2026-12-02 22:31:08,083 E 3267 3267] core_worker.cc:901: <anything else>  -> the console
    everything else (a crash's output, a subprocess's errors)            -> the console, as written

Python's own writes (``sys.stderr``: progress bars, warnings, tracebacks) bypass the pipe: the
block points ``sys.stderr`` at a copy of the original descriptor, so their order relative to
stdout is unchanged. A process of its own, not a thread, so that whatever reached the pipe
still reaches the console when this process is killed: the filter reads until every writer
has closed the pipe. It ignores Ctrl-C for the same reason.

Standard library only: the script runs as ``python -I -S native_stderr.py LOG_FILE``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

# "[2026-12-02 22:31:08,083 E 3267 3267] core_worker.cc:2465: ..." (level D/I/W/E/F, pid, tid)
NATIVE_LINE = re.compile(
    rb"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ([DIWEF]) \d+ \d+\] [\w./-]+\.(?:cc|h):\d+: "
)
# ERROR-level lines that report no error of the job's.
NOISE = (
    # ray-project/ray#57733: Ray Data puts its map transformer in the object store and gives
    # every actor pool max_restarts (-1 by default); nothing of the job's is at stake.
    b"has constructor arguments in the object store and max_restarts > 0",
)
_LINE_LIMIT = 1 << 16  # a "line" held back this long without a newline is passed on as it is


def is_ray_noise(line: bytes) -> bool:
    """Whether `line` (one line, with or without its newline) is a Ray C++ log line that
    belongs in the log file: below ERROR, or an ERROR that reports nothing wrong (NOISE)."""
    match = NATIVE_LINE.match(line)
    return match is not None and (match.group(1) in b"DIW" or any(text in line for text in NOISE))


class _Pipe(Protocol):
    def read1(self, size: int = ..., /) -> bytes: ...


def filter_stream(source: _Pipe, console: BinaryIO, log: BinaryIO) -> None:
    """Copy `source` to `console` until end of file, sending Ray's noise lines to `log`.

    Bytes go on at once except a line that starts with "[" (which may be a native log line),
    held until its newline; so a progress bar's "\\r" redraws or a prompt are not delayed."""
    pending = b""
    at_line_start = True
    while chunk := source.read1(_LINE_LIMIT):  # what is there, without waiting for more
        pending += chunk
        while pending:
            if at_line_start and pending.startswith(b"["):
                end = pending.find(b"\n")
                if end < 0 and len(pending) < _LINE_LIMIT:
                    break  # wait for the rest of the line
                line, pending = (pending[: end + 1], pending[end + 1 :]) if end >= 0 else (pending, b"")
                target = log if is_ray_noise(line) else console
                target.write(line)
                target.flush()
                at_line_start = end >= 0
                continue
            end = pending.find(b"\n")
            piece, pending = (pending[: end + 1], pending[end + 1 :]) if end >= 0 else (pending, b"")
            console.write(piece)
            console.flush()
            at_line_start = end >= 0
    if pending:
        console.write(pending)
        console.flush()


@contextlib.contextmanager
def divert_native_stderr(log_path: Path) -> Iterator[None]:
    """Within the block, Ray's C++ noise on descriptor 2 goes to `log_path` (module
    docstring); everything is put back on exit. Where descriptors cannot be redirected (no
    fork/pipe, or descriptor 2 closed), the block runs unfiltered."""
    filter_process = _start_filter(log_path)
    if filter_process is None:
        yield
        return
    process, console_fd, write_end = filter_process
    python_stderr = sys.stderr
    replaced = _is_descriptor_2(python_stderr)
    if replaced:
        # Python's writes keep their order relative to stdout: straight to the console.
        sys.stderr = os.fdopen(
            os.dup(console_fd), "w", buffering=1, encoding=python_stderr.encoding, errors="backslashreplace"
        )
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        if replaced:
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = python_stderr
        os.dup2(console_fd, 2)
        os.close(console_fd)
        # Ray processes started in the block may still hold the pipe; the filter then ends
        # with the last of them, passing on what they write until then.
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)


def _start_filter(log_path: Path) -> tuple[subprocess.Popen[bytes], int, int] | None:
    """The filter process reading a new pipe, with a copy of descriptor 2 (the console) and the
    pipe's write end; None where that cannot be set up (descriptor 2 closed, no pipes)."""
    try:
        sys.stderr.flush()
        console_fd = os.dup(2)
    except (OSError, ValueError):
        return None
    read_end, write_end = os.pipe()
    try:
        with open(log_path, "ab"):  # the filter appends; fail here, not in the child
            pass
        # -I -S: no site, no user paths; this file needs the standard library only.
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", str(Path(__file__).resolve()), str(log_path)],
            stdin=read_end,
            stdout=console_fd,
            stderr=console_fd,
            close_fds=True,
        )
    except OSError:
        for fd in (write_end, console_fd):
            os.close(fd)
        return None
    finally:
        os.close(read_end)
    return process, console_fd, write_end


def _is_descriptor_2(stream: object) -> bool:
    """Whether `stream` writes to descriptor 2 (not a test's capture or a caller's file)."""
    try:
        return stream.fileno() == 2  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


def _main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the job's to report, through here
    with open(argv[1], "ab") as log, open(0, "rb", closefd=False) as pipe:
        filter_stream(pipe, sys.stdout.buffer, log)
    return 0


__all__ = ["NATIVE_LINE", "NOISE", "divert_native_stderr", "filter_stream", "is_ray_noise"]

if __name__ == "__main__":
    raise SystemExit(_main(sys.argv))
