"""Connecting to Ray: a running cluster when there is one, else an embedded local one."""

from __future__ import annotations

import os
import secrets

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
        enable_token_auth()
        # "local": a fresh embedded Ray, even when a `ray start` head runs on this machine. No
        # dashboard, so no Jobs API; its GCS port listens on every interface, which is why the
        # token is required (checked in tests/test_security.py).
        ray.init(
            address="local",
            num_cpus=max(LOCAL_LOGICAL_CPUS, os.cpu_count() or 1),
            include_dashboard=False,
        )


def enable_token_auth() -> None:
    """Token authentication for a Ray this process starts: RAY_AUTH_MODE=token and, unless the
    user configured a token (RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH), a random one in this
    process's environment only (Ray's workers inherit it; nothing is written to disk). Anything
    that reaches the cluster without the token is refused."""
    changed = "RAY_AUTH_MODE" not in os.environ
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if os.environ["RAY_AUTH_MODE"] == "token" and not (
        os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
    ):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        changed = True
    if changed:
        # Ray reads its settings when it is imported; re-read them so this process (the
        # driver) uses the mode and token its GCS will get. The same calls Ray's own tests use.
        from ray import _raylet

        _raylet.Config.initialize("")  # type: ignore[attr-defined]
        _raylet.AuthenticationTokenLoader.instance().reset_cache()  # type: ignore[attr-defined]
