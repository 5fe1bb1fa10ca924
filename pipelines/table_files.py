"""The user's table as files: which ones ``data.path`` names, each read in its own column types,
checked against the others, and joined into one Arrow table in source order.

``data.path`` is one CSV / Parquet file, a directory (its ``.csv`` / ``.parquet`` / ``.pq``
files, not its subdirectories; names starting with ``.`` or ``_``, such as ``_SUCCESS``, are
skipped), or a glob (``data/part-*.csv``, ``**`` for subdirectories). Files are taken in sorted
path order; the table is their rows in that order, each file's rows in its own order, and every
row keeps where it came from (:class:`SourceFiles`: the file's name, its row there).

Every file must have the same columns in the same order. A column's type may differ between
files only where nothing is lost: integer types of different widths become int64, integers
beside floats become float64 (refused if an integer is beyond 2**53, where float64 would round
it), and a column that is empty in one file (read as type null) takes the others' type. A file
with a header and no row adds no row. Anything else (different columns, a boolean beside
numbers, a text column, an unreadable or 0-byte file) is a ConfigError naming the file and the
column.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from missiwae.config import ConfigError
from pipelines import publish

if TYPE_CHECKING:
    import pyarrow as pa

SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_KIND_NAMES = {"csv": "CSV", "parquet": "Parquet"}
_GLOB_CHARS = "*?["
_SKIPPED_PREFIXES = (".", "_")  # a directory's hidden files and markers (_SUCCESS, _metadata)


@dataclasses.dataclass(frozen=True)
class SourceFiles:
    """The files behind a table, in source order: ``names`` (N_files,) as shown to the user
    (the path relative to the files' common folder; the file name for one file) and
    ``num_rows`` (N_files,), the rows each contributed."""

    names: list[str]
    num_rows: list[int]

    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(file index, row within that file) of rows given by their index in the table."""
        starts = np.concatenate([[0], np.cumsum(self.num_rows)[:-1]]).astype(np.int64)
        index = np.searchsorted(starts, np.asarray(rows, np.int64), side="right") - 1
        # A file with no row shares its start with the next one: searchsorted picks the last.
        return index, np.asarray(rows, np.int64) - starts[index]

    def to_manifest(self) -> list[dict[str, object]]:
        return [{"file": n, "num_rows": r} for n, r in zip(self.names, self.num_rows, strict=True)]

    @classmethod
    def from_manifest(cls, entries: list[dict[str, object]]) -> SourceFiles:
        return cls([str(e["file"]) for e in entries], [int(str(e["num_rows"])) for e in entries])


def source_files(path: str | Path) -> list[Path]:
    """The files ``data.path`` names (module docstring), resolved, sorted; ConfigError when
    there are none, or a single file is missing or not CSV / Parquet."""
    text = os.path.expanduser(str(path))
    if any(char in text for char in _GLOB_CHARS):
        matches = sorted({Path(p).resolve() for p in glob.glob(text, recursive=True)})
        files = [p for p in matches if p.is_file() and p.suffix.lower() in SUFFIXES]
        if not files:
            raise ConfigError(f"data.path: no CSV or Parquet file matches {text}")
        return files
    resolved = Path(text).resolve()
    if resolved.is_dir():
        files = sorted(
            p
            for p in resolved.iterdir()
            if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith(_SKIPPED_PREFIXES)
        )
        if not files:
            raise ConfigError(f"data.path: the folder {resolved} holds no .csv, .parquet or .pq file")
        return files
    if not resolved.is_file():
        raise ConfigError(f"data.path: no such file or folder: {resolved}")
    if resolved.suffix.lower() not in SUFFIXES:
        raise ConfigError(
            f"data.path must end in one of {sorted(SUFFIXES)} (CSV or Parquet), got {resolved.name}"
        )
    return [resolved]


def display_names(files: list[Path]) -> list[str]:
    """How messages and the outputs' ``source_file`` name each file: its path relative to the
    files' common folder (the name alone for a single file)."""
    if len(files) == 1:
        return [files[0].name]
    root = common_folder(files)
    return [f.relative_to(root).as_posix() for f in files]


def common_folder(files: list[Path]) -> Path:
    """The deepest folder holding every one of `files`."""
    return Path(os.path.commonpath([str(f.parent) for f in files]))


def sources_sha256(path: str | Path) -> str:
    """sha256 of the table's bytes: the file's own for one file; for several, of each file's
    name and sha256 in order (renaming, adding or dropping a file changes it)."""
    files = source_files(path)
    if len(files) == 1:
        return publish.file_sha256(files[0])
    pairs = [[name, publish.file_sha256(f)] for name, f in zip(display_names(files), files, strict=True)]
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()


def read_files(path: str | Path) -> tuple[pa.Table, SourceFiles, str]:
    """(the table: every file's rows in source order, each column in its common type; where
    they came from; a name for messages: the file's, or ``N files in <folder>``)."""
    import pyarrow as pa

    files = source_files(path)
    names = display_names(files)
    parts = []
    for file, name in zip(files, names, strict=True):
        table = read_one(file, name)
        check_unique(table.column_names, name)
        parts.append(table)
    _check_same_columns(parts, names)
    if len(parts) == 1:
        return parts[0], SourceFiles(names, [parts[0].num_rows]), names[0]
    schema = pa.schema([(column, _common_type(parts, names, column)) for column in parts[0].column_names])
    joined = pa.concat_tables([_cast(part, schema, name) for part, name in zip(parts, names, strict=True)])
    where = f"{len(files)} files in {common_folder(files)}"
    return joined, SourceFiles(names, [part.num_rows for part in parts]), where


def read_one(path: Path, name: str) -> pa.Table:
    """One file as an Arrow table in its own column types; ConfigError naming it if unreadable."""
    import pyarrow as pa

    kind = SUFFIXES[path.suffix.lower()]
    try:
        return _read_csv(path, name) if kind == "csv" else _read_parquet(path, name)
    except ConfigError:
        raise
    except (pa.ArrowException, OSError, ValueError) as error:
        message = " ".join(str(error).split())[:300]
        raise ConfigError(f"{name} is not a readable {_KIND_NAMES[kind]} file ({message})") from error


def _read_csv(path: Path, name: str) -> pa.Table:
    """A CSV through pyarrow: integers stay exact int64 even with holes (pandas would make them
    float64), floats are parsed correctly rounded, a duplicated header is kept (not renamed)."""
    import pyarrow.csv as pa_csv

    size = path.stat().st_size
    if size == 0:
        raise ConfigError(f"{name} is empty (0 bytes): a CSV needs a header line of column names")
    # One block for the whole file: pyarrow infers a column's type from the first block only, so
    # a column of integers that turns float further down would otherwise fail to parse.
    block_size = min(max(size + 1, 1 << 20), 2**31 - 1)
    # strings_can_be_null: in a column of labels too, an empty cell (and pyarrow's other null
    # spellings, "NA", "NaN", "null" ...) marks a missing entry, as it does in a column of numbers.
    return pa_csv.read_csv(
        path,
        read_options=pa_csv.ReadOptions(block_size=block_size),
        convert_options=pa_csv.ConvertOptions(strings_can_be_null=True),
    )


def _read_parquet(path: Path, name: str) -> pa.Table:
    """A Parquet file; duplicate names are refused from the footer (Arrow cannot select them),
    and pandas' stored index columns are dropped, as pandas.read_parquet would."""
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    check_unique(schema.names, name)
    table = pq.read_table(path)
    metadata = schema.pandas_metadata or {}
    index = [c for c in metadata.get("index_columns", []) if isinstance(c, str) and c in table.column_names]
    return table.drop_columns(index) if index else table


def check_unique(names: list[str], file_name: str) -> None:
    """ConfigError naming the column names that occur more than once."""
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(
            f"column name(s) {repeated} occur more than once in {file_name}: give every column its own name"
        )


def _check_same_columns(parts: list[pa.Table], names: list[str]) -> None:
    first = parts[0].column_names
    for part, name in zip(parts[1:], names[1:], strict=True):
        if part.column_names == first:
            continue
        missing = [c for c in first if c not in part.column_names]
        extra = [c for c in part.column_names if c not in first]
        what = "; ".join(
            text
            for text in (f"lacks {missing}" if missing else "", f"has {extra} besides" if extra else "")
            if text
        )
        what = what or "the same columns in another order"
        raise ConfigError(
            f"{name} does not have the columns of {names[0]} ({what}): "
            "every file of data.path must have the same columns in the same order"
        )


def _common_type(parts: list[pa.Table], names: list[str], column: str) -> pa.DataType:
    """The column's type across the files (module docstring), or a ConfigError naming two files
    whose types cannot be joined without loss."""
    import pyarrow as pa

    typed = [(name, part.schema.field(column).type) for part, name in zip(parts, names, strict=True)]
    typed = [(name, kind) for name, kind in typed if not pa.types.is_null(kind)]
    kinds = {kind for _, kind in typed}
    if len(kinds) <= 1:
        return next(iter(kinds), pa.null())
    if all(pa.types.is_integer(kind) for kind in kinds):
        return pa.int64()
    if all(pa.types.is_integer(kind) or pa.types.is_floating(kind) for kind in kinds):
        return pa.float64()
    (first_name, first_kind), (other_name, other_kind) = (
        typed[0],
        next((name, kind) for name, kind in typed if kind != typed[0][1]),
    )
    raise ConfigError(
        f"column {column!r} is {first_kind} in {first_name} but {other_kind} in {other_name}: "
        "a column must hold the same kind of value in every file"
    )


def _cast(part: pa.Table, schema: pa.Schema, name: str) -> pa.Table:
    """`part` in the common `schema`; safe casts only, so a uint64 beyond int64 or an int64
    beyond 2**53 among floats is a ConfigError naming the file and column, never a changed value."""
    import pyarrow as pa

    columns = []
    for field, column in zip(schema, part.columns, strict=True):
        try:
            columns.append(column.cast(field.type, safe=True))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            message = " ".join(str(error).split())[:200]
            raise ConfigError(
                f"column {field.name!r} of {name} does not fit the type {field.type} it has in the other "
                f"files without changing a value ({message})"
            ) from error
    return pa.table(columns, schema=schema)


__all__ = [
    "SUFFIXES",
    "SourceFiles",
    "check_unique",
    "display_names",
    "read_files",
    "read_one",
    "source_files",
    "sources_sha256",
]
