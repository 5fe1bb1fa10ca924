"""Crash-safe file-system primitives under pipelines/publish.py: a writability probe, the
OutputError it and the stages raise, manifest reading, rename-swap, and a file lock.

(Parquet reading is the shard format's: pipelines/shards.py.)
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
from typing import Any

# The one atomic writer lives in the library; re-exported here for the stages that import it.
from missiwae.atomic import TEMP_PREFIX as TEMP_PREFIX
from missiwae.atomic import atomic_file as atomic_file
from missiwae.atomic import write_json_atomic as write_json_atomic
from missiwae.atomic import write_text_atomic as write_text_atomic


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
