"""The interfaces each plugin kind implements, and the messages that pass between them."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import (
    TYPE_CHECKING,
    Any,
    ContextManager,
    Protocol,
    TypeVar,
    runtime_checkable,
)

import attrs

from rh_core.errors import ExecutorError
from rh_core.support.redact import secrets_hidden
from rh_core.wire.messages import Frames, Outcome, Task  # noqa: F401  (the executor's side of the contract)

if TYPE_CHECKING:
    import asyncio

    from rh_core.clusters.base import Cluster


# -------------------------------------------------------------------------------------------------
# Executors run on the cluster, inside the server process. What they are given and give back (a
# Task, its Outcome) is part of the wire protocol, in rh_core.wire.messages.


@attrs.frozen(kw_only=True)
class InstanceSpec:
    """A remote instance of a class (``rh.module``): its ``name`` on the cluster, the ``id`` of this
    incarnation of it (a new one each time it is created under that name), and how many of its
    method calls may run at once. The server lets at most ``max_concurrency`` of them reach the
    executor at a time."""

    name: str
    id: str
    max_concurrency: int = 1


class ServerContext(Protocol):
    """What the cluster server offers to its executor."""

    @property
    def log_endpoint(self) -> str:
        """A ZeroMQ address runners push ``[key, stream, text]`` log messages to."""

    @property
    def state_dir(self) -> str:
        """A directory private to this server for sockets and scratch files."""

    def environment(self, name: str | None) -> Environment:
        """The environment ``name`` on this machine (``None``: the default one), created if new.
        Run a task of ``task.env`` with its :attr:`~Environment.python` and
        :attr:`~Environment.variables`."""

    def instance_ended(self, instance_id: str, reason: str) -> None:
        """The process (or actor) of a remote instance ended without :meth:`Executor.stop_instance`:
        it died, was killed, or was stopped because a call on it had to be. ``reason`` says which,
        for the error every later call on it gets."""


@runtime_checkable
class Executor(Protocol):
    """How calls run on the cluster. One instance lives in the server process, in its event loop."""

    name: str

    async def start(self, context: ServerContext) -> None:
        """Start workers; called once before the first task."""

    @property
    def parallelism(self) -> int:
        """How many tasks can run at once; clients split ``map`` into chunks by it."""

    def submit(self, task: Task) -> asyncio.Future[Outcome]:
        """Start running ``task`` and return a future of its outcome, without blocking.

        Called in the server's event loop for every call and every map chunk. The server cancels
        the future when the call's timeout expires: the executor must then stop whatever runs the
        task. A task whose runner dies fails the future with
        :class:`rh_core.errors.WorkerDiedError`. Subclass :class:`CoroutineExecutor` to write an
        ``async def run(task)`` instead.
        """

    def start_instance(self, task: Task, instance: InstanceSpec) -> asyncio.Future[Outcome]:
        """Create a remote instance: start a process (a Ray actor, ...) of its own and run the
        class's constructor there, as :meth:`submit` runs a task (``task.function`` is the class,
        its arguments the constructor's). Its outcome is the constructor's: ``ok`` and the instance
        lives there until :meth:`stop_instance` or :meth:`stop`; ``err`` and nothing is kept.

        Method calls on it then come to :meth:`submit` as tasks whose ``header.instance`` names
        it, up to ``instance.max_concurrency`` at once: a runner's ``run`` calls the method on the
        instance (:class:`rh_core.worker.runner.Runner` holds it). Async methods run on the instance's own
        event loop. A method call whose future is cancelled (timeout, ``cancel``) is stopped with
        ``Runner.cancel(key)`` where it can be (a coroutine, a generator between items); where it
        cannot, the instance's process is killed. Whenever the process ends other than through
        :meth:`stop_instance`, the calls it ran fail with :class:`~rh_core.errors.InstanceDiedError`
        and the executor reports it with :meth:`ServerContext.instance_ended`.
        """

    async def stop_instance(self, instance_id: str) -> None:
        """End a remote instance's process; calls it still runs or that wait for it fail."""

    async def stop(self) -> None:
        """Stop every worker (and instance) this executor started."""

    def describe(self) -> dict[str, Any]:
        """A small JSON-safe summary shown by ``rh server status``."""

    # Optional capabilities (see "Optional capabilities" below): SharesMachine, LendsWorkers,
    # WatchesEnvironments; and what it keeps across a server restart, declared when it registers
    # (``register(name, target, keeps=("ray",))``).


def check_keep_name(thing: str) -> str:
    """``thing`` when it can name something an executor keeps across a server restart: a short
    lower-case word, as it becomes part of a file name (:func:`keep_marker`)."""
    if isinstance(thing, str) and re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,39}", thing):
        return thing
    raise ValueError(f"{thing!r} cannot name what an executor keeps across a server restart: use a short "
                     "lower-case word such as 'ray'")


def keep_marker(state_dir: str, thing: str) -> str:
    """The file that ``cluster.restart_server(keep=(thing,))`` leaves in the server's ``state_dir``
    before it stops the server, when the executor declared ``keeps=(thing,)``.

    The executor of the server that stops sees it and leaves ``thing`` (its Ray, say) running; the
    executor of the next server starts by finding that ``thing`` again and removing the file, so
    a later stop stops it. Nothing else reads it.
    """
    return f"{state_dir.rstrip('/')}/keep-{check_keep_name(thing)}"


class CoroutineExecutor:
    """Base for executors written as a coroutine: implement ``async def run(task) -> Outcome``.

    Cancelling the submitted future cancels ``run`` (``asyncio.CancelledError`` is raised at its
    ``await``), which is where such an executor stops the task.
    """

    async def run(self, task: Task) -> Outcome:
        raise NotImplementedError

    def submit(self, task: Task) -> asyncio.Future[Outcome]:
        import asyncio

        return asyncio.ensure_future(self.run(task))

    def start_instance(self, task: Task, instance: InstanceSpec) -> asyncio.Future[Outcome]:
        """Remote instances need a process (or actor) of their own per instance: an executor that
        has none says so. Override with :meth:`stop_instance` to run them (see :class:`Executor`)."""
        import asyncio

        refused: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        refused.set_exception(ExecutorError(
            f"the {getattr(self, 'name', type(self).__name__)!r} executor runs no remote instances (rh.module); "
            "start the cluster's server with the process or ray executor"))
        return refused

    async def stop_instance(self, instance_id: str) -> None:
        """Nothing to stop where no instance runs."""


# -------------------------------------------------------------------------------------------------
# Transports, provisioners and installers run on the client.


@runtime_checkable
class Transport(Protocol):
    """How the client reaches one machine of a cluster.

    A remote cluster creates it as ``Transport(address, remote_root=..., **options)``: ``options``
    come from the provisioner's :class:`ClusterInfo`, and ``remote_root`` is the directory on the
    machine where rh_core keeps its state (synced trees go below it).
    """

    def run(self, commands: list[str], *, stream_logs: bool = False) -> list[tuple[int, str, str]]:
        """Run shell commands in order; return ``(returncode, stdout, stderr)`` for each."""

    def sync_directory(self, local_path: str) -> str:
        """Make ``local_path`` present on the machine; return its path there."""

    def forward(self, remote_port: int, *, local_port: int | None = None) -> tuple[str, int]:
        """Return a local ``(host, port)`` that reaches ``remote_port`` on the machine.

        With ``local_port`` the tunnel listens there or raises when that port is taken; without
        it a free port is chosen. Asking again for the same remote port returns the same tunnel.
        """

    def close_forward(self, remote_port: int) -> None:
        """Let go of the tunnel to ``remote_port``: it closes when every :meth:`forward` that
        returned it has been matched by a ``close_forward`` (the cluster's own tunnel to its server
        must outlive a user's tunnel to the same port)."""

    def shell_command(self) -> list[str]:
        """The argv of an interactive shell on the machine (``ssh ...`` for remote ones)."""

    def close(self) -> None:
        """Release connections and tunnels."""


@attrs.frozen(kw_only=True)
class ClusterInfo:
    """What a provisioner reports about machines that are up: their addresses and how to reach them.

    ``transport`` names the transport plugin; the head's transport is created as
    ``Transport(head, **transport_options)``, a worker's with its entry in ``host_options`` merged
    over them. ``provider_data`` is the provisioner's own opaque state.
    """

    head: str
    workers: tuple[str, ...] = ()
    transport: str = "ssh"
    transport_options: dict[str, Any] = attrs.field(factory=dict, repr=secrets_hidden)
    host_options: dict[str, dict[str, Any]] = attrs.field(factory=dict, repr=secrets_hidden)
    provider_data: dict[str, Any] = attrs.field(factory=dict, repr=secrets_hidden)


class HeadCommands(Protocol):
    """Shell commands on a cluster's head machine, through the cluster's own connection to it.

    What a provisioner is handed instead of the cluster when it has to act on a machine it did not
    launch itself (``byo`` asks whether the head answers): it can run commands there, and nothing
    else of the cluster is reachable through it.
    """

    def run(self, commands: list[str]) -> list[tuple[int, str, str]]:
        """Run shell commands in order on the head; ``(returncode, stdout, stderr)`` for each.
        Connects to the head if not connected yet; never starts rh_core's server there."""


def _read_only(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(spec))


@attrs.frozen(kw_only=True)
class ProvisionRequest:
    """What a provisioner is told about one cluster: its name and the options the user gave.

    Provisioners get this rather than the cluster object, so that they depend only on what they
    read, the cluster and its provisioner never call each other, and a command line can act on a
    cluster it knows by name alone (``rh sky stop NAME``).

    ``cluster_name`` is the name the provisioner finds the machines again by: a plain name of
    letters, digits, ``_``, ``.`` and ``-``, safe in file and cloud resource names. ``spec`` holds
    the options (``{"provider": ..., **options}``) as :class:`ValidatesSpec` completed them, read
    only; a saved cluster's spec may come from another version, so check it again. ``head`` runs
    commands on the head machine: None in :meth:`Provisioner.up` (the machines are not known until
    it returns) and when a command line names the cluster without having its connection.
    """

    cluster_name: str
    spec: Mapping[str, Any] = attrs.field(factory=dict, converter=_read_only, repr=secrets_hidden)
    head: HeadCommands | None = attrs.field(default=None, eq=False, repr=False)


@runtime_checkable
class Provisioner(Protocol):
    """Brings machines up and down. Instantiated with no arguments each time the core needs it, so
    it keeps no state of its own between calls: the provider's records are the truth."""

    def up(self, request: ProvisionRequest) -> ClusterInfo:
        """Bring the cluster's machines up (or find them up) and say how to reach them."""

    def down(self, request: ProvisionRequest) -> None:
        """Stop or delete the cluster's machines (a cluster already down is no error)."""

    def status(self, request: ProvisionRequest) -> str:
        """``"up"``, ``"stopped"``, ``"down"`` or ``"unknown"``."""

    # Optional capabilities (see "Optional capabilities" below): ValidatesSpec, RefreshesStatus,
    # StopsMachines, Autostops, ExplainsLoss.


def takes_request(provisioner: object) -> bool:
    """Whether ``provisioner`` is written for :class:`ProvisionRequest`; False for one written before
    provisioners were given requests, whose methods take the cluster object (``def up(self, cluster)``).

    Told from the first parameter of its ``up``: one named ``cluster`` and not annotated as a
    ``ProvisionRequest`` is the old form. The core passes such a provisioner the cluster, with a
    DeprecationWarning, for one more release.
    """
    try:
        first = next(iter(inspect.signature(provisioner.up).parameters.values()))  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError, StopIteration):  # nothing to read: nothing says it is old
        return True
    annotation = first.annotation
    annotated = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    return first.name != "cluster" or annotated.strip("'\"").rsplit(".", 1)[-1] == "ProvisionRequest"


# -------------------------------------------------------------------------------------------------
# Installers: prepared on the client, run by the cluster server.


@attrs.frozen(kw_only=True)
class InstallerClaim:
    """A requirement claimed by an installer: which install method, and what to install.

    ``options`` carries method-specific settings parsed from the requirement (conda channels, a
    git revision, ...); they must be JSON-safe.
    """

    method: str
    spec: str
    options: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class InstallStep:
    """One install, as the cluster server receives it (JSON-safe: it crosses the wire).

    ``spec`` is what to install as the cluster sees it (a requirement string, a path on the
    cluster, a URL); ``requirement`` is what the user wrote, for messages; ``options`` is the
    installer's own (a digest of a local folder's contents, channels, a revision, ...).
    Secrets in ``options`` (a git token) must be listed in ``secret_options``: they are
    never written to the install record or to a log.
    """

    method: str
    spec: str
    requirement: str
    options: dict[str, Any] = attrs.field(factory=dict, repr=secrets_hidden)
    secret_options: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InstallStep:
        return cls(**{**data, "secret_options": tuple(data.get("secret_options", ()))})


class Environment(Protocol):
    """An interpreter environment on the cluster that installers put packages into.

    The default environment is the server's own interpreter; a named one (``rh.env(name=...)``)
    is a venv of its own under the server's state directory, with a conda prefix beside it once
    conda packages are asked for. Calls of functions sent to an environment run in worker
    processes of its interpreter, with :attr:`variables` set.
    """

    @property
    def name(self) -> str | None:
        """The environment's name; ``None`` for the default environment."""

    @property
    def root(self) -> str:
        """A directory owned by this environment (install record, lock, downloads, conda prefix)."""

    @property
    def python(self) -> str:
        """Path of the environment's Python interpreter."""

    @property
    def conda_prefix(self) -> str:
        """Where conda packages of this environment go (may not exist yet)."""

    @property
    def variables(self) -> dict[str, str]:
        """Environment variables its processes run with (``PATH`` with its ``bin`` dirs first, ...)."""

    def lock(self) -> ContextManager[None]:
        """Held while packages are installed here; hold it to read the environment's files whole
        (an executor copying the environment to another machine does)."""

    def run(self, argv: list[str], *, step: InstallStep, cwd: str | None = None,
            extra_env: dict[str, str] | None = None, redact: tuple[str, ...] = ()) -> str:
        """Run a tool for ``step`` with the environment's variables; return its output.

        On failure raise :class:`rh_core.errors.InstallError` naming the requirement and carrying
        the last lines of the tool's output, with every string in ``redact`` replaced by ``***``.
        """

    def pip(self, args: list[str], *, step: InstallStep, cwd: str | None = None) -> str:
        """Run ``pip ARGS`` against this environment's interpreter, as :meth:`run` does."""


@runtime_checkable
class Installer(Protocol):
    """Installs one kind of package (``pip``, ``conda``, ``git``, ...) into an environment.

    Installers are instantiated with no arguments. :meth:`prepare` runs on the client; the other
    two run in the cluster server, in a thread, with the environment's install lock held.
    """

    def prepare(self, cluster: Cluster, claim: InstallerClaim) -> InstallStep:
        """Check the requirement on the client and make what it needs present on the cluster
        (sync a local folder, for instance); return the step the server will run.

        Raise :class:`rh_core.errors.InstallError` for a requirement that cannot work (a missing
        path), before anything is installed anywhere.
        """

    def resolve(self, step: InstallStep, env: Environment) -> str:
        """Check on the cluster that the step can be installed, and return its identity: two steps
        with the same identity install the same thing (include a resolved revision or a content
        digest, never a secret). Called for every step of a request before any is installed;
        a step whose identity is already recorded in the environment is skipped.
        """

    def install(self, step: InstallStep, env: Environment) -> None:
        """Install the step into ``env``; raise :class:`rh_core.errors.InstallError` on failure,
        leaving ``env`` as it was before (the step is then not recorded, and the next attempt retries).
        Called on the same instance that resolved the step.
        """

    # Optional capability (see "Optional capabilities" below): ReplacesSlots.


# -------------------------------------------------------------------------------------------------
# Optional capabilities: one small Protocol each. A plugin has a capability when its object has
# every member of the Protocol (no base class to inherit, no registration). The core asks
# :func:`capability` once, where it gets hold of the plugin object (the server when it is made, a
# cluster operation when it starts), never per call; what the core does without each one is said
# in its docstring and in docs/writing-a-plugin.md.

Capable = TypeVar("Capable")


def capability(plugin: object, protocol: type[Capable]) -> Capable | None:
    """``plugin`` as ``protocol`` when it has that optional capability, else None.

    The one place the core asks whether a plugin has a capability: an isinstance check on a
    runtime-checkable Protocol (it compares member names, not signatures), so ask once and keep
    the answer rather than asking on every call.
    """
    return plugin if isinstance(plugin, protocol) else None  # type: ignore[return-value]


# --- executors ---


@runtime_checkable
class SharesMachine(Protocol):
    """An executor that may run every task on the server's own machine.

    Read once, when the server is made: while ``same_machine`` is true, large arguments and
    results pass through ``/dev/shm`` instead of being copied through the server. Without it (or
    with False) they are always copied, which works wherever the workers are.
    """

    same_machine: bool


@runtime_checkable
class LendsWorkers(Protocol):
    """An executor with a bounded number of workers that can add one for a caller that waits."""

    def lend_worker(self, run_key: str) -> Callable[[], None] | None:
        """The function running as ``run_key`` made a blocking call to this cluster and waits for
        it: start one more worker until the returned ``give_back()`` is called (after the call
        ends), so callers that fill every worker cannot deadlock waiting for their callees.
        Return None when no worker of yours runs ``run_key``.

        Without this capability nothing is lent: an executor with unbounded workers (Ray) needs none.
        """


@runtime_checkable
class WatchesEnvironments(Protocol):
    """An executor that replaces its processes when packages change under them."""

    def environment_changed(self, env_name: str | None) -> None:
        """Packages were installed into environment ``env_name`` (None: the default one): processes
        that imported the old ones should be replaced as they become idle.

        Called in the server's event loop after every install that installed something. Without
        this capability, processes keep the modules they imported until they end.
        """


# --- provisioners ---


@runtime_checkable
class ValidatesSpec(Protocol):
    """A provisioner that checks ``rh.cluster(...)``'s options before anything is launched."""

    def validate_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Check and complete the options (``{"provider": ..., **options}``) when the cluster object
        is made, raising :class:`~rh_core.errors.ProvisionError` (a ``ValueError`` too) naming
        the bad option. Without it, options are passed on as given and checked at ``up``."""


@runtime_checkable
class RefreshesStatus(Protocol):
    """A provisioner whose ``status`` may answer from a cache, and that can ask the provider."""

    def refreshed_status(self, request: ProvisionRequest) -> str:
        """As :meth:`Provisioner.status`, asked of the provider now (``cluster.status(refresh=True)``).
        Without it, :meth:`Provisioner.status` is asked."""


@runtime_checkable
class StopsMachines(Protocol):
    """A provisioner that can stop machines and keep their disks, to start them again later."""

    def stop(self, request: ProvisionRequest) -> None:
        """Stop the cluster's machines, keeping their disks; a later ``up`` starts them again.
        The core does not call it yet (provider commands such as ``rh sky stop`` do)."""


@runtime_checkable
class Autostops(Protocol):
    """A provisioner whose machines stop by themselves after an idle time."""

    def autostop_minutes(self, request: ProvisionRequest) -> float:
        """The running machines' idle minutes before they stop; -1 when they never do."""

    def set_autostop(self, request: ProvisionRequest, minutes: float) -> None:
        """Change the running machines' idle minutes before they stop (-1: never).

        ``cluster.keep_warm()`` and ``cluster.pause_autostop()`` need both methods; without them
        they raise :class:`~rh_core.errors.ProvisionError` saying the provisioner lacks them."""


@runtime_checkable
class ExplainsLoss(Protocol):
    """A provisioner that can tell what the provider did to machines that stopped answering."""

    def explain_lost(self, request: ProvisionRequest) -> str | None:
        """What the provider reports about the machines (a Spot VM preempted, an instance deleted),
        or None when it reports nothing unusual. Asked when the server stops answering; its words
        are added to the caller's :class:`~rh_core.errors.ConnectionLostError`. Without it (or
        when it raises), the error says only what the client saw."""


# --- transports ---


@runtime_checkable
class PreparesForward(Protocol):
    """A transport whose tunnels need a connection that can be made ahead of time."""

    def prepare_forward(self) -> None:
        """Start making the connection :meth:`Transport.forward` will use, while the cluster probes
        the machine: the two waits overlap. Without it, ``forward`` makes it when first called."""


@runtime_checkable
class ReportsTunnelProblems(Protocol):
    """A transport that knows when a tunnel it forwards has broken."""

    def tunnel_problem(self, remote_port: int) -> str | None:
        """Why the tunnel to ``remote_port`` broke (a dropped connection, a refused channel), or None
        while it works. Asked when a request waits on a silent server, so the error says the cause
        at once; without it the cluster pings the server and waits for the ping to time out."""


# --- installers ---


@runtime_checkable
class ReplacesSlots(Protocol):
    """An installer whose installs replace earlier ones (a pip package of another version)."""

    def slot(self, step: InstallStep) -> str | None:
        """What installing ``step`` replaces (``"pip:numpy"``), or None for nothing. Recorded
        installs in the same slot are forgotten when the step is installed, so asking again for an
        earlier version installs it again instead of being skipped. Without it nothing is forgotten."""


#: Every optional capability, by the plugin kind that may have it (for docs and ``rh plugins``).
CAPABILITIES: dict[str, tuple[type, ...]] = {
    "executor": (SharesMachine, LendsWorkers, WatchesEnvironments),
    "provisioner": (ValidatesSpec, RefreshesStatus, StopsMachines, Autostops, ExplainsLoss),
    "transport": (PreparesForward, ReportsTunnelProblems),
    "installer": (ReplacesSlots,),
}


# -------------------------------------------------------------------------------------------------
# Secret providers: read on the client, written on the cluster by the server.


@attrs.frozen(kw_only=True)
class SecretContents:
    """What a secret provider found on the client: ``values``, the environment variables a
    function sent with the secret gets (``{"AWS_ACCESS_KEY_ID": ...}``), and ``files``, where the
    provider's own tools look for it on the cluster (``{"~/.aws/credentials": text}``, paths under
    the home directory), written owner-only by ``cluster.sync_secrets``. Never shown in a repr."""

    values: dict[str, str] = attrs.field(factory=dict, repr=False)
    files: dict[str, str] = attrs.field(factory=dict, repr=False)


@runtime_checkable
class SecretProvider(Protocol):
    """One kind of credentials (``aws``, ``huggingface``, ...), read where its own tools keep them
    on the client: files such as ``~/.aws/credentials``, or environment variables. Providers are
    instantiated with no arguments; the cluster side needs none of their code."""

    def read(self) -> SecretContents:
        """The credentials as this machine holds them now. Raise :class:`rh_core.errors.SecretError`
        naming every place looked at, and how to create them, when there are none."""


# -------------------------------------------------------------------------------------------------
# Stores: where saved resources live (``@/name``, ``~/name``).


@runtime_checkable
class Store(Protocol):
    """Where saved resources live: a flat space of ``/``-separated keys holding bytes.

    Store plugins register a class whose keyword arguments are the options of the config file's
    ``store:`` section (everything but ``backend``). Every method raises :class:`StoreError`,
    naming the store, when it is unreachable or access is denied.
    """

    def describe(self) -> str:
        """The store as a person would name it: ``s3://bucket/prefix``, ``directory /shared/rh``."""

    def location(self, key: str) -> str:
        """Where one key lives, for messages about that file."""

    def read(self, key: str) -> bytes | None:
        """The bytes under ``key``, or None when there is nothing."""

    def write(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing what was there."""

    def delete(self, key: str) -> bool:
        """Remove ``key``; False when it was not there."""

    def keys(self, prefix: str = "") -> list[str]:
        """Every key starting with ``prefix``, sorted."""
