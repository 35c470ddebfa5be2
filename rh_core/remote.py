"""Clusters on other machines: brought up by a provisioner plugin, reached through a transport plugin.

Bootstrap works over any transport: probe the head for ``python3``, install the client's exact
rh_core and plugins into ``~/.rh/venv`` there from shipped wheels, start the server detached, and
reach its port through ``transport.forward``. A server started from another build is replaced.
"""

from __future__ import annotations

import json
import shlex
import threading
from typing import Any

import attrs

from rh_core import serialize
from rh_core.cluster import Cluster, rh_home
from rh_core.errors import ServerStartError, VersionMismatchError
from rh_core.plugin_types import ClusterInfo

REMOTE_HOME = "~/.rh"

# Run with the host's python3; prints what bootstrap needs to know in one round trip.
_PROBE = r"""
import json, os, shutil, sys
rh = os.path.expanduser(sys.argv[1])
def read(path):
    try:
        with open(path) as f: return f.read().strip()
    except OSError: return None
state = read(rh + "/server/server.json")
try:
    state = json.loads(state); os.kill(state["pid"], 0)
except Exception:
    state = None
print(json.dumps({"python": "%d.%d" % sys.version_info[:2], "executable": sys.executable,
                  "root": rh, "server": state,
                  "venv_build": read(rh + "/venv/rh-build-id"), "rsync": bool(shutil.which("rsync"))}))
"""

# Run with the venv's python: starts the server detached (it outlives the SSH session) and waits for
# its state file, printing it, or the log's tail when the server dies first.
_START = r"""
import json, os, signal, subprocess, sys, time
state_dir, build, node_address, old_pid, argv = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:]
if old_pid:
    try:
        os.kill(old_pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(old_pid, 0); time.sleep(0.05)
        os.kill(old_pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
os.makedirs(state_dir, mode=0o700, exist_ok=True)
log_path = os.path.join(state_dir, "server.log")
log = open(log_path, "ab")
child = subprocess.Popen([sys.executable, "-m", "rh_core.server", "--state-dir", state_dir, *argv],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                         env={**os.environ, "RH_BUILD_ID": build, "RH_NODE_ADDRESS": node_address}, cwd=os.path.expanduser("~"))
deadline = time.time() + 120
while time.time() < deadline:
    try:
        with open(os.path.join(state_dir, "server.json")) as f: state = json.load(f)
        if state.get("pid") == child.pid:
            print(json.dumps({"ok": True, "state": state})); sys.exit(0)
    except (OSError, ValueError):
        pass
    if child.poll() is not None:
        break
    time.sleep(0.05)
with open(log_path, errors="replace") as f: tail = "".join(f.readlines()[-30:])
print(json.dumps({"ok": False, "code": child.poll(), "log": tail}))
"""


@attrs.define(eq=False)
class RemoteCluster(Cluster):
    """A cluster whose machines a provisioner plugin brings up (``"byo"``: hosts given by address).

    :param provisioner: the provisioner plugin's name.
    :param spec: the provisioner's options (for ``byo``: ``ips``, ``ssh_creds``).
    :param executor: how calls run there (``"process"`` or ``"ray"``).
    """

    name: str
    provisioner: str = "byo"
    spec: dict[str, Any] = attrs.field(factory=dict)
    executor: str = "process"
    executor_options: dict[str, Any] = attrs.field(factory=dict)
    remote_dir: str = REMOTE_HOME
    _cluster_info: ClusterInfo | None = attrs.field(default=None, init=False, repr=False)
    _transport: Any = attrs.field(default=None, init=False, repr=False)
    _address: str | None = attrs.field(default=None, init=False, repr=False)
    _server_state: dict[str, Any] | None = attrs.field(default=None, init=False, repr=False)
    _bootstrap_lock: threading.Lock = attrs.field(factory=threading.Lock, init=False, repr=False)

    # --- machines ------------------------------------------------------------------------------

    @property
    def cluster_info(self) -> ClusterInfo:
        """Where the machines are; brings them up through the provisioner when not known yet."""
        if self._cluster_info is None:
            self._cluster_info = self.host.provisioner(self.provisioner)().up(self)
        return self._cluster_info

    def up(self) -> "RemoteCluster":
        self._cluster_info = self.host.provisioner(self.provisioner)().up(self)
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

    def _setup_dir(self) -> str:
        return self.remote_dir

    def down(self) -> None:
        """Stop the server and let the provisioner take the machines down."""
        self.stop_server()
        self.host.provisioner(self.provisioner)().down(self)
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # --- server --------------------------------------------------------------------------------

    def _distributions(self) -> list[str]:
        """rh-core plus the plugin distribution that provides the executor, when it is not built in."""
        names = ["rh-core"]
        owner = self.host.registry("executor").owner(self.executor)
        distribution = self.host.distribution_of(owner)
        if distribution and distribution not in names:
            names.append(distribution)
        return names

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

    def _probe(self, transport=None, address: str | None = None) -> dict[str, Any]:
        """One round trip: a machine's Python version, rsync, venv build and running server."""
        transport = transport or self.transport
        address = address or self.cluster_info.head
        (code, out, err), = transport.run([f"python3 -c {shlex.quote(_PROBE)} {shlex.quote(self.remote_dir)}"])
        if code != 0:
            raise ServerStartError(
                f"{self._where(address)} has no working python3 on the PATH of its SSH sessions (exit {code}: {err.strip()[-500:]}); "
                "install Python 3 there (e.g. `apt-get install -y python3 python3-venv`)"
            )
        probe = json.loads(out.strip().splitlines()[-1])
        ours = serialize.python_version()
        if probe["python"] != ours:
            raise VersionMismatchError(
                f"this client runs Python {ours} but python3 on {self._where(address)} is Python {probe['python']}; "
                f"install Python {ours} there, or run the client with Python {probe['python']}"
            )
        return probe

    def install_runtime(self, address: str) -> str:
        """Make sure ``address`` has the client's rh_core and executor plugin in its venv; return that
        venv's python. Used for the head by bootstrap, and by executor plugins for worker nodes."""
        transport = self.transport_to(address)
        probe = self._probe(transport, address)
        self._ensure_venv(transport, address, probe)
        return f"{probe['root']}/venv/bin/python"

    def _ensure_venv(self, transport, address: str, probe: dict[str, Any]) -> str:
        from rh_core.wheels import build_wheelhouse

        wheelhouse = build_wheelhouse(self._distributions(), f"{rh_home()}/wheels")
        if probe["venv_build"] != wheelhouse.build_id:
            venv = shlex.quote(f"{probe['root']}/venv")
            remote_wheels = transport.sync_directory(wheelhouse.path)
            requirements = " ".join(shlex.quote(r) for r in wheelhouse.requirements)
            pip = f"{venv}/bin/python -m pip install --quiet --no-index --find-links {shlex.quote(remote_wheels)}"
            self._run_checked(
                transport,
                f"python3 -m venv {venv} && {pip} --force-reinstall --no-deps {requirements} && "
                f"{pip} {requirements} && echo {wheelhouse.build_id} > {venv}/rh-build-id",
                "installing rh_core", address,
            )
        return wheelhouse.build_id

    def _start_or_find_server(self) -> tuple[str, dict[str, Any] | None]:
        with self._bootstrap_lock:
            head = self.cluster_info.head
            probe = self._probe()
            build_id = self._ensure_venv(self.transport, head, probe)
            state = probe["server"]
            if not (state and state.get("build") == build_id and state.get("executor") == self.executor):
                argv = ["--executor", self.executor]
                for key, value in self.executor_options.items():
                    argv += ["-o", f"{key}={json.dumps(value)}"]
                old_pid = state["pid"] if state else 0
                command = " ".join(shlex.quote(part) for part in [
                    f"{probe['root']}/venv/bin/python", "-c", _START, f"{probe['root']}/server",
                    build_id, head, str(old_pid), *argv])
                started = json.loads(self._run_checked(self.transport, command, "starting the server", head)
                                     .strip().splitlines()[-1])
                if not started["ok"]:
                    raise ServerStartError(
                        f"the server on {self._where(head)} exited with code {started['code']} while starting; "
                        f"its log ends with:\n{started['log']}"
                    )
                state = started["state"]
            host, port = self.transport.forward(state["port"])
            self._server_state = state
            self._address = f"tcp://{host}:{port}"
            return self._address, state

    def _liveness(self) -> str | None:
        from rh_core.client import ping

        if self._address is None:
            return "not connected"
        if ping(self._address, timeout=2.0) is None:
            pid = (self._server_state or {}).get("pid")
            return f"the server on {self._where(self.cluster_info.head)} (pid {pid}) does not answer through its tunnel"
        return None

    def stop_server(self) -> bool:
        """Stop the server on the head machine, if one runs."""
        # Here and not only in down(): what plugins started on the other machines (Ray worker nodes)
        # must not outlive the server, whichever of the two stops it.
        self.host.cluster_teardown(self)
        self._forget_connection()
        state = self._probe()["server"]
        if not state:
            return False
        # Wait until it has exited (a zombie counts as exited): an executor's shutdown can take seconds
        # (Ray's does), and a restart that probed meanwhile would reuse the dying server.
        pid = int(state["pid"])
        self.transport.run([f"kill {pid}; for _ in $(seq 300); do case \"$(ps -o stat= -p {pid})\" in ''|Z*) exit 0;; esac; "
                            f"sleep 0.1; done; kill -9 {pid}"])
        return True

    def restart_server(self) -> None:
        self.stop_server()
        self.connection()


def cluster(
    name: str | None = None,
    *,
    ips: list[str] | None = None,
    ssh_creds: dict[str, Any] | None = None,
    executor: str = "process",
    executor_options: dict[str, Any] | None = None,
    **options: Any,
) -> RemoteCluster:
    """A cluster: hosts you bring (``ips`` and ``ssh_creds``), with ``executor`` running the calls.

    ``ssh_creds`` takes ``ssh_user``, ``ssh_private_key``, ``ssh_port``, ``password``,
    ``passphrase``, ``known_hosts`` and ``trust_new_host`` (see the ssh transport).
    """
    if ips:
        return RemoteCluster(
            name=name or f"byo-{ips[0]}",
            provisioner="byo",
            spec={"ips": list(ips), "ssh_creds": dict(ssh_creds or {}), **options},
            executor=executor,
            executor_options=dict(executor_options or {}),
        )
    # (sky plugin work) on-demand clusters: provider= / instance_type= choose a provisioner here.
    # (names work) a name alone ("~/x", "@/x", "^x") loads a saved or builtin cluster here.
    raise TypeError(
        "rh.cluster needs the hosts to use: rh.cluster(ips=['10.0.0.1'], ssh_creds={'ssh_user': ..., "
        "'ssh_private_key': ...}); use rh.here for this machine"
    )
