"""Clusters: where functions run. ``rh.here`` is the embedded local cluster.

A cluster owns the connection to its server and the operations every kind of cluster shares
(calling, fetching results, running commands). How the server is reached and started is the
subclass's business: :class:`LocalCluster` starts ``python -m rh_core.server`` on this machine;
remote kinds come from plugins (provisioner + transport).
"""

from __future__ import annotations

import re
import threading
import warnings
import weakref
from collections.abc import Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from rh_core.client.connection import Connection, Reply
from rh_core.clusters.ref import Ref
from rh_core.errors import (
    ConnectionLostError,
    RhError,
    VersionMismatchError,
)
from rh_core.wire import messages, serialize
from rh_core.wire.messages import CallRequest, OpRequest, OutputLine, ResultParts

if TYPE_CHECKING:
    import asyncio

    from rh_core.client.async_connection import AsyncConnection

    from rh_core.bootstrap.wheels import Platform
    from rh_core.clusters.status import ClusterStatus
    from rh_core.plugin.host import PluginHost
    from rh_core.secrets import Secret



#: What a cluster rebuilt from a config (a saved record) may be called.
PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")


@attrs.define(eq=False)
class Cluster:
    """Base of every cluster: the operations that only need a connection to its server."""

    name: str
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False, repr=False)
    _connection: Connection | None = attrs.field(default=None, init=False, repr=False)
    _info: dict[str, Any] = attrs.field(factory=dict, init=False, repr=False)
    _synced: dict[str, tuple[str, str]] = attrs.field(factory=dict, init=False, repr=False)
    # event loop -> its connection (opening or open): see async_connection()
    _async_connections: weakref.WeakKeyDictionary[Any, asyncio.Future[AsyncConnection]] = attrs.field(
        factory=weakref.WeakKeyDictionary, init=False, repr=False)

    # --- to be provided by each kind of cluster ------------------------------------------------

    def _start_or_find_server(self) -> tuple[str, dict[str, Any] | None]:
        """Return the server's ZeroMQ address (reachable from here), starting it if needed."""
        raise NotImplementedError

    def _liveness(self) -> str | None:
        """Why the server is gone, or None while it may be alive. Called every half second of waiting."""
        raise NotImplementedError

    @property
    def transport(self):
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """A JSON-safe description from which :func:`from_config` rebuilds this cluster elsewhere."""
        raise NotImplementedError

    def up(self) -> Cluster:
        """Bring the machines up (where the kind of cluster has machines to start) and the server."""
        raise NotImplementedError

    def down(self) -> None:
        """Stop the server, and let the machines go where the kind of cluster started them."""
        raise NotImplementedError

    def restart_server(self, restart_ray: bool | None = None, *, keep: Sequence[str] = ()) -> None:
        """Stop the server and start a new one.

        :param keep: what the executor keeps running for the new server, among what it declares it
            can keep (the ``ray`` executor: ``keep=("ray",)`` keeps Ray with its actors and objects,
            and the new server joins it). Asking an executor for what it cannot keep is an error.
        :param restart_ray: deprecated: ``restart_ray=False`` is ``keep=("ray",)`` for an executor
            that keeps Ray, and nothing for others.
        """
        raise NotImplementedError

    def _kept_on_restart(self, executor: str, keep: Sequence[str], restart_ray: bool | None) -> tuple[str, ...]:
        """``keep`` checked against what ``executor`` declared it can keep across a restart, with
        the deprecated ``restart_ray`` folded in."""
        from rh_core.errors import ExecutorError

        declared = self.host.registry("executor").keeps(executor)
        keep = tuple(keep)
        if restart_ray is not None:
            warnings.warn("restart_server(restart_ray=...) is deprecated: pass keep=('ray',) to keep Ray running, "
                          "or nothing to restart it", DeprecationWarning, stacklevel=3)
            if not restart_ray and "ray" in declared and "ray" not in keep:
                keep += ("ray",)
        refused = [thing for thing in keep if thing not in declared]
        if refused:
            can = ", ".join(repr(thing) for thing in declared) or "nothing"
            raise ExecutorError(f"the {executor!r} executor of cluster {self.name!r} cannot keep {', '.join(map(repr, refused))} "
                                f"running across a server restart (it can keep {can}); leave keep= out to restart everything")
        return keep

    @property
    def host(self) -> PluginHost:
        from rh_core.plugin.host import default_host

        return default_host()

    # --- connection ----------------------------------------------------------------------------

    def connection(self) -> Connection:
        """The connection to this cluster's server, bringing the server up on first use."""
        with self._lock:
            if self._connection is None:
                address, state = self._start_or_find_server()
                connection = Connection(address, self._liveness, secret=(state or {}).get("secret"))
                ping = messages.PingRequest(python=serialize.python_version())
                info = connection.request(ping.OP, ping.to_wire(), timeout=30).header
                check_versions(self, info)
                self._connection, self._info = connection, info
                self.host.cluster_ready(self, info)
            return self._connection

    def request(self, op: str, header: dict[str, Any], frames: Sequence[Any] = (), **kwargs) -> Reply:
        """One request to the server; a lost server forgets the connection so the next call reconnects.
        A request that never reached the server (it was gone before we wrote) goes to its
        successor instead, started if need be."""
        connection = self.connection()
        try:
            return connection.request(op, header, frames, **kwargs)
        except ConnectionLostError as lost:
            self._forget_connection(connection)
            if lost.sent:
                raise
        return self.connection().request(op, header, frames, **kwargs)

    def send(self, message: OpRequest | CallRequest, frames: Sequence[Any] = (), **kwargs) -> Reply:
        """:meth:`request` of a message of :mod:`rh_core.wire.messages`."""
        return self.request(message.OP, message.to_wire(), frames, **kwargs)

    def stream(self, op: str, header: dict[str, Any], frames: Sequence[Any] = (),
               **kwargs) -> Generator[Reply, None, Reply]:
        """A request whose ``item`` replies are yielded as they come (see :meth:`Connection.stream`);
        returns the final reply. Lost servers are handled as in :meth:`request`."""
        connection = self.connection()
        try:
            return (yield from connection.stream(op, header, frames, **kwargs))
        except ConnectionLostError as lost:
            self._forget_connection(connection)
            if lost.sent:
                raise
        return (yield from self.connection().stream(op, header, frames, **kwargs))

    # --- from asyncio: on the caller's event loop, without a thread per request ------------------

    async def async_connection(self) -> AsyncConnection:
        """This event loop's connection to the server (see :mod:`rh_core.client.async_connection`).
        The first one of a loop finds or starts the server as :meth:`connection` does, in a thread."""
        import asyncio  # here: a client that never awaits does not import it

        loop = asyncio.get_running_loop()
        opening = self._async_connections.get(loop)
        if opening is None or (opening.done() and self._open_async_connection_of(loop) is None):
            opening = self._async_connections[loop] = asyncio.ensure_future(self._open_async_connection())
        return await opening

    def _open_async_connection_of(self, loop: asyncio.AbstractEventLoop) -> AsyncConnection | None:
        """``loop``'s connection when it is open and its server not lost; else None."""
        opening = self._async_connections.get(loop)
        if opening is None or not opening.done() or opening.exception() is not None or opening.result().lost:
            return None
        return opening.result()

    async def _open_async_connection(self) -> AsyncConnection:
        import asyncio

        from rh_core.client.async_connection import AsyncConnection

        connection = await asyncio.to_thread(self.connection)
        return await AsyncConnection.open(connection.address, connection.secret, connection.liveness)

    async def arequest(self, op: str, header: dict[str, Any], frames: Sequence[Any] = (), **kwargs) -> Reply:
        """:meth:`request` from asyncio. A request that never reached a lost server goes to its successor."""
        import asyncio

        # The common case, without another coroutine: the loop's connection is open.
        connection = self._open_async_connection_of(asyncio.get_running_loop()) or await self.async_connection()
        try:
            return await connection.request(op, header, frames, **kwargs)
        except ConnectionLostError as lost:
            self._forget_connection()
            if lost.sent:
                raise
        return await (await self.async_connection()).request(op, header, frames, **kwargs)

    async def asend(self, message: OpRequest | CallRequest, frames: Sequence[Any] = (), **kwargs) -> Reply:
        """:meth:`send` from asyncio."""
        return await self.arequest(message.OP, message.to_wire(), frames, **kwargs)

    async def aget(self, key: str, timeout: float | None = None) -> Any:
        """:meth:`get` from asyncio: ``await ref`` does this."""
        reply = await self.asend(messages.GetRequest(keys=(key,), timeout=timeout))
        ((status, frames),) = split_parts(reply)
        return decode_outcome(status, frames)

    def cancel_soon(self, key: str) -> None:
        """Ask the server to cancel run ``key``, from the event loop running now, without waiting:
        what an asyncio task awaiting the run does as it is cancelled."""
        import asyncio

        connection = self._open_async_connection_of(asyncio.get_running_loop())
        if connection is not None:
            connection.send_soon(messages.CancelRequest.OP, messages.CancelRequest(key=key).to_wire())

    def _forget_connection(self, connection: Connection | None = None) -> None:
        with self._lock:
            if connection is None or self._connection is connection:
                if self._connection is not None:
                    self._connection.close()
                self._connection, self._info = None, {}
                self._async_connections.clear()  # each loop's closes as the server goes; the next call opens anew

    @property
    def shm_prefix(self) -> str | None:
        """Name prefix for shared-memory segments when large buffers may travel that way, else None."""
        return None

    @property
    def python_version(self) -> str:
        """The ``major.minor`` Python version the cluster's server runs (connecting if needed)."""
        self.connection()
        return str(self._info.get("python"))

    def check_by_value(self, what: str) -> None:
        """Raise :class:`VersionMismatchError` unless code pickled by value here (``what``) can be
        loaded on the cluster: cloudpickle's code objects only load in the same Python minor version."""
        ours = serialize.python_version()
        if self.python_version != ours:
            raise VersionMismatchError(
                f"{what} travels by value (pickled with its code), and code pickled by Python {ours} here cannot be "
                f"loaded by Python {self.python_version} on cluster {self.name!r}. Move it to a module file in your "
                f"working directory (not __main__, a notebook cell, a lambda or a closure) so it travels by reference, "
                f"or run Python {self.python_version} here, or give the cluster Python {ours} (`python{ours}` on the "
                f"PATH of its SSH sessions is preferred when it is there)."
            )

    def offline_platform(self) -> Platform | None:
        """The platform of a cluster that reaches no package index, for which installers resolve
        requirements here and ship them as wheels (:func:`rh_core.bootstrap.wheels.resolve_requirements`);
        None when the cluster installs from an index itself, as this machine does."""
        return None

    @property
    def parallelism(self) -> int:
        self.connection()
        return int(self._info.get("parallelism", 1))

    def __reduce__(self) -> tuple:
        """A cluster passed as an argument (or inside a function handle, :meth:`Function.__reduce__`)
        travels as its description and is rebuilt where it lands; there, a process on the machine
        of the cluster's own server reaches that server directly (a function calling its own cluster)."""
        server = {key: self._info.get(key) for key in ("state_dir", "pid", "process_start")} if self._info else None
        from rh_core.clusters import reached_from_here

        return reached_from_here, (self.config(), server)

    # --- results -------------------------------------------------------------------------------

    def get(self, key: str, timeout: float | None = None) -> Any:
        """The value of the result stored under ``key`` (from ``ref.key``), from any process."""
        return self.get_many([key], timeout=timeout)[0]

    def get_many(self, keys: list[str], timeout: float | None = None) -> list[Any]:
        wait = None if timeout is None else timeout + 5.0
        reply = self.send(messages.GetRequest(keys=tuple(keys), timeout=timeout), timeout=wait)
        return [decode_outcome(status, frames) for status, frames in split_parts(reply)]

    def put(self, key: str, obj: Any) -> Ref[Any]:
        """Keep ``obj`` on the cluster under ``key`` (up to 128 letters, digits, ``_ . -``), beside call results: ``cluster.get(key)`` from
        any process returns it, and the returned ref passed to a function on this cluster hands it
        the object without sending it again. Putting under a key again replaces the object; it
        expires and is released as results are (``cluster.release([key])``)."""
        refs: list[Ref] = []
        frames = serialize.dumps(obj, refs, container_depth=3)
        if refs:
            raise TypeError(f"cluster.put keeps plain objects, and this one holds refs to results "
                            f"({', '.join(ref.key for ref in refs)}); "
                            "fetch them first (rh.get) or pass the refs to a function instead")
        self.send(messages.PutRequest(key=key), frames)
        return Ref(key, self)

    def run_states(self, keys: list[str]) -> dict[str, str]:
        return self.send(messages.StatusRequest(keys=tuple(keys))).header["states"]

    def release(self, keys: list[str]) -> None:
        self.send(messages.ReleaseRequest(keys=tuple(keys)))

    # --- server life cycle ---------------------------------------------------------------------

    def logs(self, key: str, *, follow: bool = False) -> str:
        """What run ``key`` (``ref.key``) has printed; with ``follow=True`` also print new lines here
        as they come, until the run ends."""
        from rh_core.client.output import write_line

        chunks: list[bytes] = []

        def collect(line: OutputLine) -> None:
            chunks.append(line.text)
            if follow:
                write_line(line)

        self.send(messages.LogsRequest(key=key, follow=follow), on_log=collect)
        return b"".join(chunks).decode("utf-8", "replace")

    def runs(self) -> dict[str, Any]:
        """Runs in progress (``{"running": {key: tasks}}``), results kept on the cluster
        (``"finished"``), and the last runs that logged anything, oldest first (``"logged"``: their
        keys, for :meth:`logs`; a call made with ``stream_logs=False`` is found there)."""
        header = self.send(messages.RunsRequest()).header
        return {"running": header["running"], "finished": header["finished"], "logged": header.get("logged", [])}

    def cancel(self, key: str) -> None:
        """Stop run ``key`` (a call, a ``.remote()`` or a whole map) on the cluster; whoever waits
        for its result gets :class:`rh_core.RunCancelledError`."""
        self.send(messages.CancelRequest(key=key))

    def instances(self) -> dict[str, dict[str, Any]]:
        """The remote instances (``rh.module``) on the cluster, by name: ``id`` (this incarnation),
        ``class``, ``max_concurrency``, ``env``, and ``ended`` (why its process is gone, None while it lives)."""
        return dict(self.send(messages.InstancesRequest()).header["instances"])

    def cancel_all(self) -> list[str]:
        """Stop every run on the cluster (calls, ``.remote()`` runs, maps, also other clients');
        whoever waits for one gets :class:`rh_core.RunCancelledError`. Remote instances live on
        (``release()`` ends one). Returns the keys of the runs stopped."""
        return list(self.send(messages.CancelAllRequest()).header["cancelled"])

    def is_up(self) -> bool:
        try:
            self.connection()
            return True
        except Exception:
            return False

    def status(self) -> dict[str, Any]:
        """What the server says about itself: pid, port, versions, executor, calls served."""
        return self.send(messages.PingRequest(python=serialize.python_version())).header

    # --- commands ------------------------------------------------------------------------------

    def run(self, commands: list[str] | str, *, stream_logs: bool = False) -> list[tuple[int, str, str]]:
        """Run shell commands on the cluster's head machine: ``[(returncode, stdout, stderr), ...]``."""
        if isinstance(commands, str):
            commands = [commands]
        return self.transport.run(list(commands), stream_logs=stream_logs)

    def sync_directory(self, local_path: str) -> str | None:
        """Make a local folder present on the cluster and return its path there; a tree unchanged
        since the last sync from this process is not looked at again remotely. None when the
        cluster takes no files (functions then travel by value)."""
        from rh_core.config import current
        from rh_core.support.workdir import listing, warn_if_large

        listed = listing(local_path)
        stamp = listed.fingerprint()
        known = self._synced.get(local_path)
        if known is not None and known[0] == stamp:
            return known[1]
        warn_if_large(local_path, listed, current().get("sync_warn_mb"))
        remote = self.transport.sync_directory(local_path)
        self._synced[local_path] = (stamp, remote)
        return remote

    def sync_working_directory(self, local_path: str) -> tuple[str, str] | None:
        """Sync the working directory (see :meth:`sync_directory`); return its path on the cluster
        and its version, which changes whenever one of its files does. None when the cluster takes
        no files."""
        remote = self.sync_directory(local_path)
        if remote is None:
            return None
        return remote, self._synced[local_path][0]

    def install_packages(self, reqs: list[Any], env: Any = None) -> dict[str, Any]:
        """Install requirements (strings or :class:`rh_core.Package`) on the cluster, into its
        default environment or the named ``env``; what is already installed is skipped."""
        from rh_core.packages import install_packages

        return install_packages(self, reqs, env)

    # --- HTTP endpoints (rh_core.server.http_door) ----------------------------------------------------

    def http_token(self, *, rotate: bool = False) -> str:
        """The bearer token HTTP callers of this cluster's endpoints send (``Authorization: Bearer
        TOKEN``), fetched over the authenticated connection; ``rotate=True`` replaces it, and the
        old one stops working at once. It only calls endpoints: it is not the cluster's secret."""
        return self.send(messages.HttpTokenRequest(rotate=rotate)).header["token"]

    def endpoints(self) -> list[dict[str, Any]]:
        """The endpoints served on the cluster: each one's name, whether it is public, and its function."""
        return self.send(messages.EndpointsRequest()).header["endpoints"]

    def apps(self) -> list[dict[str, Any]]:
        """The ASGI apps run on the cluster (``rh.asgi(app).to(cluster)``): each one's name, whether it
        is public, its ``module:attribute`` and its process id (None while it is restarting)."""
        return self.send(messages.AppsRequest()).header["apps"]

    def remove_endpoint(self, name: str) -> bool:
        """Stop serving endpoint ``name``; False when it was not served."""
        return self.send(messages.UnserveRequest(name=name)).header["removed"]

    def http_url(self, name: str) -> str:
        """The URL of endpoint ``name`` reachable from here (see :meth:`Function.http_url`)."""
        reply = self.send(messages.EndpointsRequest())
        served = [endpoint["name"] for endpoint in reply.header["endpoints"]]
        if name not in served:
            raise RhError(f"no endpoint {name!r} is served on cluster {self.name!r} (served: {', '.join(served) or 'none'}); "
                          "serve a function with f.endpoint()")
        return f"{self.http_address(reply.header['port'])}/{name}"

    def http_address(self, port: int) -> str:
        """``http://HOST:PORT`` reaching port ``port`` of the head machine from here (a tunnel
        through the transport, kept open while this process lives)."""
        host, local_port = self.transport.forward(port)
        return f"http://{host}:{local_port}"

    # --- secrets (rh_core.secrets) -------------------------------------------------------------

    def sync_secrets(self, secrets: Sequence[Secret | str]) -> list[str]:
        """Send secrets to the cluster: ``rh.secret(...)`` objects, or provider names (``"aws"``,
        read here now). Each one's files are written owner-only (0600) where the provider's tools
        look (``~/.aws/credentials``), replacing what was there, and its values are kept for
        functions sent with ``secrets=[name]``. Returns the names."""
        from rh_core.errors import SecretError
        from rh_core.secrets import resolve

        to_send, others = resolve(secrets, self.host)
        if others:
            raise SecretError(
                f"no secret provider is named {', '.join(map(repr, others))} (providers: "
                f"{', '.join(self.host.registry('secret_provider').names())}); send a custom secret as "
                f"rh.secret(name={others[0]!r}, values={{...}})")
        import orjson

        self.send(messages.SyncSecretsRequest(), [orjson.dumps([item.to_wire() for item in to_send])])
        return [item.name for item in to_send]

    def delete_secrets(self, secrets: Sequence[Secret | str]) -> list[str]:
        """Remove secrets (by name or object) from the cluster, with the files they wrote; returns
        the names that were there. Functions sent with them fail until they are sent again."""
        from rh_core.secrets import names_of

        return self.send(messages.DeleteSecretsRequest(names=tuple(names_of(secrets)))).header["deleted"]

    def secrets(self) -> list[dict[str, Any]]:
        """The secrets on the cluster: each one's name, provider, variable names and files (no values)."""
        return self.send(messages.SecretsRequest()).header["secrets"]

    def notebook(self, port: int = 8888, *, env: Any = None, local_port: int | None = None) -> Any:
        """JupyterLab on the head machine (installed into ``env`` on first use), tunnelled here;
        prints and returns a :class:`rh_core.clusters.notebook.Notebook` whose ``url`` carries the token.
        ``close()`` it, or use it in ``with``, to stop it."""
        from rh_core.clusters.notebook import start_notebook

        return start_notebook(self, port, env=env, local_port=local_port)

    def ssh_tunnel(self, remote_port: int, local_port: int | None = None) -> Tunnel:
        """Reach ``remote_port`` on the head machine from here; usable as a context manager.

        ``local_port`` picks where it listens (default: a free port); ``tunnel.close()`` ends it.
        """
        host, port = self.transport.forward(remote_port, local_port=local_port)
        return Tunnel(host=host, local_port=port, remote_port=remote_port, transport=self.transport)

    def ssh(self) -> int:
        """An interactive shell on the head machine, in this terminal; returns its exit code."""
        import subprocess

        return subprocess.call(self.transport.shell_command())

    def run_setup(self, commands: list[str], *, force: bool = False, stream_logs: bool = False) -> list[tuple[int, str, str]]:
        """Run setup commands once per cluster (remembered on the cluster); ``force=True`` reruns them.

        Returns the commands' results, or ``[]`` when they had already run. A failing command
        raises :class:`RhError` with its output, and the setup is not marked done.
        """
        import hashlib
        import shlex

        digest = hashlib.sha256("\n".join(commands).encode()).hexdigest()[:16]
        directory = self._setup_dir()
        marker = f"{directory}/setup-{digest}.done"
        if not force and self.run([f"test -f {marker}"])[0][0] == 0:
            return []
        results = self.run(list(commands), stream_logs=stream_logs)
        for command, (code, out, err) in zip(commands, results):
            if code != 0:
                raise RhError(f"setup command {command!r} failed on cluster {self.name!r} (exit {code}):\n{(err or out)[-2000:]}")
        self.run([f"mkdir -p {directory} && printf %s {shlex.quote(chr(10).join(commands))} > {marker}"])
        return results

    def _setup_dir(self) -> str:
        """Where markers of finished setups live on the cluster."""
        raise NotImplementedError

    def run_python(self, lines: list[str], *, stream_logs: bool = False) -> list[tuple[int, str, str]]:
        """Run Python source lines with the cluster's interpreter."""
        import shlex

        python = self._info.get("python_executable") or "python3"
        return self.run([f"{shlex.quote(python)} -c {shlex.quote(chr(10).join(lines))}"], stream_logs=stream_logs)

    # --- names and status (rh_core.names, rh_core.clusters.status) ---------------------------------------

    #: The name this cluster was last saved under or loaded from (``~/gpu``, ``@/team/gpu``, ``^rh-cpu``).
    saved_name: str | None = attrs.field(default=None, init=False, repr=False)
    _last_status: ClusterStatus | None = attrs.field(default=None, init=False, repr=False)

    def save(self, name: str | None = None, *, overwrite: bool = False,
             store: dict[str, Any] | None = None) -> Cluster:
        """Save this cluster's config under ``name`` (``~/x``, ``@/x``; default ``~/<its name>``).

        Credentials (passwords, passphrases) and one-time settings (``trust_new_host``) are left
        out; in a shared store (``@/``), so are paths outside your home (each loader uses their
        own state folder, keys and known hosts). Saving over an existing name needs
        ``overwrite=True``; ``store`` replaces the config file's shared store for this call.
        """
        from rh_core.names import save

        self.saved_name = save(self, name, overwrite=overwrite, store=store)
        return self

    def config_for_saving(self) -> dict[str, Any]:
        """The config a saved name holds: :meth:`config`, minus what only holds on this machine."""
        return self.config()

    def refresh_status(self) -> ClusterStatus:
        """Ask whether the machines are up and the server runs, starting nothing; returns a
        :class:`rh_core.clusters.status.ClusterStatus`, also kept as :attr:`last_status`."""
        raise NotImplementedError

    @property
    def last_status(self) -> ClusterStatus | None:
        """The :class:`rh_core.clusters.status.ClusterStatus` of the last :meth:`refresh_status`, or None."""
        return self._last_status


@attrs.define
class Tunnel:
    """A local port that reaches a port on a cluster's head machine."""

    host: str
    local_port: int
    remote_port: int
    transport: Any = attrs.field(repr=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.local_port}"

    def close(self) -> None:
        self.transport.close_forward(self.remote_port)

    def __enter__(self) -> Tunnel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def check_versions(cluster: Cluster, info: dict[str, Any]) -> None:
    """Refuse a server whose Python cannot read what this client sends: older than
    :data:`~rh_core.bootstrap.wheels.MIN_CLUSTER_PYTHON`. Another minor version is fine for functions sent by
    reference and for data; a function sent by value is checked when it is sent
    (:meth:`Cluster.check_by_value`)."""
    theirs = str(info.get("python") or "")
    major, _, minor = theirs.partition(".")
    if not (major.isdigit() and minor.isdigit()) or (int(major), int(minor)) < (3, 10):
        raise VersionMismatchError(
            f"the server of cluster {cluster.name!r} runs Python {theirs or '(unknown)'}; rh_core needs 3.10 or "
            "later there. Restart the cluster's server with a newer Python."
        )


def split_parts(reply: Reply) -> Iterator[tuple[str, Sequence[Any]]]:
    """``(status, frames)`` of each outcome a ``result`` reply carries (see :class:`ResultParts`)."""
    return ResultParts.from_wire(reply.header, len(reply.frames)).split(reply.frames)


def decode_outcome(status: str, frames) -> Any:
    if status == "ok":
        received: list[str] = []
        value = serialize.loads(frames, received=received)
        if received:
            from rh_core.wire import shm

            shm.hand_back_later(received)  # with the next call, for the worker's next large result
        return value
    raise serialize.loads_exception(frames)
