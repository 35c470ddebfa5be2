"""The ``ssh`` transport: run commands, sync a directory and open tunnels on a machine over SSH.

paramiko carries commands and SFTP; the system ``ssh``/``rsync`` clients are preferred for tunnels
and syncs when they exist and key authentication is in use, because they are faster.

:class:`SSHTransport` is the Transport plugin; the work is done by its collaborators, one module each:
:mod:`~rh_byo_ssh.connection` (credentials, host keys, connecting and reconnecting; the route
through jump hosts is resolved by :mod:`~rh_byo_ssh.route`), :mod:`~rh_byo_ssh.commands`,
:mod:`~rh_byo_ssh.sync` and :mod:`~rh_byo_ssh.tunnels` (system ssh tunnels in
:mod:`~rh_byo_ssh.ssh_master`). The errors are in :mod:`~rh_byo_ssh.errors`.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from typing import Any, Generic, TypeVar, cast, overload

import paramiko

from rh_byo_ssh.commands import Commands
from rh_byo_ssh.connection import (  # noqa: F401
    DEFAULT_KEY_NAMES,
    GLOBAL_KNOWN_HOSTS,
    Connection,
    quiet_paramiko,
)
from rh_byo_ssh.errors import (
    SSHAuthError,
    SSHConnectError,
    SSHConnectionLostError,
    SSHError,
    SSHForwardError,
    SSHHostKeyError,
    SSHSyncError,
)
from rh_byo_ssh.route import FAST_CIPHERS, KEEPALIVE_SECONDS, MAX_JUMPS  # noqa: F401
from rh_byo_ssh.sync import SFTP_CHANNELS, DirectorySync, SyncStats  # noqa: F401
from rh_byo_ssh.tunnels import Tunnels

# Re-exports, kept for one release: the names in __all__ other than SSHTransport, and the constants
# imported above with "noqa: F401", were defined in this module before it was split by concern;
# tests, plugins and users import them from here. New code imports them from rh_byo_ssh.errors,
# rh_byo_ssh.sync, rh_byo_ssh.route and rh_byo_ssh.connection.
__all__ = [
    "SSHAuthError",
    "SSHConnectError",
    "SSHConnectionLostError",
    "SSHError",
    "SSHForwardError",
    "SSHHostKeyError",
    "SSHSyncError",
    "SSHTransport",
    "SyncStats",
]

DEFAULT_REMOTE_ROOT = "~/.rh"  # synced directories go to <remote_root>/sync

T = TypeVar("T")


class _OnCollaborator(Generic[T]):
    """An attribute of :class:`SSHTransport` kept on one of its collaborators, read and written there."""

    def __init__(self, collaborator: str, attribute: str, doc: str | None = None) -> None:
        self._collaborator = collaborator
        self._attribute = attribute
        self.__doc__ = doc

    @overload
    def __get__(self, transport: None, owner: type | None = None) -> _OnCollaborator[T]: ...
    @overload
    def __get__(self, transport: SSHTransport, owner: type | None = None) -> T: ...
    def __get__(self, transport: SSHTransport | None, owner: type | None = None) -> T | _OnCollaborator[T]:
        if transport is None:
            return self
        return cast(T, getattr(getattr(transport, self._collaborator), self._attribute))

    def __set__(self, transport: SSHTransport, value: T) -> None:
        setattr(getattr(transport, self._collaborator), self._attribute, value)


class SSHTransport:
    """Reaches one machine over SSH: commands and SFTP through one persistent paramiko connection.

    ``host`` may be an alias from the ssh config (``HostName``, ``User``, ``Port``, ``IdentityFile``,
    ``ProxyJump`` and ``ProxyCommand`` are honoured; explicit arguments win, and ``port`` counts as
    explicit when it is not 22). The connection opens on first use and is re-opened on the next
    call after it drops.

    Host keys are checked against ``known_hosts`` (default ``~/.ssh/known_hosts``) and an unknown
    host is rejected. **To trust a new host**, check its fingerprint (printed in the error) and pass
    ``trust_new_host=True`` once: its key is then appended to that file and later connections check
    against it. A *changed* key is always rejected. ``StrictHostKeyChecking accept-new`` (or ``no``)
    in the ssh config counts as ``trust_new_host=True``.

    Keys tried, in order: ``private_key`` (else the config's ``IdentityFile`` entries, else
    ``~/.ssh/id_*``), the ssh-agent when ``use_agent``, then ``password``. ``passphrase`` unlocks an
    encrypted key. ``use_system_ssh=False`` keeps everything inside paramiko (SFTP syncs and
    paramiko tunnels) even where the faster ``ssh``/``rsync`` clients exist. ``remote_root`` is
    where rh keeps its files on the machine (``~`` is the remote home); syncs go to its ``sync/``.
    """

    name = "ssh"

    def __init__(
        self,
        host: str,
        *,
        user: str | None = None,
        port: int = 22,
        private_key: str | os.PathLike[str] | None = None,
        passphrase: str | None = None,
        password: str | None = None,
        use_agent: bool = True,
        known_hosts: str | os.PathLike[str] | None = None,
        trust_new_host: bool = False,
        connect_timeout: float = 10.0,
        ssh_config: str | os.PathLike[str] | None = None,
        use_system_ssh: bool = True,
        remote_root: str = DEFAULT_REMOTE_ROOT,
        option_names: dict[str, str] | None = None,
    ) -> None:
        quiet_paramiko()
        self._connection = Connection(
            host, user=user, port=port, private_key=private_key, passphrase=passphrase, password=password,
            use_agent=use_agent, known_hosts=known_hosts, trust_new_host=trust_new_host,
            connect_timeout=connect_timeout, ssh_config=ssh_config, use_system_ssh=use_system_ssh,
            option_names=option_names,
        )  # fmt: skip
        self._commands = Commands(self._connection)
        self._sync = DirectorySync(self._connection, self._commands, remote_root)
        self._tunnels = Tunnels(self._connection)
        target = self._connection.target
        self.host = self._connection.host
        self.user = target.user
        self.port = target.port
        self.hostname = target.hostname
        # The ssh master runs in its own session: stop it when this object is collected or the
        # program exits. The finalizer holds the (in-place mutated) containers, never self.
        self._finalizer = weakref.finalize(
            self, _release, self._tunnels.forwards, self._connection.clients, self._tunnels.masters
        )

    def __repr__(self) -> str:
        return f"SSHTransport({self._connection.target.label})"

    def __enter__(self) -> SSHTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- the Transport protocol ----------------------------------------------------------------

    def run(self, commands: list[str], *, stream_logs: bool = False) -> list[tuple[int, str, str]]:
        """Run each command in order with the remote user's shell; return ``(code, stdout, stderr)``.

        With ``stream_logs`` the output is echoed live to this process's stdout/stderr as well. A
        command killed by a signal reports code -1. A connection that drops before a command
        starts is re-opened and the command sent once more; one that drops while a command runs
        raises :class:`SSHConnectionLostError` (the command may have run) and the next call
        reconnects.
        """
        return self._commands.run(commands, stream_logs=stream_logs)

    def sync_directory(self, local_path: str) -> str:
        """Mirror ``local_path`` to ``<remote_root>/sync/<name>-<hash>`` on the machine; return that path.

        With the default ``remote_root`` that is ``~/.rh/sync/<name>-<hash>``, ``<name>`` being the
        directory's name and ``<hash>`` a short hash of its absolute local path.

        Which files travel is :func:`rh_core.support.workdir.listing`'s rule: in a git work tree those git
        keeps (``.gitignore`` respected), elsewhere all but what an ``.rhignore`` excludes. Files unchanged in size and mtime are not sent again, and
        files gone locally are deleted there. rsync over the system ssh is used when both ends
        have rsync and key authentication is in use; SFTP otherwise. :attr:`last_sync` tells
        which, and how many files moved.
        """
        return self._sync.sync_directory(local_path)

    def forward(self, remote_port: int, *, local_port: int | None = None) -> tuple[str, int]:
        """Return a local ``(host, port)`` reaching ``127.0.0.1:remote_port`` on the machine.

        Uses the system ``ssh`` client when it exists and key authentication is in use: one
        ``ssh -N`` connection per transport (an OpenSSH ControlMaster) carries every forward, each
        added as ``-L``. Else a paramiko ``direct-tcpip`` forwarder. The same forward is returned
        for the same port while it lives; a dead one is replaced (on the same local port when it is
        still free). A forward dies with the SSH connection carrying it, so a request cut in the
        middle is never silently lost in a tunnel that came back: :meth:`tunnel_problem` says why.
        """
        return self._tunnels.forward(remote_port, local_port=local_port)

    def close_forward(self, remote_port: int) -> None:
        """Let go of the tunnel to ``remote_port``: it closes once every :meth:`forward` that
        returned it has been matched by a close (a user's tunnel to the server's port never closes
        the cluster's own)."""
        self._tunnels.close_forward(remote_port)

    def prepare_forward(self) -> None:
        """Start connecting the system ssh client for tunnels now, without waiting for it, so a
        :meth:`forward` that follows (once the remote port is known) does not wait ~0.2-0.4 s for
        its key exchange. Connects paramiko first (host key and authentication are checked there).
        Does nothing where tunnels go through paramiko."""
        self._tunnels.prepare()

    def tunnel_problem(self, remote_port: int) -> str | None:
        """Why the tunnel to ``remote_port`` can no longer carry traffic (its SSH connection was cut,
        its ssh process exited), or None while it may. Cheap enough to ask every half second."""
        return self._tunnels.problem(remote_port)

    def shell_command(self) -> list[str]:
        """``ssh`` with this transport's user, port, key, known-hosts file and jump hosts, for a terminal."""
        return self._connection.system_ssh.shell_command()

    def ssh_config_entry(self, alias: str) -> str:
        """A ``Host alias`` block for an OpenSSH config file that reaches the machine the way this
        transport does (user, port, keys, known-hosts file, jump hosts), so ``ssh alias`` works."""
        return self._connection.system_ssh.config_entry(alias)

    def close(self) -> None:
        """Stop every forward and close the connection (a later call opens a new one)."""
        self._tunnels.close()
        self._connection.close()

    # --- extras --------------------------------------------------------------------------------

    @property
    def forward_kinds(self) -> dict[int, str]:
        """``{remote_port: "ssh" | "paramiko"}`` for the live forwards: which tunnel each one uses."""
        return self._tunnels.kinds

    @property
    def route(self) -> list[str]:
        """The hops to the machine as ``user@alias (hostname:port)``: jump hosts first, the machine last."""
        return [hop.label for hop in self._connection.chain]

    @property
    def paramiko_transport(self) -> paramiko.Transport:
        """The underlying paramiko transport to the machine, connecting if needed."""
        return self._connection.transport()

    # Attributes that lived on the transport before the split now live on the collaborator that
    # uses them; these read and write them there, so setting one on a transport still takes effect.
    last_sync: _OnCollaborator[SyncStats | None] = _OnCollaborator(
        "_sync", "last_sync", "What the last :meth:`sync_directory` did (a :class:`SyncStats`), or None."
    )
    remote_root: _OnCollaborator[str] = _OnCollaborator(
        "_sync", "remote_root", "Where rh keeps its files on the machine; syncs go to its ``sync/``."
    )
    known_hosts: _OnCollaborator[str] = _OnCollaborator(
        "_connection", "known_hosts", "The known-hosts file host keys are checked against."
    )
    trust_new_host: _OnCollaborator[bool] = _OnCollaborator(
        "_connection", "trust_new_host", "Whether an unknown host key is trusted and recorded."
    )
    # For tests that switch a cluster's transport to paramiko only, or reach a port's live forward.
    _use_system_ssh: _OnCollaborator[bool] = _OnCollaborator("_connection", "use_system_ssh")
    _forwards: _OnCollaborator[dict[int, Any]] = _OnCollaborator("_tunnels", "forwards")


def _release(forwards: dict[int, Any], clients: list[paramiko.SSHClient], masters: list[Any]) -> None:
    """Stop forwards and close connections: the finalizer of an :class:`SSHTransport`."""
    for forward in list(forwards.values()):
        with contextlib.suppress(Exception):
            forward.close()
    forwards.clear()
    for master in list(masters):
        with contextlib.suppress(Exception):
            master.close()
    masters.clear()
    for client in reversed(clients):
        with contextlib.suppress(Exception):
            client.close()
    clients.clear()
