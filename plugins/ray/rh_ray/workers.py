"""On the client: the worker machines of a multi-machine cluster join the head's Ray as Ray nodes,
and leave it when the cluster's server stops. Everything runs over the cluster's transports
(``python -m rh_ray.worker_node`` there); Ray itself is never imported here.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import shlex
import time
from typing import Any, Callable

from rh_core.errors import ExecutorError
from rh_core.clusters.remote import remote_shell_path

logger = logging.getLogger(__name__)

MAX_PARALLEL = 8  # workers prepared and joined at once; each holds an SSH connection


def worker_addresses(cluster: Any) -> tuple[str, ...]:
    """The cluster's machines other than the head; none for clusters that are not multi-machine."""
    info = getattr(cluster, "cluster_info", None)
    if info is None:
        return ()
    head = getattr(info, "head", None)
    return tuple(w for w in (getattr(info, "workers", None) or ()) if w != head)


def _run_on(cluster: Any, address: str, command: str) -> dict[str, Any]:
    """Run a ``worker_node`` command on ``address``; its JSON answer, or an ExecutorError naming the cause."""
    transport = cluster.transport_to(address)
    try:
        (code, out, err), = transport.run([command])
    finally:
        if address != cluster.cluster_info.head:  # the head's transport is the cluster's own: keep it open
            transport.close()
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    raise ExecutorError(f"`{command}` failed on {address} (exit {code}): {(err or out).strip()[-1500:]}")


def _in_parallel(addresses: tuple[str, ...], action: Callable[[str], None]) -> dict[str, BaseException]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(addresses))) as pool:
        futures = {address: pool.submit(action, address) for address in addresses}
    return {address: future.exception() for address, future in futures.items() if future.exception() is not None}


def _raise_for(errors: dict[str, BaseException], what: str) -> None:
    if not errors:
        return
    if len(errors) == 1:
        (error,) = errors.values()
        raise error
    details = "\n".join(f"- {address}: {error}" for address, error in errors.items())
    raise ExecutorError(f"{len(errors)} Ray workers could not {what}:\n{details}") from next(iter(errors.values()))


def join_workers(cluster: Any, info: dict[str, Any], workers: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Start a Ray node on each worker that the head's Ray does not list as alive, offering the
    executor's ``num_cpus`` when it is set (as the head does); return what each worker reported.
    Raises :class:`~rh_core.errors.ExecutorError` naming every worker that could not join, and why."""
    head = cluster.cluster_info.head
    gcs_address = info.get("executor_ray_address")
    if not gcs_address:
        raise ExecutorError(
            f"the ray executor on {head} reports no Ray address, so workers {', '.join(workers)} cannot join it; "
            "restart the server with cluster.restart_server()"
        )
    alive = set(info.get("executor_node_ips") or ())
    # The executor's num_cpus sizes the head's Ray node; every worker node offers as many.
    num_cpus = (getattr(cluster, "executor_options", None) or {}).get("num_cpus")
    pending = tuple(w for w in workers if w not in alive)
    results: dict[str, dict[str, Any]] = {}

    def join_one(worker: str) -> None:
        started = time.monotonic()
        try:
            # Ray runs one Python on every node: the head's, where the worker has it.
            python = cluster.install_runtime(worker, prefer_python=info.get("python"))
        except Exception as exc:
            raise ExecutorError(f"Ray worker {worker}: could not install rh_core and Ray there: {exc}") from exc
        command = (f"{shlex.quote(python)} -m rh_ray.worker_node join --root {shlex.quote(cluster.remote_dir)} "
                   f"--node {shlex.quote(worker)} --gcs-address {shlex.quote(gcs_address)}")
        if num_cpus is not None:
            command += f" --num-cpus {int(num_cpus)}"
        result = _run_on(cluster, worker, command)
        if not result.get("ok"):
            log = result.get("log", "").strip()
            said = f"\n`ray start` said:\n{log}" if log else ""
            raise ExecutorError(
                f"Ray worker {worker} could not join the Ray head at {gcs_address}: {result.get('error')}. "
                f"Check that {worker} reaches {gcs_address} (firewall, node address) and runs the same Ray "
                f"version.{said}"
            )
        results[worker] = result
        logger.info("Ray worker %s: %s (ray start %s s, %.1f s in all)", worker, result.get("status"),
                    result.get("seconds", 0), time.monotonic() - started)

    if pending:
        _raise_for(_in_parallel(pending, join_one), f"join the Ray head at {gcs_address}")
    return results


def stop_head(cluster: Any) -> dict[str, Any]:
    """After the cluster's server has stopped: stop what is left of the Ray head it started (only
    its processes). Status ``"kept"`` when ``restart_server(keep=("ray",))`` keeps that Ray, and
    its worker nodes with it, for the next server."""
    from rh_ray import worker_node

    remote_dir = getattr(cluster, "remote_dir", None)
    if remote_dir is None:  # a cluster on this machine
        result = worker_node.stop_head(cluster.state_dir)
    else:
        python = remote_shell_path(f"{remote_dir.rstrip('/')}/venv/bin/python")
        state_dir = remote_shell_path(f"{remote_dir.rstrip('/')}/server")
        # No venv there means no rh_core, so no Ray head of ours either.
        result = _run_on(cluster, cluster.cluster_info.head,
                         f"if [ -x {python} ]; then {python} -m rh_ray.worker_node stop-head --state-dir {state_dir}; "
                         f"else echo '{{\"ok\": true, \"status\": \"no-runtime\"}}'; fi")
    if not result.get("ok"):
        raise ExecutorError(f"could not stop the Ray head of cluster {getattr(cluster, 'name', '')!r}: {result.get('error')}")
    return result


def leave_workers(cluster: Any, workers: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Stop the Ray nodes this cluster started on its workers (only those: never ``ray stop``)."""
    python = remote_shell_path(f"{cluster.remote_dir.rstrip('/')}/venv/bin/python")
    results: dict[str, dict[str, Any]] = {}

    def leave_one(worker: str) -> None:
        # No venv there means no rh_core, so no Ray node of ours either: nothing to stop.
        command = (f"if [ -x {python} ]; then {python} -m rh_ray.worker_node leave "
                   f"--root {shlex.quote(cluster.remote_dir)} --node {shlex.quote(worker)}; "
                   f"else echo '{{\"ok\": true, \"status\": \"no-runtime\"}}'; fi")
        try:
            result = _run_on(cluster, worker, command)
        except Exception as exc:
            raise ExecutorError(f"could not stop the Ray node on worker {worker}: {exc}") from exc
        if not result.get("ok"):
            raise ExecutorError(f"could not stop the Ray node on worker {worker}: {result.get('error')}")
        results[worker] = result
        logger.info("Ray worker %s: %s", worker, result.get("status"))

    if workers:
        _raise_for(_in_parallel(workers, leave_one), "stop their Ray nodes")
    return results
