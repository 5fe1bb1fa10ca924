"""Publishing a stage's output: the one mechanism ingest, impute and the tabular stage share.

    fingerprint(settings, input hashes) -> lock -> reuse? -> staging dir -> manifest last
        -> swap into place

A stage computes into a fresh staging directory, writes its manifest there LAST, and renames the
directory into place, so a reader sees a whole output or none and a crash leaves only staging
leftovers, which the next run of that output sweeps. A run whose fingerprint matches an intact
manifest reuses the output untouched. A file lock keeps two runs of one output root apart.

Layout of one :class:`Publisher` (``root`` = e.g. ``{run_dir}/imputed``)::

    root/{lock}                     the lock file (``.impute.lock``, ...)
    root/{name}/                    a published output, its manifest inside (or none: see
                                    :meth:`Publisher.stage`)
    {area}/{prefix}{name}-<uuid>    staging; ``{area}/{prefix}old-{name}-<uuid>`` is the
                                    replaced output on its way out (both swept)
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipelines.storage import (
    OutputError,
    ensure_writable,
    exclusive,
    output_error,
    read_manifest,
    swap_into_place,
    write_json_atomic,
)

MANIFEST = "_MANIFEST.json"


def fingerprint(payload: Mapping[str, Any]) -> str:
    """sha256 (hex) of `payload` as canonical JSON (sorted keys): the one settings hash."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _feed(digest: Any, path: str | Path, filesystem: Any = None) -> None:
    with _open_bytes(path, filesystem) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def _open_bytes(path: str | Path, filesystem: Any) -> Any:
    """`path` open for reading bytes: through `filesystem` (pyarrow's) when given, else from disk."""
    if filesystem is None:
        return open(path, "rb")
    return filesystem.open_input_stream(str(path))


def file_sha256(path: str | Path, filesystem: Any = None) -> str:
    """sha256 (hex) of one file's bytes; read through `filesystem` (a pyarrow filesystem, such
    as the one a URI names) when given, else from this machine's disk."""
    digest = hashlib.sha256()
    _feed(digest, path, filesystem)
    return digest.hexdigest()


def hash_files(paths: Sequence[str | Path]) -> str:
    """sha256 (hex) of several files: each one's name, then its bytes, in the given order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).name.encode() + b"\0")
        _feed(digest, path)
    return digest.hexdigest()


CHECKPOINT_FILES = ("model.pt", "config.json")  # what missiwae.training.load_model reads


def checkpoint_sha256(directory: str | Path) -> str:
    """sha256 of a missiwae checkpoint: hash_files of its CHECKPOINT_FILES."""
    return hash_files([Path(directory) / name for name in CHECKPOINT_FILES])


def checkpoints_key(hashes: Sequence[str]) -> str | list[str]:
    """The fingerprint entry of the checkpoints an output was computed from (the model's, then
    any bootstrap members'): one model's hash alone, so outputs made before the ensemble keep
    their fingerprint; several, the list in order."""
    return hashes[0] if len(hashes) == 1 else list(hashes)


class Staged:
    """A staging directory being filled (``path``); set ``manifest`` for the mechanism to write
    it last, inside, before the swap."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.manifest: dict[str, Any] | None = None


class Publisher:
    """Where one stage publishes its outputs (see the module docstring).

    Args:
        root: the folder holding the published outputs and the lock.
        lock: the lock file's name under `root`.
        area: the folder for staging directories (default ``root/.staging``).
        prefix: the staging directories' name prefix (ingest: ``.tmp-`` right under root).
        what: how an error names an output, ``what.format(name)``, e.g. "the imputed split {!r}".
    """

    def __init__(
        self, root: Path, lock: str, what: str, *, area: Path | None = None, prefix: str = ""
    ) -> None:
        self.root, self.lock, self.what = Path(root), lock, what
        self.area = self.root / ".staging" if area is None else Path(area)
        self.prefix = prefix

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Prove `root` writable (an OutputError in a second otherwise), then hold the lock: a
        second run of the same output waits, then finds the first one's output to reuse."""
        ensure_writable(self.root)
        with exclusive(self.root / self.lock):
            yield

    def reusable(
        self, manifest_path: Path, fingerprint: str, intact: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any] | None:
        """The manifest at `manifest_path` when it records `fingerprint` and `intact(manifest)`
        holds (the files it lists are there), else None: recompute."""
        manifest = read_manifest(manifest_path)
        if manifest is None or manifest.get("fingerprint") != fingerprint or not intact(manifest):
            return None
        return manifest

    def sweep(self, names: Iterable[str] | None = None) -> None:
        """Remove what a crashed run left for `names` (None: everything with this prefix in the
        staging area). Such leftovers are never complete, by construction."""
        if names is None:
            leftovers = list(self.area.glob(f"{self.prefix}*"))
        else:
            leftovers = [
                path
                for name in names
                for pattern in (f"{self.prefix}{name}-*", f"{self.prefix}old-{name}-*")
                for path in self.area.glob(pattern)
            ]
        for leftover in leftovers:
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)

    @contextmanager
    def stage(self, name: str) -> Iterator[Staged]:
        """A fresh staging directory for output `name`; when the block succeeds the manifest
        (if set) is written into it last and it is swapped into ``root/name`` (the previous
        output, if any, is removed after). When the block fails the staging directory is
        removed, and an OSError becomes an OutputError naming the output."""
        self.area.mkdir(parents=True, exist_ok=True)
        staged = Staged(self.area / f"{self.prefix}{name}-{uuid.uuid4().hex}")
        staged.path.mkdir()
        try:
            yield staged
            if staged.manifest is not None:
                write_json_atomic(staged.path / MANIFEST, staged.manifest)  # last: marks it complete
            trash = self.area / f"{self.prefix}old-{name}-{uuid.uuid4().hex}"
            swap_into_place(staged.path, self.root / name, trash)
        except BaseException as error:
            shutil.rmtree(staged.path, ignore_errors=True)
            if isinstance(error, OSError) and not isinstance(error, OutputError):
                raise output_error(error, self.what.format(name), self.root) from error
            raise


__all__ = [
    "CHECKPOINT_FILES",
    "MANIFEST",
    "Publisher",
    "Staged",
    "checkpoint_sha256",
    "checkpoints_key",
    "file_sha256",
    "fingerprint",
    "hash_files",
]
