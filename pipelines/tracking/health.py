"""Tracking that degrades instead of failing the job.

When the store is unreachable or read-only, the first failing call switches the tracker (parent
and stages alike) to a no-op, one log line says so (at once, or for the job's ``Tracker`` when
the stage it failed in ends well: when the job fails, its own error comes first), and when the
parent run ends one ``TrackingWarning`` lists everything that was not logged (for a failed job,
as a note on its exception, after the error itself). Results and artifacts are written to
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

    def __init__(self, tracking_uri: str, defer_notice: bool = False) -> None:
        """`defer_notice`: hold the 'tracking is off' line until :meth:`flush_notice` (a stage
        ended well), so it never comes before the error of a job that is failing anyway."""
        self.tracking_uri = tracking_uri
        self.error: BaseException | None = None
        self.skipped: list[str] = []
        self.defer_notice = defer_notice
        self._notice: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def fail(self, what: str, error: BaseException) -> None:
        if self.error is None:
            self.error = error
            self._notice = (
                f"MLflow store {scrub(self.tracking_uri)} failed while logging {what} "
                f"({type(error).__name__}: {_short(error)}); tracking is off for the rest of the "
                "job, results are still written to disk"
            )
            if not self.defer_notice:
                self.flush_notice()
        self.skipped.append(what)

    def flush_notice(self) -> None:
        """Log the held 'tracking is off' line, if any (once)."""
        if self._notice is not None:
            _log.warning("%s", self._notice)
            self._notice = None

    def skip(self, what: str) -> None:
        self.skipped.append(what)

    def report(self, run_path: Path) -> None:
        """One TrackingWarning naming the store, the error and everything not logged."""
        summary = self.summary(run_path)
        if summary is not None:
            self._notice = None  # the warning says it all
            warnings.warn(summary, TrackingWarning, stacklevel=3)

    def summary(self, run_path: Path) -> str | None:
        """What :meth:`report` warns: the store, the error and everything not logged; None
        when the store worked."""
        if self.error is None:
            return None
        counts: dict[str, int] = {}
        for what in self.skipped:
            counts[what] = counts.get(what, 0) + 1
        lost = ", ".join(f"{what} x{n}" if n > 1 else what for what, n in counts.items())
        return (
            f"MLflow tracking to {scrub(self.tracking_uri)} failed ({type(self.error).__name__}: "
            f"{_short(self.error)}); not logged: {lost}. The results themselves are on disk under "
            f"{scrub(str(run_path))}."
        )


def _short(error: BaseException) -> str:
    return scrub(" ".join(str(error).split()))[:300]


__all__ = ["TrackingHealth", "TrackingWarning"]
