"""Tracking that degrades instead of failing the job.

When the store is unreachable or read-only, the first failing call switches the tracker (parent
and stages alike) to a no-op, one log line says so at once, and when the parent run ends one
``TrackingWarning`` lists everything that was not logged. Results and artifacts are written to
``run_dir`` by the stages themselves, so nothing but the MLflow copy is lost.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from pipelines.tracking.scrub import scrub

_log = logging.getLogger(__name__)


class TrackingWarning(UserWarning):
    """MLflow could not be written to: the job went on, and the warning lists what was lost."""


class TrackingHealth:
    """Shared by a parent run and its stages: whether the store still works, what was skipped."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self.error: BaseException | None = None
        self.skipped: list[str] = []

    @property
    def ok(self) -> bool:
        return self.error is None

    def fail(self, what: str, error: BaseException) -> None:
        if self.error is None:
            self.error = error
            _log.warning(
                "MLflow store %s failed while logging %s (%s: %s); tracking is off for the rest of "
                "the job, results are still written to disk",
                scrub(self.tracking_uri),
                what,
                type(error).__name__,
                _short(error),
            )
        self.skipped.append(what)

    def skip(self, what: str) -> None:
        self.skipped.append(what)

    def report(self, run_path: Path) -> None:
        """One TrackingWarning naming the store, the error and everything not logged."""
        if self.error is None:
            return
        counts: dict[str, int] = {}
        for what in self.skipped:
            counts[what] = counts.get(what, 0) + 1
        lost = ", ".join(f"{what} x{n}" if n > 1 else what for what, n in counts.items())
        warnings.warn(
            f"MLflow tracking to {scrub(self.tracking_uri)} failed ({type(self.error).__name__}: "
            f"{_short(self.error)}); not logged: {lost}. The results themselves are on disk under "
            f"{scrub(str(run_path))}.",
            TrackingWarning,
            stacklevel=3,
        )


def _short(error: BaseException) -> str:
    return scrub(" ".join(str(error).split()))[:300]


__all__ = ["TrackingHealth", "TrackingWarning"]
