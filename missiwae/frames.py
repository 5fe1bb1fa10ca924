"""Tables as the user handed them: a pandas DataFrame's column dtypes kept, float64's limits.

The estimator reads every table as float64 (N, D); this module is what makes that safe for a
DataFrame. It names the column numpy could not read, refuses an integer that a float64 array
would change (|v| > 2**53), and puts imputations back into a DataFrame with each column's own
dtype (observed cells are the frame's own values, never a float64 round trip). pandas is never
imported here: only objects the caller already holds are inspected.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.utils.validation import check_array

# float64 holds every integer up to 2**53 exactly; beyond it, only some.
_EXACT_INTEGERS = 2**53


def is_frame(X: Any) -> bool:
    """X is a pandas DataFrame (pandas is imported only if the caller already has it)."""
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(X, pandas.DataFrame)


def with_column(X: Any, error: ValueError | TypeError) -> ValueError | TypeError:
    """`error` (numpy / scikit-learn reading X as float64) with the column that causes it named,
    when one column alone reproduces it and another reads fine; else `error` itself.

    Re-reads X (N, D) one column at a time, only on this error path. Whole-table problems (no
    rows, sparse input, feature names that differ from fit) fail in every column or in none, and
    keep their own message.
    """
    shape = getattr(X, "shape", None)
    if not (is_frame(X) or isinstance(X, np.ndarray)) or shape is None or len(shape) != 2 or shape[0] == 0:
        return error
    if isinstance(error, TypeError) and is_frame(X):
        # numpy finds no common dtype for dates and numbers, yet reads a date column alone.
        dates = [j for j, dtype in enumerate(X.dtypes) if _kind(dtype) in "mM"]
        if dates:
            name = X.columns[dates[0]]
            return TypeError(
                f"column {str(name)!r} of X holds dates or durations ({X.dtypes.iloc[dates[0]]}), "
                f"which are not numbers; convert them first (e.g. days since a reference date): {error}"
            )
    failures = [_column_error(X, j) for j in range(shape[1])]
    failing = [j for j, failure in enumerate(failures) if failure is not None]
    if not failing or len(failing) == len(failures):
        return error
    j = failing[0]
    label = repr(str(X.columns[j])) if is_frame(X) else str(j)
    return type(error)(f"column {label} of X: {failures[j]}")


def _column_error(X: Any, j: int) -> str | None:
    """The message of reading column j of X (DataFrame or ndarray) as float64, None if it reads."""
    column = X.iloc[:, [j]] if is_frame(X) else X[:, [j]]
    try:
        with np.errstate(invalid="ignore", over="ignore"):
            check_array(column, dtype=np.float64, ensure_all_finite="allow-nan", input_name="X")
    except (ValueError, TypeError) as error:
        return str(error)
    return None


def _integer_columns(X: Any) -> Iterator[tuple[int, NDArray[np.integer]]]:
    """(j, observed values) for each integer column of X: a DataFrame's integer columns
    (numpy or nullable dtypes, holes dropped) or every column of an integer array (N, D)."""
    if is_frame(X):
        for j in range(X.shape[1]):
            column = X.iloc[:, j]
            if _kind(column.dtype) in "iu":
                yield j, column.dropna().to_numpy(dtype=_numpy_dtype(column.dtype))
        return
    values = X if isinstance(X, np.ndarray) else np.asarray(X)
    if values.ndim == 2 and values.dtype.kind in "iu":
        yield from enumerate(values.T)


def _changed_by_float64(values: NDArray[np.integer]) -> int | None:
    """The first of the integers `values` (n,) that float64 cannot represent, else None."""
    beyond = values > _EXACT_INTEGERS
    if values.dtype.kind == "i":
        beyond |= values < -_EXACT_INTEGERS
    for value in values[beyond].tolist():  # few or none: only |v| > 2**53 can change
        if int(float(value)) != value:
            return int(value)
    return None


def check_float64_holds(X: Any, label: Callable[[int], str], remedy: str) -> None:
    """Raise ValueError naming the first integer column of X whose observed values a float64
    array would change (|v| > 2**53, e.g. 9007199254740993 -> 9007199254740992), and `remedy`."""
    for j, values in _integer_columns(X):
        changed = _changed_by_float64(values)
        if changed is not None:
            raise ValueError(
                f"column {label(j)} of X holds the integer {changed}, which a float64 array "
                f"changes to {int(float(changed))}; {remedy}"
            )


def restore_frame(
    X: Any, filled: NDArray[np.float64], mask: NDArray[np.bool_], label: Callable[[int], str]
) -> Any:
    """DataFrame X (N, D) with its holes filled from `filled` (N, D) float64, mask (N, D) True =
    observed: X's index, names and dtypes, observed cells X's own values (never via float64)."""
    restored = X.copy()
    for j in np.flatnonzero(~mask.all(axis=0)).tolist():
        column = X.iloc[:, j]
        holes = ~mask[:, j]
        if _kind(column.dtype) in "biuf":  # bool, integer, float: the column keeps its dtype
            column = column.copy()
            column[holes] = _as_dtype(filled[holes, j], column.dtype, label(j))
            restored.isetitem(j, column)  # by position: names may repeat
        else:  # object, category...: the float64 values validate_data read, holes filled
            restored.isetitem(j, filled[:, j])
    return restored


def categorical_columns(X: Any) -> list[bool]:
    """(D,) True for each column of X (N, D) that holds labels rather than numbers: a
    DataFrame's category columns, and the object or string columns (of a DataFrame or an array)
    with a string that is not a number ("red"; "1.5" is a number held as text, read as 1.5).
    Dates and durations are not labels: they keep their own error."""
    if is_frame(X):
        columns = [X.iloc[:, j] for j in range(X.shape[1])]
        return [
            _kind(c.dtype) not in "biufmM" and (_is_category(c.dtype) or _has_label(c.to_numpy(dtype=object)))
            for c in columns
        ]
    values = X if isinstance(X, np.ndarray) else np.asarray(X, dtype=object)
    if values.ndim != 2 or values.dtype.kind not in "OUS":
        return [False] * (values.shape[1] if values.ndim == 2 else 0)
    return [_has_label(column) for column in values.T]


def _is_category(dtype: Any) -> bool:
    return getattr(dtype, "categories", None) is not None


def _has_label(column: NDArray[Any]) -> bool:
    """Whether a column holds a string that does not read as a number. (Anything else that
    is not a number, a dict say, is left to the numeric reading, which refuses it.)"""
    for value in column.tolist():
        if isinstance(value, str):
            try:
                float(value)
            except ValueError:
                return True
    return False


def column_as_float64(X: Any, j: int, label: str) -> NDArray[np.float64]:
    """(N,) column j of X (N, D) as float64, NaN / pd.NA as NaN; ValueError naming the column
    when it is not numbers or holds inf."""
    column = X.iloc[:, [j]] if is_frame(X) else np.asarray(X, dtype=object)[:, [j]]
    try:
        with np.errstate(invalid="ignore", over="ignore"):
            values = check_array(column, dtype=np.float64, ensure_all_finite="allow-nan", input_name="X")
    except (ValueError, TypeError) as error:
        raise ValueError(f"column {label} of X: {error}") from error
    return np.asarray(values[:, 0], dtype=np.float64)


def _kind(dtype: Any) -> str:
    """numpy's one-letter kind of a column dtype, numpy or pandas ("b", "i", "u", "f", ...);
    pandas' nullable Int64 / boolean / Float64 report theirs, category and strings "O"."""
    return str(getattr(dtype, "kind", "O"))


def _numpy_dtype(dtype: Any) -> np.dtype[Any]:
    """The numpy dtype behind a column dtype: pandas' Int64 -> int64, numpy's itself."""
    return np.dtype(getattr(dtype, "numpy_dtype", dtype))


def _as_dtype(values: NDArray[np.float64], dtype: Any, label: str) -> NDArray[Any]:
    """Imputed float64 values (n,) in a column's numpy or nullable dtype (bool, integer or
    float): bool by threshold 1/2, integers rounded to nearest and clipped to the dtype's
    range, floats cast."""
    kind, numpy_dtype = _kind(dtype), _numpy_dtype(dtype)
    if kind == "b":
        return values >= 0.5
    if kind == "f":
        return values.astype(numpy_dtype)
    if not np.isfinite(values).all():  # astype would turn NaN into an arbitrary integer
        raise ValueError(f"column {label} of X: the imputations are not finite, so not integers")
    info = np.iinfo(numpy_dtype)
    low, high = _float_within(int(info.min)), _float_within(int(info.max))
    return np.clip(np.rint(values), low, high).astype(numpy_dtype)


def _float_within(bound: int) -> float:
    """The float64 nearest `bound` that does not pass it (2**63 - 1 -> 2**63 - 1024): casting
    a value clipped to it into the integer dtype cannot overflow."""
    nearest = float(bound)
    if (bound > 0 and int(nearest) > bound) or (bound < 0 and int(nearest) < bound):
        return float(np.nextafter(nearest, 0.0))
    return nearest


__all__ = [
    "categorical_columns",
    "check_float64_holds",
    "column_as_float64",
    "is_frame",
    "restore_frame",
    "with_column",
]
