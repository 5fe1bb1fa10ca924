"""More than one node, for real: a two-node Ray cluster on this machine (Ray's own
``ray.cluster_utils.Cluster``: a head and a second node, each with its own raylet and object
store, token-authenticated like every Ray this project starts) runs the table job. Its training
workers and imputation actors land on both nodes; then the second node is killed in the middle
of the imputation, and the job still finishes with every row imputed exactly once, bit-equal to
the undisturbed run (the imputation's numbers do not depend on which actor computed a batch)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipelines import full
from tests.pipeline.test_pipeline_tabular import tiny_table_job, write_csv

NUM_ROWS = 3000
# Ray Data runs a map_batches callable class inside an actor it names after the operator.
IMPUTE_ACTOR = "MapWorker(MapBatches(ImputeActor))"
# Each node offers 2 CPUs and a training worker asks for 1.5, so the two workers cannot share a
# node; an imputation actor asks for 0.5, and Ray Data spreads its actors over the nodes.
NODE_CPUS = 2
SETTINGS = {
    "scaling.num_workers": "2",
    "scaling.cpus_per_worker": "1.5",
    "impute_stage.num_actors": "2",
    "impute_stage.cpus_per_actor": "0.5",
    "impute_stage.splits": "[train]",
    "model.hidden": "[64]",
    "impute.num_samples": "20000",  # L: batches slow enough (~1 s) that the kill lands mid-job
    "impute.batch_size": "100",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def two_nodes(_ray_session: Any) -> Iterator[tuple[Any, Any, str]]:
    """(cluster, the second node, the dashboard's address for the state API); the session's
    one-node Ray is shut down first and comes back for the next test that asks."""
    import ray
    from ray.cluster_utils import Cluster

    from pipelines.runtime import configure_ray_auth, use_local_ray_env

    ray.shutdown()
    configure_ray_auth()  # the token and loopback settings, before any node starts
    use_local_ray_env()  # Ray's settings for a cluster on one machine, as the embedded Ray's
    dashboard_port = _free_port()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": NODE_CPUS, "dashboard_port": dashboard_port, "include_dashboard": True},
    )
    try:
        second = cluster.add_node(num_cpus=NODE_CPUS)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        yield cluster, second, f"http://127.0.0.1:{dashboard_port}"
    finally:
        ray.shutdown()
        cluster.shutdown()


def _actor_nodes(dashboard: str, class_name: str, state: str | None = None) -> list[str]:
    """Node ids of the actors of `class_name` (every state, dead ones included, unless `state`)."""
    from ray.util.state import list_actors

    filters: list[Any] = [("class_name", "=", class_name)]
    if state is not None:
        filters.append(("state", "=", state))
    return [str(actor.node_id) for actor in list_actors(address=dashboard, filters=filters, limit=1000)]


def _outputs(run_dir: Path) -> dict[str, pd.DataFrame]:
    """The job's imputed tables by name, in the file's row order."""
    from pipelines.table_output import load_imputed_table

    out = run_dir / "imputed" / "table"
    return {
        path.name: load_imputed_table(path).to_pandas()
        for path in sorted(out.iterdir())
        if path.is_dir() and not path.name.startswith(".")
    }


def test_the_table_job_runs_on_both_nodes_and_survives_losing_one_mid_imputation(
    two_nodes: tuple[Any, Any, str], tmp_path: Path
) -> None:
    cluster, second, dashboard = two_nodes
    head_id, second_id = cluster.head_node.node_id, second.node_id
    csv = tmp_path / "table.csv"
    write_csv(csv, num_rows=NUM_ROWS)
    run_dir = tmp_path / "run"
    args = ["--data", str(csv), *tiny_table_job(run_dir)]
    args += [arg for key, value in SETTINGS.items() for arg in ("--set", f"{key}={value}")]

    assert full.main(args) == 0
    assert set(_actor_nodes(dashboard, "RayTrainWorker")) == {head_id, second_id}
    assert set(_actor_nodes(dashboard, IMPUTE_ACTOR)) == {head_id, second_id}
    undisturbed = _outputs(run_dir)
    rows = undisturbed["missiwae_single"]
    assert len(rows) > NUM_ROWS // 2 and not rows.duplicated(["source_file", "source_row"]).any()

    # Again from the same trained model (training resumes its finished run): the second node
    # is killed once one of its actors is imputing, and the job must finish regardless.
    shutil.rmtree(run_dir / "imputed")
    killed_mid_job, job_done = threading.Event(), threading.Event()
    earlier_actors = len(_actor_nodes(dashboard, IMPUTE_ACTOR))

    def kill_second_node_mid_imputation() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not job_done.is_set():
            started = len(_actor_nodes(dashboard, IMPUTE_ACTOR)) > earlier_actors
            if started and second_id in _actor_nodes(dashboard, IMPUTE_ACTOR, state="ALIVE"):
                time.sleep(1.0)  # a few batches in; then only while its actor is still imputing
                if (
                    second_id in _actor_nodes(dashboard, IMPUTE_ACTOR, state="ALIVE")
                    and not job_done.is_set()
                ):
                    cluster.remove_node(second)
                    killed_mid_job.set()
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_second_node_mid_imputation, daemon=True)
    killer.start()
    try:
        assert full.main(args) == 0
    finally:
        job_done.set()
    killer.join(timeout=30)
    assert killed_mid_job.is_set(), "the second node was not killed while its actor was imputing"
    disturbed = _outputs(run_dir)

    assert list(disturbed) == list(undisturbed)
    for name, table in undisturbed.items():
        again = disturbed[name]
        assert not again.duplicated(["source_file", "source_row"]).any(), name  # each row once
        pd.testing.assert_frame_equal(again, table, check_exact=True, obj=name)
    assert np.isfinite(disturbed["missiwae_single"][["a", "b", "c"]].to_numpy()).all()
