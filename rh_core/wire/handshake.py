"""The exchange at a server's TLS front door, as both ends speak it (see
:mod:`rh_core.server.front_door` for the door and :mod:`rh_core.clusters.tls` for the client).

The door sends :data:`GREETING` and a fresh random challenge; the client answers with
:func:`proof_of_secret` of that challenge and reads :data:`ADMITTED` before anything else passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import socket
import ssl

CHUNK = 256 * 1024
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


def read_exactly(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes from a blocking socket, or fewer when it closes first."""
    data = b""
    while len(data) < size and (chunk := sock.recv(size - len(data))):
        data += chunk
    return data

async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()
