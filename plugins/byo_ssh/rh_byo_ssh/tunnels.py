"""Local port forwards to the machine: through the system ssh client's ControlMaster when it may be
used (see :mod:`rh_byo_ssh.ssh_master`), else through ``direct-tcpip`` channels on the paramiko
connection, pumped by threads in this process."""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

import paramiko

from rh_byo_ssh.connection import Connection
from rh_byo_ssh.errors import SSHForwardError, SystemSSHFailed, describe
from rh_byo_ssh.ssh_master import MuxForward, SSHMaster

logger = logging.getLogger("rh_byo_ssh.transport")  # the name users already configure


class Tunnels:
    """The forwards of one transport, by remote port, each counted by the :meth:`forward` calls not
    yet matched by :meth:`close_forward`; and the ssh ControlMaster carrying the system ones."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._lock = threading.Lock()
        self.forwards: dict[int, MuxForward | ChannelForward] = {}
        self._users: dict[int, int] = {}  # remote port -> forward() calls not yet closed
        self.masters: list[SSHMaster] = []  # the ssh ControlMaster carrying the system tunnels (0 or 1)

    def forward(self, remote_port: int, *, local_port: int | None = None) -> tuple[str, int]:
        """See :meth:`rh_byo_ssh.transport.SSHTransport.forward`."""
        remote_port = int(remote_port)
        where = self._connection.where()
        with self._lock:
            current = self.forwards.get(remote_port)
            if current is not None and current.alive() and local_port in (None, current.address[1]):
                self._users[remote_port] = self._users.get(remote_port, 0) + 1
                return current.address
            previous_port = local_port or (current.address[1] if current is not None else None)
            if current is not None:
                current.close()
            forward: MuxForward | ChannelForward | None = None
            # Connect now, so a bad host or key fails here rather than in a pump thread.
            connection = self._connection.transport()
            if self._connection.system_ssh_usable():
                try:
                    forward = MuxForward.start(self._ready_master(), remote_port, prefer_port=previous_port)
                except SystemSSHFailed as exc:
                    self._connection.system_ssh_failed(str(exc))
            if forward is None:
                try:
                    forward = ChannelForward(
                        connection,
                        lambda peer: self._open_channel(connection, remote_port, peer),
                        remote_port,
                        prefer_port=previous_port,
                        describe=f"{where}: forward to port {remote_port}",
                    )
                except OSError as exc:
                    raise SSHForwardError(
                        f"{where}: cannot listen on a local port for the tunnel to port "
                        f"{remote_port} ({describe(exc)}); check this machine's open-file and port limits"
                    ) from exc
            if local_port is not None and forward.address[1] != local_port:
                forward.close()
                raise SSHForwardError(
                    f"{where}: local port {local_port} is taken, so the tunnel to port {remote_port} "
                    "cannot listen there; free it or leave local_port out to get a free port"
                )
            self.forwards[remote_port] = forward
            self._users[remote_port] = self._users.get(remote_port, 0) + 1
            return forward.address

    def close_forward(self, remote_port: int) -> None:
        """See :meth:`rh_byo_ssh.transport.SSHTransport.close_forward`."""
        remote_port = int(remote_port)
        with self._lock:
            users = self._users.get(remote_port, 0) - 1
            if users > 0:
                self._users[remote_port] = users
                return
            self._users.pop(remote_port, None)
            forward = self.forwards.pop(remote_port, None)
        if forward is not None:
            forward.close()

    def prepare(self) -> None:
        """See :meth:`rh_byo_ssh.transport.SSHTransport.prepare_forward`."""
        with self._lock:
            if self.masters and self.masters[0].alive():
                return
            if not self._connection.system_ssh_usable():
                return
            try:
                self._start_master()
            except SystemSSHFailed as exc:  # forward() tries again and then falls back to paramiko
                logger.info("%s: could not start the ssh client for tunnels: %s", self._connection.where(), exc)

    def problem(self, remote_port: int) -> str | None:
        """See :meth:`rh_byo_ssh.transport.SSHTransport.tunnel_problem`."""
        forward = self.forwards.get(int(remote_port))
        if forward is None:
            return f"no tunnel to port {remote_port} is open"
        return forward.problem()

    @property
    def kinds(self) -> dict[int, str]:
        """``{remote_port: "ssh" | "paramiko"}`` for the live forwards."""
        with self._lock:
            return {port: forward.kind for port, forward in self.forwards.items() if forward.alive()}

    def close(self) -> None:
        """Stop every forward and the ssh ControlMaster."""
        with self._lock:
            forwards = list(self.forwards.values())
            self.forwards.clear()
            self._users.clear()
            masters = list(self.masters)
            self.masters.clear()
        for forward in forwards:
            forward.close()
        for master in masters:
            master.close()

    def _open_channel(
        self, connection: paramiko.Transport, remote_port: int, peer: tuple[str, int]
    ) -> paramiko.Channel:
        # Only on the connection the forward was made on: after a drop the forward dies with it
        # (as ssh -L does) and the next forward() makes a new one, rather than carrying on as if
        # what was in flight had arrived.
        try:
            return connection.open_channel(
                "direct-tcpip", ("127.0.0.1", remote_port), peer, timeout=self._connection.connect_timeout
            )
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if self._connection.is_lost(connection, exc):
                self._connection.drop(connection)
            raise

    def _start_master(self) -> SSHMaster:
        """A new ssh ControlMaster for the tunnels (the dead one, if any, cleaned up); not waited for."""
        for old in self.masters:
            old.close()
        self.masters.clear()
        system_ssh = self._connection.system_ssh
        master = SSHMaster.start(
            system_ssh.ssh_command(len(system_ssh.chain) - 1, multiplex=True),
            self._connection.target.ssh_destination,
            timeout=self._connection.connect_timeout + 5.0,
        )
        self.masters.append(master)
        return master

    def _ready_master(self) -> SSHMaster:
        """The live ssh ControlMaster, started if needed, once it accepts forwards."""
        master = self.masters[0] if self.masters and self.masters[0].alive() else self._start_master()
        try:
            master.wait_ready()
        except SystemSSHFailed:
            master.close()
            self.masters.clear()
            raise
        return master


class ChannelForward:
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
