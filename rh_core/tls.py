"""Reaching a server without SSH: a TLS front door on the cluster and a pinned TLS tunnel here.

The server itself only ever listens on loopback. ``python -m rh_core.server --expose HOST:PORT``
adds a TLS listener that forwards each connection to that loopback port; its certificate is the
user's (``--tls-cert``/``--tls-key``) or a self-signed one made on first start in
``<state dir>/tls/``. Clients connect through :class:`PinnedTunnel`, a local port whose connections
go out over TLS and are dropped unless the server's certificate has the pinned SHA-256
fingerprint.

Before anything is forwarded, each connection proves that it holds the cluster's secret: the door
sends a fresh random challenge and reads exactly the 32-byte answer (an HMAC of the challenge under
the secret), so a stranger can make it read no more than that, and an answer captured from one
connection is worthless on the next. Connections that have not proven it within
:data:`PRE_AUTH_SECONDS` are closed, and at most :data:`MAX_PENDING` of them are held: a new one
replaces the oldest. (TLS itself already keeps a recorded connection from being replayed: every
connection has fresh keys.) Past the door, ZeroMQ asks for the secret again (see rh_core.server). An admitted connection
that speaks HTTP rather than ZeroMQ goes to the server's HTTP door instead (endpoints and ASGI
apps, which check their own bearer token): clients reach it through their :class:`PinnedTunnel`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import secrets
import socket
import ssl
import sys
import threading
from collections.abc import Callable

from rh_core.errors import AuthenticationError, RhError
from rh_core.files import check_private_path, write_atomically

CHUNK = 256 * 1024
#: How long a connection to the front door has to finish TLS and prove the secret.
PRE_AUTH_SECONDS = 10
#: Connections the front door holds at once, and of those how many may still be proving the secret.
MAX_CONNECTIONS, MAX_PENDING = 256, 16
#: What the door sends first, before its challenge: the version of this exchange.
GREETING = b"rh-tls-1"
NONCE_BYTES = PROOF_BYTES = 32
ADMITTED = b"\x01"


def proof_of_secret(secret: bytes, nonce: bytes) -> bytes:
    """The answer to the door's challenge ``nonce``: it shows the secret without revealing it, and
    answers that one challenge only."""
    return hmac.new(secret, GREETING + nonce, hashlib.sha256).digest()


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
        check_private_path(cert_path)  # a key someone else made would let them pose as this server
        check_private_path(key_path, secret=True)
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
    write_atomically(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), 0o600)
    write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o600)
    return cert_path, key_path


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes from a blocking socket, or fewer when it closes first."""
    data = b""
    while len(data) < size and (chunk := sock.recv(size - len(data))):
        data += chunk
    return data


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


class FrontDoor:
    """Accepts TLS on ``host:port`` and forwards each connection that proves the secret to
    ``127.0.0.1:target_port`` (see the module docstring for what it reads before that), or, when
    what the admitted client sends first is HTTP rather than a ZeroMQ greeting, to the server's
    HTTP door (``http_port()``; None while nothing is served): one port for both."""

    def __init__(self, context: ssl.SSLContext, secret: bytes, target_port: int,
                 http_port: Callable[[], int | None] = lambda: None):
        self._context, self._secret, self._target_port = context, secret, target_port
        self._http_port = http_port
        self._loop = asyncio.get_running_loop()
        self._pending: dict[asyncio.Task, None] = {}  # in arrival order: the oldest is replaced first
        self._admitted: set[asyncio.Task] = set()
        self._listener: socket.socket | None = None

    def open(self, host: str, port: int) -> int:
        """Listen; returns the port (the one chosen when ``port`` is 0)."""
        self._listener = socket.create_server((host, port), backlog=128)
        self._listener.setblocking(False)
        self._loop.add_reader(self._listener.fileno(), self._accept)
        return self._listener.getsockname()[1]

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # out of descriptors: wait a moment rather than spin
                sys.stderr.write(f"rh server: the TLS port cannot accept a connection ({exc}); trying again in 1 s\n")
                self._loop.remove_reader(self._listener.fileno())
                self._loop.call_later(1.0, self._loop.add_reader, self._listener.fileno(), self._accept)
                return
            if len(self._pending) >= MAX_PENDING:  # the oldest still unproven makes room
                oldest = next(iter(self._pending))
                del self._pending[oldest]
                oldest.cancel()
            if len(self._pending) + len(self._admitted) >= MAX_CONNECTIONS:
                connection.close()
                continue
            connection.setblocking(False)
            task = self._loop.create_task(self._serve(connection))
            self._pending[task] = None
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task) -> None:
        self._pending.pop(task, None)
        self._admitted.discard(task)

    async def _serve(self, connection: socket.socket) -> None:
        task = asyncio.current_task()
        writer = target = None
        try:
            async with asyncio.timeout(PRE_AUTH_SECONDS):
                reader = asyncio.StreamReader()
                protocol = asyncio.StreamReaderProtocol(reader)
                transport, _ = await self._loop.connect_accepted_socket(
                    lambda: protocol, connection, ssl=self._context, ssl_handshake_timeout=PRE_AUTH_SECONDS)
                writer = asyncio.StreamWriter(transport, protocol, reader, self._loop)
                nonce = secrets.token_bytes(NONCE_BYTES)
                writer.write(GREETING + nonce)
                proof = await reader.readexactly(PROOF_BYTES)  # all that is read before the secret is proven
                if not hmac.compare_digest(proof, proof_of_secret(self._secret, nonce)):
                    return
            writer.write(ADMITTED)
            if task in self._pending:  # (else it was replaced meanwhile, and is being cancelled)
                del self._pending[task]
                self._admitted.add(task)
            first = await reader.read(1)  # both protocols' clients speak first
            port = self._target_port if first == ZMTP_SIGNATURE_START else self._http_port()
            if not first or port is None:
                return
            target_reader, target = await asyncio.open_connection("127.0.0.1", port)
            target.write(first)
            await asyncio.gather(_pump(reader, target), _pump(target_reader, writer))
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            # abort, not close: a TLS close waits for the peer's goodbye, reading (and dropping)
            # whatever else it sends meanwhile
            for end in (writer, target):
                if end is not None:
                    end.transport.abort()
            if writer is None:
                connection.close()

    def close(self) -> None:
        if self._listener is not None:
            self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
        for task in [*self._pending, *self._admitted]:
            task.cancel()


async def serve_front_door(host: str, port: int, cert_path: str, key_path: str, target_port: int,
                           secret: bytes, http_port: Callable[[], int | None] = lambda: None
                           ) -> tuple[FrontDoor, int]:
    """Accept TLS on ``host:port`` and forward each connection that proves ``secret`` to
    ``127.0.0.1:target_port``, or its HTTP to ``http_port()`` (see :class:`FrontDoor`); returns the
    door and the port it listens on."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_path, key_path)
    door = FrontDoor(context, secret, target_port, http_port)
    return door, door.open(host, port)


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
                    challenge = _read_exactly(tls, len(GREETING) + NONCE_BYTES)[len(GREETING):]
                    tls.sendall(proof_of_secret(self._secret, challenge))
                    admitted = _read_exactly(tls, len(ADMITTED)) == ADMITTED
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
                tunnel = PinnedTunnel(host, int(port), self.tls_fingerprint, self.secret)
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

    return TLSCluster


def tls_cluster(name: str, address: str, tls_fingerprint: str, secret: str):
    """A cluster reached through a server's ``--expose`` TLS port (see the module docstring)."""
    if not secret:
        raise ValueError("a TLS cluster needs the cluster's secret (the contents of <state dir>/secret there)")
    if not str(tls_fingerprint).lower().startswith("sha256:"):
        raise ValueError(f"tls_fingerprint must be 'sha256:<hex>' as the server reports it, not {tls_fingerprint!r}")
    return _tls_cluster_class()(name=name, address=address, tls_fingerprint=tls_fingerprint, secret=secret)
