"""Connecting to Ray: a running cluster when there is one, else an embedded local one."""

from __future__ import annotations

import os

# A 2-core machine deadlocks when stages ask for whole CPUs; a local Ray advertises more
# logical CPUs than there are cores, and stages ask for fractions (see ARCHITECTURE.md).
LOCAL_LOGICAL_CPUS = 8


def ensure_ray(address: str | None = None) -> None:
    """ray.init once: `address` or $RAY_ADDRESS (a cluster, e.g. under `ray job submit`),
    otherwise a local Ray with LOCAL_LOGICAL_CPUS logical CPUs."""
    import ray
    import ray.data

    if ray.is_initialized():
        return
    # Progress bars redrawn by every worker bury the job's own output in the driver's log.
    ray.data.DataContext.get_current().enable_progress_bars = False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # "local": a fresh embedded Ray, even when a `ray start` head runs on this machine.
        ray.init(
            address="local",
            num_cpus=max(LOCAL_LOGICAL_CPUS, os.cpu_count() or 1),
            include_dashboard=False,
        )
