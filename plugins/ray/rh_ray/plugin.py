"""The rh-ray plugin's hooks: registers the ``ray`` executor, and on clusters of several machines makes
the workers Ray nodes of the head's Ray (and stops them again). Never imports Ray: these hooks run
on the client, which may not have Ray at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from rh_core import hookimpl

if TYPE_CHECKING:
    from rh_core.clusters.base import Cluster


@hookimpl
def rh_register_executors(register: Callable[..., None]) -> None:
    # A "module:attribute" string, so Ray is imported only by a server that runs this executor.
    # keeps: restart_server(keep=("ray",)) may leave this executor's Ray running for the next server.
    register("ray", "rh_ray.executor:RayExecutor", keeps=("ray",))


@hookimpl
def rh_cluster_ready(cluster: Cluster, info: dict[str, Any]) -> None:
    # Called on every connection: workers the head's Ray already lists cost nothing.
    if info.get("executor") != "ray":
        return
    from rh_ray.workers import join_workers, worker_addresses

    workers = worker_addresses(cluster)
    if workers:
        join_workers(cluster, info, workers)


@hookimpl
def rh_cluster_teardown(cluster: Cluster) -> None:
    if getattr(cluster, "executor", None) != "ray":
        return
    from rh_ray.workers import leave_workers, stop_head, worker_addresses

    if stop_head(cluster)["status"] == "kept":  # restart_server(keep=("ray",))
        return
    workers = worker_addresses(cluster)
    if workers:
        leave_workers(cluster, workers)
