"""Clusters on other machines: brought up by a provisioner plugin, reached through a transport plugin.

Bootstrap works over any transport: probe the head (its platform and Pythons, in one round trip),
install the client's exact rh_core and plugins into ``~/.rh/venv`` there from wheels resolved on
the client for that platform (:mod:`rh_core.bootstrap.wheels`), start the server detached, and reach its port
through ``transport.forward``. A server started from another build is replaced.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from rh_core.client import progress
from rh_core.wire import serialize
from rh_core.clusters.base import Cluster
from rh_core.errors import ProvisionError, ServerStartError, VersionMismatchError
from rh_core.plugin.interfaces import (
    Autostops,
    ClusterInfo,
    ExplainsLoss,
    PreparesForward,
    ProvisionRequest,
    RefreshesStatus,
    ReportsTunnelProblems,
    capability,
    keep_marker,
    takes_request,
)
from rh_core.support.redact import secrets_hidden
from rh_core.bootstrap import scripts
from rh_core.bootstrap.wheels import (
    MIN_CLUSTER_PYTHON,
    OwnWheels,
    Platform,
    UvWheel,
    Wheelhouse,
    WheelhouseError,
    build_own_wheels,
    cache_root,
    fetch_uv_wheel,
    resolve_wheelhouse,
    wheelhouse_with_uv,
)

if TYPE_CHECKING:
    from rh_core.client.connection import Connection
    from rh_core.clusters.status import ClusterStatus

logger = logging.getLogger(__name__)

#: A connection unused this long is checked before the next request: the machines behind it may
#: have been stopped meanwhile (an on-demand cluster's autostop).
IDLE_RECHECK_SECONDS = 60.0

REMOTE_HOME = "~/.rh"


def remote_shell_path(path: str) -> str:
    """``path`` on a cluster machine as one shell word, a leading ``~`` expanded there (as the probe
    expands ``remote_dir``), for commands run through a transport."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


@attrs.frozen
class _HeadOf:
    """The :class:`~rh_core.plugin.interfaces.HeadCommands` a cluster hands its provisioner: commands
    through the head's transport, which is opened on first use."""

    _cluster: RemoteCluster

    def run(self, commands: list[str]) -> list[tuple[int, str, str]]:
        return self._cluster.transport.run(list(commands))


@attrs.define(eq=False)
class RemoteCluster(Cluster):
    """A cluster whose machines a provisioner plugin brings up.

    :param provisioner: the provisioner plugin's name (or one of its aliases).
    :param spec: the provisioner's options, as it checked them (see ``ValidatesSpec``).
    :param executor: how calls run there (``"process"`` or ``"ray"``).
    """

    name: str
    provisioner: str
    spec: dict[str, Any] = attrs.field(factory=dict, repr=secrets_hidden)
    executor: str = "process"
    executor_options: dict[str, Any] = attrs.field(factory=dict, repr=secrets_hidden)
    remote_dir: str = REMOTE_HOME
    _cluster_info: ClusterInfo | None = attrs.field(default=None, init=False, repr=False)
    _transport: Any = attrs.field(default=None, init=False, repr=False)
    _address: str | None = attrs.field(default=None, init=False, repr=False)
    _server_state: dict[str, Any] | None = attrs.field(default=None, init=False, repr=False)
    _bootstrap_lock: threading.Lock = attrs.field(factory=threading.Lock, init=False, repr=False)
    _last_request_at: float = attrs.field(default=0.0, init=False, repr=False)
    _head_probe: dict[str, Any] | None = attrs.field(default=None, init=False, repr=False)
    _reaches_index: bool | None = attrs.field(default=None, init=False, repr=False)

    # --- machines ------------------------------------------------------------------------------

    @property
    def cluster_info(self) -> ClusterInfo:
        """Where the machines are; brings them up through the provisioner when not known yet."""
        if self._cluster_info is None:
            self._cluster_info = self._machines_up()
        return self._cluster_info

    def up(self) -> RemoteCluster:
        info = self._machines_up()
        if info != self._cluster_info:  # other machines (or first ones): nothing of the old ones applies
            self._drop_machines()
        self._cluster_info = info
        self.connection()
        return self

    def config(self) -> dict[str, Any]:
        return {"kind": "remote", "name": self.name, "provisioner": self.provisioner, "spec": self.spec,
                "executor": self.executor, "executor_options": self.executor_options, "remote_dir": self.remote_dir}

    @property
    def transport(self):
        if self._transport is None:
            self._transport = self._new_transport(self.cluster_info.head)
        return self._transport

    @property
    def open_transport(self) -> Any:
        """The head's transport when one is open, else None: never brings machines up or connects.
        For plugin hooks that act on an existing connection only (``rh_cluster_ready``)."""
        return self._transport

    def _setup_dir(self) -> str:
        return self.remote_dir

    def run(self, commands: list[str] | str, *, stream_logs: bool = False) -> list[tuple[int, str, str]]:
        """Run shell commands on the head machine, with the cluster's Python environment (where
        functions run) first on ``PATH``: ``pip install x`` installs there, ``python`` is its python."""
        if isinstance(commands, str):
            commands = [commands]
        venv = remote_shell_path(f"{self.remote_dir.rstrip('/')}/venv")
        prefix = f'export VIRTUAL_ENV={venv} PATH={venv}/bin:"$PATH"; '
        return self.transport.run([prefix + command for command in commands], stream_logs=stream_logs)

    def down(self) -> None:
        """Stop the server and let the provisioner take the machines down (machines it reports
        stopped or down have no server to stop, and are not started for it)."""
        provisioner, request = self._provisioner()
        if provisioner.status(request) not in ("stopped", "down"):
            self.stop_server()
        provisioner.down(request)
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._cluster_info = None

    # --- machines that a provisioner launches and stops (on-demand clusters) --------------------
    # Optional provisioner capabilities used here: RefreshesStatus and Autostops (rh_core.plugin.interfaces).

    def up_if_not(self) -> RemoteCluster:
        """Bring the machines up unless the provisioner reports them up; then make sure the server runs."""
        if self._machines_status() != "up":
            self._drop_machines()
            return self.up()
        self.connection()
        return self

    def status(self, refresh: bool = False) -> dict[str, Any]:
        """What the server reports about itself (pid, port, versions, executor, calls), starting it if needed.

        ``refresh=True`` first asks the provisioner how the provider sees the machines right now,
        returned as ``"machines"`` (``"up"``, ``"stopped"``, ``"down"`` or ``"unknown"``); machines
        that are not up are not started, and only ``{"name", "machines"}`` is returned.
        """
        if not refresh:
            return super().status()
        provisioner, request = self._provisioner()
        refresher = capability(provisioner, RefreshesStatus)
        machines = refresher.refreshed_status(request) if refresher is not None else provisioner.status(request)
        if machines != "up":
            return {"name": self.name, "machines": machines}
        return {**super().status(), "machines": machines}

    def keep_warm(self, mins: int = -1) -> RemoteCluster:
        """Keep the machines up until they have been idle for ``mins`` minutes (``-1``: until
        :meth:`down`). This changes the running machines' autostop; a later launch or restart uses
        the cluster's own ``autostop_mins`` again."""
        autostops, request = self._autostops("keep_warm()")
        autostops.set_autostop(request, mins)
        return self

    @contextlib.contextmanager
    def pause_autostop(self) -> Iterator[RemoteCluster]:
        """Suspend autostop inside the ``with`` block (while a notebook is open, around a long call)
        and restore the previous setting when it ends, also after an error."""
        autostops, request = self._autostops("pause_autostop()")
        minutes = autostops.autostop_minutes(request)
        if minutes < 0:  # no autostop to pause
            yield self
            return
        autostops.set_autostop(request, -1)
        try:
            yield self
        finally:
            autostops.set_autostop(request, minutes)

    def connection(self) -> Connection:
        """The connection to the server. Machines the provisioner reports stopped or down (an
        autostop, a teardown elsewhere) are brought back up first, with its progress display."""
        try:
            return super().connection()
        except ConnectionError:  # the machines do not answer: did the provisioner's side stop them?
            if self._cluster_info is None or self._machines_status() not in ("stopped", "down"):
                raise
        self._bring_machines_back()
        return super().connection()

    def request(self, op: str, header: dict[str, Any], frames: Any = (), **kwargs: Any):
        # After a quiet spell, make sure the server still answers before sending: a request sent into
        # the tunnel of stopped machines would fail, where connection() can bring them back first.
        if (self._connection is not None and time.monotonic() - self._last_request_at > IDLE_RECHECK_SECONDS
                and self._liveness() is not None):
            self._forget_connection()
        try:
            return super().request(op, header, frames, **kwargs)
        finally:
            self._last_request_at = time.monotonic()

    def _bring_machines_back(self) -> None:
        self._drop_machines()
        self._cluster_info = self._machines_up()

    def _drop_machines(self) -> None:
        """Forget the connection, transport and syncs of machines that stopped or were replaced."""
        self._forget_connection()
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._synced.clear()  # new or restarted machines may not have what was synced to the old ones
        self._reaches_index = None

    def provision_request(self, *, with_head: bool = True) -> ProvisionRequest:
        """What this cluster's provisioner is told about it: its name, its spec and (``with_head``)
        a way to run commands on its head machine."""
        return ProvisionRequest(cluster_name=self.name, spec=self.spec, head=_HeadOf(self) if with_head else None)

    def _provisioner(self, *, with_head: bool = True) -> tuple[Any, Any]:
        """A new instance of the cluster's provisioner, and what to pass its methods: a
        :class:`ProvisionRequest`, or this cluster itself for a provisioner of the old form (see
        :func:`~rh_core.plugin.interfaces.takes_request`), which is warned about."""
        provisioner = self.host.provisioner(self.provisioner)()
        if takes_request(provisioner):
            return provisioner, self.provision_request(with_head=with_head)
        kind = type(provisioner)
        warnings.warn(
            f"the {self.provisioner!r} provisioner ({kind.__module__}.{kind.__qualname__}) takes the cluster object "
            "(up(self, cluster)); rh_core now gives provisioners a ProvisionRequest: change its methods to take "
            "`request: rh_core.plugin.interfaces.ProvisionRequest` and read request.cluster_name, request.spec and "
            "request.head.run(...) where they read cluster.name, cluster.spec and cluster.transport.run(...). "
            "Clusters are passed to the old form until the next release", DeprecationWarning, stacklevel=3)
        return provisioner, self

    def _machines_up(self) -> ClusterInfo:
        """Ask the provisioner to bring the machines up (or find them up): where they are. Its
        request has no head: the machines are not known before it answers."""
        provisioner, request = self._provisioner(with_head=False)
        return provisioner.up(request)

    def _machines_status(self) -> str:
        provisioner, request = self._provisioner()
        return provisioner.status(request)

    def _autostops(self, feature: str) -> tuple[Autostops, Any]:
        provisioner, request = self._provisioner()
        found = capability(provisioner, Autostops)
        if found is None:
            raise ProvisionError(
                f"cluster {self.name!r} has no {feature}: its {self.provisioner!r} provisioner does not stop "
                "machines by itself (it has no autostop_minutes and set_autostop; on-demand clusters such as "
                "rh.cluster(name=..., instance_type=...) do)"
            )
        return found, request

    # --- server --------------------------------------------------------------------------------

    def _distributions(self) -> list[str]:
        """rh-core, the plugin distribution that provides the executor, and every distribution that
        provides installers (they run in the cluster's server)."""
        names = ["rh-core"]
        owners = [self.host.registry("executor").owner(self.executor)]
        installers = self.host.registry("installer")
        owners += [installers.owner(name) for name in installers.names()]
        for owner in owners:
            distribution = self.host.distribution_of(owner)
            if distribution and distribution not in names:
                names.append(distribution)
        return names

    def provisioned_by(self, provisioner_class: type) -> bool:
        """True when this cluster's provisioner (under any of its registered names) is
        ``provisioner_class`` or a subclass: how a plugin's hooks recognise its own clusters."""
        try:
            registered = self.host.provisioner(self.provisioner)
        except Exception:  # an unknown provisioner is nobody's; using the cluster reports it
            return False
        return isinstance(registered, type) and issubclass(registered, provisioner_class)

    def transport_to(self, address: str):
        """A transport to one machine of the cluster (the head's is :attr:`transport`)."""
        if address == self.cluster_info.head:
            return self.transport
        return self._new_transport(address)

    def _options_for(self, address: str) -> dict[str, Any]:
        """The transport options of one machine: the shared ones with its own merged over them."""
        info = self.cluster_info
        return {"remote_root": self.remote_dir, **info.transport_options, **info.host_options.get(address, {})}

    def _new_transport(self, address: str):
        return self.host.transport(self.cluster_info.transport)(address, **self._options_for(address))

    def _where(self, address: str) -> str:
        """``user@address`` as errors name a machine."""
        user = self._options_for(address).get("user")
        return f"{user}@{address}" if user else address

    def _run_checked(self, transport, command: str, what: str, address: str) -> str:
        (code, out, err), = transport.run([command])
        if code != 0:
            raise ServerStartError(f"{what} failed on {self._where(address)} (exit {code}): {(err or out)[-2000:]}")
        return out

    def _probe(self, transport=None, address: str | None = None, *, build_id: str | None = None,
               prefer_python: str | None = None) -> dict[str, Any]:
        """One round trip: a machine's platform, rsync, venv build and running server; when its venv
        does not hold ``build_id``, also the interpreter for a new one (``prefer_python`` first).
        Run by the venv's python when there is one (it skips shims such as pyenv's, ~0.3 s, and is
        what the server runs), else by the host's ``python3``."""
        transport = transport or self.transport
        address = address or self.cluster_info.head
        root = self.remote_dir
        venv = remote_shell_path(f"{root.rstrip('/')}/venv/bin/python")
        args = [root] + ([build_id, prefer_python or serialize.python_version()] if build_id else [])
        probe = f"-c {shlex.quote(scripts.probe())} {' '.join(shlex.quote(arg) for arg in args)}"
        (code, out, err), = transport.run([f"{venv} {probe} 2>/dev/null || python3 {probe}"])
        if code != 0:
            raise ServerStartError(
                f"{self._where(address)} has no working python3 on the PATH of its SSH sessions (exit {code}: {err.strip()[-500:]}); "
                "install Python 3 there (e.g. `apt-get install -y python3 python3-venv`)"
            )
        return json.loads(out.strip().splitlines()[-1])

    def _no_python_error(self, probe: dict[str, Any], address: str, prefer: str) -> VersionMismatchError:
        floor = "%d.%d" % MIN_CLUSTER_PYTHON
        found = ", ".join(f"{p['name']} is Python {p['version']}" for p in probe["pythons"]) or "none that runs"
        return VersionMismatchError(
            f"{self._where(address)} has no Python {floor} or later on the PATH of its SSH sessions ({found}); "
            f"rh_core's server needs {floor}+. Install one there, e.g. `apt-get install -y python3.{MIN_CLUSTER_PYTHON[1] + 2}`"
            f" (Ubuntu 20.04: the deadsnakes PPA) or `uv python install {prefer}`, then call again"
        )

    def install_runtime(self, address: str, *, prefer_python: str | None = None) -> str:
        """Make sure ``address`` has the client's rh_core and executor plugin in its venv; return that
        venv's python. Used for the head by bootstrap, and by executor plugins for worker nodes
        (which pass ``prefer_python``, the head's version: Ray needs one Python on every node)."""
        transport = self.transport_to(address)
        build_id = self._own_wheels().build_id
        probe = self._probe(transport, address, build_id=build_id, prefer_python=prefer_python)
        self._ensure_venv(transport, address, probe, build_id)
        return f"{probe['root']}/venv/bin/python"

    def offline_platform(self) -> Platform | None:
        """The head's platform when its server's Python reaches no package index (asked once per
        machine: the index its pip is configured with, else PyPI), else None."""
        self.connection()
        if self._reaches_index is None:
            python = shlex.quote(str(self._info.get("python_executable") or "python3"))
            with progress.step(logger, "index check", self._where(self.cluster_info.head)):
                (code, out, _), = self.transport.run([f"{python} -c {shlex.quote(scripts.source('index_check.py'))}"])
            self._reaches_index = code == 0 and out.strip().endswith("reachable")
            if not self._reaches_index:
                logger.info("%s reaches no package index (%s): requirements are resolved here and shipped",
                            self._where(self.cluster_info.head), out.strip()[-300:])
        if self._reaches_index:
            return None
        probe = self._head_probe or self._probe()
        return Platform.from_probe({**probe, "python": self._info.get("python") or probe["python"]})

    def _own_wheels(self) -> OwnWheels:
        return build_own_wheels(self._distributions(), cache_root())

    def _ensure_venv(self, transport, address: str, probe: dict[str, Any], build_id: str) -> None:
        """Install the client's build ``build_id`` into ``<remote_dir>/venv`` on ``address`` unless
        it is there, from wheels resolved here for the machine's platform (see :meth:`_probe`), with
        uv where the machine can have it (:func:`fetch_uv_wheel`), else with pip."""
        if probe["venv_build"] == build_id:
            return
        if probe["chosen"] is None:
            raise self._no_python_error(probe, address, serialize.python_version())
        version, interpreter = probe["chosen"]["version"], probe["chosen"]["path"]
        target = Platform.from_probe({**probe, "python": version})
        with progress.step(logger, "wheels", f"for {target.describe()}"):
            wheelhouse = resolve_wheelhouse(self._distributions(), target, cache_root())
            try:
                uv: UvWheel | None = fetch_uv_wheel(target, cache_root())
            except WheelhouseError as exc:
                uv = None
                logger.info("no uv for %s, so pip installs there (slower): %s", self._where(address), exc)
        root = probe["root"]
        # The executable is kept per uv version: a machine that has it is not sent the wheel again.
        ship_uv = uv is not None and f"uv-{uv.version}" not in probe.get("uv", ())
        shipment = wheelhouse_with_uv(wheelhouse, uv) if ship_uv else wheelhouse.path
        with progress.step(logger, "ship wheels", f"{len(os.listdir(shipment)) - 1} to {self._where(address)}"):
            remote_wheels = transport.sync_directory(shipment)
        # Another build in a venv of the same Python: our distributions are replaced even where
        # their version is the same; dependencies already there stay.
        same_venv = (probe["executable"].startswith(f"{root}/venv/") and probe["python"] == version
                     and probe["venv_build"] is not None)
        if uv is None:
            install = _pip_install_command(wheelhouse, remote_wheels, root, interpreter, same_venv=same_venv)
        else:
            install = _uv_install_command(wheelhouse, remote_wheels, root, interpreter, uv, same_venv=same_venv)
            if ship_uv:
                unpack = scripts.source("unpack_uv.py")
                install = (f"{shlex.quote(interpreter)} -c {shlex.quote(unpack)} "
                           f"{shlex.quote(f'{remote_wheels}/{uv.file}')} {shlex.quote(uv.member)} "
                           f"{shlex.quote(f'{root}/bin/uv-{uv.version}')} && {install}")
        installer = "pip" if uv is None else f"uv {uv.version}"
        venv = shlex.quote(f"{root}/venv")
        with progress.step(logger, "install", f"rh_core into {root}/venv (Python {version}, {installer})"):
            self._run_checked(transport, f"{install} && echo {build_id} > {venv}/rh-build-id",
                              f"installing rh_core (wheels for {target.describe()}, {installer})", address)

    def _start_or_find_server(self) -> tuple[str, dict[str, Any] | None]:
        with self._bootstrap_lock:
            head = self.cluster_info.head
            preparer = capability(self.transport, PreparesForward)
            if preparer is not None:  # the tunnel's connection comes up while the probe runs
                with progress.step(logger, "connect", self._where(head)):
                    preparer.prepare_forward()
            build_id = self._own_wheels().build_id
            with progress.step(logger, "probe", self._where(head)):
                probe = self._probe(build_id=build_id)
            self._head_probe = probe
            self._ensure_venv(self.transport, head, probe, build_id)
            state, secret = probe["server"], probe["secret"]
            if not (state and state.get("build") == build_id and state.get("executor") == self.executor):
                with progress.step(logger, "start server", f"{self.executor} executor on {self._where(head)}"):
                    state, secret = self._start_server(probe, build_id, state)
            with progress.step(logger, "tunnel", f"to port {state['port']} on {self._where(head)}"):
                host, port = self.transport.forward(state["port"])
            # The secret came over the authenticated transport; it is kept in memory only.
            state = {**state, "secret": secret}
            self._server_state = state
            self._address = f"tcp://{host}:{port}"
            return self._address, state

    def _start_server(self, probe: dict[str, Any], build_id: str, old: dict[str, Any] | None
                      ) -> tuple[dict[str, Any], str]:
        """Start the server on the head (replacing ``old``); its state and secret."""
        from rh_core.config import server_arguments

        head = self.cluster_info.head
        argv = ["--executor", self.executor, *server_arguments()]
        for key, value in self.executor_options.items():
            argv += ["-o", f"{key}={json.dumps(value)}"]
        old_pid = old["pid"] if old else 0
        command = " ".join(shlex.quote(part) for part in [
            f"{probe['root']}/venv/bin/python", "-m", "rh_core.bootstrap.scripts.start_server", f"{probe['root']}/server",
            build_id, head, str(old_pid), *argv])
        started = json.loads(self._run_checked(self.transport, command, "starting the server", head)
                             .strip().splitlines()[-1])
        if not started["ok"]:
            raise ServerStartError(
                f"the server on {self._where(head)} exited with code {started['code']} while starting; "
                f"its log ends with:\n{started['log']}"
            )
        return started["state"], started["secret"]

    def _liveness(self) -> str | None:
        from rh_core.client.connection import ping

        if self._address is None:
            return "not connected"
        state = self._server_state or {}
        reporter = capability(self._transport, ReportsTunnelProblems)
        problem = reporter.tunnel_problem(state["port"]) if reporter is not None and "port" in state else None
        if problem is not None:  # known at once, with its cause, where a ping would wait 2 s
            return self._with_provider_report(
                f"the SSH tunnel to the server on {self._where(self.cluster_info.head)} (pid {state.get('pid')}) "
                f"broke: {problem}")
        if ping(self._address, timeout=2.0, secret=(self._server_state or {}).get("secret")) is None:
            pid = (self._server_state or {}).get("pid")
            return self._with_provider_report(
                f"the server on {self._where(self.cluster_info.head)} (pid {pid}) does not answer through its tunnel")
        return None

    def _with_provider_report(self, reason: str) -> str:
        """``reason`` with what the provider says happened to the machines (a Spot VM preempted, an
        instance stopped or deleted), when the provisioner can tell (its optional ExplainsLoss)."""
        provisioner, request = self._provisioner()
        explainer = capability(provisioner, ExplainsLoss)
        if explainer is None:
            return reason
        try:
            report = explainer.explain_lost(request)
        except Exception as exc:  # the server is gone either way; say why we cannot tell more
            report = f"the provider could not be asked why ({type(exc).__name__}: {exc})"
        return f"{reason}; {report}" if report else reason

    def stop_server(self) -> bool:
        """Stop the server on the head machine, if one runs."""
        self._forget_connection()
        state = self._probe()["server"]
        if state:
            # Wait until it has exited (a zombie counts as exited): an executor's shutdown can take
            # seconds (Ray's does), and a restart that probed meanwhile would reuse the dying server.
            pid = int(state["pid"])
            self.transport.run([f"kill {pid}; for _ in $(seq 300); do case \"$(ps -o stat= -p {pid})\" in ''|Z*) exit 0;; esac; "
                                f"sleep 0.1; done; kill -9 {pid}"])
        # Here and not only in down(), and after the server has gone (or was found gone): what plugins
        # started beside it (a Ray head, Ray worker nodes) must not outlive it, also when it was killed.
        self.host.cluster_teardown(self)
        return bool(state)

    def restart_server(self, restart_ray: bool | None = None, *, keep: Sequence[str] = ()) -> None:
        """Stop the server on the head machine and start a new one; ``keep`` as
        :meth:`Cluster.restart_server` says (with ``ray``, the worker machines' Ray nodes stay too)."""
        kept = self._kept_on_restart(self.executor, keep, restart_ray)
        if kept:
            shell_path = remote_shell_path(f"{self.remote_dir.rstrip('/')}/server")
            markers = " ".join(keep_marker(shell_path, thing) for thing in kept)
            self._run_checked(self.transport, f"mkdir -p {shell_path} && touch {markers}",
                              f"asking the server to keep {', '.join(kept)} running", self.cluster_info.head)
        self.stop_server()
        self.connection()

    def refresh_status(self) -> ClusterStatus:
        """Ask the provisioner about the machines, then the head about its server (over the
        transport, as bootstrap's probe does); nothing is started or installed."""
        from rh_core.clusters.status import ClusterStatus

        shown = self.saved_name or self.name
        server = None
        try:
            machines = self._machines_status()
        except Exception as exc:
            machines, reason = "unknown", f"The {self.provisioner} provisioner could not tell: {exc}"
        else:
            reason = ""
        if machines in ("stopped", "down"):
            explanation = f"The machines are {machines}; `rh up {shown}` brings them up and starts the server."
        else:
            try:
                state = self._probe()["server"]
            except Exception as exc:
                explanation = " ".join(filter(None, [reason, f"The head cannot be reached: {exc}"]))
            else:
                machines = "up"
                if state:
                    server = dict(state)
                    explanation = (f"The server (pid {state.get('pid')}) runs on {self._where(self.cluster_info.head)} "
                                   f"with the {state.get('executor')} executor; `rh down {shown}` stops it.")
                else:
                    explanation = (f"The machines answer but no server runs on {self._where(self.cluster_info.head)}; "
                                   f"it starts on the first call, or with `rh up {shown}`.")
        self._last_status = ClusterStatus(name=shown, kind=self.provisioner, machines=machines, server=server,
                                          explanation=explanation)
        return self._last_status


def _pip_install_command(wheelhouse: Wheelhouse, remote_wheels: str, root: str, interpreter: str, *,
                         same_venv: bool) -> str:
    """The shell command that installs ``wheelhouse`` (shipped to ``remote_wheels``) into
    ``root/venv`` with pip, for a machine that cannot have uv: pip runs straight from its wheel."""
    venv = shlex.quote(f"{root}/venv")
    requirements = " ".join(shlex.quote(r) for r in wheelhouse.requirements)
    # --no-compile: bytecode is written on first import instead, which halves the install (BENCHMARKS.md).
    install_from_wheels = f"install --quiet --no-compile --no-index --find-links {shlex.quote(remote_wheels)}"
    if same_venv:
        pip = f"{venv}/bin/python -m pip {install_from_wheels}"
        return f"{pip} --force-reinstall --no-deps {requirements} && {pip} {requirements}"
    # No venv yet, a half-made one, or one of another Python: one pip run into a new one.
    pip_from_wheel = shlex.quote(f"{remote_wheels}/{wheelhouse.pip_wheel}/pip")
    return (f"{shlex.quote(interpreter)} -m venv --clear --without-pip {venv} && "
            f"{venv}/bin/python {pip_from_wheel} {install_from_wheels} pip {requirements}")


def _uv_install_command(wheelhouse: Wheelhouse, remote_wheels: str, root: str, interpreter: str, uv: UvWheel, *,
                        same_venv: bool) -> str:
    """The shell command that installs ``wheelhouse`` (shipped to ``remote_wheels``) into
    ``root/venv`` with the uv kept in ``root/bin``.

    uv reads no configuration of the machine's and never reaches for an index or a Python download:
    everything comes from the shipped wheels. Its cache sits beside the venv (the same file system,
    so files are hard-linked out of it, and a later build reuses what it unpacked). pip goes into
    the venv too: users' ``pip install`` in ``cluster.run`` is that venv's. Bytecode is not compiled,
    as with pip's ``--no-compile``: it is written on first import.
    """
    venv = shlex.quote(f"{root}/venv")
    executable = shlex.quote(f"{root}/bin/uv-{uv.version}")
    options = f"--quiet --no-config --cache-dir {shlex.quote(f'{root}/uv-cache')}"
    install = (f"{executable} pip install {options} --offline --no-index --find-links {shlex.quote(remote_wheels)} "
               f"--python {venv}/bin/python pip {' '.join(shlex.quote(r) for r in wheelhouse.requirements)}")
    if same_venv:
        names = (requirement.partition("==")[0] for requirement in wheelhouse.requirements)
        return install + "".join(f" --reinstall-package {shlex.quote(name)}" for name in names)
    return (f"{executable} venv {options} --no-project --no-python-downloads --clear "
            f"--python {shlex.quote(interpreter)} {venv} && {install}")
