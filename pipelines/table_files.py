"""The user's table as files: which ones ``data.path`` names, each read in its own column types,
checked against the others, and joined into one Arrow table in source order.

``data.path`` is one CSV / Parquet file, a directory (its ``.csv`` / ``.parquet`` / ``.pq``
files, not its subdirectories; names starting with ``.`` or ``_``, such as ``_SUCCESS``, are
skipped), or a glob (``data/part-*.csv``, ``**`` for subdirectories); each of them a local
path or a URI on any filesystem pyarrow opens (``s3://bucket/table/``, ``gs://...``,
``hdfs://...``, ``file:///...``: :func:`locate_files`), which the Ray Data tasks then read
too. Files are taken in sorted path order; the table is their rows in that order, each file's
rows in its own order, and every row keeps where it came from (:class:`SourceFiles`: the
file's name, its row there). The ingest reads the table a :class:`Piece` at a time
(:class:`TablePlan`); :func:`read_files` reads it whole (small tables and tests).

Every file must have the same columns in the same order. A column's type may differ between
files only where nothing is lost: integer types of different widths become int64, integers
beside floats become float64 (refused if an integer is beyond 2**53, where float64 would round
it), text stored two ways (string, large_string, dictionary) becomes large_string, and a
column that is empty in one file (read as type null) takes the others' type. A file
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
import posixpath
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from missiwae.config import ConfigError
from pipelines import publish

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pa_fs

SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_KIND_NAMES = {"csv": "CSV", "parquet": "Parquet"}
_GLOB_CHARS = "*?["
_SKIPPED_PREFIXES = (".", "_")  # a directory's hidden files and markers (_SUCCESS, _metadata)
# The most rows of a Parquet file read at a time (TablePlan.pieces); a CSV file is read whole.
PIECE_ROWS = 262_144


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


def is_uri(path: str | Path) -> bool:
    """Whether ``data.path`` names a URI (``scheme://...``) rather than a path on this machine."""
    return "://" in str(path)


def locate_files(path: str | Path) -> tuple[pa_fs.FileSystem, list[str]]:
    """The filesystem ``data.path`` is on and the files it names there (module docstring),
    sorted. A URI (``s3://bucket/data/``, ``gs://...``, ``file:///...``: any scheme
    ``pyarrow.fs.FileSystem.from_uri`` opens) is listed through its filesystem; anything else
    is a local path (:func:`source_files`)."""
    import pyarrow as pa
    import pyarrow.fs as pa_fs

    text = str(path)
    if not is_uri(text):
        return pa_fs.LocalFileSystem(), [str(file) for file in source_files(text)]
    # A URI's glob is not part of the URI ("?" would start a query): open the folder before it.
    glob_at = min((text.find(char) for char in _GLOB_CHARS if char in text), default=-1)
    opened = text if glob_at < 0 else text[:glob_at].rsplit("/", 1)[0]
    pattern = text[len(opened) :]
    try:
        filesystem, base = pa_fs.FileSystem.from_uri(opened)
    except (pa.ArrowException, OSError, ValueError) as error:
        raise ConfigError(f"data.path: cannot open {text} ({' '.join(str(error).split())[:200]})") from error
    return filesystem, _uri_files(filesystem, base + pattern, text)


def _uri_files(filesystem: pa_fs.FileSystem, base: str, text: str) -> list[str]:
    """:func:`source_files`' rules, through `filesystem`: `base` a glob, a folder or a file."""
    import pyarrow.fs as pa_fs

    if any(char in base for char in _GLOB_CHARS):
        parts = base.split("/")
        fixed = next(i for i, part in enumerate(parts) if any(char in part for char in _GLOB_CHARS))
        root = "/".join(parts[:fixed])
        pattern = re.compile(_glob_regex(base))
        entries = filesystem.get_file_info(pa_fs.FileSelector(root, recursive=True, allow_not_found=True))
        files = sorted(
            info.path
            for info in entries
            if info.type == pa_fs.FileType.File
            and pattern.fullmatch(info.path)
            and _suffix(info.path) in SUFFIXES
        )
        if not files:
            raise ConfigError(f"data.path: no CSV or Parquet file matches {text}")
        return files
    info = filesystem.get_file_info(base)
    if info.type == pa_fs.FileType.Directory:
        entries = filesystem.get_file_info(pa_fs.FileSelector(base, recursive=False))
        files = sorted(
            entry.path
            for entry in entries
            if entry.type == pa_fs.FileType.File
            and _suffix(entry.path) in SUFFIXES
            and not posixpath.basename(entry.path).startswith(_SKIPPED_PREFIXES)
        )
        if not files:
            raise ConfigError(f"data.path: the folder {text} holds no .csv, .parquet or .pq file")
        return files
    if info.type != pa_fs.FileType.File:
        raise ConfigError(f"data.path: no such file or folder: {text}")
    if _suffix(base) not in SUFFIXES:
        name = posixpath.basename(base)
        raise ConfigError(f"data.path must end in one of {sorted(SUFFIXES)} (CSV or Parquet), got {name}")
    return [base]


def _suffix(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def _glob_regex(pattern: str) -> str:
    """A regular expression for a glob over "/"-separated paths, as glob.glob(recursive=True)
    reads it: ``*`` and ``?`` within one path component, ``**/`` any number of folders."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


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


def display_names(files: Sequence[str | Path]) -> list[str]:
    """How messages and the outputs' ``source_file`` name each file: its path relative to the
    files' common folder (the name alone for a single file)."""
    paths = [Path(f).as_posix() for f in files]
    if len(paths) == 1:
        return [posixpath.basename(paths[0])]
    root = common_folder(paths)
    return [posixpath.relpath(f, root) for f in paths]


def common_folder(files: Sequence[str | Path]) -> str:
    """The deepest folder holding every one of `files`."""
    return posixpath.commonpath([posixpath.dirname(Path(f).as_posix()) for f in files])


def sources_sha256(path: str | Path) -> str:
    """sha256 of the table's bytes: the file's own for one file; for several, of each file's
    name and sha256 in order (renaming, adding or dropping a file changes it)."""
    filesystem, files = locate_files(path)
    if len(files) == 1:
        return publish.file_sha256(files[0], filesystem)
    names = display_names(files)
    pairs = [[name, publish.file_sha256(f, filesystem)] for name, f in zip(names, files, strict=True)]
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Piece:
    """Rows ``[start, start + num_rows)`` of file ``file`` (an index into the plan's files):
    the unit the streaming ingest reads, checks and writes at a time. ``first`` is its first
    row's index in the table (the files' rows one after the other)."""

    file: int
    start: int
    num_rows: int
    first: int


@dataclasses.dataclass(frozen=True)
class TablePlan:
    """Which files make the table and how to read it a piece at a time, from the files'
    footers (Parquet) or one read each (CSV): ``files`` their paths on ``filesystem`` (a
    pyarrow filesystem: local, or the one a URI names), ``names`` as shown
    (display_names), ``schema`` the columns in their common type (module docstring),
    ``num_rows`` (N_files,), ``where`` a name for messages, ``row_groups`` per file the row
    counts of its Parquet row groups (a CSV file: one group, the whole file)."""

    filesystem: pa_fs.FileSystem
    files: list[str]
    names: list[str]
    schema: pa.Schema
    num_rows: list[int]
    row_groups: list[list[int]]
    where: str

    @property
    def sources(self) -> SourceFiles:
        return SourceFiles(self.names, self.num_rows)

    @property
    def total_rows(self) -> int:
        return sum(self.num_rows)

    def pieces(self, max_rows: int | None = None) -> list[Piece]:
        """The table's rows as pieces in source order: a CSV file whole, a Parquet file's row
        groups gathered up to `max_rows` rows (default PIECE_ROWS; a larger group is a piece of
        its own). Files without rows give none."""
        max_rows = PIECE_ROWS if max_rows is None else max_rows
        pieces: list[Piece] = []
        first = 0
        for index, groups in enumerate(self.row_groups):
            start, size = 0, 0
            for rows in groups:
                if size and size + rows > max_rows:
                    pieces.append(Piece(index, start, size, first))
                    start, first, size = start + size, first + size, 0
                size += rows
            if size:
                pieces.append(Piece(index, start, size, first))
                first += size
        return pieces

    def read(self, piece: Piece) -> pa.Table:
        """The piece's rows, each column in the table's common type (ConfigError naming the
        file when it cannot be read or cast)."""
        path, name = self.files[piece.file], self.names[piece.file]
        if SUFFIXES[_suffix(path)] == "parquet":
            table = _read_parquet_rows(self.filesystem, path, name, piece.start, piece.num_rows)
        else:
            table = read_one(path, name, self.filesystem)
        return _cast(table, self.schema, name)


def plan_table(path: str | Path) -> TablePlan:
    """The :class:`TablePlan` of ``data.path``: the files' columns checked against each other and
    joined into one schema (module docstring); Parquet files are not read, only their footers."""
    import pyarrow as pa

    filesystem, files = locate_files(path)
    names = display_names(files)
    schemas, num_rows, row_groups = [], [], []
    for file, name in zip(files, names, strict=True):
        schema, groups = _file_layout(filesystem, file, name)
        check_unique(schema.names, name)
        schemas.append(schema)
        num_rows.append(sum(groups))
        row_groups.append(groups)
    _check_same_columns([schema.names for schema in schemas], names)
    common = pa.schema([(column, _common_type(schemas, names, column)) for column in schemas[0].names])
    where = names[0] if len(files) == 1 else f"{len(files)} files in {common_folder(files)}"
    return TablePlan(filesystem, files, names, common, num_rows, row_groups, where)


def read_files(path: str | Path) -> tuple[pa.Table, SourceFiles, str]:
    """(the table: every file's rows in source order, each column in its common type; where
    they came from; a name for messages: the file's, or ``N files in <folder>``)."""
    import pyarrow as pa

    plan = plan_table(path)
    parts = [plan.read(piece) for piece in plan.pieces()]
    table = pa.concat_tables(parts) if parts else plan.schema.empty_table()
    return table, plan.sources, plan.where


def _file_layout(filesystem: pa_fs.FileSystem, path: str, name: str) -> tuple[pa.Schema, list[int]]:
    """A file's schema (as read) and the row counts of its row groups; a CSV file is read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if SUFFIXES[_suffix(path)] == "csv":
        table = read_one(path, name, filesystem)
        return table.schema, [table.num_rows]
    try:
        parquet = pq.ParquetFile(filesystem.open_input_file(path))
        schema = parquet.schema_arrow
        groups = [parquet.metadata.row_group(i).num_rows for i in range(parquet.metadata.num_row_groups)]
    except (pa.ArrowException, OSError, ValueError) as error:
        raise _unreadable(name, "parquet", error) from error
    index = _pandas_index(schema)
    return pa.schema([field for field in schema if field.name not in index]), groups


def _pandas_index(schema: pa.Schema) -> list[str]:
    """The columns pandas stored as its index (dropped, as pandas.read_parquet would)."""
    metadata = schema.pandas_metadata or {}
    return [c for c in metadata.get("index_columns", []) if isinstance(c, str) and c in schema.names]


def _read_parquet_rows(
    filesystem: pa_fs.FileSystem, path: str, name: str, start: int, num_rows: int
) -> pa.Table:
    """Rows [start, start + num_rows) of a Parquet file, read by whole row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(filesystem.open_input_file(path))
        sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
        starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        groups = [i for i in range(len(sizes)) if starts[i] < start + num_rows and starts[i + 1] > start]
        if not groups:
            return parquet.schema_arrow.empty_table()
        table = parquet.read_row_groups(groups).slice(start - int(starts[groups[0]]), num_rows)
    except (pa.ArrowException, OSError, ValueError) as error:
        raise _unreadable(name, "parquet", error) from error
    index = _pandas_index(table.schema)
    return table.drop_columns(index) if index else table


def read_one(path: str | Path, name: str, filesystem: pa_fs.FileSystem | None = None) -> pa.Table:
    """One file (on `filesystem`, default the local one) as an Arrow table in its own column
    types; ConfigError naming it if unreadable."""
    import pyarrow as pa
    import pyarrow.fs as pa_fs

    filesystem = filesystem or pa_fs.LocalFileSystem()
    kind = SUFFIXES[_suffix(str(path))]
    try:
        return (
            _read_csv(filesystem, str(path), name)
            if kind == "csv"
            else _read_parquet(filesystem, str(path), name)
        )
    except ConfigError:
        raise
    except (pa.ArrowException, OSError, ValueError) as error:
        raise _unreadable(name, kind, error) from error


def _read_csv(filesystem: pa_fs.FileSystem, path: str, name: str) -> pa.Table:
    """A CSV through pyarrow: integers stay exact int64 even with holes (pandas would make them
    float64), floats are parsed correctly rounded, a duplicated header is kept (not renamed)."""
    import pyarrow.csv as pa_csv

    size = filesystem.get_file_info(path).size
    if size == 0:
        raise ConfigError(f"{name} is empty (0 bytes): a CSV needs a header line of column names")
    # One block for the whole file: pyarrow infers a column's type from the first block only, so
    # a column of integers that turns float further down would otherwise fail to parse.
    block_size = min(max(size + 1, 1 << 20), 2**31 - 1)
    # strings_can_be_null: in a column of labels too, an empty cell (and pyarrow's other null
    # spellings, "NA", "NaN", "null" ...) marks a missing entry, as it does in a column of numbers.
    return pa_csv.read_csv(
        filesystem.open_input_stream(path),
        read_options=pa_csv.ReadOptions(block_size=block_size),
        convert_options=pa_csv.ConvertOptions(strings_can_be_null=True),
    )


def _read_parquet(filesystem: pa_fs.FileSystem, path: str, name: str) -> pa.Table:
    """A whole Parquet file; duplicate names are refused from the footer (Arrow cannot select
    them), and pandas' stored index columns are dropped, as pandas.read_parquet would."""
    import pyarrow.parquet as pq

    schema = pq.read_schema(path, filesystem=filesystem)
    check_unique(schema.names, name)
    table = pq.read_table(path, filesystem=filesystem)
    index = _pandas_index(table.schema)
    return table.drop_columns(index) if index else table


def _unreadable(name: str, kind: str, error: Exception) -> ConfigError:
    """The one-line error for a file (`name`, of `kind` "csv" or "parquet") that pyarrow could
    not read, with pyarrow's reason."""
    message = " ".join(str(error).split())[:300]
    return ConfigError(f"{name} is not a readable {_KIND_NAMES[kind]} file ({message})")


def check_unique(names: list[str], file_name: str) -> None:
    """ConfigError naming the column names that occur more than once."""
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(
            f"column name(s) {repeated} occur more than once in {file_name}: give every column its own name"
        )


def _check_same_columns(columns: list[list[str]], names: list[str]) -> None:
    first = columns[0]
    for part, name in zip(columns[1:], names[1:], strict=True):
        if part == first:
            continue
        missing = [c for c in first if c not in part]
        extra = [c for c in part if c not in first]
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


def _common_type(schemas: list[pa.Schema], names: list[str], column: str) -> pa.DataType:
    """The column's type across the files (module docstring), or a ConfigError naming two files
    whose types cannot be joined without loss."""
    import pyarrow as pa

    typed = [(name, schema.field(column).type) for schema, name in zip(schemas, names, strict=True)]
    typed = [(name, kind) for name, kind in typed if not pa.types.is_null(kind)]
    kinds = {kind for _, kind in typed}
    if len(kinds) <= 1:
        return next(iter(kinds), pa.null())
    if all(pa.types.is_integer(kind) for kind in kinds):
        return pa.int64()
    if all(is_text(kind) for kind in kinds):  # text stored two ways (string, large_string ...)
        return pa.large_string()
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


def is_text(kind: pa.DataType) -> bool:
    """Strings (and dictionary-encoded strings, as Parquet stores categories): a column of labels."""
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


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
    "PIECE_ROWS",
    "SUFFIXES",
    "Piece",
    "SourceFiles",
    "TablePlan",
    "check_unique",
    "display_names",
    "is_text",
    "plan_table",
    "read_files",
    "read_one",
    "source_files",
    "sources_sha256",
]
