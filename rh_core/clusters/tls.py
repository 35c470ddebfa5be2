"""Reaching a server without SSH, from the client: a pinned TLS tunnel to the server's front door
(:mod:`rh_core.server.front_door`) and the cluster reached through it (``rh.cluster(address=...,
tls_fingerprint=..., secret=...)``).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading

import attrs

from rh_core.client.connection import ping
from rh_core.clusters.base import Cluster
from rh_core.clusters.status import ClusterStatus
from rh_core.errors import AuthenticationError, RhError
from rh_core.wire.handshake import ADMITTED, GREETING, NONCE_BYTES, fingerprint_of, proof_of_secret, pump, read_exactly


class PinnedTunnel:
    """``127.0.0.1:local_port`` here, reaching ``host:port`` over TLS whose certificate must have
    ``fingerprint`` (``sha256:...``, as ``rh server status`` on the cluster prints it); each
    connection proves ``secret`` to the front door before anything else goes through."""

    def __init__(self, host: str, port: int, fingerprint: str, secret: str, connect_timeout: float = 10.0):
        self.host, self.port = host, port
        self.fingerprint = fingerprint.lower()
        self._secret = secret.encode()
        self.connect_timeout = connect_timeout
        self.last_error: str | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rh-tls-{host}:{port}", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if not hasattr(self, "local_port"):
            raise RhError(f"could not open a local port for the TLS tunnel to {host}:{port}: {self.last_error}")

    def check(self) -> None:
        """Connect once, verify the pinned certificate and prove the secret, raising an error that
        names the problem."""
        context = self._client_context()
        try:
            with socket.create_connection((self.host, self.port), timeout=self.connect_timeout) as raw, \
                    context.wrap_socket(raw, server_hostname=self.host) as tls:
                seen = fingerprint_of(tls.getpeercert(binary_form=True))
                if seen == self.fingerprint:
                    challenge = read_exactly(tls, len(GREETING) + NONCE_BYTES)[len(GREETING):]
                    tls.sendall(proof_of_secret(self._secret, challenge))
                    admitted = read_exactly(tls, len(ADMITTED)) == ADMITTED
        except (OSError, ssl.SSLError) as exc:
            raise RhError(f"cannot reach the cluster's TLS port {self.host}:{self.port}: {exc}; check the address and "
                          "that the server was started with --expose") from None
        if seen != self.fingerprint:
            raise RhError(f"the server at {self.host}:{self.port} presented a certificate with fingerprint {seen}, "
                          f"not the pinned {self.fingerprint}: refusing to talk to it. If the cluster's certificate "
                          "was replaced on purpose, pin the new fingerprint (rh server status --json on the cluster)")
        if not admitted:
            raise AuthenticationError(f"the TLS port {self.host}:{self.port} refused this client's secret; it is the "
                                      "contents of <state dir>/secret on the cluster")

    def _client_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = False  # self-signed: trust comes from the pinned fingerprint instead
        context.verify_mode = ssl.CERT_NONE
        return context

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            server = await asyncio.start_server(self._forward, "127.0.0.1", 0)
            self._server = server
            self.local_port = server.sockets[0].getsockname()[1]

        try:
            self._loop.run_until_complete(start())
        except OSError as exc:
            self.last_error = str(exc)
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    async def _forward(self, local_reader: asyncio.StreamReader, local_writer: asyncio.StreamWriter) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=self._client_context(), server_hostname=self.host),
                self.connect_timeout)
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:  # asyncio's: not builtin on 3.10
            self.last_error = str(exc)
            local_writer.close()
            return
        seen = fingerprint_of(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
        if seen != self.fingerprint:
            self.last_error = f"certificate fingerprint {seen} is not the pinned {self.fingerprint}"
            writer.close()
            local_writer.close()
            return
        try:
            greeting = await asyncio.wait_for(reader.readexactly(len(GREETING) + NONCE_BYTES), self.connect_timeout)
            writer.write(proof_of_secret(self._secret, greeting[len(GREETING):]))
            admitted = await asyncio.wait_for(reader.readexactly(len(ADMITTED)), self.connect_timeout) == ADMITTED
        except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError):
            admitted = False
        if not admitted:
            self.last_error = "the TLS port refused this client's secret"
            writer.close()
            local_writer.close()
            return
        await asyncio.gather(pump(local_reader, writer), pump(reader, local_writer))

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            # Connections still open (an HTTP client's keep-alive) end here, not as pending tasks
            # that asyncio complains about when the interpreter exits.
            forwarding = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in forwarding:
                task.cancel()
            await asyncio.gather(*forwarding, return_exceptions=True)
            self._loop.stop()

        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(stop(), self._loop)
            self._thread.join(5)


# -------------------------------------------------------------------------------------------------
# A cluster reached only through its TLS front door


@attrs.define(eq=False)
class TLSCluster(Cluster):
    """A cluster whose server is exposed with ``--expose``: calls, maps and results work; shell
    commands, syncing and tunnels do not (there is no SSH). The secret is given by the user
    (``<state dir>/secret`` on the cluster) and kept in memory only."""

    name: str
    address: str
    tls_fingerprint: str
    #: Given by the user and kept in memory only: a saved TLS cluster is loaded without it, and
    #: ``rh.cluster(name, secret=...)`` gives it back.
    secret: str = attrs.field(default="", repr=False)
    _tunnel: PinnedTunnel | None = attrs.field(default=None, init=False, repr=False)

    def _start_or_find_server(self):
        if not self.secret:
            raise AuthenticationError(
                f"cluster {self.name!r} is reached through its TLS port, whose secret is never saved with the "
                f"cluster: load it with rh.cluster({self.saved_name or self.name!r}, secret=...) (the contents of "
                "<state dir>/secret on the cluster)")
        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"address {self.address!r} must be HOST:PORT, the server's --expose address")
        if self._tunnel is None:
            tunnel = PinnedTunnel(host, int(port), self.tls_fingerprint, self.secret)
            tunnel.check()
            self._tunnel = tunnel
        return f"tcp://127.0.0.1:{self._tunnel.local_port}", {"secret": self.secret}

    def _liveness(self) -> str | None:
        if self._tunnel is None:
            return "not connected"
        if ping(f"tcp://127.0.0.1:{self._tunnel.local_port}", timeout=2.0, secret=self.secret) is None:
            return f"the server behind {self.address} does not answer ({self._tunnel.last_error or 'no reply'})"
        return None

    def refresh_status(self) -> ClusterStatus:
        """Asks the server through the pinned tunnel (opened here when it is not yet); starts nothing."""
        server = None
        try:  # without the secret this says how to give it
            address, _ = self._start_or_find_server()
            server = ping(address, timeout=5.0, secret=self.secret)
            explanation = ("its server answers through the TLS port" if server is not None else
                           f"nothing answers behind {self.address} ({self._tunnel.last_error or 'no reply'}); "
                           "start the server on the cluster with --expose")
        except RhError as exc:
            explanation = str(exc)
        self._last_status = ClusterStatus(name=self.saved_name or self.name, kind="tls", machines="unknown",
                                          server=server, explanation=explanation)
        return self._last_status

    @property
    def transport(self):
        raise RhError(f"{self.name} is reached through its TLS port only: it has no shell, file sync or "
                      "tunnels; use an SSH cluster (rh.cluster(ips=...)) for those")

    def sync_directory(self, local_path: str) -> None:
        return None  # no file transfer: functions travel by value

    def config(self) -> dict:
        return {"kind": "tls", "name": self.name, "address": self.address,
                "tls_fingerprint": self.tls_fingerprint}  # never the secret

    def stop_server(self) -> bool:
        raise RhError(f"{self.name}'s server can only be stopped on the cluster (`rh server stop` there)")

    def http_address(self, port: int) -> str:
        # The front door takes HTTP too (after the tunnel's proof, what the client says first
        # tells it apart), so the pinned tunnel to it reaches the HTTP door as well.
        self.connection()
        return f"http://127.0.0.1:{self._tunnel.local_port}"

    def close(self) -> None:
        self._forget_connection()
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None


def tls_cluster(name: str, address: str, tls_fingerprint: str, secret: str):
    """A cluster reached through a server's ``--expose`` TLS port (see the module docstring)."""
    if not secret:
        raise ValueError("a TLS cluster needs the cluster's secret (the contents of <state dir>/secret there)")
    if not str(tls_fingerprint).lower().startswith("sha256:"):
        raise ValueError(f"tls_fingerprint must be 'sha256:<hex>' as the server reports it, not {tls_fingerprint!r}")
    return TLSCluster(name=name, address=address, tls_fingerprint=tls_fingerprint, secret=secret)
