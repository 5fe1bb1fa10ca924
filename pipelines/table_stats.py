"""What the ingest must know about a user's table, gathered a piece at a time and merged.

The streaming ingest (pipelines/table_source.py) never holds the table: each piece of it
(pipelines.table_files.Piece) gives a :class:`TableStats` (:meth:`TableStats.of_piece`), the
pieces' stats are merged (:meth:`TableStats.merge`, associative, so Ray Data tasks can compute
them in any order), and the merged stats decide everything the whole table used to: the checks
that refuse a table (:func:`check_table`, :func:`check_split`), each column's model, the levels
of the columns of labels and the standardisation (pipelines.table_source turns them into the
manifest's ``table`` entry).

Per column, over its observed cells (a text column's cells are labels):

    observed, observed_train   counts, all rows and the TRAIN rows
    infinite                   count of +-inf (refused)
    peak, low, high            max |x|, min x and max x of the finite values (range checks)
    binary, not_binary         every observed value is 0 or 1 (a Bernoulli column); if not, one
                               that is not
    train, whole               (count, mean, M2) of the TRAIN rows' values and of all rows'
                               (Chan et al.'s pairwise update: the standardisation)
    levels, held_out_levels    the distinct labels of the TRAIN rows and of the others, each
                               kept up to LEVEL_CAP (more means too many levels anyway); for a
                               number column only up to 2 TRAIN values (fit_scaling's question:
                               does it have two distinct values?) unless it is made categorical
    number, word               a label that reads as a number and one that does not (a text
                               column mixing both is refused)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from missiwae.categorical import MAX_LEVELS, is_missing
from missiwae.columns import check_column_range, check_standardised_range
from missiwae.config import ConfigError
from pipelines.table_files import is_text

if TYPE_CHECKING:
    import pyarrow as pa

TRAIN = 0  # the split code of a TRAIN row (pipelines.table_source.SplitPlan)
LEVEL_CAP = MAX_LEVELS + 1  # distinct labels kept per column and split group
_NUMBER_VALUES = 2  # distinct TRAIN values kept for a number column (fit_scaling)


@dataclasses.dataclass
class Moments:
    """Count, mean and sum of squared deviations of some values, mergeable (Chan et al.)."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        if values.size == 0:
            return cls()
        with np.errstate(over="ignore", invalid="ignore"):  # too wide: check_table refuses it
            mean = float(values.mean())
            return cls(int(values.size), mean, float(((values - mean) ** 2).sum()))

    def merge(self, other: Moments) -> Moments:
        count = self.count + other.count
        if not self.count or not other.count:
            return dataclasses.replace(self if self.count else other)
        delta = other.mean - self.mean
        mean = self.mean + delta * other.count / count
        return Moments(count, mean, self.m2 + other.m2 + delta * delta * self.count * other.count / count)

    @property
    def std(self) -> float:
        """The population standard deviation (numpy's nanstd), 0 for no value."""
        return float(np.sqrt(self.m2 / self.count)) if self.count else 0.0


@dataclasses.dataclass
class ColumnStats:
    """One column's stats (module docstring); ``text``: a column of labels."""

    text: bool
    observed: int = 0
    observed_train: int = 0
    infinite: int = 0
    peak: float = 0.0
    low: float = np.inf
    high: float = -np.inf
    binary: bool = True
    not_binary: float | None = None  # an observed value other than 0 and 1, when there is one
    train: Moments = dataclasses.field(default_factory=Moments)
    whole: Moments = dataclasses.field(default_factory=Moments)
    levels: frozenset[Any] = frozenset()
    held_out_levels: frozenset[Any] = frozenset()
    number: str | None = None
    word: str | None = None

    def merge(self, other: ColumnStats, cap: int) -> ColumnStats:
        return ColumnStats(
            text=self.text,
            observed=self.observed + other.observed,
            observed_train=self.observed_train + other.observed_train,
            infinite=self.infinite + other.infinite,
            peak=max(self.peak, other.peak),
            low=min(self.low, other.low),
            high=max(self.high, other.high),
            binary=self.binary and other.binary,
            not_binary=self.not_binary if self.not_binary is not None else other.not_binary,
            train=self.train.merge(other.train),
            whole=self.whole.merge(other.whole),
            levels=_capped(self.levels | other.levels, cap),
            held_out_levels=_capped(self.held_out_levels | other.held_out_levels, LEVEL_CAP),
            number=self.number if self.number is not None else other.number,
            word=self.word if self.word is not None else other.word,
        )


@dataclasses.dataclass
class TableStats:
    """A piece's stats, or the merged stats of several (module docstring): ``num_rows``, the
    rows per split code ``split_rows`` (3,), ``label_missing`` (cells of data.label_column
    that are empty), and one :class:`ColumnStats` per modelled column, in the table's order
    (``columns``). ``categorical``: the number columns data.column_types makes categorical
    (their distinct values are kept like labels)."""

    num_rows: int
    split_rows: list[int]
    label_missing: int
    columns: list[str]
    stats: list[ColumnStats]
    categorical: frozenset[str] = frozenset()

    @classmethod
    def of_piece(
        cls,
        table: pa.Table,
        splits: np.ndarray,
        label_column: str | None,
        categorical: frozenset[str] = frozenset(),
    ) -> TableStats:
        """The stats of `table` (a piece's rows, label column included; every column numeric or
        text, which :func:`check_kinds` makes sure of) whose rows have the split codes
        `splits` (n,) (TRAIN = 0)."""
        train = np.asarray(splits) == TRAIN
        label_missing = 0
        if label_column is not None:
            label = table.column(label_column)
            label_missing = int(np.isnan(as_float(label)).sum())
            table = table.drop_columns([label_column])
        stats = []
        for name, column in zip(table.column_names, table.columns, strict=True):
            if is_text(column.type) or name in categorical:
                stats.append(_label_stats(column, train, text=is_text(column.type)))
            else:
                stats.append(_number_stats(as_float(column), train))
        counts = np.bincount(np.asarray(splits, np.int64), minlength=3).tolist()
        return cls(table.num_rows, counts, label_missing, list(table.column_names), stats, categorical)

    def merge(self, other: TableStats) -> TableStats:
        return TableStats(
            self.num_rows + other.num_rows,
            [a + b for a, b in zip(self.split_rows, other.split_rows, strict=True)],
            self.label_missing + other.label_missing,
            self.columns,
            [
                a.merge(b, LEVEL_CAP if a.text or name in self.categorical else _NUMBER_VALUES)
                for name, a, b in zip(self.columns, self.stats, other.stats, strict=True)
            ],
            self.categorical,
        )

    def to_json(self) -> str:
        """The stats as JSON text (what a Ray Data task hands the driver); :meth:`from_json`
        gives them back, floats and labels (text, integers, floats, booleans) exactly."""
        return json.dumps(dataclasses.asdict(self), default=lambda found: sorted(found, key=_order))

    @classmethod
    def from_json(cls, text: str) -> TableStats:
        raw = json.loads(text)
        stats = [
            ColumnStats(
                **{
                    **column,
                    "train": Moments(**column["train"]),
                    "whole": Moments(**column["whole"]),
                    "levels": frozenset(column["levels"]),
                    "held_out_levels": frozenset(column["held_out_levels"]),
                }
            )
            for column in raw["stats"]
        ]
        return cls(
            raw["num_rows"],
            raw["split_rows"],
            raw["label_missing"],
            raw["columns"],
            stats,
            frozenset(raw["categorical"]),
        )

    @classmethod
    def merge_all(cls, pieces: Sequence[TableStats]) -> TableStats:
        merged = pieces[0]
        for piece in pieces[1:]:
            merged = merged.merge(piece)
        return merged


def _order(value: Any) -> tuple[str, Any]:
    return type(value).__name__, value


def _capped(values: frozenset[Any], cap: int) -> frozenset[Any]:
    """The `cap` smallest of `values` (by type name, then value): the same whichever pieces
    they were merged from (the smallest of a union are among the smallest of its parts)."""
    if len(values) <= cap:
        return values
    return frozenset(sorted(values, key=_order)[:cap])


def _number_stats(values: np.ndarray, train: np.ndarray) -> ColumnStats:
    observed = ~np.isnan(values)
    finite = observed & np.isfinite(values)
    x = values[finite]
    x_train = values[finite & train]
    others = values[observed & (values != 0.0) & (values != 1.0)]
    return ColumnStats(
        text=False,
        observed=int(observed.sum()),
        observed_train=int((observed & train).sum()),
        infinite=int((observed & ~finite).sum()),
        peak=float(np.abs(x).max()) if x.size else 0.0,
        low=float(x.min()) if x.size else np.inf,
        high=float(x.max()) if x.size else -np.inf,
        binary=not others.size,
        not_binary=float(others[0]) if others.size else None,
        train=Moments.of(x_train),
        whole=Moments.of(x),
        levels=_capped(frozenset(np.unique(x_train).tolist()), _NUMBER_VALUES),
    )


def _label_stats(column: pa.ChunkedArray, train: np.ndarray, *, text: bool) -> ColumnStats:
    """A column of labels: text, or a number column data.column_types makes categorical (its
    values, in their own type, are the labels)."""
    import pyarrow as pa

    labels = np.asarray((column.cast(pa.string()) if text else column).to_pylist(), dtype=object)
    observed = ~is_missing(labels)
    number = word = None
    if text:
        for value in dict.fromkeys(labels[observed].tolist()):
            try:
                float(value)
                number = number if number is not None else value
            except ValueError:
                word = word if word is not None else value
            if number is not None and word is not None:
                break
    stats = ColumnStats(
        text=text,
        observed=int(observed.sum()),
        observed_train=int((observed & train).sum()),
        levels=_capped(frozenset(labels[observed & train].tolist()), LEVEL_CAP),
        held_out_levels=_capped(frozenset(labels[observed & ~train].tolist()), LEVEL_CAP),
        number=number,
        word=word,
    )
    if not text:  # a number column made categorical: its values are still range-checked
        values = as_float(column)
        numbers = _number_stats(values, train)
        stats.infinite, stats.peak = numbers.infinite, numbers.peak
    return stats


# ------------------------------------------------------------------------------ column kinds


def is_numeric(kind: pa.DataType) -> bool:
    """Integers, floats and booleans are modelled; an all-empty CSV column reads as type null
    (numeric with no observed value, refused as such)."""
    import pyarrow as pa

    return bool(
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_null(kind)
    )


def as_float(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """(N,) float64, NaN for null (unsafe cast: int64 beyond 2**53 rounds; the model's view only)."""
    import pyarrow as pa

    return np.asarray(column.cast(pa.float64(), safe=False).fill_null(np.nan).to_numpy(), dtype=np.float64)


# ------------------------------------------------------------------------------ checks


def check_kinds(schema: pa.Schema, label_column: str | None, where: str, num_rows: int) -> list[str]:
    """The modelled columns' names, after the checks that need only the schema and the row
    count (ConfigError naming the file and column): the label column exists and is numeric, at
    least 3 rows and 1 modelled column, every column numbers or text."""
    names = list(schema.names)
    if label_column is not None:
        if label_column not in names:
            raise ConfigError(f"data.label_column {label_column!r} is not a column of {where}")
        if not (
            is_numeric(schema.field(label_column).type) and not _is_null(schema.field(label_column).type)
        ):
            raise ConfigError(f"data.label_column {label_column!r} must be numeric with no missing value")
        names.remove(label_column)
    if num_rows < 3 or len(names) < 1:
        raise ConfigError(f"{where} has {num_rows} rows and {len(names)} columns; need >= 3 x 1")
    unusable = [
        f"{name} ({schema.field(name).type})"
        for name in names
        if not (is_numeric(schema.field(name).type) or is_text(schema.field(name).type))
    ]
    if unusable:
        raise ConfigError(
            f"column(s) {unusable} of {where} are neither numbers nor text: convert them (dates to "
            "days since a reference date, say) or drop them"
        )
    return names


def _is_null(kind: pa.DataType) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_null(kind))


def check_table(stats: TableStats, label_column: str | None, where: str) -> None:
    """ConfigError for what makes the table unusable whatever the split (naming the file and
    the columns): a missing label, a text column mixing numbers and words, inf, a column with
    no observed value, a column too wide to standardise (missiwae.columns.check_column_range)."""
    if label_column is not None and stats.label_missing:
        raise ConfigError(f"data.label_column {label_column!r} must be numeric with no missing value")
    for name, column in zip(stats.columns, stats.stats, strict=True):
        if column.number is not None and column.word is not None:
            raise ConfigError(
                f"column {name!r} of {where} mixes numbers and text (e.g. {column.number!r} and "
                f"{column.word!r}): make it all numbers (a number column) or all labels"
            )
    infinite = [name for name, column in zip(stats.columns, stats.stats, strict=True) if column.infinite]
    if infinite:
        raise ConfigError(
            f"column(s) {infinite} of {where} hold inf; only NaN (an empty cell) may mark a missing entry"
        )
    empty = [name for name, column in zip(stats.columns, stats.stats, strict=True) if not column.observed]
    if empty:
        raise ConfigError(f"column(s) {empty} of {where} have no observed value: drop them")
    # The range check depends on each column's largest |observed value| only.
    peaks = np.array([[column.peak for column in stats.stats]])
    try:
        check_column_range(peaks, names=stats.columns, where=where)
    except ValueError as error:  # the library's check, the pipeline's error type (rc 2, one line)
        raise ConfigError(str(error)) from error


def check_split(stats: TableStats, where: str) -> None:
    """ConfigError for what the split makes unusable: a column never observed in a TRAIN row,
    a label seen only in held-out rows, more levels than a column of labels may have."""
    train_rows = stats.split_rows[TRAIN]
    unseen = [
        name for name, column in zip(stats.columns, stats.stats, strict=True) if not column.observed_train
    ]
    if unseen:
        counts = [column.observed for column in stats.stats if not column.observed_train]
        raise ConfigError(
            f"column(s) {unseen} of {where} have no observed value among the {train_rows} training "
            f"rows (observed in {counts} held-out rows only): the model could not learn them. Drop "
            "them, or change data.seed or data.valid_fraction / data.test_fraction"
        )
    for name, column in zip(stats.columns, stats.stats, strict=True):
        if not (column.text or name in stats.categorical):
            continue
        if len(column.levels) > MAX_LEVELS:
            raise ConfigError(
                f"{where}: column {name!r} has more than {MAX_LEVELS} distinct values, more than "
                f"the {MAX_LEVELS} levels a categorical column may have (each is a model column): "
                "is it an identifier? drop it, or group its rare values"
            )
        only_held_out = sorted(column.held_out_levels - column.levels, key=repr)
        if only_held_out:
            raise ConfigError(
                f"column {name!r} of {where} holds the level {only_held_out[0]!r} only in held-out "
                f"rows (valid / test), never among the {train_rows} training rows: the model "
                "could not learn it. Change data.seed or data.valid_fraction / data.test_fraction, "
                "or merge the rare level into another"
            )


def check_standardised(
    stats: TableStats,
    mean: np.ndarray,
    scale: np.ndarray,
    continuous: Sequence[bool],
    names: list[str],
    where: str,
) -> None:
    """ConfigError naming the columns whose values, standardised with (`mean`, `scale`) (one
    per modelled table column; `continuous` says which are standardised), land beyond what the
    float32 model can take (missiwae.columns.check_standardised_range): the check depends on
    each column's farthest value, min or max."""
    far = np.zeros((1, len(stats.stats)))
    for j, (column, is_continuous) in enumerate(zip(stats.stats, continuous, strict=True)):
        if is_continuous and column.observed:
            with np.errstate(over="ignore"):
                far[0, j] = max(abs(column.low - mean[j]), abs(column.high - mean[j])) / scale[j]
    try:
        check_standardised_range(far, names=names, where=where)
    except ValueError as error:
        raise ConfigError(str(error)) from error


__all__ = [
    "LEVEL_CAP",
    "TRAIN",
    "ColumnStats",
    "Moments",
    "TableStats",
    "as_float",
    "check_kinds",
    "check_split",
    "check_standardised",
    "check_table",
    "is_numeric",
    "is_text",
]
