"""The ``ray`` executor: every call runs as a Ray task, on a local Ray it starts or a cluster it joins.

Ray is imported when the executor starts, not when this module is imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import os
import shutil
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

from rh_core.errors import RhError, WorkerDiedError
from rh_core.plugin_types import CoroutineExecutor, Outcome, ServerContext, Task

if TYPE_CHECKING:
    from types import ModuleType

    from rh_core.runner import Runner

#: Call options (``Function.options``) that are Ray scheduling requests; only those set are passed on.
RAY_CALL_OPTIONS = ("num_cpus", "num_gpus", "resources", "memory")

# Ray puts unix sockets at <temp dir>/session_<date>_<time>_<micros>_<pid>/sockets/plasma_store, and
# AF_UNIX paths stop at 107 bytes: a temp dir longer than this budget makes Ray fail to start.
_UNIX_PATH_MAX = 107
CPU_COUNT_TTL = 5.0
_RAY_SOCKET_SUFFIX = 72


def _set_ray_env_defaults() -> None:
    # Without RAY_AUTH_MODE a new local Ray turns token auth on and writes ~/.ray/auth_token, which
    # then switches on token auth for every later `ray start` on the machine. Explicit settings win.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _import_ray() -> ModuleType:
    _set_ray_env_defaults()  # before the import: Ray reads some of its settings when imported
    import ray

    return ray


def _to_bytes(frame: Any) -> bytes:
    # zmq frames, memoryviews and PickleBuffers cannot be pickled, and Ray pickles task arguments.
    if isinstance(frame, bytes):
        return frame
    return memoryview(frame).tobytes()


def _detached(task: Task) -> Task:
    """A copy of ``task`` holding only plain bytes, so Ray can ship it to a worker process."""
    refs = {
        key: Outcome(status=outcome.status, frames=[_to_bytes(f) for f in outcome.frames], logged=outcome.logged)
        for key, outcome in task.refs.items()
    }
    return Task(
        key=task.key,
        header=task.header,
        function=_to_bytes(task.function) if task.function is not None else b"",
        arguments=[_to_bytes(f) for f in task.arguments],
        refs=refs,
        options=task.options,
    )


def head_node_ip(node_address: str | None) -> str | None:
    """The IP a Ray head should bind to so the cluster's other machines can join it: ``node_address``
    (``RH_NODE_ADDRESS``, the address the client reached this machine at) resolved to an IPv4 address
    of this machine; None, letting Ray choose, when it is loopback or not an address of this machine
    (a public address behind NAT, say)."""
    if not node_address:
        return None
    try:
        ip = socket.gethostbyname(node_address)
    except OSError:
        return None
    if ipaddress.ip_address(ip).is_loopback:  # a one-machine cluster; Ray finds a better address itself
        return None
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((ip, 0))  # succeeds only for addresses of this machine
    except OSError:
        return None
    return ip


def ray_temp_dir(state_dir: str) -> str:
    """A Ray temp dir private to one server: ``<state_dir>/ray``, or a short path under /tmp when that
    one is too long for Ray's unix sockets."""
    path = os.path.join(state_dir, "ray")
    if len(path) + _RAY_SOCKET_SUFFIX > _UNIX_PATH_MAX:
        digest = hashlib.sha1(os.path.abspath(state_dir).encode()).hexdigest()[:10]
        path = os.path.join("/tmp", f"rh-ray-{os.getuid()}-{digest}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


# -------------------------------------------------------------------------------------------------
# Inside Ray worker processes


# One Runner per worker process and log endpoint. Ray never shares a worker process between jobs
# (one job per server), so in practice this holds a single Runner.
_runners: dict[str, Runner] = {}


def run_in_worker(log_endpoint: str, task: Task, server_node: str | None = None) -> tuple[str, list[bytes], bool]:
    """The body of every Ray task: run one rh task with this worker's Runner; never raises for user errors.
    ``server_node`` is the Ray node id of the server's machine, where ``log_endpoint`` exists."""
    runner = _runners.get(log_endpoint)
    if runner is None:
        runner = _runners[log_endpoint] = _new_runner(log_endpoint, server_node)
    outcome = runner.run(task)
    return outcome.status, [_to_bytes(frame) for frame in outcome.frames], outcome.logged


def _new_runner(log_endpoint: str, server_node: str | None) -> Runner:
    from rh_core.runner import Runner

    if server_node is None or _ray_node_id() == server_node:
        return Runner(log_endpoint)
    # Another machine: the server's ipc:// endpoint is not there, so output sent to it would be lost and
    # each call that printed would wait for it in the server. Keep stdout and stderr as Ray set them:
    # the output lands in Ray's worker logs on that machine.
    stdout, stderr = sys.stdout, sys.stderr
    runner = Runner(None)
    sys.stdout, sys.stderr = stdout, stderr
    return runner


def _ray_node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


# -------------------------------------------------------------------------------------------------
# In the server process


class RayExecutor(CoroutineExecutor):
    """Runs each task as a Ray task.

    :param address: a Ray cluster to join (``"auto"``, ``"host:port"``, ``"ray://..."``); ``None``
        starts a Ray head owned by this server, with its temp dir under the server's state dir. On a
        cluster's head machine (``RH_NODE_ADDRESS`` set by bootstrap) that head binds to the node's
        address, so the cluster's other machines can join it at ``describe()["ray_address"]``.
    :param num_cpus: CPUs of the local Ray (default: all); only without ``address``.
    :param ray_init_kwargs: passed to ``ray.init`` as they are, overriding the executor's defaults.

    Call options ``num_cpus``, ``num_gpus``, ``resources`` and ``memory`` become Ray task options.
    Live logs go to the server's log endpoint, an ``ipc://`` socket on the server's machine: calls
    that Ray schedules on other nodes cannot stream their output yet; it goes to Ray's worker logs
    on their node.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, **ray_init_kwargs: Any):
        if address is not None and num_cpus is not None:
            raise ValueError(
                f"num_cpus={num_cpus} sizes a Ray this executor starts, but address={address!r} joins an "
                "existing cluster, which has its own CPUs; pass only one of them"
            )
        self.address = address
        # Large buffers may go through /dev/shm only while every Ray worker is on this machine: a Ray
        # this server starts alone. A joined cluster, or a head others join, spans machines.
        self.same_machine = address is None and not os.environ.get("RH_NODE_ADDRESS")
        self.num_cpus = num_cpus
        self.ray_init_kwargs = ray_init_kwargs
        self._ray: ModuleType | None = None
        self._remote: Any = None  # run_in_worker as a Ray remote function
        self._log_endpoint: str | None = None
        self._node_id: str | None = None  # the Ray node of the server's machine, where the log endpoint is
        self._owns_connection = False  # ray.init was ours, so ray.shutdown is too
        self._temp_dir: str | None = None
        self._remove_temp_dir = False
        self._ray_address: str | None = None
        self._parallelism = 1
        self._nodes = 0
        self._node_ips: list[str] = []
        self._counted_at = 0.0
        self._remotes: dict[str, Any] = {}  # Ray task options -> the remote function with them

    # --- life cycle ----------------------------------------------------------------------------

    async def start(self, context: ServerContext) -> None:
        ray = self._ray = _import_ray()
        self._context = context
        self._log_endpoint = context.log_endpoint
        if ray.is_initialized():
            # Ray was connected in this process before the server started (an embedded server):
            # use that connection and leave it open at stop.
            self._owns_connection = False
        else:
            try:
                ray.init(**self._init_kwargs(context))
            except Exception as exc:
                raise self._start_error(exc) from exc
            self._owns_connection = True
        self._ray_address = ray.get_runtime_context().gcs_address
        self._node_id = ray.get_runtime_context().get_node_id()
        # No retries: Ray would otherwise run a call again when its worker dies, and calls need not
        # be idempotent. A dead worker is reported as WorkerDiedError instead.
        self._remote = ray.remote(max_retries=0)(run_in_worker)
        self._counted_at = 0.0
        self._refresh()

    def _init_kwargs(self, context: ServerContext) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"log_to_driver": False}
        if self.address is None:
            self._temp_dir = ray_temp_dir(context.state_dir)
            self._remove_temp_dir = not self._temp_dir.startswith(os.path.abspath(context.state_dir) + os.sep)
            # "local" and not None: None would join whatever Ray was last started on this machine.
            kwargs.update(address="local", include_dashboard=False, _temp_dir=self._temp_dir)
            # The head's GCS listens on all interfaces at a free port; binding the node to the address the
            # client used makes Ray advertise one the cluster's other machines can reach.
            node_ip = head_node_ip(os.environ.get("RH_NODE_ADDRESS"))
            if node_ip is not None:
                kwargs["_node_ip_address"] = node_ip
            if self.num_cpus is not None:
                kwargs["num_cpus"] = self.num_cpus
        else:
            kwargs["address"] = self.address
        kwargs.update(self.ray_init_kwargs)
        return kwargs

    def _start_error(self, exc: Exception) -> RhError:
        if self.address is None:
            return RhError(
                f"could not start a local Ray: {exc}. Ray's own logs are in {self._temp_dir}/session_latest/logs; "
                "to use a running Ray cluster instead, pass address='auto' (-o address=auto)"
            )
        return RhError(
            f"could not join the Ray cluster at {self.address!r}: {exc}. Start it first (`ray start --head`), "
            "check the address, or leave address unset to let the executor start a local Ray"
        )

    async def stop(self) -> None:
        ray, self._remote = self._ray, None
        if ray is None or not self._owns_connection:
            return
        # Disconnects from a joined cluster; stops the processes of a Ray we started. Never `ray stop`,
        # which would stop every Ray on the machine.
        ray.shutdown()
        self._owns_connection = False
        if self._remove_temp_dir and self._temp_dir:
            shutil.rmtree(self._temp_dir, ignore_errors=True)

    # --- what the server asks ------------------------------------------------------------------

    def _refresh(self) -> None:
        """Re-read CPUs and live nodes from Ray, at most every CPU_COUNT_TTL seconds: the server
        reports both on every ping, and each read is a blocking call to Ray's GCS."""
        ray = self._ray
        if time.monotonic() - self._counted_at < CPU_COUNT_TTL:
            return
        self._counted_at = time.monotonic()
        if ray is not None and ray.is_initialized():
            with contextlib.suppress(Exception):  # GCS briefly unreachable: keep the last figures
                self._parallelism = max(1, int(ray.cluster_resources().get("CPU", 0)))
                alive = [node for node in ray.nodes() if node.get("Alive")]
                self._nodes = len(alive)
                self._node_ips = sorted({node.get("NodeManagerAddress", "") for node in alive} - {""})

    @property
    def parallelism(self) -> int:
        # Re-read now and then: nodes may join or leave a Ray cluster while the server runs.
        self._refresh()
        return self._parallelism

    def describe(self) -> dict[str, Any]:
        self._refresh()
        # node_ips lets clients skip workers that are already Ray nodes (rh_ray.workers).
        return {"executor": self.name, "ray_address": self._ray_address, "nodes": self._nodes,
                "node_ips": self._node_ips}

    # --- running -------------------------------------------------------------------------------

    async def run(self, task: Task) -> Outcome:
        ray = self._ray
        if ray is None or self._remote is None:
            raise RhError("the ray executor is not running: the server calls start() before run()")
        options = {key: task.options[key] for key in RAY_CALL_OPTIONS if task.options.get(key) is not None}
        if task.env is not None:
            # A named environment: Ray starts workers of its interpreter, with its PATH (only on the
            # head node, where the server installed it).
            env = await asyncio.to_thread(self._context.environment, task.env)
            options["runtime_env"] = {"py_executable": env.python, "env_vars": env.variables}
        remote = self._remote_with(options)
        try:
            ref = remote.remote(self._log_endpoint, _detached(task), self._node_id)
        except Exception as exc:  # Ray itself is gone; its exception types may not unpickle on the client
            raise RhError(f"could not submit the call to Ray: {type(exc).__name__}: {exc}") from exc
        errors = ray.exceptions
        try:
            status, frames, logged = await ref
        except asyncio.CancelledError:
            # The call's timeout: stop the task wherever it is. force=True kills its worker process
            # (Ray starts a new one); a task still waiting for resources is just dropped.
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
            raise
        except (errors.WorkerCrashedError, errors.LocalRayletDiedError, errors.NodeDiedError) as exc:
            raise WorkerDiedError(
                f"the Ray worker process running this call died ({type(exc).__name__}: {exc}). "
                "Ray does not retry it. Look for a crash in native code, os._exit, or running out of "
                f"memory; {self._where_logs_are()}"
            ) from exc
        except errors.OutOfMemoryError as exc:
            raise WorkerDiedError(
                f"Ray killed the worker running this call because its node ran low on memory: {exc} "
                "Ask for memory with .options(memory=BYTES) or use fewer parallel calls."
            ) from exc
        except errors.TaskCancelledError as exc:
            raise RhError(
                "the Ray task running this call was cancelled outside rh (ray.cancel or a Ray job stop); "
                "call again"
            ) from exc
        except errors.RayTaskError as exc:
            # run_in_worker reports the function's own errors as outcomes; this is the plumbing failing.
            raise RhError(
                f"the Ray worker could not run rh's task: {exc}. Check that rh-core and rh-ray are installed "
                f"in the Python the Ray workers use; {self._where_logs_are()}"
            ) from exc
        except errors.RayError as exc:
            raise RhError(f"Ray could not run the call: {type(exc).__name__}: {exc}") from exc
        return Outcome(status=status, frames=frames, logged=logged)

    def _remote_with(self, options: dict[str, Any]) -> Any:
        """The remote function with these Ray options; building one costs ~0.15 ms, so they are kept."""
        cache_key = repr(sorted(options.items()))
        remote = self._remotes.get(cache_key)
        if remote is None:
            try:
                remote = self._remote.options(**options) if options else self._remote
            except (TypeError, ValueError) as exc:
                raise RhError(
                    f"Ray rejected the call options {options}: {exc}. Fix them in Function.options(...)"
                ) from exc
            self._remotes[cache_key] = remote
        return remote

    def _where_logs_are(self) -> str:
        if self._temp_dir is not None:
            return f"Ray's worker logs are in {self._temp_dir}/session_latest/logs"
        return "Ray's worker logs are in the session's logs directory on that node (/tmp/ray/session_latest/logs)"
