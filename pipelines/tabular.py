"""A user's table instead of MNIST: CSV / Parquet in, the ingest layout, imputed tables out.

    python pipelines/full.py --data my_table.csv            # the `table` preset
    python pipelines/full.py --config table --set data.path=my.parquet --set train.epochs=50

Ingest (``table_source.tabular_split_tables``, called by ``ingest.run_ingest`` when
``data.path`` is set). ``data.path`` is a file, a folder or a glob (pipelines.table_files: which
files, in which order, and how their columns must agree). Each file is read with pyarrow
(``.csv`` / ``.parquet``), each column in its own type; an empty cell, NaN or null marks a
missing entry. Every column must be integer, float, boolean or text (a column of labels, one
model column per level: missiwae/categorical.py); ``data.label_column``, when
given, is set aside as the label (not modelled, not imputed). What is refused (rc 2, one line
naming the file and column) is listed in docs/tables.md. Rows are split into train / valid /
test by a permutation seeded with ``data.seed`` (``data.valid_fraction``,
``data.test_fraction``; each split keeps the file's row order); the shard count is clamped to a
split's rows (3 rows is enough). The shards have the MNIST layout plus two columns::

    row_id      int64    index of the row within its split
    split       string
    label       float64  data.label_column, or -1 without one
    source_row  int64    the row's index in the user's table: its files' rows one after the
                         other (pipelines.table_files); the outputs name the file and the row
                         in it (``source_file``, ``source_row``)
    pixels      float32  (D,) model input: standardised values, 0 in the holes
    mask        bool     (D,) True = observed
    values      float64  (D,) the file's values as floats, NaN in the holes (the model's view)
    source      struct   the file's cells in their own types: fields ``label`` (with a label
                         column) and ``c0`` ... ``c{D-1}``; every output copies observed cells
                         from here, bit for bit (pipelines/shards.py)

Columns whose observed values are all 0 or 1 are modelled as Bernoulli and left as they are;
text columns are categorical, one-hot over the levels of their TRAIN-split rows (so pixels,
mask and values are D' = D - C + Σ k_c wide); the others get ``model.observation`` (gaussian
or student_t) and are standardised with the mean and standard deviation of their observed
TRAIN-split entries (the decoder's scales start near 1; ``table_source.fit_scaling``).
``data.column_types`` sets a column's model by name instead (``--set
data.column_types.zip=categorical``: a number column of codes one-hot over its values;
``table_source.table_column_types`` says what may be chosen). The
manifest's ``table`` entry records columns, types, levels, mean and scale (D');
``table_source.tabular_model_config`` turns it into the model's ``num_features`` /
``column_types`` / ``categorical_levels`` (and clamps the Train workers to the training rows).

Impute (:func:`run_tabular_imputation`). One Ray Data job over the shards of
``impute_stage.splits`` (the ``table`` preset: all three, so the whole file is completed): the
actor pool of pipelines/impute_job.py (``ImputeActor(table=True)``) computes the SNIS single
imputation (L = ``impute.num_samples``) and M = ``impute.num_imputations`` SIR draws per batch,
seeded per batch as in impute.py.
The driver maps them back to the file's units and writes, under ``{run_dir}/imputed/table``::

    missiwae_single.parquet (+ .csv)      the file's rows in its order, holes = E[x_m | x_o];
                                          the CSV up to CSV_MAX_ROWS rows, or as
                                          impute_stage.table_csv says
    missiwae_multiple_00.parquet ...      holes = one SIR draw each
    _MANIFEST.json                        fingerprint, metrics, seconds

with columns ``source_file``, ``source_row``, ``split``, ``mask``, (the label column,) then
the file's columns,
each in the file's own type (:func:`table_maker`): observed cells copied from the shards' ``source``,
imputed ones cast to the column's type (integers rounded, booleans P >= 0.5, :func:`cast_imputed`).
``mask`` is the row's lineage: a string with one character per file column, in the file's
column order, ``o`` where the cell is the file's own and ``i`` where it was imputed
(:func:`mask_strings`; :func:`read_table_mask` turns it back into a (N, D) bool array, True =
observed, as in the MNIST datasets). Letters, not 0/1: a CSV reader would take ``0110`` for the
integer 110. ``source_file`` and ``source_row`` are where the row came from: the file (its path
relative to the files' common folder, the name alone for one file) and the row's index in it.
A user column called ``source_file``, ``source_row``, ``split`` or ``mask`` keeps its name; the
bookkeeping column then becomes ``_source_file`` / ``_source_row`` / ``_split`` / ``_mask``
(:func:`row_columns`; the manifest's ``row_columns``).
Bernoulli float columns hold P(x_j = 1 | x_o) in the single imputation and 0/1 draws in the
multiple ones.
There is no truth for a user's holes, so the metrics are what can be measured: the imputed
cell counts, the SNIS estimate of log p(x_o) (standardised units) and the effective sample size.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from missiwae.config import to_dict
from pipelines.config import PipelineConfig
from pipelines.publish import MANIFEST, Publisher, checkpoint_sha256, checkpoints_key, fingerprint, hash_files
from pipelines.shards import IngestResult, imputed_dir, read_shards, tensor_matrix
from pipelines.table_files import SourceFiles
from pipelines.table_source import TABULAR_FORMAT_VERSION, table_onehot

if TYPE_CHECKING:
    import pyarrow as pa

SINGLE = "missiwae_single"
MULTIPLE_PREFIX = "missiwae_multiple_"
_OUTPUT_DIR = "table"
# What the output is built from, besides the imputations: lineage, split, mask, the file's cells.
OUTPUT_SOURCE_COLUMNS = ("source_row", "split", "mask", "source")
# The output's bookkeeping columns, in order; each steps aside for a user column of its name.
ROW_COLUMNS = ("source_file", "source_row", "split", "mask")
# The output mask's letters (module docstring). Part of the fingerprint: an output written
# before the mask column existed (or with other letters) is never reused.
OBSERVED, IMPUTED = "o", "i"
_OUTPUT_VERSION = 4  # 3: source_file, and source_row counted within it; 4: columns of labels
# impute_stage.table_csv "auto": the single imputation also as CSV up to this many rows.
CSV_MAX_ROWS = 1_000_000
_LOCK = ".tabular.lock"


# ------------------------------------------------------------------------------ imputation


@dataclasses.dataclass(frozen=True)
class TabularImputeResult:
    """datasets: name -> Parquet file (missiwae_single, missiwae_multiple_00, ...); metrics:
    "{split}/num_rows", "{split}/num_imputed_cells", "{split}/missing_fraction",
    "{split}/log_likelihood_mean", "{split}/ess_mean", "rows_per_second"."""

    directory: Path
    datasets: dict[str, Path]
    metrics: dict[str, float]
    seconds: float
    reused: bool


def run_tabular_imputation(
    config: PipelineConfig, ingest: IngestResult, checkpoint_dir: Path, ensemble_dirs: Sequence[Path] = ()
) -> TabularImputeResult:
    """Impute the splits of `impute_stage.splits` and write the imputed tables (module docstring).
    `ensemble_dirs`: the bootstrap members' checkpoints (impute.bootstrap_models > 1), whose
    draws are then the multiple imputations (proper imputation: pipelines/impute_job.py)."""

    assert ingest.table is not None
    started = time.perf_counter()
    splits = list(config.impute_stage.splits)
    files = sorted(Path(p) for split in splits for p in ingest.shards[split])
    checkpoints = [Path(checkpoint_dir), *(Path(p) for p in ensemble_dirs)]
    csv = write_csv(config, ingest)
    payload: dict[str, Any] = {
        "format_version": TABULAR_FORMAT_VERSION,
        "output_version": _OUTPUT_VERSION,
        "impute": to_dict(config.impute),
        "splits": splits,
        "checkpoint": checkpoints_key([checkpoint_sha256(path) for path in checkpoints]),
        "inputs": hash_files(files),
    }
    if not csv:  # only then: outputs written before the choice existed (all with CSV) still count
        payload["csv"] = False
    digest = fingerprint(payload)
    out = Publisher(imputed_dir(config), _LOCK, "the imputed table {!r}")
    target = out.root / _OUTPUT_DIR
    with out.locked():
        manifest = out.reusable(
            target / MANIFEST,
            digest,
            lambda m: all((target / name).is_file() for name in m.get("files", [])),
        )
        if manifest is not None:
            return _impute_result(target, manifest, time.perf_counter() - started, reused=True)
        out.sweep([_OUTPUT_DIR])  # left by a crashed run: never complete by construction
        with out.stage(_OUTPUT_DIR) as staged:
            manifest = _impute_into(config, ingest, files, checkpoints, staged.path, csv=csv)
            manifest["fingerprint"] = digest
            staged.manifest = manifest  # written last, then swapped into place
    return _impute_result(target, manifest, time.perf_counter() - started, reused=False)


def _impute_result(
    directory: Path, manifest: dict[str, Any], seconds: float, reused: bool
) -> TabularImputeResult:
    datasets = {Path(name).stem: directory / name for name in manifest["files"] if name.endswith(".parquet")}
    metrics = {k: float(v) for k, v in manifest["metrics"].items()}
    return TabularImputeResult(directory, datasets, metrics, seconds, reused)


def write_csv(config: PipelineConfig, ingest: IngestResult) -> bool:
    """Whether the single imputation is also written as CSV: impute_stage.table_csv, "auto"
    meaning up to CSV_MAX_ROWS rows in the imputed splits."""
    choice = config.impute_stage.table_csv
    if choice != "auto":
        return bool(choice)
    return sum(ingest.num_rows[split] for split in config.impute_stage.splits) <= CSV_MAX_ROWS


def _impute_into(
    config: PipelineConfig,
    ingest: IngestResult,
    files: list[Path],
    checkpoints: list[Path],
    staging: Path,
    *,
    csv: bool,
) -> dict[str, Any]:
    """Run the Ray Data job, map back to the file's units, write the tables into `staging`
    (`checkpoints`: the model's, then the bootstrap members'; `csv`: the single one as CSV too)."""
    import pyarrow.parquet as pq

    from pipelines.impute_job import imputation_dataset, run_surviving_node_loss

    assert ingest.table is not None
    info = ingest.table
    clock = time.perf_counter()

    def collect() -> dict[str, list[np.ndarray]]:
        parts: dict[str, list[np.ndarray]] = {
            key: [] for key in ("source_row", "single", "multiple", "ess", "ll")
        }
        job = imputation_dataset(config, files, checkpoints[0], ensemble_dirs=checkpoints[1:], table=True)
        for batch in job.iter_batches(batch_format="numpy", batch_size=None):
            parts["source_row"].append(np.asarray(batch["source_row"]))
            parts["single"].append(np.asarray(batch["single"], np.float64))
            parts["multiple"].append(np.asarray(batch["multiple"], np.float64))
            parts["ess"].append(np.asarray(batch["ess"], np.float64))
            parts["ll"].append(np.asarray(batch["log_likelihood"], np.float64))
        return parts

    parts = run_surviving_node_loss(collect, "the table's imputation job")
    job_seconds = time.perf_counter() - clock
    imputed = {key: np.concatenate(value) for key, value in parts.items()}
    order = np.argsort(imputed["source_row"], kind="stable")
    imputed = {key: value[order] for key, value in imputed.items()}

    # The file's own cells, split names and row lineage, straight from the shards (plain pyarrow).
    shards = read_shards(files, OUTPUT_SOURCE_COLUMNS, order_by="source_row")
    source_row = shards.column("source_row").to_numpy()
    if not np.array_equal(source_row, imputed["source_row"]):
        raise RuntimeError("the imputation job lost or duplicated rows")
    mask = table_mask(
        tensor_matrix(shards.column("mask"), np.bool_, what="the table's shards", name="mask"), info
    )
    split_names = np.asarray(shards.column("split").to_pylist(), dtype=object)
    row_names = row_columns(info)
    table = table_maker(shards, info)

    names = [f"{SINGLE}.parquet"]
    single = table(imputed["single"])
    pq.write_table(single, staging / names[0])
    if csv:
        names.append(f"{SINGLE}.csv")
        single.to_pandas().to_csv(staging / names[-1], index=False)
    for m in range(imputed["multiple"].shape[1]):
        name = f"{MULTIPLE_PREFIX}{m:02d}.parquet"
        pq.write_table(table(imputed["multiple"][:, m]), staging / name)
        names.append(name)

    metrics: dict[str, float] = {"rows_per_second": len(source_row) / max(job_seconds, 1e-9)}
    for split in dict.fromkeys(split_names.tolist()):
        rows = split_names == split
        metrics[f"{split}/num_rows"] = float(rows.sum())
        metrics[f"{split}/num_imputed_cells"] = float((~mask[rows]).sum())
        metrics[f"{split}/missing_fraction"] = float((~mask[rows]).mean())
        metrics[f"{split}/log_likelihood_mean"] = float(imputed["ll"][rows].mean())
        metrics[f"{split}/ess_mean"] = float(imputed["ess"][rows].mean())
    return {
        "format_version": TABULAR_FORMAT_VERSION,
        "files": names,
        "metrics": metrics,
        "seconds": {"impute_job": job_seconds},
        "config": {"impute": to_dict(config.impute), "splits": list(config.impute_stage.splits)},
        "row_columns": row_names,
        "checkpoint_dir": str(checkpoints[0]),
        "ensemble_dirs": [str(path) for path in checkpoints[1:]],  # bootstrap members; [] for B = 1
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def table_maker(shards: pa.Table, info: dict[str, Any]) -> Callable[[np.ndarray], pa.Table]:
    """A function from imputations (N, D) in standardised units to the output table (module
    docstring): `shards` holds OUTPUT_SOURCE_COLUMNS of the N rows sorted by source_row, `info`
    the ingest manifest's ``table`` entry. Observed cells come from the shards' ``source`` (the
    file's cells in their own types), never through the float32 model or float64."""
    import pyarrow as pa

    mean, scale = np.asarray(info["mean"], np.float64), np.asarray(info["scale"], np.float64)
    onehot = table_onehot(info)
    spans = onehot.spans()
    mask = table_mask(
        tensor_matrix(shards.column("mask"), np.bool_, what="the table's shards", name="mask"), info
    )
    struct = shards.column("source").combine_chunks()
    source = dict(zip(struct.type.names, struct.flatten(), strict=True))
    row_names = row_columns(info)
    files = SourceFiles.from_manifest(info["sources"])
    file_index, file_row = files.locate(shards.column("source_row").to_numpy())
    bookkeeping = {
        row_names["source_file"]: pa.array(np.asarray(files.names, dtype=object)[file_index], pa.string()),
        row_names["source_row"]: pa.array(file_row, pa.int64()),
        row_names["split"]: shards.column("split").cast(pa.string()),
        row_names["mask"]: pa.array(mask_strings(mask), pa.string()),
    }

    def table(standardised: np.ndarray) -> pa.Table:
        imputed_values = np.asarray(standardised, np.float64) * scale + mean  # the file's units
        columns: dict[str, Any] = dict(bookkeeping)
        if info["label_column"] is not None:
            columns[info["label_column"]] = source["label"]
        for j, name in enumerate(info["columns"]):
            if onehot.levels[j] is None:
                imputed = imputed_values[:, spans[j].start]
            else:  # a column of labels: its most probable (single) or drawn (multiple) level
                imputed = onehot.most_probable(imputed_values, j)
            columns[name] = completed_column(source[f"c{j}"], mask[:, j], imputed)
        return pa.table(columns)

    return table


def table_mask(model_mask: np.ndarray, info: dict[str, Any]) -> np.ndarray:
    """(N, D) True = observed, one per table column, from the shards' (N, D') model mask (a
    column of labels is observed or missing across its whole one-hot block)."""
    return model_mask[:, [span.start for span in table_onehot(info).spans()]]


def mask_strings(mask: np.ndarray) -> list[str]:
    """The output's ``mask`` column from a (N, D) bool mask (True = observed): N strings of D
    letters, ``o`` (OBSERVED) for a cell copied from the file, ``i`` (IMPUTED) for a hole."""
    letters = np.where(np.asarray(mask, np.bool_), ord(OBSERVED), ord(IMPUTED)).astype(np.uint8)
    return [row.tobytes().decode("ascii") for row in letters]


def read_table_mask(column: Any) -> np.ndarray:
    """The (N, D) bool mask (True = observed) back from an output's ``mask`` column: a pyarrow
    array, a pandas Series or a list of N strings of D letters (:func:`mask_strings`)."""
    strings = column.to_pylist() if hasattr(column, "to_pylist") else list(column)
    if not strings:
        return np.zeros((0, 0), np.bool_)
    if len({len(row) for row in strings}) != 1:
        raise ValueError("the rows of a table mask differ in length")
    letters = np.frombuffer("".join(strings).encode("ascii", "replace"), np.uint8)
    if not np.isin(letters, (ord(OBSERVED), ord(IMPUTED))).all():
        raise ValueError(f"a table mask holds only the letters {OBSERVED!r} and {IMPUTED!r}")
    letters = letters.reshape(len(strings), -1)
    return letters == ord(OBSERVED)


def row_columns(info: dict[str, Any]) -> dict[str, str]:
    """The output's names for the bookkeeping columns ``source_file``, ``source_row``, ``split``
    and ``mask`` (ROW_COLUMNS): those names,
    or, when the user's table already has a column so called, the name with ``_`` prepended until
    it is free. The user's columns always keep their own names (nothing of theirs is dropped or
    overwritten); the output manifest's ``row_columns`` records the names used."""
    taken = set(info["columns"]) | ({info["label_column"]} if info["label_column"] is not None else set())
    names: dict[str, str] = {}
    for key in ROW_COLUMNS:
        name = key
        while name in taken:
            name = "_" + name
        taken.add(name)
        names[key] = name
    return names


def completed_column(original: pa.Array, observed: np.ndarray, imputed: np.ndarray) -> pa.Array:
    """One output column (N,) of `original`'s type: the observed cells (`observed` (N,) True)
    copied from `original` itself, the holes from `imputed` (N,): float64 cast to that type
    (:func:`cast_imputed`), or, for a column of labels, the levels themselves (objects)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if imputed.dtype == object:  # levels: strings, or a categorical number column's values
        fill = pa.array(imputed.tolist()).cast(original.type)
    else:
        fill = pa.array(cast_imputed(imputed, original.type.to_pandas_dtype()), type=original.type)
    return pc.if_else(pa.array(observed, pa.bool_()), original, fill)


def cast_imputed(imputed: np.ndarray, dtype: Any) -> np.ndarray:
    """Imputed values (N,) float64 in a column's own numpy `dtype`: booleans are the more likely
    value (>= 0.5), integers rounded to the nearest and clipped to the type's range, narrower
    floats clipped to their finite range (never inf)."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return np.asarray(imputed >= 0.5)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        rounded = np.rint(imputed)
        # float(info.max) rounds up for 64-bit types, so compare and set the ends exactly.
        low, high = rounded <= float(info.min), rounded >= float(info.max)
        out = np.where(low | high, 0.0, rounded).astype(dtype)
        out[low], out[high] = info.min, info.max
        return out
    limit = float(np.finfo(dtype).max)
    return np.clip(imputed, -limit, limit).astype(dtype)


__all__ = [
    "CSV_MAX_ROWS",
    "IMPUTED",
    "OBSERVED",
    "OUTPUT_SOURCE_COLUMNS",
    "ROW_COLUMNS",
    "TabularImputeResult",
    "cast_imputed",
    "completed_column",
    "mask_strings",
    "read_table_mask",
    "row_columns",
    "run_tabular_imputation",
    "table_maker",
    "table_mask",
    "write_csv",
]
