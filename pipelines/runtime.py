"""Connecting to Ray: a running cluster when there is one, else an embedded local one.

Token authentication goes through Ray's public configuration only: the environment variables
``RAY_AUTH_MODE`` and ``RAY_AUTH_TOKEN`` (https://docs.ray.io/en/latest/ray-security/token-auth.html).
Ray reads them once, when it is first imported, so an entry point calls
:func:`configure_ray_auth` before anything imports Ray:

    from pipelines.runtime import configure_ray_auth
    configure_ray_auth()          # first thing in main(); then import / start Ray

The same call keeps the embedded Ray on loopback: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
(Ray's switch for multi-node clusters, documented for Windows and macOS, where it is off by
default) makes Ray take 127.0.0.1 as the node's address, and every server Ray 2.60 starts
then binds to loopback only: the GCS, the raylet's node and object managers, the workers' and
the driver's gRPC servers, the dashboard agent (its gRPC, HTTP and Prometheus metrics ports)
and the runtime-env agent. (Left alone on Linux, Ray takes the machine's outward address and
the GCS, raylet, workers and metrics endpoints listen on every interface.) No other node can
join such a Ray, which an embedded, single-machine Ray never needs; a user who set the
variable keeps their value. ``GLOO_SOCKET_IFNAME`` (torch.distributed's documented setting)
puts Ray Train's Gloo connections on the loopback interface too. One listener is left that no
documented Ray or torch setting can place: the TCPStore (rendezvous key-value store) that
torch.distributed opens in Ray Train's rank-0 worker binds to every interface while training
runs (MASTER_ADDR is only where the other ranks connect). Checked by
tests/pipeline/test_security.py, which lists the listening sockets of every Ray process during
a run.

In a notebook, call it before ``import ray`` (or export the three variables before starting
Python). When Ray was imported first and the variables are not set, :func:`ensure_ray` refuses
to start an embedded Ray (:class:`RayAuthError`) rather than start one that anybody on the
network could reach. (Variables set by hand *after* ``import ray`` are not seen by Ray;
that case cannot be told apart from outside Ray, so set them first.)
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import threading
import weakref
from collections.abc import Callable

# A 2-core machine deadlocks when stages ask for whole CPUs; a local Ray advertises more
# logical CPUs than there are cores, and stages ask for fractions (see ARCHITECTURE.md).
LOCAL_LOGICAL_CPUS = 8
AUTH_MODE_ENV = "RAY_AUTH_MODE"
AUTH_TOKEN_ENV = "RAY_AUTH_TOKEN"
AUTH_TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
# "0": Ray runs single-node and takes 127.0.0.1 as the node address, so its servers bind to
# loopback (read by ray._private.ray_constants when Ray is imported).
CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# torch.distributed's Gloo backend (Ray Train's DDP on CPUs) listens on this interface for its
# peers; by default on the address the host name resolves to, which may face the network.
GLOO_INTERFACE_ENV = "GLOO_SOCKET_IFNAME"
# How a Ray worker process allocates, read once as it starts (so set in the environment of the
# process that starts Ray: the embedded Ray's driver, `ray start` in cluster.yaml). Ray reuses a
# task worker for task after task, and with the defaults every one of them kept what its largest
# task had needed: Arrow's jemalloc pool held about 800 MiB per idle worker (Ray Data reading
# 625 000-row Parquet files, 20 rounds: idle workers at 1.2 GiB), and glibc, serving Arrow
# instead, kept raising its mmap threshold after each large free, so idle workers crept from
# 840 to 1 140 MiB over 30 rounds. With both settings idle workers stayed at 390 MiB (torch
# imported) and the peak of a task at 550-820 MiB, whatever the number of rounds: a worker's
# peak follows its largest task, not the length of the table. Processes that repeat tensor
# steps (training workers, imputation actors, classifier tasks) raise the thresholds again for
# themselves on entry (missiwae.allocator).
WORKER_ALLOCATOR_ENV = {
    "ARROW_DEFAULT_MEMORY_POOL": "system",
    "MALLOC_MMAP_THRESHOLD_": "131072",  # glibc's initial threshold, fixed: big buffers unmap on free
}
# Settings of Ray's own (environment variables) for the Ray that ensure_ray embeds on one
# machine, where Ray's defaults are sized for clusters, and the workers' allocator settings; a
# value the user exported wins. Read by Ray's processes, which inherit the environment of the
# process that starts Ray.
LOCAL_RAY_ENV = {
    **WORKER_ALLOCATOR_ENV,
    # Ray Data reads Parquet footers through a pool of actors started anew for every read, 32 by
    # default: on 2 cores, 7 of the 8 s that materialising two small shards took were spent
    # starting them (Ray 2.60's datasource_v2 FooterFileIndexer).
    "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1",
    # Ray Train's controller polls its workers every 2 s by default, and every epoch's report and
    # the end of a run wait for a poll.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    # One actor less per training run: a single machine is not a preemptible cloud instance.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}
# Whether the Ray this process starts streams its workers' stdout/stderr (Ray Train's
# controller and workers, Ray Data's actors) to this console: Ray's `log_to_driver`. The job
# turns it off unless --verbose (set_log_to_driver); the workers' log files in Ray's session
# directory keep everything either way.
_START = {"log_to_driver": True}
# Threads of this process that block inside Ray calls (start_ray_thread); weak, so a finished
# thread drops out by itself.
_RAY_THREADS: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


class RayAuthError(RuntimeError):
    """Ray was imported before its token authentication was configured."""


def configure_ray_auth(address: str | None = None) -> None:
    """Token authentication and loopback-only servers for a Ray this process will start,
    through the environment.

    Sets ``RAY_AUTH_MODE=token`` unless the user chose a mode, and, unless a token is configured
    (``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``), a random ``RAY_AUTH_TOKEN`` in this
    process's environment only: Ray's workers and any subprocess inherit it, nothing is written
    to disk. Sets ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` unless the user set it, so the embedded
    Ray listens on 127.0.0.1 only (module docstring). Does nothing when connecting to a cluster
    (``address`` or ``$RAY_ADDRESS``): that cluster's token comes from the user's environment or
    token file, as Ray documents, and its addresses are the cluster's.

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
    if not os.environ.get(CLUSTER_ENV):
        missing[CLUSTER_ENV] = "0"
    loopback = _loopback_interface()
    if loopback and not os.environ.get(GLOO_INTERFACE_ENV):
        os.environ[GLOO_INTERFACE_ENV] = loopback  # read by torch when training starts, not at import
    if not missing:
        return
    if "ray" in sys.modules:
        raise RayAuthError(
            f"Ray was imported before token authentication and loopback binding were configured, "
            f"so it would not see "
            f"{' and '.join(sorted(missing))}. Call pipelines.runtime.configure_ray_auth() before "
            f"anything imports Ray (the pipeline's entry points do), or export "
            f"{AUTH_MODE_ENV}=token, {AUTH_TOKEN_ENV}=<a random secret> and {CLUSTER_ENV}=0 before "
            f"starting Python."
        )
    os.environ.update(missing)


def _loopback_interface() -> str | None:
    """The loopback interface's name ("lo" on Linux, "lo0" on macOS), None when not found."""
    try:
        names = {name for _, name in socket.if_nameindex()}
    except OSError:  # no interface list on this platform
        return None
    return next((name for name in ("lo", "lo0") if name in names), None)


def use_local_ray_env() -> None:
    """Set LOCAL_RAY_ENV's variables the user has not set, for a Ray started on this machine
    after the call (ensure_ray's embedded one; a test's multi-node cluster)."""
    for name, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(name, value)


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
        use_local_ray_env()
        # "local": a fresh embedded Ray, even when a `ray start` head runs on this machine. No
        # dashboard, so no Jobs API; every server on loopback (CLUSTER_ENV) and the token
        # required besides, for other users of this machine (tests/pipeline/test_security.py).
        ray.init(
            address="local",
            num_cpus=max(LOCAL_LOGICAL_CPUS, os.cpu_count() or 1),
            include_dashboard=False,
            log_to_driver=log_to_driver,
        )


__all__ = [
    "CLUSTER_ENV",
    "LOCAL_LOGICAL_CPUS",
    "LOCAL_RAY_ENV",
    "WORKER_ALLOCATOR_ENV",
    "RayAuthError",
    "configure_ray_auth",
    "ensure_ray",
    "exit_now",
    "ray_is_up",
    "ray_threads_alive",
    "set_log_to_driver",
    "start_ray_thread",
    "stop_ray",
    "use_local_ray_env",
]


def ray_is_up() -> bool:
    """Whether this process is connected to Ray (without importing Ray when it is not loaded)."""
    ray = sys.modules.get("ray")
    return ray is not None and bool(ray.is_initialized())


def start_ray_thread(target: Callable[[], object], name: str) -> threading.Thread:
    """Start `target` on a daemon thread that may block inside Ray (Ray Train's `fit()` waits on
    its controller actor; a queue's `get` waits on the queue actor). :func:`stop_ray` never
    shuts Ray down while such a thread is alive. Daemon: a Ctrl-C must not wait for it."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    _RAY_THREADS.add(thread)
    thread.start()
    return thread


def ray_threads_alive() -> bool:
    """Whether a thread started by :func:`start_ray_thread` is still running (Ctrl-C leaves
    the ones blocked in Ray Train's `fit()` behind)."""
    return any(thread.is_alive() for thread in list(_RAY_THREADS))


def stop_ray() -> bool:
    """Disconnect from Ray (and stop the embedded local one) if connected. Ray prints the worker
    messages it held back for de-duplication ("(raylet) ...") when it disconnects, so an entry
    point that routes Ray's output calls this while the routing is still in place.

    Returns False, and leaves Ray as it is, while a thread of :func:`start_ray_thread` is still
    inside Ray: `ray.shutdown()` frees the core worker under a thread blocked in a Ray call, and
    that thread then segfaults the process (ray-project/ray#31145; seen here after a Ctrl-C
    while training). Such a process ends with `os._exit` (:func:`exit_now`), and the embedded
    Ray, whose processes share the driver's fate, ends with it; a cluster drops a dead
    driver's job.
    """
    if ray_threads_alive():
        return False
    if ray_is_up():
        sys.modules["ray"].shutdown()
    return True


def exit_now(code: int) -> None:
    """End the process with `code` when :func:`stop_ray` had to leave Ray up: after flushing
    stdout and stderr, without Python's exit handlers (Ray's own calls `ray.shutdown()`, which
    would segfault under the threads still inside Ray). Otherwise return, for a normal exit."""
    if not ray_threads_alive():
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)
