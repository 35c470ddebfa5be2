"""The ``ssh`` transport: run commands, sync a directory and open tunnels on a machine over SSH.

paramiko carries commands and SFTP; the system ``ssh``/``rsync`` clients are preferred for tunnels
and syncs when they exist and key authentication is in use, because they are faster.
"""

from __future__ import annotations

import base64
import codecs
import concurrent.futures
import contextlib
import dataclasses
import getpass
import hashlib
import logging
import math
import os
import posixpath
import re
import select
import shlex
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import IO, Any, TypeVar

import paramiko
from rh_core.support import workdir
from rh_core.support.workdir import Listing

from rh_byo_ssh.errors import (
    SSHAuthError,
    SSHConnectError,
    SSHConnectionLostError,
    SSHError,
    SSHForwardError,
    SSHHostKeyError,
    SSHSyncError,
)
from rh_byo_ssh.errors import SystemSSHFailed as _SystemSSHFailed
from rh_byo_ssh.errors import describe as _describe

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

logger = logging.getLogger(__name__)


def _quiet_paramiko() -> None:
    """Keep paramiko's log lines (INFO for every connection, ERROR with a traceback for failures we
    raise as SSHErrors naming the cause and the fix) off the user's stderr, unless they asked for
    them: a level they set on the ``paramiko`` logger is left alone."""
    paramiko_logger = logging.getLogger("paramiko")
    if paramiko_logger.level == logging.NOTSET:
        paramiko_logger.setLevel(logging.CRITICAL)
    paramiko_logger.addHandler(logging.NullHandler())  # never Python's last-resort handler either

KEEPALIVE_SECONDS = 15
DEFAULT_REMOTE_ROOT = "~/.rh"  # synced directories go to <remote_root>/sync
# AES-GCM first: on machines without AES-NI chacha20 wins, so it stays in the list (RPC-FLOORS.md).
FAST_CIPHERS = "aes128-gcm@openssh.com,chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-ctr"
DEFAULT_KEY_NAMES = ("id_rsa", "id_ecdsa", "id_ed25519", "id_dsa")
GLOBAL_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"
MAX_JUMPS = 8
SFTP_CHANNELS = 4  # parallel uploads in the SFTP fallback

T = TypeVar("T")


# -------------------------------------------------------------------------------------------------
# Where to connect


@dataclasses.dataclass(frozen=True)
class _Hop:
    """One machine on the way (jump hosts, then the target), resolved through the ssh config."""

    alias: str
    hostname: str
    port: int
    user: str
    keys: tuple[str, ...]
    proxy_command: str | None = None

    @property
    def label(self) -> str:
        where = f"{self.user}@{self.alias}"
        if self.alias != self.hostname or self.port != 22:
            where += f" ({self.hostname}:{self.port})"
        return where

    @property
    def known_hosts_name(self) -> str:
        # The name paramiko and OpenSSH both record a host key under.
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    @property
    def ssh_destination(self) -> str:
        return f"[{self.hostname}]" if ":" in self.hostname else self.hostname


@dataclasses.dataclass(frozen=True)
class SyncStats:
    """What the last :meth:`SSHTransport.sync_directory` did: ``method`` is ``"rsync"`` or ``"sftp"``."""

    method: str
    remote_path: str
    uploaded: int
    deleted: int
    files: int


# -------------------------------------------------------------------------------------------------
# The transport


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
        _quiet_paramiko()
        # How errors name an option: as the caller wrote it (the byo provisioner maps private_key to
        # ssh_creds['ssh_private_key']), else as this class's own keyword argument.
        self._option_names = dict(option_names or {})
        if "@" in host:
            host_user, host = host.rsplit("@", 1)
            user = user or host_user
        self.host = host
        self._passphrase = passphrase
        self._password = password
        self._use_agent = use_agent
        self._connect_timeout = float(connect_timeout)
        self._use_system_ssh = use_system_ssh
        self.remote_root = remote_root
        self._config = _load_ssh_config(ssh_config)
        target_config = self._config.lookup(host) if self._config else {}

        if known_hosts is None and target_config.get("userknownhostsfile"):
            known_hosts = target_config["userknownhostsfile"].split()[0]
        self.known_hosts = os.path.abspath(os.path.expanduser(known_hosts or "~/.ssh/known_hosts"))
        strict = str(target_config.get("stricthostkeychecking", "")).lower()
        self.trust_new_host = trust_new_host or strict in ("accept-new", "no", "off")

        if private_key is not None:
            private_key = os.path.abspath(os.path.expanduser(os.fspath(private_key)))
            if not os.path.isfile(private_key):
                raise SSHAuthError(
                    f"ssh {user or getpass.getuser()}@{host}: private key {private_key} does not exist; "
                    f"set {self._named('private_key')} to the path of a key whose public half is in "
                    f"~/.ssh/authorized_keys on {host}"
                )
        self._explicit_key = private_key
        target = self._resolve_hop(host, user=user, port=port if port != 22 else None, keys=private_key)
        self._chain = self._resolve_jumps(target, target_config, depth=0) + [target]
        self.user = target.user
        self.port = target.port
        self.hostname = target.hostname

        self._lock = threading.RLock()  # guards the connection (clients, sftp)
        self._sync_lock = threading.Lock()
        self._forward_lock = threading.Lock()
        self._clients: list[paramiko.SSHClient] = []
        self._key_auth = False
        self._sftp: paramiko.SFTPClient | None = None
        self._sftp_transport: paramiko.Transport | None = None
        self._remote_home: str | None = None
        self._remote_rsync: bool | None = None
        self._system_ssh_broken: str | None = None
        self._forwards: dict[int, _MuxForward | _ChannelForward] = {}
        self._forward_users: dict[int, int] = {}  # remote port -> forward() calls not yet closed
        self._masters: list[_Master] = []  # the ssh ControlMaster carrying the system tunnels (0 or 1)
        self.last_sync: SyncStats | None = None
        # The ssh master runs in its own session: stop it when this object is collected or the
        # program exits. The finalizer holds the (in-place mutated) containers, never self.
        self._finalizer = weakref.finalize(self, _release, self._forwards, self._clients, self._masters)

    def __repr__(self) -> str:
        return f"SSHTransport({self._chain[-1].label})"

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
        if isinstance(commands, str):  # a lone string would otherwise run letter by letter
            commands = [commands]
        return [self._run_one(command, stream_logs) for command in commands]

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
        source = os.path.abspath(os.path.expanduser(os.fspath(local_path)))
        if not os.path.isdir(source):
            raise SSHSyncError(f"{self._where()}: cannot sync {source}: it is not a local directory")
        digest = hashlib.sha256(source.encode("utf-8", "surrogateescape")).hexdigest()[:12]
        name = f"{_safe_name(os.path.basename(source) or 'root')}-{digest}"
        listing = workdir.listing(source)  # the one rule for which files travel
        with self._sync_lock:
            stats = None
            if self._system_ssh_usable() and shutil.which("rsync") and self._remote_has_rsync():
                try:
                    stats = self._rsync(source, listing, name)
                except _SystemSSHFailed as exc:
                    self._system_ssh_failed(str(exc))
            if stats is None:
                stats = self._retry_if_lost("sync", lambda transport: self._sftp_sync(transport, source, listing, name))
            self.last_sync = stats
        return stats.remote_path

    def forward(self, remote_port: int, *, local_port: int | None = None) -> tuple[str, int]:
        """Return a local ``(host, port)`` reaching ``127.0.0.1:remote_port`` on the machine.

        Uses the system ``ssh`` client when it exists and key authentication is in use: one
        ``ssh -N`` connection per transport (an OpenSSH ControlMaster) carries every forward, each
        added as ``-L``. Else a paramiko ``direct-tcpip`` forwarder. The same forward is returned
        for the same port while it lives; a dead one is replaced (on the same local port when it is
        still free). A forward dies with the SSH connection carrying it, so a request cut in the
        middle is never silently lost in a tunnel that came back: :meth:`tunnel_problem` says why.
        """
        remote_port = int(remote_port)
        with self._forward_lock:
            current = self._forwards.get(remote_port)
            if current is not None and current.alive() and local_port in (None, current.address[1]):
                self._forward_users[remote_port] = self._forward_users.get(remote_port, 0) + 1
                return current.address
            previous_port = local_port or (current.address[1] if current is not None else None)
            if current is not None:
                current.close()
            forward: _MuxForward | _ChannelForward | None = None
            connection = self._transport()  # connect now, so a bad host or key fails here rather than in a pump thread
            if self._system_ssh_usable():
                try:
                    forward = _MuxForward.start(self._ready_master(), remote_port, prefer_port=previous_port)
                except _SystemSSHFailed as exc:
                    self._system_ssh_failed(str(exc))
            if forward is None:
                try:
                    forward = _ChannelForward(
                        connection,
                        lambda peer: self._open_forward_channel(connection, remote_port, peer),
                        remote_port,
                        prefer_port=previous_port,
                        describe=f"{self._where()}: forward to port {remote_port}",
                    )
                except OSError as exc:
                    raise SSHForwardError(
                        f"{self._where()}: cannot listen on a local port for the tunnel to port "
                        f"{remote_port} ({_describe(exc)}); check this machine's open-file and port limits"
                    ) from exc
            if local_port is not None and forward.address[1] != local_port:
                forward.close()
                raise SSHForwardError(
                    f"{self._where()}: local port {local_port} is taken, so the tunnel to port {remote_port} "
                    "cannot listen there; free it or leave local_port out to get a free port"
                )
            self._forwards[remote_port] = forward
            self._forward_users[remote_port] = self._forward_users.get(remote_port, 0) + 1
            return forward.address

    def close_forward(self, remote_port: int) -> None:
        """Let go of the tunnel to ``remote_port``: it closes once every :meth:`forward` that
        returned it has been matched by a close (a user's tunnel to the server's port never closes
        the cluster's own)."""
        remote_port = int(remote_port)
        with self._forward_lock:
            users = self._forward_users.get(remote_port, 0) - 1
            if users > 0:
                self._forward_users[remote_port] = users
                return
            self._forward_users.pop(remote_port, None)
            forward = self._forwards.pop(remote_port, None)
        if forward is not None:
            forward.close()

    def prepare_forward(self) -> None:
        """Start connecting the system ssh client for tunnels now, without waiting for it, so a
        :meth:`forward` that follows (once the remote port is known) does not wait ~0.2-0.4 s for
        its key exchange. Connects paramiko first (host key and authentication are checked there).
        Does nothing where tunnels go through paramiko."""
        with self._forward_lock:
            if self._masters and self._masters[0].alive():
                return
            if not self._system_ssh_usable():
                return
            try:
                self._start_master()
            except _SystemSSHFailed as exc:  # forward() tries again and then falls back to paramiko
                logger.info("%s: could not start the ssh client for tunnels: %s", self._where(), exc)

    def tunnel_problem(self, remote_port: int) -> str | None:
        """Why the tunnel to ``remote_port`` can no longer carry traffic (its SSH connection was cut,
        its ssh process exited), or None while it may. Cheap enough to ask every half second."""
        forward = self._forwards.get(int(remote_port))
        if forward is None:
            return f"no tunnel to port {remote_port} is open"
        return forward.problem()

    def shell_command(self) -> list[str]:
        """``ssh`` with this transport's user, port, key, known-hosts file and jump hosts, for a terminal."""
        return [*self._ssh_command(len(self._chain) - 1), self._chain[-1].ssh_destination]

    def ssh_config_entry(self, alias: str) -> str:
        """A ``Host alias`` block for an OpenSSH config file that reaches the machine the way this
        transport does (user, port, keys, known-hosts file, jump hosts), so ``ssh alias`` works."""
        hop = self._chain[-1]
        lines = [f"Host {alias}", f"  HostName {hop.hostname}", f"  Port {hop.port}", f"  User {hop.user}",
                 f"  UserKnownHostsFile {_config_quote(self.known_hosts)}"]
        lines += [f"  IdentityFile {_config_quote(key)}" for key in hop.keys]
        if hop.keys:
            lines.append("  IdentitiesOnly yes")
        if len(self._chain) > 1:
            previous = self._chain[-2]
            jump = shlex.join(self._ssh_command(len(self._chain) - 2) + ["-W", "%h:%p", previous.ssh_destination])
            lines.append(f"  ProxyCommand {jump}")
        elif hop.proxy_command:
            lines.append(f"  ProxyCommand {hop.proxy_command}")
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        """Stop every forward and close the connection (a later call opens a new one)."""
        with self._forward_lock:
            forwards = list(self._forwards.values())
            self._forwards.clear()
            self._forward_users.clear()
            masters = list(self._masters)
            self._masters.clear()
        for forward in forwards:
            forward.close()
        for master in masters:
            master.close()
        with self._lock:
            self._disconnect_locked()

    # --- extras --------------------------------------------------------------------------------

    @property
    def forward_kinds(self) -> dict[int, str]:
        """``{remote_port: "ssh" | "paramiko"}`` for the live forwards: which tunnel each one uses."""
        with self._forward_lock:
            return {port: forward.kind for port, forward in self._forwards.items() if forward.alive()}

    @property
    def route(self) -> list[str]:
        """The hops to the machine as ``user@alias (hostname:port)``: jump hosts first, the machine last."""
        return [hop.label for hop in self._chain]

    @property
    def paramiko_transport(self) -> paramiko.Transport:
        """The underlying paramiko transport to the machine, connecting if needed."""
        return self._transport()

    # --- connection ----------------------------------------------------------------------------

    def _where(self) -> str:
        return f"ssh {self._chain[-1].label}"

    def _named(self, option: str, assign: str = "") -> str:
        """An option as the caller spelled it: ``ssh_creds['ssh_port']`` for a BYO cluster, ``port=``;
        ``assign="="`` ends either with ``=``, for a value to follow."""
        named = self._option_names.get(option)
        return named + assign if named else f"{option}="

    def _transport(self) -> paramiko.Transport:
        """The target's active paramiko transport; connects (again) when there is none."""
        with self._lock:
            transport = self._clients[-1].get_transport() if self._clients else None
            if transport is None or not transport.is_active():
                self._disconnect_locked()
                self._connect_locked()
                transport = self._clients[-1].get_transport()
                assert transport is not None
            return transport

    def _connect_locked(self) -> None:
        clients: list[paramiko.SSHClient] = []
        sock: Any = None
        try:
            for index, hop in enumerate(self._chain):
                if index == 0 and hop.proxy_command:
                    sock = paramiko.ProxyCommand(hop.proxy_command)
                client = self._connect_hop(hop, sock, is_target=index == len(self._chain) - 1)
                clients.append(client)
                if index + 1 < len(self._chain):
                    sock = self._open_jump_channel(client, hop, self._chain[index + 1])
        except BaseException:
            for client in reversed(clients):
                client.close()
            raise
        self._clients[:] = clients
        self._key_auth = all(
            getattr(getattr(client.get_transport(), "auth_handler", None), "auth_method", "") == "publickey"
            for client in clients
        )

    def _connect_hop(self, hop: _Hop, sock: Any, *, is_target: bool) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        # Both files are only read: a trusted new key is appended to known_hosts by the policy,
        # which keeps the user's comments and hashed entries intact (paramiko's save would not).
        for path in (GLOBAL_KNOWN_HOSTS, self.known_hosts):
            if os.path.isfile(path):
                try:
                    client.load_system_host_keys(path)
                except Exception as exc:  # paramiko's InvalidHostKey is not an SSHException
                    if path == GLOBAL_KNOWN_HOSTS:
                        logger.info("ignoring the unreadable %s: %s", path, exc)
                        continue
                    raise SSHHostKeyError(
                        f"{self._where()}: cannot read the known hosts file {path} ({_describe(exc)}); "
                        f"fix the line it names, or set {self._named('known_hosts')} to another file"
                    ) from exc
        client.set_missing_host_key_policy(_HostKeyPolicy(self.known_hosts, self.trust_new_host, self._where(),
                                                          self._named("trust_new_host", "=")))
        timeout = self._connect_timeout
        started = time.monotonic()
        try:
            client.connect(
                hop.hostname,
                port=hop.port,
                username=hop.user,
                key_filename=list(hop.keys) or None,  # type: ignore[arg-type]  # a list works too
                passphrase=self._passphrase,
                password=self._password if is_target else None,
                allow_agent=self._use_agent,
                look_for_keys=not hop.keys,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                channel_timeout=timeout,
                sock=sock,
            )
        except SSHError:
            client.close()
            raise
        except Exception as exc:
            client.close()
            # paramiko reports a banner or auth timeout as assorted SSHExceptions ("No existing
            # session", ...); the clock tells a timeout apart.
            timed_out = time.monotonic() - started >= timeout * 0.95
            raise self._connect_error(hop, exc, is_target=is_target, timed_out=timed_out) from exc
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(KEEPALIVE_SECONDS)
        if isinstance(transport.sock, socket.socket):
            # Small RPC frames through tunnels must not wait for Nagle's delayed ACKs.
            with contextlib.suppress(OSError):
                transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client

    def _open_jump_channel(self, client: paramiko.SSHClient, hop: _Hop, nxt: _Hop) -> paramiko.Channel:
        transport = client.get_transport()
        assert transport is not None
        try:
            return transport.open_channel(
                "direct-tcpip", (nxt.hostname, nxt.port), ("127.0.0.1", 0), timeout=self._connect_timeout
            )
        except Exception as exc:
            raise SSHConnectError(
                f"{self._where()}: jump host {hop.label} could not open a connection to "
                f"{nxt.hostname}:{nxt.port} ({_describe(exc)}); check that {nxt.hostname}:{nxt.port} is "
                f"reachable from {hop.hostname} and that its sshd allows TCP forwarding (AllowTcpForwarding yes)"
            ) from exc

    def _connect_error(self, hop: _Hop, exc: BaseException, *, is_target: bool, timed_out: bool = False) -> SSHError:
        """Turn a paramiko/socket failure into an error that names the host, user, cause and fix."""
        where = self._where() if is_target else f"{self._where()}: jump host {hop.label}"
        timeout = f"{self._connect_timeout:g}s"
        if isinstance(exc, paramiko.BadHostKeyException):
            return SSHHostKeyError(
                f"{where}: the host key of {hop.known_hosts_name} has CHANGED: it is "
                f"{exc.key.get_name()} {_fingerprint(exc.key)}, but {self.known_hosts} records "
                f"{_fingerprint(exc.expected_key)}. This can be a reinstalled machine or someone "
                f"intercepting the connection; once you have verified the new key, remove the old one "
                f"with `ssh-keygen -f {shlex.quote(self.known_hosts)} -R {shlex.quote(hop.known_hosts_name)}`"
            )
        if isinstance(exc, paramiko.PasswordRequiredException):
            return SSHAuthError(
                f"{where}: the private key {_keys_text(hop.keys) or 'found'} is encrypted; set "
                f"{self._named('passphrase')}, or add the key to your ssh-agent (`ssh-add KEY`)"
            )
        if self._passphrase is not None and isinstance(exc, paramiko.SSHException) and any(
            said in str(exc) for said in ("checkints do not match", "Invalid key", "bad decrypt", "Bad decrypt")
        ):
            return SSHAuthError(
                f"{where}: the passphrase given ({self._named('passphrase')}) does not unlock the private key "
                f"{_keys_text(hop.keys) or 'found'} ({_describe(exc)}); check it, e.g. with "
                f"`ssh-keygen -y -f {_keys_text(hop.keys) or 'KEY'}`"
            )
        if isinstance(exc, paramiko.AuthenticationException) or (
            isinstance(exc, paramiko.SSHException) and "No authentication methods" in str(exc)
        ):
            tried = self._credentials_tried(hop, is_target)
            return SSHAuthError(
                f"{where}: the server refused authentication as {hop.user!r} ({_describe(exc)}); "
                f"tried {tried}. Check that the public half of one of these keys is in "
                f"~{hop.user}/.ssh/authorized_keys on {hop.hostname}, or set {self._named('private_key')} "
                f"(and {self._named('user')} if {hop.user!r} is the wrong account)"
            )
        if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError) or isinstance(exc, ConnectionRefusedError):
            return SSHConnectError(
                f"{where}: connection refused on {hop.hostname}:{hop.port}: the port is closed. Check that "
                f"sshd runs on the machine and listens on port {hop.port} (set {self._named('port')}, or Port in the ssh config)"
            )
        if isinstance(exc, socket.gaierror):
            return SSHConnectError(
                f"{where}: the name {hop.hostname!r} does not resolve ({exc.strerror}); check the host name "
                f"or add a HostName for it in the ssh config"
            )
        if timed_out or isinstance(exc, TimeoutError) or "timed out" in str(exc) or "banner" in str(exc):
            return SSHConnectError(
                f"{where}: no SSH answer from {hop.hostname}:{hop.port} within {timeout} ({_describe(exc)}). "
                f"Check that the machine is up, that the address and port are right and that no firewall "
                f"drops the traffic, or raise {self._named('connect_timeout')}"
            )
        if isinstance(exc, EOFError) or isinstance(exc, paramiko.SSHException):
            return SSHConnectError(
                f"{where}: the SSH handshake with {hop.hostname}:{hop.port} failed ({_describe(exc)}); check "
                f"that port {hop.port} is an SSH server and look in its sshd log"
            )
        if isinstance(exc, OSError):
            return SSHConnectError(
                f"{where}: cannot reach {hop.hostname}:{hop.port} ({_describe(exc)}); check the network "
                f"path to the machine and that it is up"
            )
        return SSHConnectError(f"{where}: connecting failed: {_describe(exc)}")

    def _credentials_tried(self, hop: _Hop, is_target: bool) -> str:
        tried = []
        keys = list(hop.keys) or [
            path for name in DEFAULT_KEY_NAMES if os.path.isfile(path := os.path.expanduser(f"~/.ssh/{name}"))
        ]
        if keys:
            tried.append(f"key file(s) {_keys_text(keys)}")
        else:
            tried.append("no key file (none given and no ~/.ssh/id_* found)")
        if self._use_agent and os.environ.get("SSH_AUTH_SOCK"):
            tried.append("the keys in the ssh-agent")
        if self._password is not None and is_target:
            tried.append("the password")
        return ", ".join(tried)

    def _disconnect_locked(self) -> None:
        if self._sftp is not None:
            with contextlib.suppress(Exception):
                self._sftp.close()
        self._sftp = self._sftp_transport = None
        for client in reversed(self._clients):
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()

    def _drop(self, transport: paramiko.Transport) -> None:
        """Forget the connection ``transport`` belongs to, if it is still the current one."""
        with self._lock:
            if self._clients and self._clients[-1].get_transport() is transport:
                self._disconnect_locked()

    @staticmethod
    def _is_lost(transport: paramiko.Transport, exc: BaseException) -> bool:
        if not transport.is_active() or isinstance(exc, (EOFError, OSError)):
            return True
        # A channel that never opens on a live-looking transport means the peer is gone silently.
        return "Timeout opening channel" in str(exc) or "session not active" in str(exc)

    def _retry_if_lost(self, what: str, operation: Callable[[paramiko.Transport], T]) -> T:
        """Run an idempotent ``operation``; after a dropped connection reconnect and run it once more."""
        for attempt in (1, 2):
            transport = self._transport()
            try:
                return operation(transport)
            except SSHError:
                raise
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if not self._is_lost(transport, exc):
                    raise
                self._drop(transport)
                if attempt == 2:
                    raise SSHConnectionLostError(
                        f"{self._where()}: the connection dropped during {what}, twice ({_describe(exc)}); "
                        f"check the network and the machine's sshd log"
                    ) from exc
                logger.info("%s: connection dropped during %s (%s); reconnecting", self._where(), what, exc)
        raise AssertionError("unreachable")

    # --- commands ------------------------------------------------------------------------------

    def _run_one(self, command: str, stream_logs: bool) -> tuple[int, str, str]:
        def open_session(transport: paramiko.Transport) -> tuple[paramiko.Transport, paramiko.Channel]:
            return transport, transport.open_session(timeout=self._connect_timeout)

        # Opening the channel is safe to repeat: the command has not been sent yet.
        transport, channel = self._retry_if_lost(f"starting `{command}`", open_session)
        try:
            channel.exec_command(command)
            channel.shutdown_write()  # the command reads EOF from stdin, like LocalTransport's DEVNULL
            out, err = _collect(channel, stream_logs)
            code = channel.recv_exit_status()
            if code == -1 and (not channel.eof_received or not transport.is_active()):
                raise EOFError("the channel closed without an exit status")
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if not self._is_lost(transport, exc):
                raise SSHError(
                    f"{self._where()}: the server would not run `{command}` ({_describe(exc)}); look for a "
                    f"ForceCommand or command= restriction in its sshd_config or authorized_keys"
                ) from exc
            self._drop(transport)
            raise SSHConnectionLostError(
                f"{self._where()}: the connection dropped while running `{command}` ({_describe(exc)}); "
                f"the command may have run partly or fully, so it is not repeated. The next call "
                f"reconnects; check the machine's sshd log if this repeats"
            ) from exc
        finally:
            channel.close()
        return code, out, err

    def _exec_quiet(self, command: str) -> tuple[int, str, str]:
        return self._run_one(command, False)

    # --- system ssh ----------------------------------------------------------------------------

    def _system_ssh_usable(self) -> bool:
        if not self._use_system_ssh or self._system_ssh_broken is not None:
            return False
        if shutil.which("ssh") is None or self._passphrase is not None:
            return False  # BatchMode ssh cannot ask for a passphrase
        self._transport()  # connect first: checks (or trusts) host keys and tells how auth went
        return self._key_auth

    def _system_ssh_failed(self, reason: str) -> None:
        self._system_ssh_broken = reason
        logger.warning(
            "%s: the system ssh client failed, using paramiko from now on (slower tunnels, SFTP syncs): %s",
            self._where(),
            reason,
        )

    def _ssh_command(self, index: int, *, multiplex: bool = False) -> list[str]:
        """The system ``ssh`` command (without destination) reaching hop ``index`` like paramiko does;
        ``multiplex`` leaves the control-master options to the caller (see :class:`_Master`)."""
        hop = self._chain[index]
        args = [
            "ssh", "-F", "none", "-p", str(hop.port), "-l", hop.user,
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",  # paramiko already checked or trusted the key
            "-o", f"UserKnownHostsFile={_config_quote(self.known_hosts)}",
            "-o", f"ConnectTimeout={max(1, math.ceil(self._connect_timeout))}",
            "-o", f"ServerAliveInterval={KEEPALIVE_SECONDS}", "-o", "ServerAliveCountMax=4",
            *(() if multiplex else ("-o", "ControlMaster=no", "-o", "ControlPath=none")),
            "-o", "Compression=no", "-o", "LogLevel=ERROR",
            "-c", FAST_CIPHERS,
        ]  # fmt: skip
        for key in hop.keys:
            args += ["-i", key]
        if hop.keys:
            args += ["-o", "IdentitiesOnly=yes"]
        if not self._use_agent:
            args += ["-o", "IdentityAgent=none"]
        proxy = None
        if index > 0:
            # Each jump is an ssh -W through the previous hop, built the same way; "%" is escaped
            # because ssh expands %-tokens in ProxyCommand once per level.
            previous = self._chain[index - 1]
            proxy = shlex.join(
                self._ssh_command(index - 1) + ["-W", f"{hop.ssh_destination}:{hop.port}", previous.ssh_destination]
            )
        elif hop.proxy_command:
            proxy = hop.proxy_command
        if proxy:
            args += ["-o", "ProxyCommand=" + proxy.replace("%", "%%")]
        return args

    # --- sync ----------------------------------------------------------------------------------

    def _remote_has_rsync(self) -> bool:
        if self._remote_rsync is None:
            # Markers, because a chatty shell startup file may print around our output.
            code, out, _ = self._exec_quiet(
                "printf '\\n@rh-home=%s@\\n' \"$HOME\"; command -v rsync >/dev/null 2>&1 && printf '@rh-rsync@\\n'"
            )
            home = re.search(r"@rh-home=(.*)@", out)
            if home and home.group(1).startswith("/"):
                self._remote_home = home.group(1)
            self._remote_rsync = "@rh-rsync@" in out and self._remote_home is not None
        return self._remote_rsync

    def _rsync(self, source: str, listing: Listing, name: str) -> SyncStats:
        assert self._remote_home is not None
        remote = self._sync_path(self._remote_home, name)
        target = self._chain[-1]
        args = [
            "rsync", "-az", "--delete", "--out-format=%i %n",
            "-e", shlex.join(self._ssh_command(len(self._chain) - 1)),
            # rsync creates only the last directory of the destination; the remote shell makes the rest.
            f"--rsync-path=mkdir -p {shlex.quote(remote)} && rsync",
        ]  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="rh-rsync-") as scratch:
            if listing.filtered:
                # The exact list as include rules, everything else excluded *and deleted* on the
                # machine: --files-from cannot delete, a filter list can.
                rules = os.path.join(scratch, "rules")
                with open(rules, "wb") as out:
                    out.write(_rsync_rules(listing))
                args += ["--delete-excluded", "--from0", f"--filter=merge {rules}"]
            args += [source + "/", f"{target.user}@{target.ssh_destination}:{remote}/"]
            done = subprocess.run(args, capture_output=True, stdin=subprocess.DEVNULL)
        stdout = done.stdout.decode("utf-8", "replace")
        stderr = done.stderr.decode("utf-8", "replace").strip()
        if done.returncode in (12, 255):
            # 255: ssh itself failed; 12: the stream broke, often a shell startup file that prints.
            raise _SystemSSHFailed(f"rsync exited {done.returncode}: {stderr[-2000:]}")
        if done.returncode not in (0, 24):  # 24: files vanished while being sent; they are gone anyway
            raise SSHSyncError(
                f"{self._where()}: rsync of {source} to {remote} failed (exit {done.returncode}): "
                f"{stderr[-2000:]}\nCheck disk space and permissions under {posixpath.dirname(remote)} on the machine"
            )
        uploaded = deleted = 0
        for line in stdout.splitlines():
            if line[:2] in ("<f", ">f", "cL"):  # "<": sent to the remote side; "cL": a link made
                uploaded += 1
            elif line.startswith("*deleting") and not line.endswith("/"):
                deleted += 1
        return SyncStats("rsync", remote, uploaded, deleted, len(listing.files))

    def _sftp_client(self, transport: paramiko.Transport) -> paramiko.SFTPClient:
        with self._lock:
            if self._sftp is None or self._sftp_transport is not transport:
                try:
                    self._sftp = paramiko.SFTPClient.from_transport(transport)
                except paramiko.SSHException as exc:
                    if not transport.is_active():
                        raise
                    raise SSHSyncError(
                        f"{self._where()}: the SFTP subsystem is not available ({_describe(exc)}); enable "
                        f"`Subsystem sftp` in the machine's sshd_config, or install rsync on both ends"
                    ) from exc
                self._sftp_transport = transport
            assert self._sftp is not None
            return self._sftp

    def _sftp_sync(self, transport: paramiko.Transport, source: str, listing: Listing, name: str) -> SyncStats:
        sftp = self._sftp_client(transport)
        home = self._remote_home or sftp.normalize(".")
        self._remote_home = home
        root = self._sync_path(home, name)
        try:
            _sftp_makedirs(sftp, root)
            remote_files, remote_dirs = _sftp_walk(sftp, root)
            deleted = uploaded = 0
            uploads: list[tuple[str, str, os.stat_result]] = []
            # Order matters when a path changes kind: remove unwanted files, then unwanted
            # directories deepest first, then create directories, then upload.
            for rel, attrs in remote_files.items():
                local = listing.files.get(rel)
                if local is None or stat.S_ISLNK(local.st_mode) != stat.S_ISLNK(attrs.st_mode or 0):
                    sftp.remove(posixpath.join(root, rel))
                    deleted += 1
            for rel in sorted(remote_dirs - listing.dirs, key=lambda p: p.count("/"), reverse=True):
                sftp.rmdir(posixpath.join(root, rel))
            for rel in sorted(listing.dirs - remote_dirs, key=lambda p: p.count("/")):
                sftp.mkdir(posixpath.join(root, rel))
            for rel, local in listing.files.items():
                path, attrs = posixpath.join(root, rel), remote_files.get(rel)
                local_path = os.path.join(source, *rel.split("/"))
                if stat.S_ISLNK(local.st_mode):
                    link = os.readlink(local_path)
                    if attrs is not None and stat.S_ISLNK(attrs.st_mode or 0) and sftp.readlink(path) == link:
                        continue
                    if attrs is not None and stat.S_ISLNK(attrs.st_mode or 0):
                        sftp.remove(path)
                    sftp.symlink(link, path)
                    uploaded += 1
                    continue
                if attrs is None or attrs.st_size != local.st_size or attrs.st_mtime != int(local.st_mtime):
                    uploads.append((local_path, path, local))
                elif stat.S_IMODE(attrs.st_mode or 0) != stat.S_IMODE(local.st_mode):
                    sftp.chmod(path, stat.S_IMODE(local.st_mode))
            _sftp_put_all(sftp, uploads)
            uploaded += len(uploads)
        except OSError as exc:
            # Plain OSError is SFTP's generic failure; on a live connection it is the machine's
            # answer (disk full, permissions), not a dropped connection worth a retry.
            refused = (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError)
            if isinstance(exc, refused) or (type(exc) is OSError and self._transport_alive()):
                raise SSHSyncError(
                    f"{self._where()}: SFTP sync of {source} to {root} failed ({_describe(exc)}); check "
                    f"permissions and disk space under {posixpath.dirname(root)} on the machine"
                ) from exc
            raise
        return SyncStats("sftp", root, uploaded, deleted, len(listing.files))

    def _sync_path(self, home: str, name: str) -> str:
        root = self.remote_root
        if root == "~" or root.startswith("~/"):
            root = home + root[1:]
        return posixpath.normpath(posixpath.join(home, root, "sync", name))

    def _transport_alive(self) -> bool:
        with self._lock:
            transport = self._clients[-1].get_transport() if self._clients else None
            return transport is not None and transport.is_active()

    # --- forwards ------------------------------------------------------------------------------

    def _open_forward_channel(
        self, connection: paramiko.Transport, remote_port: int, peer: tuple[str, int]
    ) -> paramiko.Channel:
        # Only on the connection the forward was made on: after a drop the forward dies with it
        # (as ssh -L does) and the next forward() makes a new one, rather than carrying on as if
        # what was in flight had arrived.
        try:
            return connection.open_channel(
                "direct-tcpip", ("127.0.0.1", remote_port), peer, timeout=self._connect_timeout
            )
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if self._is_lost(connection, exc):
                self._drop(connection)
            raise

    def _start_master(self) -> _Master:
        """A new ssh ControlMaster for the tunnels (the dead one, if any, cleaned up); not waited for."""
        for old in self._masters:
            old.close()
        self._masters.clear()
        master = _Master.start(
            self._ssh_command(len(self._chain) - 1, multiplex=True),
            self._chain[-1].ssh_destination,
            timeout=self._connect_timeout + 5.0,
        )
        self._masters.append(master)
        return master

    def _ready_master(self) -> _Master:
        """The live ssh ControlMaster, started if needed, once it accepts forwards."""
        master = self._masters[0] if self._masters and self._masters[0].alive() else self._start_master()
        try:
            master.wait_ready()
        except _SystemSSHFailed:
            master.close()
            self._masters.clear()
            raise
        return master

    # --- ssh config ----------------------------------------------------------------------------

    def _resolve_hop(
        self, spec: str, *, user: str | None = None, port: int | None = None, keys: str | None = None
    ) -> _Hop:
        """Resolve ``[user@]alias[:port]`` (or just an alias) through the ssh config."""
        alias = spec
        if alias.startswith("ssh://"):
            alias = alias[len("ssh://") :]
        if "@" in alias:
            spec_user, alias = alias.rsplit("@", 1)
            user = user or spec_user
        match = re.fullmatch(r"\[(.+)\]:(\d+)|([^:]+):(\d+)", alias)
        if match:
            alias = match.group(1) or match.group(3)
            port = port or int(match.group(2) or match.group(4))
        config = self._config.lookup(alias) if self._config else {}
        hostname = config.get("hostname", alias)
        if keys is not None:
            key_files: tuple[str, ...] = (keys,)
        else:
            found = [os.path.abspath(os.path.expanduser(p)) for p in config.get("identityfile", [])]
            key_files = tuple(p for p in found if os.path.isfile(p))
            if not key_files and self._explicit_key and alias != self.host:
                key_files = (self._explicit_key,)  # jump hosts often take the same key as the target
        proxy_command = config.get("proxycommand")
        if proxy_command and proxy_command.lower() == "none":
            proxy_command = None
        return _Hop(
            alias=alias,
            hostname=hostname,
            port=port or int(config.get("port", 22)),
            user=user or config.get("user") or getpass.getuser(),
            keys=key_files,
            proxy_command=proxy_command,
        )

    def _resolve_jumps(self, hop: _Hop, config: dict[str, Any], depth: int) -> list[_Hop]:
        """The jump hosts in front of ``hop`` from its ``ProxyJump`` (a comma list), outermost first."""
        jump = str(config.get("proxyjump", "") or "").strip()
        if not jump or jump.lower() == "none":
            return []
        if depth >= MAX_JUMPS:
            raise SSHConnectError(
                f"ssh {hop.label}: more than {MAX_JUMPS} ProxyJump levels; check the ssh config for a loop"
            )
        specs = [part.strip() for part in jump.split(",") if part.strip()]
        first = self._resolve_hop(specs[0])
        first_config = self._config.lookup(first.alias) if self._config else {}
        chain = self._resolve_jumps(first, first_config, depth + 1) + [first]
        # As in OpenSSH, only the first jump's own ProxyJump counts; the rest follow the list.
        chain += [dataclasses.replace(self._resolve_hop(spec), proxy_command=None) for spec in specs[1:]]
        return chain


# -------------------------------------------------------------------------------------------------
# Host keys


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Rejects unknown host keys with a message saying how to trust them, or appends them when trusted."""

    def __init__(self, known_hosts: str, trust: bool, where: str, trust_option: str):
        self._known_hosts = known_hosts
        self._trust = trust
        self._where = where
        self._trust_option = trust_option

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        path = self._known_hosts
        if not self._trust:
            raise SSHHostKeyError(
                f"{self._where}: the host key of {hostname} is not known "
                f"({key.get_name()} {_fingerprint(key)}; not in {path}). To trust it, check that this "
                f"fingerprint is the machine's (`ssh-keygen -lf /etc/ssh/ssh_host_*.pub` there), then "
                f"connect once with {self._trust_option}True, which adds it to {path}"
            )
        directory = os.path.dirname(path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        needs_newline = os.path.isfile(path) and os.path.getsize(path) > 0 and not _ends_with_newline(path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as out:
            out.write(("\n" if needs_newline else "") + f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)
        logger.info("trusted the new host key of %s (%s) in %s", hostname, _fingerprint(key), path)


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _fingerprint(key: paramiko.PKey) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


# -------------------------------------------------------------------------------------------------
# Command output


class _Echo:
    """Echoes a byte stream line by line to a text stream looked up at write time (pytest swaps them)."""

    def __init__(self, name: str):
        self._name = name
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""

    def feed(self, data: bytes, final: bool = False) -> None:
        text = self._pending + self._decoder.decode(data, final)
        head, newline, self._pending = text.rpartition("\n")
        if final:
            head, newline, self._pending = text, "", ""
        if head or newline:
            stream: IO[str] = getattr(sys, self._name)
            stream.write(head + newline)
            stream.flush()


def _collect(channel: paramiko.Channel, stream_logs: bool) -> tuple[str, str]:
    """Read a command's stdout and stderr until EOF, echoing them live when asked."""
    out, err = bytearray(), bytearray()
    echo_out, echo_err = (_Echo("stdout"), _Echo("stderr")) if stream_logs else (None, None)

    def drain() -> bool:
        moved = False
        while channel.recv_ready():
            data = channel.recv(65536)
            if not data:
                break
            out.extend(data)
            moved = True
            if echo_out:
                echo_out.feed(data)
        while channel.recv_stderr_ready():
            data = channel.recv_stderr(65536)
            if not data:
                break
            err.extend(data)
            moved = True
            if echo_err:
                echo_err.feed(data)
        return moved

    while True:
        moved = drain()
        if channel.eof_received or channel.closed:
            drain()  # EOF comes after the last data, so what is buffered now is all there is
            break
        if not moved:
            # The channel's fileno wakes select on data and on EOF; the timeout is only a backstop.
            select.select([channel], [], [], 1.0)
    if echo_out and echo_err:
        echo_out.feed(b"", final=True)
        echo_err.feed(b"", final=True)
    return out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


# -------------------------------------------------------------------------------------------------
# Sync helpers


def _safe_name(name: str) -> str:
    # The remote path ends up in shell commands unquoted by callers; keep it to harmless characters.
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64] or "dir"


def _rsync_escape(path: str) -> str:
    # rsync treats a pattern literally unless it holds a wildcard; then backslash escapes.
    if any(char in path for char in "*?["):
        return "".join("\\" + char if char in "\\*?[" else char for char in path)
    return path


def _rsync_rules(listing: Listing) -> bytes:
    rules = [f"+ /{_rsync_escape(rel)}/" for rel in sorted(listing.dirs)]
    rules += [f"+ /{_rsync_escape(rel)}" for rel in sorted(listing.files)]
    rules.append("- *")
    return b"".join(rule.encode("utf-8", "surrogateescape") + b"\0" for rule in rules)


def _sftp_makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
    parts = path.strip("/").split("/")
    current = ""
    for part in parts:
        current += "/" + part
        try:
            info = sftp.stat(current)
        except FileNotFoundError:
            sftp.mkdir(current)
            continue
        if not stat.S_ISDIR(info.st_mode or 0):
            raise SSHSyncError(f"{current} exists on the machine and is not a directory; move it away")


def _sftp_put(sftp: paramiko.SFTPClient, local_path: str, path: str, local: os.stat_result) -> None:
    sftp.put(local_path, path, confirm=False)
    sftp.utime(path, (int(local.st_atime), int(local.st_mtime)))  # the next sync compares mtimes
    sftp.chmod(path, stat.S_IMODE(local.st_mode))


def _sftp_put_all(sftp: paramiko.SFTPClient, uploads: list[tuple[str, str, os.stat_result]]) -> None:
    """Upload files; many go over several SFTP channels at once, because each file costs about
    four round trips and on a distant machine latency, not bandwidth, is what adds up."""
    if len(uploads) < 2 * SFTP_CHANNELS:
        for job in uploads:
            _sftp_put(sftp, *job)
        return
    channel = sftp.get_channel()
    assert channel is not None
    transport = channel.get_transport()

    def upload(share: list[tuple[str, str, os.stat_result]]) -> None:
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        try:
            for job in share:
                _sftp_put(client, *job)
        finally:
            client.close()

    with concurrent.futures.ThreadPoolExecutor(SFTP_CHANNELS, thread_name_prefix="rh-sftp") as pool:
        for future in [pool.submit(upload, uploads[i::SFTP_CHANNELS]) for i in range(SFTP_CHANNELS)]:
            future.result()


def _sftp_walk(sftp: paramiko.SFTPClient, root: str) -> tuple[dict[str, Any], set[str]]:
    files: dict[str, Any] = {}
    dirs: set[str] = set()
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        for attrs in sftp.listdir_attr(posixpath.join(root, rel_dir) if rel_dir else root):
            rel = f"{rel_dir}/{attrs.filename}" if rel_dir else attrs.filename
            if stat.S_ISDIR(attrs.st_mode or 0):
                dirs.add(rel)
                pending.append(rel)
            else:
                files[rel] = attrs
    return files, dirs


# -------------------------------------------------------------------------------------------------
# Forwards


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _listening_inodes(port: int) -> set[str] | None:
    """Inodes of sockets listening on 127.0.0.1/0.0.0.0:``port``, or None without /proc."""
    try:
        with open("/proc/net/tcp") as table:
            lines = table.readlines()[1:]
    except OSError:
        return None
    inodes = set()
    for line in lines:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
            inodes.add(inode)
    return inodes


def _control_directory() -> str:
    """A fresh owner-only directory for a control socket: whoever can reach that socket can use the
    connection. Short, because a socket path must fit in ~100 bytes and ssh appends 17 more."""
    base = tempfile.gettempdir()
    if len(base) > 60 and os.path.isdir("/tmp"):
        base = "/tmp"
    return tempfile.mkdtemp(prefix="rh-ssh-", dir=base)


class _Master:
    """``ssh -N`` in control-master mode and its own session (a Ctrl-C aimed at the caller does
    not cut it): one SSH connection that carries every system tunnel of a transport. Forwards are
    added and cancelled through its control socket by short-lived ``ssh -O`` clients (~10-20 ms),
    so the connection (key exchange and authentication, 0.2-0.4 s) can come up before the remote
    port to forward is known."""

    def __init__(self, process: subprocess.Popen[bytes], directory: str, destination: str, errors: IO[bytes],
                 timeout: float):
        self.process = process
        self._directory = directory
        self.control_path = os.path.join(directory, "control")
        self._destination = destination
        self._errors = errors
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout
        self._ready = False

    @classmethod
    def start(cls, ssh: list[str], destination: str, *, timeout: float) -> _Master:
        directory = _control_directory()
        errors = tempfile.TemporaryFile()  # a pipe nobody reads could fill and stall ssh
        try:
            process = subprocess.Popen(
                ssh + ["-N", "-o", "ControlMaster=yes", "-o", "ControlPersist=no",
                       "-S", os.path.join(directory, "control"), destination],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                start_new_session=True,
            )
        except OSError as exc:
            errors.close()
            shutil.rmtree(directory, ignore_errors=True)
            raise _SystemSSHFailed(f"cannot run ssh: {_describe(exc)}") from exc
        return cls(process, directory, destination, errors, timeout)

    def wait_ready(self) -> None:
        """Wait until the connection is authenticated (ssh then creates the control socket)."""
        while not self._ready:
            if self.process.poll() is not None:
                raise _SystemSSHFailed(f"ssh exited {self.process.returncode}: {self._stderr()}")
            if os.path.exists(self.control_path):
                self._ready = True
                return
            if time.monotonic() > self._deadline:
                raise _SystemSSHFailed(f"ssh did not connect within {self._timeout:g}s: {self._stderr()}")
            time.sleep(0.005)

    def alive(self) -> bool:
        return self.process.poll() is None

    def problem(self) -> str | None:
        """Why this connection carries nothing any more, or None while its ssh process runs."""
        code = self.process.poll()
        if code is None:
            return None
        said = self._stderr()
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        if code == 255 and not said:  # ssh's code for a failed or closed connection; it says no more at LogLevel=ERROR
            said = "its SSH connection failed or was closed by the machine"
        return f"the ssh client carrying it (pid {self.process.pid}) {how}" + (f": {said}" if said else "")

    def control(self, operation: str, spec: str) -> tuple[int, str]:
        """``ssh -O operation -L spec`` through the control socket: (exit code, what it said)."""
        try:
            done = subprocess.run(
                ["ssh", "-F", "none", "-o", "LogLevel=ERROR", "-S", self.control_path,
                 "-O", operation, "-L", spec, self._destination],
                stdin=subprocess.DEVNULL, capture_output=True, timeout=self._timeout,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            return 255, _describe(exc)
        return done.returncode, done.stderr.decode("utf-8", "replace").strip()

    def close(self) -> None:
        _stop_process(self.process)
        with contextlib.suppress(Exception):
            self._errors.close()
        shutil.rmtree(self._directory, ignore_errors=True)

    def _stderr(self) -> str:
        try:
            self._errors.seek(0)
            text = self._errors.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return " / ".join(lines[-3:])[-500:]


class _MuxForward:
    """One ``-L 127.0.0.1:port:127.0.0.1:remote_port`` on a :class:`_Master`; dies with it."""

    kind = "ssh"

    def __init__(self, master: _Master, port: int, spec: str):
        self.master = master
        self.address = ("127.0.0.1", port)
        self._spec = spec
        self._closed = False

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The ssh process carrying this forward (shared with the transport's other forwards)."""
        return self.master.process

    @classmethod
    def start(cls, master: _Master, remote_port: int, *, prefer_port: int | None) -> _MuxForward:
        said = ""
        for attempt in range(3):
            # The previous local port first, so a caller holding the old address keeps working.
            port = prefer_port if attempt == 0 and prefer_port and not _listening_inodes(prefer_port) else None
            port = port or _free_port()
            spec = f"127.0.0.1:{port}:127.0.0.1:{remote_port}"
            code, said = master.control("forward", spec)
            if code == 0:
                return cls(master, port, spec)
            if not master.alive():
                raise _SystemSSHFailed(f"ssh -L: {master.problem()}")
            if "forwarding failed" not in said.lower():
                break  # not a port race: another port will not help
        raise _SystemSSHFailed(f"ssh -O forward -L failed: {said[-2000:]}")

    def alive(self) -> bool:
        return not self._closed and self.master.alive()

    def problem(self) -> str | None:
        return "the tunnel was closed" if self._closed else self.master.problem()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.master.alive():
                self.master.control("cancel", self._spec)


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class _ChannelForward:
    """A local listening socket; each connection gets a ``direct-tcpip`` channel on ``connection``
    and a pump thread. When that SSH connection drops the forward closes, as ``ssh -L`` exits."""

    kind = "paramiko"

    def __init__(
        self,
        connection: paramiko.Transport,
        open_channel: Callable[[tuple[str, int]], paramiko.Channel],
        remote_port: int,
        *,
        prefer_port: int | None,
        describe: str,
    ):
        self._connection = connection
        self._open_channel = open_channel
        self._describe = describe
        self._closed = False
        self._problem: str | None = None
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, Any]] = set()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", prefer_port or 0))
        except OSError:
            listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        self._listener = listener
        self.address = ("127.0.0.1", listener.getsockname()[1])
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"rh-ssh-forward-{remote_port}", daemon=True
        )
        self._thread.start()

    def alive(self) -> bool:
        return self.problem() is None

    def problem(self) -> str | None:
        if self._problem is None and not self._connection.is_active():
            self._problem = "the SSH connection carrying it dropped"
        if self._problem is None and (self._closed or not self._thread.is_alive()):
            self._problem = "the tunnel was closed"
        return self._problem

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            pairs, self._pairs = list(self._pairs), set()
        for conn, channel in pairs:
            with contextlib.suppress(Exception):
                channel.close()
            with contextlib.suppress(OSError):
                conn.close()
        self._thread.join(timeout=2)

    def _accept_loop(self) -> None:
        self._listener.settimeout(1.0)  # a backstop where shutdown() does not wake accept()
        while not self._closed:
            try:
                conn, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            conn.setblocking(True)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(conn, peer), daemon=True, name="rh-ssh-pump").start()

    def _serve(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        try:
            channel = self._open_channel(peer)
        except Exception as exc:
            logger.info("%s: could not open a channel: %s", self._describe, exc)
            self._close_if_connection_lost()
            # Close with a reset, not a FIN: the remote port refused, and a reset reads as an error
            # (ECONNRESET) where a FIN would read as an empty answer from a live server.
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            return
        with self._lock:
            if self._closed:
                channel.close()
                conn.close()
                return
            self._pairs.add((conn, channel))
        try:
            _pump(conn, channel)
        except Exception as exc:  # a broken tunnel connection ends that connection only
            logger.info("%s: tunnel connection ended: %s", self._describe, exc)
        finally:
            with self._lock:
                self._pairs.discard((conn, channel))
            with contextlib.suppress(Exception):
                channel.close()
            with contextlib.suppress(OSError):
                conn.close()
            self._close_if_connection_lost()

    def _close_if_connection_lost(self) -> None:
        if not self._closed and not self._connection.is_active():
            logger.info("%s: the SSH connection dropped; closing the forward", self._describe)
            self.problem()
            threading.Thread(target=self.close, daemon=True, name="rh-ssh-forward-close").start()


def _pump(conn: socket.socket, channel: paramiko.Channel) -> None:
    """Copy bytes both ways until both directions have ended, passing half-closes along."""
    local_open = remote_open = True
    while local_open or remote_open:
        watch = [s for s, is_open in ((conn, local_open), (channel, remote_open)) if is_open]
        readable, _, _ = select.select(watch, [], [], 5.0)
        if conn in readable:
            try:
                data = conn.recv(262144)
            except OSError:
                data = b""
            if data:
                channel.sendall(data)
            else:
                local_open = False
                with contextlib.suppress(Exception):
                    channel.shutdown_write()
        if channel in readable:
            data = channel.recv(262144)
            if data:
                try:
                    conn.sendall(data)
                except OSError:
                    return
            else:
                remote_open = False
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_WR)
        if channel.closed and not channel.recv_ready():
            return


# -------------------------------------------------------------------------------------------------
# Small helpers


def _load_ssh_config(path: str | os.PathLike[str] | None) -> paramiko.SSHConfig | None:
    explicit = path is not None
    resolved = os.path.expanduser(os.fspath(path) if path is not None else "~/.ssh/config")
    if not os.path.isfile(resolved):
        if explicit:
            raise SSHError(f"ssh config file {resolved} does not exist; pass ssh_config= an existing file or None")
        return None
    try:
        return paramiko.SSHConfig.from_path(resolved)
    except Exception as exc:
        raise SSHError(f"cannot parse the ssh config file {resolved} ({_describe(exc)}); fix the file") from exc


def _config_quote(value: str) -> str:
    # ssh -o values are split on whitespace unless double-quoted.
    return f'"{value}"' if any(ch.isspace() for ch in value) else value


def _keys_text(keys: Iterable[str]) -> str:
    return ", ".join(str(key) for key in keys)


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
