"""Crash-safe output directories shared by the stages that write datasets (ingest, impute).

A stage writes into a temporary sibling, puts its manifest there last, then renames it into
place: a reader sees a whole dataset or none. A file lock keeps two runs of one run_dir apart.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The JSON object at `path`, or None when it is missing, unreadable or not an object."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


TEMP_PREFIX = ".tmp-"  # what a crash may leave behind; stages sweep names with this prefix


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
    with atomic_file(target) as temporary:
        temporary.write_text(text)


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
