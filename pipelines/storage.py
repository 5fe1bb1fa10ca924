"""Crash-safe output directories shared by the stages that write datasets (ingest, impute).

A stage writes into a temporary sibling, puts its manifest there last, then renames it into
place: a reader sees a whole dataset or none. A file lock keeps two runs of one run_dir apart.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from missiwae.data import DataError

TEMP_PREFIX = ".tmp-"  # what a crash may leave behind; stages sweep names with this prefix

if TYPE_CHECKING:
    import pyarrow as pa


class OutputError(OSError):
    """An output location cannot be written (permissions, read-only or full file system, a file
    where a directory should be). The message names the path; nothing partial is left visible."""


def ensure_writable(directory: Path) -> None:
    """Create `directory` if needed and prove a file can be written there (then remove it), so
    a bad run_dir fails in a second, before any stage has run. Root ignores permission bits,
    so this is a real write, not an access() check."""
    probe = directory / f"{TEMP_PREFIX}write-probe-{uuid.uuid4().hex}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as handle:
            handle.write(b"probe")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise OutputError(
            error.errno or errno.EIO,
            f"output directory {directory} is not writable ({error.strerror or error}); "
            "choose another run_dir or fix its permissions / free space",
        ) from error
    finally:
        with suppress(OSError):
            probe.unlink(missing_ok=True)


def output_error(error: OSError, what: str, where: Path) -> OutputError:
    """`error` (raised while writing `what` under `where`) as an OutputError that says what
    failed and that nothing partial is visible."""
    return OutputError(
        error.errno or errno.EIO,
        f"writing {what} under {where} failed ({error.strerror or error}); nothing partial is visible "
        "and earlier complete outputs are intact: free space or fix permissions, then run again",
    )


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The JSON object at `path`, or None when it is missing, unreadable or not an object."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """A temporary sibling path to write; renamed onto `target` when the block succeeds and
    removed when it fails, so `target` is always absent, the old file, or the whole new one."""
    temporary = target.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}-{target.name}")
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(target: Path, text: str) -> None:
    """`text` (UTF-8) at `target`, whole or not at all, flushed to disk before the rename."""
    with atomic_file(target) as temporary, temporary.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def write_json_atomic(target: Path, value: Any) -> None:
    write_text_atomic(target, json.dumps(value, indent=2))


def swap_into_place(source: Path, target: Path, trash: Path) -> None:
    """Make `source` appear at `target` by renames; a previous `target` is moved to `trash`
    (a path on the same file system that does not exist yet) and removed after."""
    old = None
    if target.exists():
        old = trash
        os.replace(target, old)
    os.replace(source, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` (created if missing) for the block."""
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_parquet_table(path: str | os.PathLike[str], columns: list[str] | None = None) -> pa.Table:
    """One Parquet file as an Arrow table; a truncated, corrupt or foreign file (or one lacking
    `columns`) is a DataError naming it, not an Arrow traceback."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError, ValueError) as error:
        message = " ".join(str(error).split())[:300]
        raise DataError(f"{path}: not a readable Parquet file of this pipeline ({message})") from error
