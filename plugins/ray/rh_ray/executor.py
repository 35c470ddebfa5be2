"""The ``ray`` executor: every call runs as a Ray task, on a local Ray it starts or a cluster it joins.

Ray is imported when the executor starts, not when this module is imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import io
import ipaddress
import logging
import os
import secrets
import shutil
import socket
import stat
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ContextManager

from rh_core.errors import (
    ExecutorError,
    InstanceDiedError,
    InstanceNotFoundError,
    WorkerDiedError,
)
from rh_core.plugin.interfaces import (
    CoroutineExecutor,
    Environment,
    InstanceSpec,
    Outcome,
    ServerContext,
    Task,
    keep_marker,
)
from rh_core.server.envs import install_record_path
from rh_core.support.files import private_directory

if TYPE_CHECKING:
    from types import ModuleType

    from rh_core.worker.runner import Runner

logger = logging.getLogger(__name__)

#: Call options (``Function.options``) that are Ray scheduling requests; only those set are passed on.
RAY_CALL_OPTIONS = ("num_cpus", "num_gpus", "resources", "memory")

# Ray puts unix sockets at <temp dir>/session_<date>_<time>_<micros>_<pid>/sockets/plasma_store, and
# AF_UNIX paths stop at 107 bytes: a temp dir longer than this budget makes Ray fail to start.
_UNIX_PATH_MAX = 107
CPU_COUNT_TTL = 5.0
_RAY_SOCKET_SUFFIX = 72
#: Where, in the server's state dir, the Ray head this executor starts keeps its record.
HEAD_DIR = "ray-head"
#: How long a node may stop answering before the head declares it dead (Ray's own default is ~1 min).
DEFAULT_NODE_TIMEOUT_S = 30.0
_HEALTH_CHECK_FAILURES = 5  # Ray's default health_check_failure_threshold, kept
CODE_CHECK_TTL = 1.0  # how often the synced code a task imports is re-read before copying it to other nodes
INTERPRETER_CHECK_TIMEOUT = 120.0


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


def health_check_settings(node_timeout_s: float | None) -> dict[str, str]:
    """Environment for a Ray head whose GCS declares a silent node dead after about ``node_timeout_s``
    seconds: it checks each node every period, waits as long for the answer, and gives up after
    Ray's usual five failures in a row. Empty for ``None`` (Ray's defaults)."""
    if node_timeout_s is None:
        return {}
    step_ms = max(500, int(node_timeout_s * 1000 / (2 * _HEALTH_CHECK_FAILURES)))
    # gRPC keepalives too: a call pushed to a worker on a silent node otherwise waits for TCP (minutes).
    keepalive_ms = str(max(1000, int(node_timeout_s * 1000 / 2)))
    return {"RAY_health_check_period_ms": str(step_ms), "RAY_health_check_timeout_ms": str(step_ms),
            "RAY_health_check_failure_threshold": str(_HEALTH_CHECK_FAILURES),
            "RAY_grpc_client_keepalive_time_ms": keepalive_ms, "RAY_grpc_client_keepalive_timeout_ms": keepalive_ms}


def ray_temp_dir(state_dir: str) -> str:
    """A Ray temp dir private to one server: ``<state_dir>/ray``, or a short path under /tmp when that
    one is too long for Ray's unix sockets (refused when another user made it first: its name is
    predictable)."""
    path = os.path.join(state_dir, "ray")
    if len(path) + _RAY_SOCKET_SUFFIX > _UNIX_PATH_MAX:
        digest = hashlib.sha1(os.path.abspath(state_dir).encode()).hexdigest()[:10]
        path = os.path.join("/tmp", f"rh-ray-{os.getuid()}-{digest}")
    with contextlib.suppress(FileNotFoundError):
        info = os.lstat(path)
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid():
            # Ray opens its temp dir to every user when it starts (chmod 0777, for machines shared
            # through one /tmp/ray): ours was made owner-only by us, so it is closed again.
            os.chmod(path, 0o700)
    return private_directory(path)


# -------------------------------------------------------------------------------------------------
# Inside Ray worker processes


# One Runner per worker process and log endpoint. Ray never shares a worker process between jobs
# (one job per server), so in practice this holds a single Runner.
_runners: dict[str, Runner] = {}


def run_in_worker(log_endpoint: str, task: Task, server_node: str | None = None,
                  relay_endpoint: str | None = None) -> tuple[str, list[bytes], bool, tuple]:
    """The body of every Ray task: run one rh task with this worker's Runner; never raises for user errors.
    ``server_node`` is the Ray node id of the server's machine, where ``log_endpoint`` exists; tasks on
    other nodes send their output to ``relay_endpoint``, which forwards it there."""
    runner = _runners.get(log_endpoint)
    if runner is None:
        runner = _runners[log_endpoint] = _new_runner(log_endpoint, server_node, relay_endpoint)
    return _plain(runner.run(task))


def _plain(outcome: Outcome) -> tuple[str, list[bytes], bool, tuple]:
    """An outcome as a Ray task returns it: plain bytes, which Ray can pickle."""
    return outcome.status, [_to_bytes(frame) for frame in outcome.frames], outcome.logged, outcome.output


def _new_runner(log_endpoint: str, server_node: str | None, relay_endpoint: str | None) -> Runner:
    from rh_core.worker.runner import Runner

    if server_node is None or _ray_node_id() == server_node:
        return Runner(log_endpoint)
    # Another machine: its output goes live through the relay; without one (the server's ipc://
    # endpoint is not there) it travels with each result only, and what a call writes beyond what
    # it may hold lands in Ray's worker logs on that machine.
    return Runner(relay_endpoint)


class InstanceActor:
    """A remote instance (``rh.module``) as a Ray actor: a Runner of its own runs the constructor (the
    first task) and holds the instance, then runs its method calls, as many at once as the actor's
    ``max_concurrency``, in Ray's threads. ``cancel`` is called in a concurrency group of its own
    (``control``), so it is served while every call thread is busy."""

    def __init__(self, log_endpoint: str, server_node: str | None, relay_endpoint: str | None):
        self._runner = _new_runner(log_endpoint, server_node, relay_endpoint)

    def run(self, task: Task) -> tuple[str, list[bytes], bool, tuple]:
        return _plain(self._runner.run(task))

    def cancel(self, key: str) -> bool:
        return self._runner.cancel(key)


def unpack_copy(path: str, fingerprint: str, archive: bytes, fingerprint_of: Callable[[str], str],
                check: Callable[[], None] | None = None, force: bool = False) -> str:
    """On another node: make ``path`` hold the tree in ``archive`` (a tar of the head's ``path``),
    unless ``fingerprint_of(path)`` there already gives ``fingerprint`` (a shared file system: then
    those are the head's own files, left untouched) and ``force`` is false (a copy found holding
    other contents behind the same fingerprint); then run ``check``. Returns what it did."""
    if not force and os.path.isdir(path) and fingerprint_of(path) == fingerprint:
        done = "present"
    else:
        os.makedirs(os.path.dirname(path.rstrip("/")), exist_ok=True)
        fresh = f"{path}.rh-new-{secrets.token_hex(4)}"
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            # The "tar" filter (Python 3.11.4+) keeps paths inside the target but, unlike "data", keeps
            # absolute symlinks: a venv's bin/python links to its base interpreter.
            extra = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}
            tar.extractall(fresh, **extra)
        # Swap whole trees, so a process on this node sees the old files or the new, never a mix.
        old = f"{path}.rh-old-{secrets.token_hex(4)}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(path, old)
        os.rename(fresh, path)
        shutil.rmtree(old, ignore_errors=True)
        done = "copied"
    if check is not None:
        check()
    return done


def environment_fingerprint(root: str) -> str:
    """What identifies an environment's contents: a hash of its install record (empty when nothing
    was installed yet), which every install rewrites with a new timestamp."""
    try:
        with open(install_record_path(root), "rb") as record:
            return hashlib.sha256(record.read()).hexdigest()
    except FileNotFoundError:
        return "nothing-installed"


def check_interpreter_runs_rh(python: str) -> None:
    """On another node: the environment's ``python`` starts there and imports rh_core, which it takes
    from the rh runtime (the server's site-packages) through the venv's ``.pth`` file."""
    try:
        done = subprocess.run([python, "-c", "import rh_core"], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=INTERPRETER_CHECK_TIMEOUT)
        problem = None if done.returncode == 0 else done.stderr.strip()[-1500:]
    except (OSError, subprocess.TimeoutExpired) as exc:
        problem = str(exc)
    if problem is not None:
        raise ExecutorError(
            f"the environment's interpreter {python} cannot run rh here: {problem}. It needs the head's base "
            f"Python ({os.path.realpath(python)}) and rh's runtime at the same paths as on the head; bootstrap "
            "every machine of the cluster with the same python3 and the same remote_dir (SSH user and home)"
        )


def _ray_node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


# -------------------------------------------------------------------------------------------------
# In the server process


class RayExecutor(CoroutineExecutor):
    """Runs each task as a Ray task.

    :param address: a Ray cluster to join (``"auto"``, ``"host:port"``, ``"ray://..."``); ``None``
        starts a Ray head for this server (``ray start --head``, detached, with its temp dir under
        the server's state dir) or joins the one an earlier server left running (see below). On a
        cluster's head machine (``RH_NODE_ADDRESS`` set by bootstrap) that head binds to the node's
        address, so the cluster's other machines can join it at ``describe()["ray_address"]``.
    :param num_cpus: CPUs of the Ray head this executor starts (default: all), and of each worker
        node of a multi-machine cluster (their machines' own count by default); only without ``address``.
    :param node_timeout_s: only without ``address``: how long the head waits for a node that stopped
        answering (a machine down, the network cut) before Ray declares it dead and fails the calls
        that ran there. Ray's own default is about a minute; ``None`` keeps it.
    :param ray_init_kwargs: passed to ``ray.init`` as they are, overriding the executor's defaults.

    The head this executor starts outlives the server only when the client restarts the server
    with ``restart_server(keep=("ray",))`` (this executor registers with ``keeps=("ray",)``), which
    leaves the ``keep_marker`` of ``"ray"`` in the server's state dir: the next server joins that head, and Ray's actors, objects and worker nodes live on.
    Otherwise ``stop()`` stops the head's processes (and only those: never ``ray stop``).

    Call options ``num_cpus``, ``num_gpus``, ``resources`` and ``memory`` become Ray task options.
    Live logs go to the server's log endpoint, an ``ipc://`` socket on the server's machine; tasks
    on other nodes reach it through a relay this executor listens with on the head's node address.
    Code sent by reference (a synced working directory) and named environments (installed on the head)
    are copied to the other nodes, at the same paths, before a task that needs them is submitted; an
    environment works on a node only if that node has the head's base Python and rh runtime at the
    same paths, as machines bootstrapped alike do.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 node_timeout_s: float | None = DEFAULT_NODE_TIMEOUT_S, **ray_init_kwargs: Any):
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
        self.node_timeout_s = node_timeout_s
        self.ray_init_kwargs = ray_init_kwargs
        self._ray: ModuleType | None = None
        self._remote: Any = None  # run_in_worker as a Ray remote function
        self._log_endpoint: str | None = None
        self._relay: LogRelay | None = None  # how tasks on other nodes reach the log endpoint
        self._node_id: str | None = None  # the Ray node of the server's machine, where the log endpoint is
        self._owns_connection = False  # ray.init was ours, so ray.shutdown is too
        self._temp_dir: str | None = None
        self._head_dir: str | None = None  # the record of the head this executor started or joined
        self._head_process: Any = None  # its `ray start --block`, when this server started it
        self._keep_file: str | None = None
        self._ray_address: str | None = None
        self._parallelism = 1
        self._nodes = 0
        self._node_ips: list[str] = []
        self._alive_nodes: list[str] = []  # Ray node ids
        self._node_addresses: dict[str, str] = {}  # Ray node id -> IP, of every node seen
        self._counted_at = 0.0
        self._remotes: dict[str, Any] = {}  # Ray task options -> the remote function with them
        self._code_copies: NodeCopies | None = None  # only while Ray may span machines
        self._environment_copies: NodeCopies | None = None
        self._actor_class: Any = None  # InstanceActor as a Ray actor class
        self._instances: dict[str, _RayInstance] = {}  # instance id -> its actor

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
            kwargs: dict[str, Any] = {"log_to_driver": False, "address": self.address}
            if self.address is None:
                head = await asyncio.to_thread(self._start_head, context)
                kwargs.update(address=head["gcs_address"], _node_ip_address=head["node_ip"])
                # This process owns every call's task: it must give up on a silent node as soon as the head.
                for name, value in health_check_settings(self.node_timeout_s).items():
                    os.environ.setdefault(name, value)
            kwargs.update(self.ray_init_kwargs)
            try:
                ray.init(**kwargs)
            except Exception as exc:
                raise self._start_error(exc) from exc
            self._owns_connection = True
        self._ray_address = ray.get_runtime_context().gcs_address
        self._node_id = ray.get_runtime_context().get_node_id()
        # No retries: Ray would otherwise run a call again when its worker dies, and calls need not
        # be idempotent. A dead worker is reported as WorkerDiedError instead.
        self._remote = ray.remote(max_retries=0)(run_in_worker)
        # Never restarted: a restarted actor would hold a fresh instance, and state loss must not be silent.
        # Its cancel runs in a group of its own (Ray takes concurrency groups only here, not in .options()).
        self._actor_class = ray.remote(max_restarts=0, max_task_retries=0,
                                       concurrency_groups={"control": 1})(InstanceActor)
        self._counted_at = 0.0
        self._refresh()
        if not self.same_machine:
            node_ip = self._node_addresses.get(self._node_id or "")
            if node_ip:
                self._relay = LogRelay(node_ip, self._log_endpoint)
            from rh_core.support.workdir import fingerprint as code_fingerprint

            self._code_copies = NodeCopies(ray, "code", code_fingerprint, ttl=CODE_CHECK_TTL)
            # Read every time: a call right after an install must find the new environment on every node.
            self._environment_copies = NodeCopies(ray, "environment", environment_fingerprint)

    def _start_head(self, context: ServerContext) -> dict[str, Any]:
        """Start this server's Ray head, or find the one an earlier server left running for it."""
        from rh_ray import worker_node

        self._temp_dir = ray_temp_dir(context.state_dir)
        self._head_dir = os.path.join(context.state_dir, HEAD_DIR)
        self._keep_file = keep_marker(context.state_dir, "ray")
        # A keep-ray marker was meant for the server before this one: from now on stop() stops the head.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._keep_file)
        node_address = os.environ.get("RH_NODE_ADDRESS")
        # Binding the node to the address the client used makes Ray advertise one the cluster's other
        # machines can reach; a server alone on its machine keeps Ray on loopback.
        node_ip = head_node_ip(node_address)
        if node_ip is None:
            node_ip = self._ray.util.get_node_ip_address() if node_address else "127.0.0.1"
        head, self._head_process = worker_node.start_head(self._head_dir, node_ip, self._temp_dir, self.num_cpus,
                                                          env_vars=health_check_settings(self.node_timeout_s))
        if not head["ok"]:
            said = f"\n`ray start --head` said:\n{head['log'].strip()}" if head.get("log") else ""
            raise ExecutorError(
                f"could not start a Ray head on {node_ip}: {head.get('error')}. Its logs are in "
                f"{self._temp_dir}/session_latest/logs and {self._head_dir}/ray-start.log; to use a running "
                f"Ray cluster instead, pass address='auto' (-o address=auto){said}"
            )
        logger.info("Ray head at %s: %s", head["gcs_address"], head["status"])
        return head

    def _start_error(self, exc: Exception) -> ExecutorError:
        if self.address is None:
            return ExecutorError(
                f"could not connect to the Ray head this server started: {exc}. Ray's own logs are in "
                f"{self._temp_dir}/session_latest/logs; to use a running Ray cluster instead, pass "
                "address='auto' (-o address=auto)"
            )
        return ExecutorError(
            f"could not join the Ray cluster at {self.address!r}: {exc}. Start it first (`ray start --head`), "
            "check the address, or leave address unset to let the executor start a local Ray"
        )

    async def stop(self) -> None:
        for instance in list(self._instances.values()):
            self._end_instance(instance, "the server stopped")
        ray, self._remote = self._ray, None
        if self._relay is not None:
            self._relay.close()
            self._relay = None
        if ray is None or not self._owns_connection:
            return
        ray.shutdown()  # disconnects this server; the head runs on until stopped below
        self._owns_connection = False
        if self._head_dir is None:
            return
        if self._keep_file and os.path.exists(self._keep_file):
            # restart_server(keep=("ray",)): the next server joins this head (and removes the
            # file; until then it tells the teardown hook to leave this Ray alone as well).
            logger.info("leaving the Ray head running for the next server (keep=('ray',))")
            return
        from rh_ray import worker_node

        # Only the processes of our own head, by their tag: never `ray stop`, which would stop every
        # Ray on the machine.
        stopped = await asyncio.to_thread(worker_node.stop, self._head_dir)
        if not stopped["ok"]:
            logger.warning("the Ray head did not stop: %s", stopped.get("error"))
        if self._head_process is not None:
            await asyncio.to_thread(self._head_process.wait)  # it is our child: reap it

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
                nodes = ray.nodes()
                alive = [node for node in nodes if node.get("Alive")]
                self._nodes = len(alive)
                self._node_ips = sorted({node.get("NodeManagerAddress", "") for node in alive} - {""})
                self._alive_nodes = [node["NodeID"] for node in alive]
                # Dead ones too: errors about a lost node name its address.
                self._node_addresses.update({node["NodeID"]: node.get("NodeManagerAddress", "?") for node in nodes})

    @property
    def parallelism(self) -> int:
        # Re-read now and then: nodes may join or leave a Ray cluster while the server runs.
        self._refresh()
        return self._parallelism

    def describe(self) -> dict[str, Any]:
        self._refresh()
        # node_ips lets clients skip workers that are already Ray nodes (rh_ray.workers).
        return {"executor": self.name, "ray_address": self._ray_address, "nodes": self._nodes,
                "node_ips": self._node_ips, "instances": sorted(i.spec.name for i in self._instances.values())}

    # --- running -------------------------------------------------------------------------------

    async def run(self, task: Task) -> Outcome:
        ray = self._ray
        if ray is None or self._remote is None:
            raise ExecutorError("the ray executor is not running: the server calls start() before run()")
        if task.variables:
            # Ray would need them in a runtime_env, which it records in its own logs and state.
            raise ExecutorError("functions sent with secrets=[...] cannot run on the ray executor yet: use the process "
                          "executor for them, or cluster.sync_secrets([...]) and read the files the secret writes")
        if task.header.instance is not None:  # a method call: its instance's actor runs it
            instance = self._instances.get(task.header.instance.id)
            if instance is None:
                raise InstanceNotFoundError(f"instance {task.header.instance.name!r} has no actor here")
            return await self._call_instance(instance, task)
        options, env = await self._ray_options(task)
        remote = self._remote_with(options)
        await self._copy_to_other_nodes(task, env)
        outcome = await self._submit(remote, task)
        if outcome.status == "stale" and self._code_copies is not None:
            # A node held another copy of the caller's code (it joined after the node list was read,
            # or the code changed since the copy): the runner refused the call before running it, so
            # it can run again once every node has the current copy.
            self._counted_at = 0.0
            self._code_copies.forget(task.header.code.root)
            await self._copy_to_other_nodes(task, env)
            outcome = await self._submit(remote, task)
        return outcome

    async def _ray_options(self, task: Task) -> tuple[dict[str, Any], Environment | None]:
        """The Ray options of a task: what it asks for (``num_cpus``, ...), and its environment's."""
        options = {key: task.options[key] for key in RAY_CALL_OPTIONS if task.options.get(key) is not None}
        env = None
        if task.env is not None:
            # A named environment: Ray starts workers of its interpreter, with its PATH.
            env = await asyncio.to_thread(self._context.environment, task.env)
            options["runtime_env"] = {"py_executable": env.python, "env_vars": env.variables}
        return options, env

    # --- remote instances ----------------------------------------------------------------------

    def start_instance(self, task: Task, instance: InstanceSpec) -> asyncio.Future[Outcome]:
        """A remote instance is an actor of its own (:class:`InstanceActor`), owned by this server:
        it ends with it. Its constructor runs as the actor's first call."""
        return asyncio.ensure_future(self._start_instance(task, instance))

    async def _start_instance(self, task: Task, spec: InstanceSpec) -> Outcome:
        if self._actor_class is None:
            raise ExecutorError("the ray executor is not running: the server calls start() before start_instance()")
        options, env = await self._ray_options(task)
        await self._copy_to_other_nodes(task, env)
        relay = self._relay.endpoint if self._relay is not None else None
        try:
            actor = self._actor_class.options(
                name=f"rh-{spec.name}-{spec.id}", max_concurrency=spec.max_concurrency, **options,
            ).remote(self._log_endpoint, self._node_id, relay)
        except (TypeError, ValueError) as exc:
            raise ExecutorError(f"Ray rejected the options {options} for instance {spec.name!r}: {exc}") from exc
        instance = self._instances[spec.id] = _RayInstance(spec, actor)
        try:
            outcome = await self._call_instance(instance, task)
        except BaseException:  # cancelled (the constructor's timeout), or the actor died
            self._end_instance(instance, _RELEASED)
            raise
        if outcome.status != "ok":  # the constructor failed: nothing is kept
            self._end_instance(instance, _RELEASED)
        return outcome

    async def _call_instance(self, instance: _RayInstance, task: Task) -> Outcome:
        errors = self._ray.exceptions
        ref = instance.actor.run.remote(_detached(task))
        try:
            status, frames, logged, output = await ref
        except asyncio.CancelledError:
            asyncio.ensure_future(self._stop_call(instance, task.key))
            raise
        except errors.RayActorError as exc:
            cause = instance.ending or f"its Ray actor died ({type(exc).__name__}: {exc})"
            self._instance_gone(instance, cause)
            raise InstanceDiedError(
                f"instance {instance.spec.name!r} ended: {cause}. Its state is gone; create it anew (call the "
                f"module again) to go on. {self._where_logs_are()}") from exc
        except errors.RayError as exc:
            raise ExecutorError(f"Ray could not run the call on instance {instance.spec.name!r}: "
                          f"{type(exc).__name__}: {exc}") from exc
        return Outcome(status=status, frames=frames, logged=logged, output=output)

    async def _stop_call(self, instance: _RayInstance, key: str) -> None:
        """A call on an instance was cancelled (its timeout, ``cancel``): stop it in the actor where
        that keeps the instance; otherwise end the actor, as only that stops a plain method."""
        try:
            stopped = await instance.actor.cancel.options(concurrency_group="control").remote(key)
        except self._ray.exceptions.RayError:
            return  # the actor is gone already; its calls say why
        if not stopped and self._instances.get(instance.spec.id) is instance:
            why = (f"its call {key} was cancelled or timed out while it ran a method that only ending the process "
                   "can stop (a coroutine or a generator would have been stopped in place)")
            self._end_instance(instance, why)
            self._context.instance_ended(instance.spec.id, why)

    async def stop_instance(self, instance_id: str) -> None:
        instance = self._instances.get(instance_id)
        if instance is not None:
            self._end_instance(instance, _RELEASED)

    def _end_instance(self, instance: _RayInstance, why: str) -> None:
        instance.ending = instance.ending or why
        self._instances.pop(instance.spec.id, None)
        with contextlib.suppress(Exception):  # gone already
            self._ray.kill(instance.actor, no_restart=True)

    def _instance_gone(self, instance: _RayInstance, cause: str) -> None:
        """Its actor died: forget it and tell the server, unless we ended it ourselves."""
        if self._instances.get(instance.spec.id) is instance:
            del self._instances[instance.spec.id]
            self._context.instance_ended(instance.spec.id, cause)

    async def _submit(self, remote: Any, task: Task) -> Outcome:
        """Run ``task`` as one Ray task and wait for its outcome."""
        ray = self._ray
        relay = self._relay.endpoint if self._relay is not None else None
        try:
            ref = remote.remote(self._log_endpoint, _detached(task), self._node_id, relay)
        except Exception as exc:  # Ray itself is gone; its exception types may not unpickle on the client
            raise ExecutorError(f"could not submit the call to Ray: {type(exc).__name__}: {exc}") from exc
        errors = ray.exceptions
        try:
            status, frames, logged, output = await ref
        except asyncio.CancelledError:
            # The call's timeout: stop the task wherever it is. force=True kills its worker process
            # (Ray starts a new one); a task still waiting for resources is just dropped.
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
            raise
        except (errors.WorkerCrashedError, errors.LocalRayletDiedError, errors.NodeDiedError) as exc:
            raise self._died_error(exc) from exc
        except errors.OutOfMemoryError as exc:
            raise WorkerDiedError(
                f"Ray killed the worker running this call because its node ran low on memory: {exc} "
                "Ask for memory with .options(memory=BYTES) or use fewer parallel calls."
            ) from exc
        except errors.TaskCancelledError as exc:
            raise ExecutorError(
                "the Ray task running this call was cancelled outside rh (ray.cancel or a Ray job stop); "
                "call again"
            ) from exc
        except errors.RayTaskError as exc:
            # run_in_worker reports the function's own errors as outcomes; this is the plumbing failing.
            raise ExecutorError(
                f"the Ray worker could not run rh's task: {exc}. Check that rh-core and rh-ray are installed "
                f"in the Python the Ray workers use; {self._where_logs_are()}"
            ) from exc
        except errors.RayError as exc:
            raise ExecutorError(f"Ray could not run the call: {type(exc).__name__}: {exc}") from exc
        return Outcome(status=status, frames=frames, logged=logged, output=output)

    async def _copy_to_other_nodes(self, task: Task, env: Environment | None) -> None:
        """Code sent by reference was synced to the head only, and named environments are installed
        there only, but Ray may run the task on any node: every other node gets them first."""
        code = task.header.code.root if task.header.code is not None else None
        if self._code_copies is None or self._environment_copies is None or not (code or env):
            return
        self._refresh()
        others = [node for node in self._alive_nodes if node != self._node_id]
        if code:
            await self._code_copies.copy_to(code, others, self._node_addresses)
        if env is not None:
            await self._environment_copies.copy_to(env.root, others, self._node_addresses,
                                                   check=functools.partial(check_interpreter_runs_rh, env.python),
                                                   hold=env.lock)

    def _remote_with(self, options: dict[str, Any]) -> Any:
        """The remote function with these Ray options; building one costs ~0.15 ms, so they are kept."""
        cache_key = repr(sorted(options.items()))
        remote = self._remotes.get(cache_key)
        if remote is None:
            try:
                remote = self._remote.options(**options) if options else self._remote
            except (TypeError, ValueError) as exc:
                raise ExecutorError(
                    f"Ray rejected the call options {options}: {exc}. Fix them in Function.options(...)"
                ) from exc
            self._remotes[cache_key] = remote
        return remote

    def _died_error(self, exc: Exception) -> WorkerDiedError:
        """WorkerDiedError for a task whose worker died: a lost node (machine down, network cut) is
        named with its address; otherwise the worker process itself crashed."""
        self._counted_at = 0.0
        self._refresh()
        lost = {node: ip for node, ip in self._node_addresses.items()
                if node not in self._alive_nodes and (node in str(exc) or ip in str(exc))}
        if isinstance(exc, self._ray.exceptions.NodeDiedError) or lost:
            hosts = ", ".join(sorted(set(lost.values()))) or "a Ray node"
            return WorkerDiedError(
                f"Ray lost the node running this call: {hosts} stopped answering the head "
                f"({type(exc).__name__}: {exc}). Ray does not retry the call. Check that {hosts} is up and "
                "reachable from the head (network, firewall); calls go on running on the other nodes, and "
                "the node rejoins when the client connects again (a new connection, or "
                "cluster.restart_server(keep=('ray',)))"
            )
        return WorkerDiedError(
            f"the Ray worker process running this call died ({type(exc).__name__}: {exc}). "
            "Ray does not retry it. Look for a crash in native code, os._exit, or running out of "
            f"memory; {self._where_logs_are()}"
        )

    def _where_logs_are(self) -> str:
        if self._temp_dir is not None:
            return f"Ray's worker logs are in {self._temp_dir}/session_latest/logs"
        return "Ray's worker logs are in the session's logs directory on that node (/tmp/ray/session_latest/logs)"


_RELEASED = "it was released"


class _RayInstance:
    __slots__ = ("actor", "ending", "spec")

    def __init__(self, spec: InstanceSpec, actor: Any):
        self.spec, self.actor = spec, actor
        self.ending: str | None = None  # why we ended its actor, once we did


class LogRelay:
    """Output of tasks on other nodes, on its way to the server's ``ipc://`` log endpoint: a ZeroMQ
    PULL socket on the head's node address whose frames a thread forwards there unchanged.

    It listens where Ray's own ports do, on the address the cluster's nodes share; anyone who can
    reach Ray there can already run code on the cluster.
    """

    def __init__(self, host: str, log_endpoint: str):
        import zmq

        self._context = zmq.Context()
        self._incoming = self._context.socket(zmq.PULL)
        port = self._incoming.bind_to_random_port(f"tcp://{host}")
        self.endpoint = f"tcp://{host}:{port}"
        self._outgoing = self._context.socket(zmq.PUSH)
        self._outgoing.connect(log_endpoint)
        control = f"inproc://rh-ray-log-relay-{secrets.token_hex(4)}"
        self._control = self._context.socket(zmq.PAIR)
        self._control.bind(control)
        self._steer = self._context.socket(zmq.PAIR)
        self._steer.connect(control)
        self._thread = threading.Thread(target=self._forward, name="rh-ray-log-relay", daemon=True)
        self._thread.start()

    def _forward(self) -> None:
        import zmq

        with contextlib.suppress(zmq.ZMQError):
            zmq.proxy_steerable(self._incoming, self._outgoing, None, self._steer)

    def close(self) -> None:
        self._control.send(b"TERMINATE")
        self._thread.join(timeout=5)
        self._context.destroy(linger=0)


class NodeCopies:
    """Keeps directories of the head on every other Ray node, at the same path: a tar of one goes to
    each node that lacks its current version. Serves the code a task imports by reference (a directory
    the client synced to the head) and named environments (installed by the server on the head).

    A directory's version is ``fingerprint(path)``, re-read at most every ``ttl`` seconds and worked out
    on the node too, so a node that shares the head's file system is sent nothing. A node gets each
    version once. One that died meanwhile is logged and skipped (Ray schedules nothing more there); one
    where unpacking or the copy's check failed fails every call needing that version, with the cause,
    without copying again until the version changes or the server restarts.
    """

    def __init__(self, ray: ModuleType, kind: str, fingerprint: Callable[[str], str], ttl: float = 0.0):
        self._ray = ray
        self._kind = kind  # what logs and errors call the directory: "code", "environment"
        self._fingerprint_of = fingerprint
        self._ttl = ttl
        self._unpack = ray.remote(num_cpus=0, max_retries=0)(unpack_copy)  # runs even while every CPU is busy
        self._locks: dict[str, asyncio.Lock] = {}
        self._read: dict[str, tuple[float, str]] = {}  # path -> (when read, fingerprint)
        # (path, node id) -> (fingerprint sent there, the error it met or None)
        self._sent: dict[tuple[str, str], tuple[str, ExecutorError | None]] = {}
        self._distrusted: set[str] = set()  # paths whose next copy replaces what the nodes hold, whatever it is

    async def copy_to(self, path: str, nodes: list[str], addresses: dict[str, str],
                      check: Callable[[], None] | None = None,
                      hold: Callable[[], ContextManager[None]] | None = None) -> None:
        """Give every node in ``nodes`` the current version of ``path``; ``check`` (picklable) runs on
        each node afterwards and raises when the copy is of no use there. ``hold()``, when given, is
        held while the version is read and the tar made (an environment's install lock), so a copy
        never catches an install half-way."""
        if not nodes:
            return
        lock = self._locks.setdefault(path, asyncio.Lock())
        async with lock:  # the items of one map arrive together: one copy serves them all
            fingerprint = await self._fingerprint(path)
            missing = [node for node in nodes if self._sent.get((path, node), ("", None))[0] != fingerprint]
            if missing:
                fingerprint = await self._send(path, missing, addresses, check, hold)
            for node in nodes:
                version, error = self._sent.get((path, node), ("", None))
                if version == fingerprint and error is not None:
                    raise error

    async def _send(self, path: str, nodes: list[str], addresses: dict[str, str],
                    check: Callable[[], None] | None, hold: Callable[[], ContextManager[None]] | None) -> str:
        """Send the version of ``path`` there is now; returns its fingerprint (which the tar matches)."""
        def snapshot() -> tuple[str, Any]:
            with hold() if hold is not None else contextlib.nullcontext():
                fingerprint = self._fingerprint_of(path)
                archive = _tar_of(path)
            return fingerprint, self._ray.put(archive)  # in Ray's object store once, however many nodes read it

        fingerprint, archive = await asyncio.to_thread(snapshot)
        self._read[path] = (time.monotonic(), fingerprint)
        affinity = self._ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy
        force = path in self._distrusted
        self._distrusted.discard(path)
        refs = [self._unpack.options(scheduling_strategy=affinity(node, soft=False))
                .remote(path, fingerprint, archive, self._fingerprint_of, check, force) for node in nodes]
        for node, ref in zip(nodes, refs):
            where = addresses.get(node, node)
            try:
                done = await ref
            except self._ray.exceptions.RayTaskError as exc:  # unpack_copy or the check raised there
                cause = getattr(exc, "cause", None) or exc
                self._sent[(path, node)] = (fingerprint, ExecutorError(
                    f"could not put the {self._kind} {path} on Ray node {where}, where Ray may run this call: "
                    f"{cause}. Calls that need this {self._kind} fail until it changes or the server restarts; "
                    "fix that machine or take it out of the cluster"
                ))
            except self._ray.exceptions.RayError as exc:  # a node going away: Ray schedules nothing more there
                logger.warning("could not copy %s to Ray node %s: %s", path, where, exc)
            else:
                self._sent[(path, node)] = (fingerprint, None)
                logger.info("%s %s on Ray node %s: %s", self._kind, path, where, done)
        return fingerprint

    def forget(self, path: str) -> None:
        """Read the version of ``path`` afresh next time, and send it to every node again, replacing
        what they hold even where it looks current (a node was found holding another copy)."""
        self._read.pop(path, None)
        self._distrusted.add(path)
        for sent in [sent for sent in self._sent if sent[0] == path]:
            del self._sent[sent]

    async def _fingerprint(self, path: str) -> str:
        read_at, value = self._read.get(path, (0.0, ""))
        if time.monotonic() - read_at >= self._ttl:
            value = await asyncio.to_thread(self._fingerprint_of, path)
            self._read[path] = (time.monotonic(), value)
        return value


def _tar_of(path: str) -> bytes:
    """A gzipped tar of the tree at ``path``, its symlinks kept as links (tarfile does not follow them)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        tar.add(path, arcname=".")
    return buffer.getvalue()
