"""Reaching a server without SSH: a TLS front door on the cluster and a pinned TLS tunnel here.

The server itself only ever listens on loopback. ``python -m rh_core.server --expose HOST:PORT``
adds a TLS listener that forwards each connection to that loopback port; its certificate is the
user's (``--tls-cert``/``--tls-key``) or a self-signed one made on first start in
``<state dir>/tls/``. Clients connect through :class:`PinnedTunnel`, a local port whose connections
go out over TLS and are dropped unless the server's certificate has the pinned SHA-256
fingerprint; every request still carries the cluster's secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import ssl
import threading
from collections.abc import Callable

from rh_core.errors import RhError

CHUNK = 256 * 1024


def fingerprint_of(der: bytes) -> str:
    return "sha256:" + hashlib.sha256(der).hexdigest()


def certificate_fingerprint(cert_path: str) -> str:
    with open(cert_path, "rb") as f:
        return fingerprint_of(ssl.PEM_cert_to_DER_cert(f.read().decode()))


def self_signed(state_dir: str) -> tuple[str, str]:
    """``<state dir>/tls/cert.pem`` and ``key.pem`` (owner-only), made on first use."""
    directory = os.path.join(state_dir, "tls")
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    if os.path.exists(cert_path) and os.path.exists(key_path):
        return cert_path, key_path
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"rh_core server {socket.gethostname()}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650)).sign(key, hashes.SHA256()))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for path, data in ((key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption())),
                       (cert_path, cert.public_bytes(serialization.Encoding.PEM))):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return cert_path, key_path


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


#: The first byte of every ZeroMQ greeting (ZMTP 3); an HTTP request starts with a method's letter.
ZMTP_SIGNATURE_START = b"\xff"


async def serve_front_door(host: str, port: int, cert_path: str, key_path: str, target_port: int,
                           http_port: Callable[[], int | None] = lambda: None) -> asyncio.Server:
    """Accept TLS on ``host:port`` and forward each connection to ``127.0.0.1:target_port``, or,
    when what the client sends first is not a ZeroMQ greeting but HTTP, to the server's HTTP door
    (``http_port()``, None while no endpoint is served): one port, one certificate for both."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_path, key_path)

    async def forward(tls_reader: asyncio.StreamReader, tls_writer: asyncio.StreamWriter) -> None:
        try:
            first = await tls_reader.read(1)  # both protocols' clients speak first
        except (ConnectionError, OSError, ssl.SSLError):
            first = b""
        target = target_port if first == ZMTP_SIGNATURE_START else http_port()
        if not first or target is None:
            tls_writer.close()
            return
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            tls_writer.close()
            return
        writer.write(first)
        await asyncio.gather(_pump(tls_reader, writer), _pump(reader, tls_writer))

    return await asyncio.start_server(forward, host, port, ssl=context)


class PinnedTunnel:
    """``127.0.0.1:local_port`` here, reaching ``host:port`` over TLS whose certificate must have
    ``fingerprint`` (``sha256:...``, as ``rh server status`` on the cluster prints it)."""

    def __init__(self, host: str, port: int, fingerprint: str, connect_timeout: float = 10.0):
        self.host, self.port = host, port
        self.fingerprint = fingerprint.lower()
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
        """Connect once and verify the pinned certificate, raising an error that names the problem."""
        context = self._client_context()
        try:
            with socket.create_connection((self.host, self.port), timeout=self.connect_timeout) as raw, \
                    context.wrap_socket(raw, server_hostname=self.host) as tls:
                seen = fingerprint_of(tls.getpeercert(binary_form=True))
        except (OSError, ssl.SSLError) as exc:
            raise RhError(f"cannot reach the cluster's TLS port {self.host}:{self.port}: {exc}; check the address and "
                          "that the server was started with --expose") from None
        if seen != self.fingerprint:
            raise RhError(f"the server at {self.host}:{self.port} presented a certificate with fingerprint {seen}, "
                          f"not the pinned {self.fingerprint}: refusing to talk to it. If the cluster's certificate "
                          "was replaced on purpose, pin the new fingerprint (rh server status --json on the cluster)")

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
        await asyncio.gather(_pump(local_reader, writer), _pump(reader, local_writer))

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


def _tls_cluster_class():
    import attrs

    from rh_core.cluster import Cluster

    @attrs.define(eq=False)
    class TLSCluster(Cluster):
        """A cluster whose server is exposed with ``--expose``: calls, maps and results work; shell
        commands, syncing and tunnels do not (there is no SSH). The secret is given by the user
        (``<state dir>/secret`` on the cluster) and kept in memory only."""

        name: str
        address: str
        tls_fingerprint: str
        secret: str = attrs.field(repr=False)
        _tunnel: PinnedTunnel | None = attrs.field(default=None, init=False, repr=False)

        def _start_or_find_server(self):
            host, _, port = self.address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"address {self.address!r} must be HOST:PORT, the server's --expose address")
            if self._tunnel is None:
                tunnel = PinnedTunnel(host, int(port), self.tls_fingerprint)
                tunnel.check()
                self._tunnel = tunnel
            return f"tcp://127.0.0.1:{self._tunnel.local_port}", {"secret": self.secret}

        def _liveness(self) -> str | None:
            from rh_core.client import ping

            if self._tunnel is None:
                return "not connected"
            if ping(f"tcp://127.0.0.1:{self._tunnel.local_port}", timeout=2.0, secret=self.secret) is None:
                return f"the server behind {self.address} does not answer ({self._tunnel.last_error or 'no reply'})"
            return None

        @property
        def transport(self):
            raise RhError(f"{self.name} is reached through its TLS port only: it has no shell, file sync or "
                          "tunnels; use an SSH cluster (rh.cluster(ips=...)) for those")

        def sync_directory(self, local_path: str) -> None:
            return None  # no file transfer: functions travel by value

        def http_address(self, port: int) -> str:
            # The front door takes HTTP too (what the client says first tells it apart), so the
            # pinned tunnel to it reaches the HTTP endpoints as well.
            self.connection()
            return f"http://127.0.0.1:{self._tunnel.local_port}"

        def config(self) -> dict:
            return {"kind": "tls", "name": self.name, "address": self.address,
                    "tls_fingerprint": self.tls_fingerprint}  # never the secret

        def stop_server(self) -> bool:
            raise RhError(f"{self.name}'s server can only be stopped on the cluster (`rh server stop` there)")

        def close(self) -> None:
            self._forget_connection()
            if self._tunnel is not None:
                self._tunnel.close()
                self._tunnel = None

    return TLSCluster


def tls_cluster(name: str, address: str, tls_fingerprint: str, secret: str):
    """A cluster reached through a server's ``--expose`` TLS port (see the module docstring)."""
    if not secret:
        raise ValueError("a TLS cluster needs the cluster's secret (the contents of <state dir>/secret there)")
    if not str(tls_fingerprint).lower().startswith("sha256:"):
        raise ValueError(f"tls_fingerprint must be 'sha256:<hex>' as the server reports it, not {tls_fingerprint!r}")
    return _tls_cluster_class()(name=name, address=address, tls_fingerprint=tls_fingerprint, secret=secret)
