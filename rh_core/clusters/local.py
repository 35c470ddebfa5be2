"""The embedded local cluster: a server on this machine (``rh.here``)."""

from __future__ import annotations

import fcntl
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from rh_core import __version__
from rh_core.client.connection import LINK_SCHEME, read_secret
from rh_core.errors import (
    ServerStartError,
)
from rh_core.support.files import open_private, private_directory, read_private
from rh_core.support.processes import (
    LaunchError,
    is_live_server,
    launch,
    pid_alive,
    stop_process,
    tail,
    wait_ready,
)
from rh_core.plugin.interfaces import keep_marker
from rh_core.support.paths import rh_home
from rh_core.support.redact import secrets_hidden

from rh_core.clusters.base import Cluster

if TYPE_CHECKING:
    import subprocess

    from rh_core.clusters.status import ClusterStatus

SERVER_START_TIMEOUT = 120.0  # Ray on 2 busy cores can take this long

@attrs.define(eq=False)
class LocalCluster(Cluster):
    """A server on this machine, shared by every client process that uses the same state dir.

    ``executor=None`` uses whichever executor the running server has, starting ``process`` if
    none runs; naming one that differs from the running server's is an error.
    """

    name: str = "here"
    _state_dir: str | None = attrs.field(default=None, alias="state_dir")
    executor: str | None = None
    executor_options: dict[str, Any] = attrs.field(factory=dict, repr=secrets_hidden)
    _server_pid: int | None = attrs.field(default=None, init=False, repr=False)
    _child: subprocess.Popen | None = attrs.field(default=None, init=False, repr=False)

    @property
    def transport(self):
        return self.host.transport("local")()

    def config(self) -> dict[str, Any]:
        return {"kind": "local", "name": self.name, "state_dir": self.state_dir, "executor": self.executor,
                "executor_options": self.executor_options}

    @property
    def state_dir(self) -> str:
        """``state_dir`` if given, else ``$RH_HOME/local`` (read when first needed, not at import)."""
        return self._state_dir or os.path.join(rh_home(), "local")

    def _setup_dir(self) -> str:
        return self.state_dir

    @property
    def shm_prefix(self) -> str | None:
        from rh_core.wire.shm import prefix_for

        self.connection()
        return prefix_for(self._info["pid"]) if self._info.get("shm") else None

    @property
    def state_file(self) -> str:
        return os.path.join(self.state_dir, "server.json")

    @property
    def log_file(self) -> str:
        return os.path.join(self.state_dir, "server.log")

    def read_state(self) -> dict[str, Any] | None:
        """The running server's record, or None when no live server has one. A record that is not
        ours alone raises :class:`UntrustedPathError`: another user may have planted it."""
        try:
            state = json.loads(read_private(self.state_file) or b"null")
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) and is_live_server(state) else None

    def _start_or_find_server(self) -> tuple[str, dict[str, Any] | None]:
        private_directory(self.state_dir)  # ours, closed to others, before anything in it is trusted
        with os.fdopen(open_private(os.path.join(self.state_dir, "start.lock"), os.O_RDWR | os.O_CREAT)) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time across processes
            state = self.read_state()
            if state is not None and state.get("version") != __version__:
                self._stop_pid(state["pid"])  # started by another rh_core version: replace it
                state = None
            if state is not None and self.executor and state.get("executor") != self.executor:
                raise ServerStartError(
                    f"the local server (pid {state['pid']}) runs the {state.get('executor')!r} executor, "
                    f"not {self.executor!r}; stop it first with `rh server stop` or cluster.restart_server()"
                )
            if state is None:
                state = self._launch()
        self._server_pid = state["pid"]
        state = {**state, "secret": read_secret(self.state_dir)}
        return LINK_SCHEME + state["link"], state  # the quickest way in for a client on the server's machine

    def _launch(self) -> dict[str, Any]:
        from rh_core.config import server_arguments

        command = [sys.executable, "-m", "rh_core.server", "--state-dir", self.state_dir,
                   "--executor", self.executor or "process", *server_arguments()]
        for key, value in self.executor_options.items():
            command += ["-o", f"{key}={json.dumps(value)}"]
        child = launch(command, self.log_file, private_log=True)
        # Load the plugins while the server starts: the connection needs them next (rh_cluster_ready).
        self.host  # noqa: B018

        def its_state(child: Any) -> dict[str, Any] | None:
            state = self.read_state()
            return state if state is not None and state.get("pid") == child.pid else None

        try:
            state = wait_ready(child, its_state, timeout=SERVER_START_TIMEOUT, log_path=self.log_file, interval=0.005)
        except LaunchError as exc:
            if exc.exited:
                raise ServerStartError(
                    f"the local server exited with code {child.returncode} while starting; "
                    f"its log ({self.log_file}) ends with:\n{tail(self.log_file)}"
                ) from None
            child.kill()
            raise ServerStartError(
                f"the local server did not come up within {SERVER_START_TIMEOUT:.0f} s; "
                f"its log ({self.log_file}) ends with:\n{tail(self.log_file)}"
            ) from None
        self._child = child
        return state

    def _liveness(self) -> str | None:
        pid = self._server_pid
        if self._child is not None and self._child.pid == pid:
            code = self._child.poll()  # we started it: reap it, so it cannot linger as a zombie
            if code is not None:
                return f"the server process (pid {pid}) exited with code {code}"
            return None
        if not pid_alive(pid):
            return f"the server process (pid {pid}) is gone"
        return None

    def stop_server(self) -> bool:
        """Stop the local server if one runs; True when one was stopped."""
        self._forget_connection()
        state = self.read_state()
        if state is not None:
            self._stop_pid(state["pid"])
        # After it has gone (or was found gone): plugins stop what they started beside it, also
        # when it was killed or had crashed before it could.
        self.host.cluster_teardown(self)
        return state is not None

    def _stop_pid(self, pid: int, grace: float = 10.0) -> None:
        owned = self._child is not None and self._child.pid == pid  # ours: reaped, not left a zombie
        stop_process(self._child if owned else pid, grace=grace)

    def restart_server(self, restart_ray: bool | None = None, *, keep: Sequence[str] = ()) -> None:
        """Stop the server and start a new one; ``keep`` as :meth:`Cluster.restart_server` says."""
        executor = self.executor or (self.read_state() or {}).get("executor") or "process"
        for thing in self._kept_on_restart(executor, keep, restart_ray):
            private_directory(self.state_dir)
            os.close(open_private(keep_marker(self.state_dir, thing), os.O_WRONLY | os.O_CREAT))
        self.stop_server()
        self.connection()

    def down(self) -> None:
        """For the local cluster, down means its server stops."""
        self.stop_server()

    def up(self) -> LocalCluster:
        """Start the server if none runs (the machine itself is always up)."""
        self.connection()
        return self

    def config_for_saving(self) -> dict[str, Any]:
        # The default state dir is the loading user's own $RH_HOME/local, not this user's path.
        return {**self.config(), "state_dir": self._state_dir}

    def refresh_status(self) -> ClusterStatus:
        from rh_core.client.connection import ping, read_secret
        from rh_core.clusters.status import ClusterStatus

        state = self.read_state()
        info = None
        if state is not None:
            info = ping(state.get("local_endpoint") or f"tcp://127.0.0.1:{state['port']}", timeout=5.0,
                        secret=read_secret(self.state_dir))
        if self.saved_name:
            start, stop = f"`rh up {self.saved_name}`", f"`rh down {self.saved_name}`"
        elif self._state_dir is None:  # rh.here and its twins
            start, stop = "`rh server start`", "`rh server stop`"
        else:
            start, stop = "cluster.up()", "cluster.down()"
        if info is not None:
            server = {key: value for key, value in info.items() if key not in ("id", "kind")}
            explanation = (f"The server (pid {server['pid']}) answers, with the {server.get('executor')} executor. "
                           f"Its log is {self.log_file}; {stop} stops it.")
        elif state is not None:
            server = None
            explanation = (f"A server process (pid {state['pid']}) is alive but does not answer within 5 s; it may be "
                           f"overloaded or stuck. Its log is {self.log_file}; {stop} stops it.")
        else:
            server = None
            last = tail(self.log_file, 5).rstrip() if os.path.exists(self.log_file) else ""
            explanation = (f"No server runs for this cluster (state dir {self.state_dir}). It starts on the first "
                           f"call, or with {start}."
                           + (f" The end of its last log ({self.log_file}):\n{last}" if last else ""))
        self._last_status = ClusterStatus(name=self.saved_name or self.name, kind="local", machines="up", server=server,
                                          explanation=explanation)
        return self._last_status


here = LocalCluster()
