"""Reaching a server without SSH: its TLS front door (the client's end is :mod:`rh_core.clusters.tls`).

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
connection has fresh keys.) Past the door, ZeroMQ asks for the secret again (see rh_core.server.server). An admitted connection
that speaks HTTP rather than ZeroMQ goes to the server's HTTP door instead (endpoints and ASGI
apps, which check their own bearer token): clients reach it through their :class:`PinnedTunnel`.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import secrets
import socket
import ssl
import sys
from collections.abc import Callable

from rh_core.support.files import check_private_path, write_atomically
from rh_core.wire.handshake import ADMITTED, GREETING, NONCE_BYTES, PROOF_BYTES, fingerprint_of, proof_of_secret, pump

#: How long a connection to the front door has to finish TLS and prove the secret.
PRE_AUTH_SECONDS = 10
#: Connections the front door holds at once, and of those how many may still be proving the secret.
MAX_CONNECTIONS, MAX_PENDING = 256, 16


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
            await asyncio.gather(pump(reader, target), pump(target_reader, writer))
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
