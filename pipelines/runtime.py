"""Connecting to Ray: a running cluster when there is one, else an embedded local one.

Token authentication goes through Ray's public configuration only: the environment variables
``RAY_AUTH_MODE`` and ``RAY_AUTH_TOKEN`` (https://docs.ray.io/en/latest/ray-security/token-auth.html).
Ray reads them once, when it is first imported, so an entry point calls
:func:`configure_ray_auth` before anything imports Ray:

    from pipelines.runtime import configure_ray_auth
    configure_ray_auth()          # first thing in main(); then import / start Ray

In a notebook, call it before ``import ray`` (or export the two variables before starting
Python). When Ray was imported first and the variables are not set, :func:`ensure_ray` refuses
to start an embedded Ray (:class:`RayAuthError`) rather than start one that anybody on the
network could run code on. (Variables set by hand *after* ``import ray`` are not seen by Ray;
that case cannot be told apart from outside Ray, so set them first.)
"""

from __future__ import annotations

import os
import secrets
import sys

# A 2-core machine deadlocks when stages ask for whole CPUs; a local Ray advertises more
# logical CPUs than there are cores, and stages ask for fractions (see ARCHITECTURE.md).
LOCAL_LOGICAL_CPUS = 8
AUTH_MODE_ENV = "RAY_AUTH_MODE"
AUTH_TOKEN_ENV = "RAY_AUTH_TOKEN"
AUTH_TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
# Whether the Ray this process starts streams its workers' stdout/stderr (Ray Train's
# controller and workers, Ray Data's actors) to this console: Ray's `log_to_driver`. The job
# turns it off unless --verbose (set_log_to_driver); the workers' log files in Ray's session
# directory keep everything either way.
_START = {"log_to_driver": True}


class RayAuthError(RuntimeError):
    """Ray was imported before its token authentication was configured."""


def configure_ray_auth(address: str | None = None) -> None:
    """Token authentication for a Ray this process will start, through the environment.

    Sets ``RAY_AUTH_MODE=token`` unless the user chose a mode, and, unless a token is configured
    (``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``), a random ``RAY_AUTH_TOKEN`` in this
    process's environment only: Ray's workers and any subprocess inherit it, nothing is written
    to disk. Does nothing when connecting to a cluster (``address`` or ``$RAY_ADDRESS``): that
    cluster's token comes from the user's environment or token file, as Ray documents.

    Raises RayAuthError when something must be set but Ray is already imported (Ray would not
    see it). Idempotent: a second call finds everything set and changes nothing.
    """
    if address or os.environ.get("RAY_ADDRESS"):
        return
    missing: dict[str, str] = {}
    mode = os.environ.get(AUTH_MODE_ENV) or "token"  # empty counts as unset
    if not os.environ.get(AUTH_MODE_ENV):
        missing[AUTH_MODE_ENV] = mode
    if mode == "token" and not (os.environ.get(AUTH_TOKEN_ENV) or os.environ.get(AUTH_TOKEN_PATH_ENV)):
        missing[AUTH_TOKEN_ENV] = secrets.token_hex(32)
    if not missing:
        return
    if "ray" in sys.modules:
        raise RayAuthError(
            f"Ray was imported before token authentication was configured, so it would not see "
            f"{' and '.join(sorted(missing))}. Call pipelines.runtime.configure_ray_auth() before "
            f"anything imports Ray (the pipeline's entry points do), or export "
            f"{AUTH_MODE_ENV}=token and {AUTH_TOKEN_ENV}=<a random secret> before starting Python."
        )
    os.environ.update(missing)


def set_log_to_driver(enabled: bool) -> None:
    """Whether a Ray started later by :func:`ensure_ray` streams worker output to this
    console (default True, Ray's own default). An entry point's choice; a Ray already
    running keeps the setting it was started with."""
    _START["log_to_driver"] = bool(enabled)


def ensure_ray(address: str | None = None) -> None:
    """ray.init once: `address` or $RAY_ADDRESS (a cluster, e.g. under `ray job submit`),
    otherwise a local, token-authenticated Ray with LOCAL_LOGICAL_CPUS logical CPUs. Workers'
    output reaches this console as :func:`set_log_to_driver` chose."""
    imported = sys.modules.get("ray")
    if imported is not None and imported.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        configure_ray_auth()  # before `import ray` below, when this is the first import
    import ray
    import ray.data

    from pipelines.console import reapply_routing

    reapply_routing()  # Ray's loggers exist now: route them before ray.init writes its first line
    # Progress bars redrawn by every worker bury the job's own output in the driver's log
    # (the job draws its own, pipelines.console).
    ray.data.DataContext.get_current().enable_progress_bars = False
    log_to_driver = _START["log_to_driver"]
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
    else:
        # "local": a fresh embedded Ray, even when a `ray start` head runs on this machine. No
        # dashboard, so no Jobs API; its GCS port listens on every interface, which is why the
        # token is required (checked in tests/pipeline/test_security.py).
        ray.init(
            address="local",
            num_cpus=max(LOCAL_LOGICAL_CPUS, os.cpu_count() or 1),
            include_dashboard=False,
            log_to_driver=log_to_driver,
        )


__all__ = [
    "LOCAL_LOGICAL_CPUS",
    "RayAuthError",
    "configure_ray_auth",
    "ensure_ray",
    "ray_is_up",
    "set_log_to_driver",
    "stop_ray",
]


def ray_is_up() -> bool:
    """Whether this process is connected to Ray (without importing Ray when it is not loaded)."""
    ray = sys.modules.get("ray")
    return ray is not None and bool(ray.is_initialized())


def stop_ray() -> None:
    """Disconnect from Ray (and stop the embedded local one) if connected. Ray prints the worker
    messages it held back for de-duplication ("(raylet) ...") when it disconnects, so an entry
    point that routes Ray's output calls this while the routing is still in place."""
    if ray_is_up():
        sys.modules["ray"].shutdown()
