"""The project's one atomic file writer: a reader sees the old file, the whole new one, or none.

A file is written to a temporary sibling (same directory, so the rename cannot cross file
systems), flushed to disk, then renamed onto its target; on failure the sibling is removed.
Temporary names start with `TEMP_PREFIX`, so whatever a crash leaves behind is recognisable:
the pipeline stages sweep names with that prefix.

The temporary file is created with a plain `open()`, so a new file gets the mode any other
file of the process would get (0666 less the umask), not `mkstemp`'s owner-only 0600.

The output-path rule (`check_output_path`, applied by every writer here before it writes, and
by the command line before it starts work): a target that does not exist or is a regular file
is written; anything else that exists at that name is refused with `UnsafeOutputError`, so a
device node, a FIFO, a socket or a directory is never replaced by a file. A symbolic link is
refused too, even one pointing at a regular file: renaming onto it would replace the link
itself and leave its target stale, and following it would write wherever the link points;
the user names the real file instead.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO

TEMP_PREFIX = ".tmp-"  # what a crash may leave behind; stages sweep names with this prefix


class UnsafeOutputError(OSError):
    """An output path names something that is not a regular file (device, FIFO, socket,
    directory, symbolic link): writing would replace it, so nothing is written. An OSError,
    so callers that report file errors as user errors report this one too."""


def check_output_path(target: str | os.PathLike[str]) -> Path:
    """`target` as a Path when a file may be written there: it does not exist, or it is a
    regular file (not a link to one). Raises UnsafeOutputError naming the path otherwise."""
    target = Path(target)
    try:
        mode = os.lstat(target).st_mode  # lstat: judge a symbolic link itself, not its target
    except FileNotFoundError:
        return target
    except NotADirectoryError:  # a parent is a file: the write itself reports it
        return target
    if stat.S_ISREG(mode):
        return target
    raise UnsafeOutputError(
        f"refusing to write {target}: it exists and is {_kind(mode)}, not a regular file "
        "(remove it or choose another path)"
    )


def _kind(mode: int) -> str:
    """What a non-regular file is, in words (for the error message)."""
    kinds = (
        (stat.S_ISLNK, "a symbolic link (links are not followed)"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


@contextmanager
def atomic_file(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary sibling path for the block to write (by any writer that takes a path:
    `torch.save`, `savefig`, `open`); synced and renamed onto `target` when the block
    succeeds, removed when it fails. The target's directory must exist, and the target must
    pass `check_output_path` (checked before the block runs, and again before the rename)."""
    target = check_output_path(target)
    temporary = target.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}-{target.name}")
    try:
        yield temporary
        _fsync_file(temporary)
        check_output_path(target)  # again: the block may have run long (training, imputing)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_directory(target.parent)


def write_atomic(target: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """Call `write` on a binary stream whose bytes end up at `target`, whole or not at all
    (for writers that take a stream, e.g. `np.savez`, which renames a path lacking .npz)."""
    with atomic_file(target) as temporary, temporary.open("wb") as stream:
        write(stream)


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> None:
    """`data` at `target`, whole or not at all."""
    write_atomic(target, lambda stream: stream.write(data))


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    """`text` (UTF-8) at `target`, whole or not at all."""
    write_bytes_atomic(target, text.encode("utf-8"))


def write_json_atomic(target: str | os.PathLike[str], value: Any) -> None:
    """`value` as indented JSON (no trailing newline) at `target`, whole or not at all."""
    write_text_atomic(target, json.dumps(value, indent=2))


def _fsync_file(path: Path) -> None:
    # The writer may have closed its handle already: reopen read-only, which is enough for
    # fsync on Linux and macOS, so the data are on disk before the rename makes them visible.
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; some platforms and file systems cannot open or sync a
    # directory, and the file is already complete either way, so a failure here is ignored.
    with suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
