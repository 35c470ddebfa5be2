"""The persistent paramiko connection to one machine: credentials, host keys, connecting through
jump hosts, reconnecting after a drop, and whether the faster system ssh client may be used instead.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import hashlib
import logging
import os
import shlex
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import paramiko

from rh_byo_ssh.errors import (
    SSHAuthError,
    SSHConnectError,
    SSHConnectionLostError,
    SSHError,
    SSHHostKeyError,
    SSHSyncError,
    describe,
)
from rh_byo_ssh.route import (
    KEEPALIVE_SECONDS,
    Hop,
    SystemSSHRoute,
    load_ssh_config,
    resolve_chain,
)

logger = logging.getLogger("rh_byo_ssh.transport")  # the name users already configure

DEFAULT_KEY_NAMES = ("id_rsa", "id_ecdsa", "id_ed25519", "id_dsa")
GLOBAL_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"

T = TypeVar("T")


def quiet_paramiko() -> None:
    """Keep paramiko's log lines (INFO for every connection, ERROR with a traceback for failures we
    raise as SSHErrors naming the cause and the fix) off the user's stderr, unless they asked for
    them: a level they set on the ``paramiko`` logger is left alone."""
    paramiko_logger = logging.getLogger("paramiko")
    if paramiko_logger.level == logging.NOTSET:
        paramiko_logger.setLevel(logging.CRITICAL)
    paramiko_logger.addHandler(logging.NullHandler())  # never Python's last-resort handler either


class Connection:
    """One paramiko connection to the machine (a client per hop), opened on first use and re-opened
    on the next use after it drops. The options are those of
    :class:`rh_byo_ssh.transport.SSHTransport`, which documents them."""

    def __init__(
        self,
        host: str,
        *,
        user: str | None,
        port: int,
        private_key: str | os.PathLike[str] | None,
        passphrase: str | None,
        password: str | None,
        use_agent: bool,
        known_hosts: str | os.PathLike[str] | None,
        trust_new_host: bool,
        connect_timeout: float,
        ssh_config: str | os.PathLike[str] | None,
        use_system_ssh: bool,
        option_names: dict[str, str] | None,
    ) -> None:
        # How errors name an option: as the caller wrote it (the byo provisioner maps private_key to
        # ssh_creds['ssh_private_key']), else as SSHTransport's own keyword argument.
        self._option_names = dict(option_names or {})
        if "@" in host:
            host_user, host = host.rsplit("@", 1)
            user = user or host_user
        self.host = host
        self._passphrase = passphrase
        self._password = password
        self._use_agent = use_agent
        self.connect_timeout = float(connect_timeout)
        self.use_system_ssh = use_system_ssh
        config = load_ssh_config(ssh_config)
        target_config = config.lookup(host) if config else {}

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
                    f"set {self.named('private_key')} to the path of a key whose public half is in "
                    f"~/.ssh/authorized_keys on {host}"
                )
        self.chain = resolve_chain(host, config, user=user, port=port if port != 22 else None, private_key=private_key)

        self.lock = threading.RLock()  # guards the connection (clients, sftp)
        self.clients: list[paramiko.SSHClient] = []
        self._key_auth = False
        self._sftp: paramiko.SFTPClient | None = None
        self._sftp_transport: paramiko.Transport | None = None
        self.system_ssh_broken: str | None = None

    @property
    def target(self) -> Hop:
        """The machine itself: the last hop."""
        return self.chain[-1]

    def where(self) -> str:
        """``ssh user@alias (hostname:port)``: how every error message starts."""
        return f"ssh {self.chain[-1].label}"

    def named(self, option: str, assign: str = "") -> str:
        """An option as the caller spelled it: ``ssh_creds['ssh_port']`` for a BYO cluster, ``port=``;
        ``assign="="`` ends either with ``=``, for a value to follow."""
        named = self._option_names.get(option)
        return named + assign if named else f"{option}="

    # --- the paramiko connection ----------------------------------------------------------------

    def transport(self) -> paramiko.Transport:
        """The target's active paramiko transport; connects (again) when there is none."""
        with self.lock:
            transport = self.clients[-1].get_transport() if self.clients else None
            if transport is None or not transport.is_active():
                self._disconnect_locked()
                self._connect_locked()
                transport = self.clients[-1].get_transport()
                assert transport is not None
            return transport

    def transport_alive(self) -> bool:
        with self.lock:
            transport = self.clients[-1].get_transport() if self.clients else None
            return transport is not None and transport.is_active()

    def close(self) -> None:
        """Close the connection (a later call opens a new one)."""
        with self.lock:
            self._disconnect_locked()

    def _connect_locked(self) -> None:
        clients: list[paramiko.SSHClient] = []
        sock: Any = None
        try:
            for index, hop in enumerate(self.chain):
                if index == 0 and hop.proxy_command:
                    sock = paramiko.ProxyCommand(hop.proxy_command)
                client = self._connect_hop(hop, sock, is_target=index == len(self.chain) - 1)
                clients.append(client)
                if index + 1 < len(self.chain):
                    sock = self._open_jump_channel(client, hop, self.chain[index + 1])
        except BaseException:
            for client in reversed(clients):
                client.close()
            raise
        self.clients[:] = clients
        self._key_auth = all(
            getattr(getattr(client.get_transport(), "auth_handler", None), "auth_method", "") == "publickey"
            for client in clients
        )

    def _connect_hop(self, hop: Hop, sock: Any, *, is_target: bool) -> paramiko.SSHClient:
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
                        f"{self.where()}: cannot read the known hosts file {path} ({describe(exc)}); "
                        f"fix the line it names, or set {self.named('known_hosts')} to another file"
                    ) from exc
        client.set_missing_host_key_policy(_HostKeyPolicy(self.known_hosts, self.trust_new_host, self.where(),
                                                          self.named("trust_new_host", "=")))
        timeout = self.connect_timeout
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

    def _open_jump_channel(self, client: paramiko.SSHClient, hop: Hop, nxt: Hop) -> paramiko.Channel:
        transport = client.get_transport()
        assert transport is not None
        try:
            return transport.open_channel(
                "direct-tcpip", (nxt.hostname, nxt.port), ("127.0.0.1", 0), timeout=self.connect_timeout
            )
        except Exception as exc:
            raise SSHConnectError(
                f"{self.where()}: jump host {hop.label} could not open a connection to "
                f"{nxt.hostname}:{nxt.port} ({describe(exc)}); check that {nxt.hostname}:{nxt.port} is "
                f"reachable from {hop.hostname} and that its sshd allows TCP forwarding (AllowTcpForwarding yes)"
            ) from exc

    def _connect_error(self, hop: Hop, exc: BaseException, *, is_target: bool, timed_out: bool = False) -> SSHError:
        """Turn a paramiko/socket failure into an error that names the host, user, cause and fix."""
        where = self.where() if is_target else f"{self.where()}: jump host {hop.label}"
        timeout = f"{self.connect_timeout:g}s"
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
                f"{self.named('passphrase')}, or add the key to your ssh-agent (`ssh-add KEY`)"
            )
        if self._passphrase is not None and isinstance(exc, paramiko.SSHException) and any(
            said in str(exc) for said in ("checkints do not match", "Invalid key", "bad decrypt", "Bad decrypt")
        ):
            return SSHAuthError(
                f"{where}: the passphrase given ({self.named('passphrase')}) does not unlock the private key "
                f"{_keys_text(hop.keys) or 'found'} ({describe(exc)}); check it, e.g. with "
                f"`ssh-keygen -y -f {_keys_text(hop.keys) or 'KEY'}`"
            )
        if isinstance(exc, paramiko.AuthenticationException) or (
            isinstance(exc, paramiko.SSHException) and "No authentication methods" in str(exc)
        ):
            tried = self._credentials_tried(hop, is_target)
            return SSHAuthError(
                f"{where}: the server refused authentication as {hop.user!r} ({describe(exc)}); "
                f"tried {tried}. Check that the public half of one of these keys is in "
                f"~{hop.user}/.ssh/authorized_keys on {hop.hostname}, or set {self.named('private_key')} "
                f"(and {self.named('user')} if {hop.user!r} is the wrong account)"
            )
        if isinstance(exc, (paramiko.ssh_exception.NoValidConnectionsError, ConnectionRefusedError)):
            return SSHConnectError(
                f"{where}: connection refused on {hop.hostname}:{hop.port}: the port is closed. Check that "
                f"sshd runs on the machine and listens on port {hop.port} (set {self.named('port')}, or Port in the ssh config)"
            )
        if isinstance(exc, socket.gaierror):
            return SSHConnectError(
                f"{where}: the name {hop.hostname!r} does not resolve ({exc.strerror}); check the host name "
                f"or add a HostName for it in the ssh config"
            )
        if timed_out or isinstance(exc, TimeoutError) or "timed out" in str(exc) or "banner" in str(exc):
            return SSHConnectError(
                f"{where}: no SSH answer from {hop.hostname}:{hop.port} within {timeout} ({describe(exc)}). "
                f"Check that the machine is up, that the address and port are right and that no firewall "
                f"drops the traffic, or raise {self.named('connect_timeout')}"
            )
        if isinstance(exc, (EOFError, paramiko.SSHException)):
            return SSHConnectError(
                f"{where}: the SSH handshake with {hop.hostname}:{hop.port} failed ({describe(exc)}); check "
                f"that port {hop.port} is an SSH server and look in its sshd log"
            )
        if isinstance(exc, OSError):
            return SSHConnectError(
                f"{where}: cannot reach {hop.hostname}:{hop.port} ({describe(exc)}); check the network "
                f"path to the machine and that it is up"
            )
        return SSHConnectError(f"{where}: connecting failed: {describe(exc)}")

    def _credentials_tried(self, hop: Hop, is_target: bool) -> str:
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
        for client in reversed(self.clients):
            with contextlib.suppress(Exception):
                client.close()
        self.clients.clear()

    # --- drops and retries ----------------------------------------------------------------------

    def drop(self, transport: paramiko.Transport) -> None:
        """Forget the connection ``transport`` belongs to, if it is still the current one."""
        with self.lock:
            if self.clients and self.clients[-1].get_transport() is transport:
                self._disconnect_locked()

    @staticmethod
    def is_lost(transport: paramiko.Transport, exc: BaseException) -> bool:
        """Whether ``exc``, raised while using ``transport``, means the connection is gone."""
        if not transport.is_active() or isinstance(exc, (EOFError, OSError)):
            return True
        # A channel that never opens on a live-looking transport means the peer is gone silently.
        return "Timeout opening channel" in str(exc) or "session not active" in str(exc)

    def retry_if_lost(self, what: str, operation: Callable[[paramiko.Transport], T]) -> T:
        """Run an idempotent ``operation``; after a dropped connection reconnect and run it once more."""
        for attempt in (1, 2):
            transport = self.transport()
            try:
                return operation(transport)
            except SSHError:
                raise
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if not self.is_lost(transport, exc):
                    raise
                self.drop(transport)
                if attempt == 2:
                    raise SSHConnectionLostError(
                        f"{self.where()}: the connection dropped during {what}, twice ({describe(exc)}); "
                        f"check the network and the machine's sshd log"
                    ) from exc
                logger.info("%s: connection dropped during %s (%s); reconnecting", self.where(), what, exc)
        raise AssertionError("unreachable")

    def sftp_client(self, transport: paramiko.Transport) -> paramiko.SFTPClient:
        """The SFTP session on ``transport``, opened once per connection and closed with it."""
        with self.lock:
            if self._sftp is None or self._sftp_transport is not transport:
                try:
                    self._sftp = paramiko.SFTPClient.from_transport(transport)
                except paramiko.SSHException as exc:
                    if not transport.is_active():
                        raise
                    raise SSHSyncError(
                        f"{self.where()}: the SFTP subsystem is not available ({describe(exc)}); enable "
                        f"`Subsystem sftp` in the machine's sshd_config, or install rsync on both ends"
                    ) from exc
                self._sftp_transport = transport
            assert self._sftp is not None
            return self._sftp

    # --- the system ssh client ------------------------------------------------------------------

    @property
    def system_ssh(self) -> SystemSSHRoute:
        """The system ``ssh`` command lines that reach the machine the way this connection does."""
        return SystemSSHRoute(self.chain, self.known_hosts, self.connect_timeout, self._use_agent)

    def system_ssh_usable(self) -> bool:
        if not self.use_system_ssh or self.system_ssh_broken is not None:
            return False
        if shutil.which("ssh") is None or self._passphrase is not None:
            return False  # BatchMode ssh cannot ask for a passphrase
        self.transport()  # connect first: checks (or trusts) host keys and tells how auth went
        return self._key_auth

    def system_ssh_failed(self, reason: str) -> None:
        self.system_ssh_broken = reason
        logger.warning(
            "%s: the system ssh client failed, using paramiko from now on (slower tunnels, SFTP syncs): %s",
            self.where(),
            reason,
        )


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


def _keys_text(keys: Iterable[str]) -> str:
    return ", ".join(str(key) for key in keys)
