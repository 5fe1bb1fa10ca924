"""Generated tables through the table path (pipelines/full.py --data): ingest -> train -> impute.

A hypothesis strategy writes CSV / Parquet files with random column names (the pipeline's own
bookkeeping names among them), types (int64 near 2**53 and at its ends, int32, uint8, bool,
float64 from 1e-320 to 1e300 and inf, float32), sizes (0 to a few dozen rows), empty and
duplicate columns. Each file runs through the stage functions in this process, on one shared
Ray instance, and ends one of two ways:

- accepted: every observed cell of every output table is bit-identical to the file's, in the
  file's own type, every imputed cell is finite, and every row keeps its index and split;
- refused with the error type full.py prints as one line with rc 2 (ConfigError / DataError),
  one line naming the file and, when a column is at fault, the column. An independent oracle
  below says which tables must be refused.

Few examples by default (each accepted table trains a model on Ray); more with
``MISSIWAE_TABLES_PROFILE=slow``. Two hand-written cases run full.py itself as a subprocess for
the exit code and the one line on stderr.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from missiwae.columns import MAX_MAGNITUDE
from missiwae.config import ConfigError
from missiwae.mnist_files import DataError
from tests.conftest import REPO, count_example

PROFILE = os.environ.get("MISSIWAE_TABLES_PROFILE", "ci")
# Examples per run. Through the whole path an accepted table costs a Ray Train run and a Ray
# Data job (half a minute to a minute on 2 cores), so few; through the reading and the output
# assembly alone (the same functions, imputations drawn here) milliseconds, so many.
FULL_PATH_EXAMPLES = {"ci": 3, "slow": 40}[PROFILE]
ASSEMBLY_EXAMPLES = {"ci": 80, "slow": 1000}[PROFILE]

# The pipeline's own column names (shards, outputs, pandas' index) and near misses.
RESERVED = (
    "split",
    "source_row",
    "source_file",
    "_split",
    "_source_row",
    "row_id",
    "label",
    "mask",
    "values",
    "source",
    "c0",
    "pixels",
    "__index_level_0__",
)
# A tiny model and one epoch: the table path, not the model, is under test.
SMALL = {
    "model.hidden": "[4]",
    "model.latent_dim": "1",
    "train.epochs": "1",
    "train.K": "2",
    "train.batch_size": "8",
    "scaling.num_workers": "1",
    "evaluate.num_samples": "4",
    "impute.num_samples": "4",
    "impute.num_imputations": "1",
    "impute_stage.num_actors": "1",
}
ARROW_TYPES = {
    "int64": pa.int64(),
    "int32": pa.int32(),
    "uint8": pa.uint8(),
    "bool": pa.bool_(),
    "float64": pa.float64(),
    "float32": pa.float32(),
}
CSV_KINDS = ("int64", "bool", "float64")  # what a CSV reader can tell apart
PARQUET_KINDS = tuple(ARROW_TYPES)


@dataclasses.dataclass(frozen=True)
class Column:
    """One generated column: cells are Python values, None = a hole (in Parquet float columns
    written as NaN when `nan_holes`, else null)."""

    name: str
    kind: str
    cells: list[Any]
    nan_holes: bool = False

    @property
    def observed(self) -> list[bool]:
        return [cell is not None for cell in self.cells]


@dataclasses.dataclass(frozen=True)
class GeneratedTable:
    file_format: str  # "csv" or "parquet"
    num_rows: int
    columns: list[Column]


# ------------------------------------------------------------------------------ strategy


def _values(kind: str, hostile: bool) -> st.SearchStrategy[Any]:
    """A column's cells: `hostile` float columns also draw inf and magnitudes beyond
    MAX_MAGNITUDE (to be refused); tame ones stay finite, subnormals and -0.0 included."""
    if kind == "int64":
        return st.one_of(
            st.integers(-5, 20),
            st.integers(2**53 - 3, 2**53 + 3),
            st.sampled_from([-(2**63), 2**63 - 1]),
        )
    if kind == "int32":
        return st.integers(-(2**31), 2**31 - 1)
    if kind == "uint8":
        return st.integers(0, 255)
    if kind == "bool":
        return st.booleans()
    if kind == "float32":
        return st.floats(width=32, allow_nan=False, allow_infinity=hostile)
    tame = st.one_of(
        st.floats(-1e6, 1e6),
        st.floats(-MAX_MAGNITUDE, MAX_MAGNITUDE),
        st.sampled_from([1e-320, -5e-324, 0.0, -0.0, MAX_MAGNITUDE, 2.0**53 + 2]),
    )
    if not hostile:
        return tame
    return st.one_of(tame, st.sampled_from([1e300, -1e300, 1.5e150, math.inf, -math.inf]))


NAMES = st.one_of(st.sampled_from(RESERVED), st.text(alphabet="ab xé_,\"'1", max_size=5))


@st.composite
def columns(draw: st.DrawFn, name: str, kinds: tuple[str, ...], num_rows: int) -> Column:
    """One column: empty (no observed cell) one time in ten, else cells of a random kind with
    0%, 30% or 70% holes; one column in four is hostile (see _values)."""
    if draw(st.integers(0, 9)) == 0 or not num_rows:
        return Column(name, "empty", [None] * num_rows)
    kind = draw(st.sampled_from(kinds))
    hole_rate = draw(st.sampled_from([0.0, 0.3, 0.7]))
    values = _values(kind, hostile=draw(st.integers(0, 3)) == 0)
    cells = [None if draw(st.floats(0, 1)) < hole_rate else draw(values) for _ in range(num_rows)]
    return Column(name, kind, cells, nan_holes=kind.startswith("float") and draw(st.booleans()))


@st.composite
def tables(draw: st.DrawFn) -> GeneratedTable:
    """0 to 30 rows, 0 to 4 columns; names distinct except one table in five."""
    file_format = draw(st.sampled_from(["csv", "parquet"]))
    num_rows = draw(st.integers(0, 30))
    kinds = CSV_KINDS if file_format == "csv" else PARQUET_KINDS
    distinct = draw(st.integers(0, 4)) > 0
    names = draw(st.lists(NAMES, min_size=0, max_size=4, unique=distinct))
    return GeneratedTable(file_format, num_rows, [draw(columns(n, kinds, num_rows)) for n in names])


# ------------------------------------------------------------------------------ files


def write_table(table: GeneratedTable, path: Path) -> None:
    """The table as a file: CSV through the csv module (Python's repr of floats, True/False),
    Parquet through pyarrow with each column's own type; duplicate names are written as is."""
    if table.file_format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if table.columns:
            writer.writerow([c.name for c in table.columns])
            for i in range(table.num_rows):
                writer.writerow(["" if c.cells[i] is None else _csv_cell(c.cells[i]) for c in table.columns])
        path.write_text(buffer.getvalue())
        return
    arrays = [_arrow_column(c) for c in table.columns]
    names = [c.name for c in table.columns]
    pq.write_table(pa.Table.from_arrays(arrays, names=names) if arrays else pa.table({}), path)


def _csv_cell(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _arrow_column(column: Column) -> pa.Array:
    if column.kind == "empty":
        return pa.array([None] * len(column.cells), pa.float64())
    cells = [math.nan if cell is None and column.nan_holes else cell for cell in column.cells]
    return pa.array(cells, ARROW_TYPES[column.kind])


# ------------------------------------------------------------------------------ oracle


def column_faults(table: GeneratedTable) -> dict[str, list[str]]:
    """Why each column must be refused (inf, no observed value, beyond MAX_MAGNITUDE), by name."""
    faults: dict[str, list[str]] = {}
    for column in table.columns:
        observed = [cell for cell in column.cells if cell is not None]
        reasons = []
        if not observed:
            reasons.append("empty")
        elif any(isinstance(v, float) and math.isinf(v) for v in observed):
            reasons.append("inf")
        elif any(abs(float(v)) > MAX_MAGNITUDE for v in observed):
            reasons.append("wide")
        if reasons:
            faults[column.name] = reasons
    return faults


def structural_fault(table: GeneratedTable) -> str | None:
    """A reason to refuse the whole file, not one column (checked before the columns)."""
    names = [c.name for c in table.columns]
    if not names:
        return "no columns"
    if len(set(names)) < len(names):
        return "duplicate names"
    if table.num_rows < 3:
        return "too few rows"
    return None


# ------------------------------------------------------------------------------ the table path


@pytest.fixture(scope="module")
def shared_ray(_ray_session: None) -> Iterator[None]:
    """One Ray for every example of this module (the session's, started on first use)."""
    from pipelines.runtime import ensure_ray

    ensure_ray()
    yield


def run_table_path(path: Path, run_dir: Path) -> tuple[dict[str, pa.Table], dict[str, Any]]:
    """ingest -> train -> impute on the file, in process: the imputed tables by name and the
    output manifest. Raises what the stages raise (full.py maps ConfigError / DataError to rc 2)."""
    from pipelines.config import load_pipeline_config
    from pipelines.ingest import run_ingest
    from pipelines.table_source import tabular_model_config
    from pipelines.tabular import run_tabular_imputation
    from pipelines.train import run_training

    overrides = [f"data.path={json.dumps(str(path))}", f"run_dir={json.dumps(str(run_dir))}"]
    config = load_pipeline_config("table", overrides + [f"{k}={v}" for k, v in SMALL.items()])
    ingest = run_ingest(config)
    config = tabular_model_config(config, ingest)
    trained = run_training(config, ingest)
    imputed = run_tabular_imputation(config, ingest, trained.checkpoint_dir)
    manifest = json.loads((imputed.directory / "_MANIFEST.json").read_text())
    from pipelines.table_output import load_imputed_table

    return {name: load_imputed_table(folder) for name, folder in imputed.datasets.items()}, manifest


def same_bits(kind: str, got: Any, want: Any) -> bool:
    """Cell equality to the bit: floats by their IEEE pattern (-0.0 != 0.0, 1e-320 kept)."""
    if kind == "float64":
        return struct.pack("<d", got) == struct.pack("<d", want)
    if kind == "float32":
        return struct.pack("<f", got) == struct.pack("<f", want)
    return type(got) is type(want) and got == want


def check_accepted(table: GeneratedTable, outputs: dict[str, pa.Table], manifest: dict[str, Any]) -> None:
    names = [c.name for c in table.columns]
    rows = manifest["row_columns"]
    assert set(rows) == {"source_file", "source_row", "split", "mask"} and not set(rows.values()) & set(names)
    for name, output in outputs.items():
        bookkeeping = [rows["source_file"], rows["source_row"], rows["split"], rows["mask"]]
        assert output.column_names == [*bookkeeping, *names], name
        assert output.column(rows["source_row"]).to_pylist() == list(range(table.num_rows))
        assert set(output.column(rows["split"]).to_pylist()) == {"train", "valid", "test"}
        for column in table.columns:
            kind = column.kind  # a CSV's kinds (int64, bool, float64) read back as such
            got = output.column(column.name)
            assert got.type == ARROW_TYPES[kind], (name, column.name, got.type)
            assert got.null_count == 0, (name, column.name)
            cells = got.to_pylist()
            for i, want in enumerate(column.cells):
                if want is None:
                    assert not isinstance(cells[i], float) or math.isfinite(cells[i]), (name, column.name, i)
                else:
                    assert same_bits(kind, cells[i], want), (name, column.name, i, cells[i], want)


def check_refused(table: GeneratedTable, path: Path, error: Exception) -> None:
    message = str(error)
    assert "\n" not in message and path.name in message, message
    structural = structural_fault(table)
    faults = column_faults(table)
    if structural is None:
        # A column is at fault (the oracle's, or one whose held-out rows lie too far out after
        # standardising with the train rows): the message names it.
        candidates = list(faults) if faults else [c.name for c in table.columns]
        assert any(repr(name) in message for name in candidates), (message, faults)


def assemble_outputs(path: Path, folder: Path) -> tuple[dict[str, pa.Table], dict[str, Any]]:
    """The table path without Ray: ingest's reading, splitting and shard tables (written and read
    back with plain pyarrow), then the output assembly of the impute stage on imputations drawn
    here in the model's float32, wild ones included (up to float32's largest)."""
    from pipelines.config import load_pipeline_config
    from pipelines.shards import read_shards
    from pipelines.table_output import OUTPUT_SOURCE_COLUMNS, row_columns, table_maker
    from pipelines.table_source import tabular_split_tables

    overrides = [f"data.path={json.dumps(str(path))}", f"run_dir={json.dumps(str(folder / 'run'))}"]
    tables, info = tabular_split_tables(load_pipeline_config("table", overrides))
    files = []
    for split, split_table in tables.items():
        files.append(folder / f"{split}.parquet")
        pq.write_table(split_table, files[-1])
    make = table_maker(read_shards(files, OUTPUT_SOURCE_COLUMNS, order_by="source_row"), info)
    shape = (info["num_rows"], len(info["columns"]))
    rng = np.random.default_rng(0)
    draws = (rng.standard_normal((2, *shape)) * 3).astype(np.float32)
    draws[1][rng.random(shape) < 0.2] = np.finfo(np.float32).max * rng.choice([-1, 1])
    return {"single": make(draws[0]), "multiple": make(draws[1])}, {"row_columns": row_columns(info)}


@settings(max_examples=ASSEMBLY_EXAMPLES)
@given(table=tables())
def test_generated_tables_are_read_and_assembled_exact_and_finite_or_refused_in_one_line(
    tmp_path_factory: pytest.TempPathFactory, table: GeneratedTable
) -> None:
    folder = tmp_path_factory.mktemp("assembled")
    path = folder / f"table.{table.file_format}"
    write_table(table, path)
    must_refuse = structural_fault(table) is not None or bool(column_faults(table))
    try:
        outputs, manifest = assemble_outputs(path, folder)
    except (ConfigError, DataError) as error:
        count_example("table reading + output assembly: generated tables refused (rc 2, one line)")
        check_refused(table, path, error)
        return
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    count_example("table reading + output assembly: generated tables accepted (exact, finite)")
    assert not must_refuse, (structural_fault(table), column_faults(table))
    check_accepted(table, outputs, manifest)


# A table the path must accept, always tried first: a handful of generated examples may all be
# refusals, and the accepted path (every observed cell exact, every imputed one finite) must run.
ACCEPTED_EXAMPLE = GeneratedTable(
    "parquet",
    6,
    [
        # A reserved name; ints beyond 2**53 that float64 would change, close together so that no
        # held-out row lies implausibly far from the training rows (that is refused, rightly).
        Column("split", "int64", [2**53 + 1, 2**53 + 3, None, 2**53 - 1, 2**53 + 5, 2**53 - 3]),
        Column("flag", "bool", [True, None, False, True, False, True]),
        Column("x", "float64", [0.5, -1.25, 3.0, None, 1e-320, -0.0]),
    ],
)


@settings(max_examples=FULL_PATH_EXAMPLES)
@example(table=ACCEPTED_EXAMPLE)
@given(table=tables())
def test_generated_tables_come_back_exact_and_finite_or_are_refused_in_one_line(
    shared_ray: None, tmp_path_factory: pytest.TempPathFactory, table: GeneratedTable
) -> None:
    folder = tmp_path_factory.mktemp("generated")
    path = folder / f"table.{table.file_format}"
    write_table(table, path)
    must_refuse = structural_fault(table) is not None or bool(column_faults(table))
    try:
        outputs, manifest = run_table_path(path, folder / "run")
    except (ConfigError, DataError) as error:
        assert table != ACCEPTED_EXAMPLE, f"the table that must be accepted was refused: {error}"
        count_example("table path: generated tables refused (rc 2, one line)")
        check_refused(table, path, error)
        return
    finally:
        shutil.rmtree(folder / "run", ignore_errors=True)
    count_example("table path: generated tables accepted (ingest -> train -> impute, exact, finite)")
    assert not must_refuse, (structural_fault(table), column_faults(table))
    check_accepted(table, outputs, manifest)


# ------------------------------------------------------------------ full.py itself, rc and stderr


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("blank.csv", "", "blank.csv is empty (0 bytes)"),
        ("wide.csv", "x,huge\n1,1e300\n2,\n3,-1e300\n", "column(s) ['huge'] of wide.csv hold values"),
    ],
)
def test_full_py_exits_2_with_one_line_naming_file_and_column(
    tmp_path: Path, name: str, content: str, expected: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [sys.executable, "pipelines/full.py", "--data", str(path), "--set", f"run_dir={tmp_path / 'run'}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], done.stderr
    assert "Traceback" not in done.stdout + done.stderr
