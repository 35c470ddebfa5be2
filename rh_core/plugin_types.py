"""The interfaces each plugin kind implements, and the messages that pass between them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

import attrs

if TYPE_CHECKING:
    import asyncio

    from rh_core.cluster import Cluster

Frames = Sequence[Any]  # bytes-like frames: a pickle stream followed by its out-of-band buffers


# -------------------------------------------------------------------------------------------------
# Executors run on the cluster, inside the server process.


@attrs.frozen(kw_only=True)
class Task:
    """One unit of work for an executor: call a function once, or over a chunk of map items.

    ``header`` is the JSON-safe description a runner needs (see :mod:`rh_core.runner`);
    ``function`` is the cloudpickled function (empty when it goes by reference); ``arguments`` the
    pickled ``(args, kwargs)`` or list of them for a map chunk; ``refs`` the already computed
    values of every ``Ref`` the arguments mention, as ``{key: Outcome}``.
    """

    key: str
    header: dict[str, Any]
    function: Any
    arguments: Frames
    refs: dict[str, "Outcome"] = attrs.field(factory=dict)
    options: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class Outcome:
    """What running a task produced: ``ok`` with the pickled result, or ``err`` with the pickled
    exception and its traceback. The server never unpickles either."""

    status: str  # "ok" | "err"
    frames: Frames
    logged: bool = False  # the runner sent log lines; the server waits for their end marker


class ServerContext(Protocol):
    """What the cluster server offers to its executor."""

    @property
    def log_endpoint(self) -> str:
        """A ZeroMQ address runners push ``[key, stream, text]`` log messages to."""

    @property
    def state_dir(self) -> str:
        """A directory private to this server for sockets and scratch files."""


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

    async def stop(self) -> None:
        """Stop every worker this executor started."""

    def describe(self) -> dict[str, Any]:
        """A small JSON-safe summary shown by ``rh server status``."""


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
        """Close the tunnel to ``remote_port``, if one is open."""

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
    transport_options: dict[str, Any] = attrs.field(factory=dict)
    host_options: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    provider_data: dict[str, Any] = attrs.field(factory=dict)


@runtime_checkable
class Provisioner(Protocol):
    """Brings machines up and down."""

    def up(self, cluster: Cluster) -> ClusterInfo:
        """Bring the cluster's machines up (or find them up) and say how to reach them."""

    def down(self, cluster: Cluster) -> None:
        """Stop or delete the cluster's machines."""

    def status(self, cluster: Cluster) -> str:
        """``"up"``, ``"stopped"``, ``"down"`` or ``"unknown"``."""


@attrs.frozen(kw_only=True)
class InstallerClaim:
    """A requirement string claimed by an installer: which install method, and what to install."""

    method: str
    spec: str


@runtime_checkable
class Installer(Protocol):
    """Installs packages into an environment on a cluster."""

    def install(self, cluster: Cluster, spec: str, *, env: str | None = None) -> None:
        """Install ``spec`` on ``cluster``; raise an install error naming the spec on failure."""
