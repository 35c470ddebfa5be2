"""Messages between processes of one machine over a Unix socket, without ZeroMQ.

The server talks to each ``process`` worker over a socket pair it made when it spawned the worker,
and to clients on its own machine over its link socket (``DIR/link.sock``). A message written
straight to a socket wakes its reader directly, where a ZeroMQ message also passes through an I/O
thread at each end: on this machine that halves a round trip (BENCHMARKS.md, "Latency").
ZeroMQ stays the protocol for every client on another machine.
"""

from __future__ import annotations

import io
import os
import pickle
import select
import socket
import struct
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from rh_core.errors import ProtocolError
from rh_core.serialize import OUT_OF_BAND_MIN

if TYPE_CHECKING:
    import asyncio

STALL_SECONDS = 5  # how long a worker's message may stop half-way before the server gives up on it


def bound_stalls(sock: socket.socket, seconds: float = STALL_SECONDS) -> None:
    """Make a read or write that makes no progress for ``seconds`` fail: the server reads and
    writes its links blocking, in its event loop, so a peer that hangs must not hold it longer."""
    limit = struct.pack("ll", int(seconds), int(seconds % 1 * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)


class _DataOnly(pickle.Unpickler):
    """Loads plain data only: a message naming any class or function is refused, so reading what a
    worker or client sends can never run code in the server."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"a link message may hold plain data only, not {module}.{name}")


def as_frame(buffer: Any) -> bytes | pickle.PickleBuffer:
    """Small buffers go inside the message's pickle; large ones (wrapped) after it, uncopied."""
    view = memoryview(buffer)
    return pickle.PickleBuffer(buffer) if view.nbytes >= OUT_OF_BAND_MIN else view.tobytes()


class Link:
    """One end of a Unix socket between two processes of one machine.

    A message is a tuple of plain values (str, int, bytes, lists, dicts), pickled with protocol 5
    and sent with :class:`multiprocessing.connection.Connection`'s framing; buffers of at least
    ``OUT_OF_BAND_MIN`` bytes follow the pickle as messages of their own instead of being copied
    into it, and the reader takes exactly as many as the pickle asks for.
    """

    def __init__(self, fd: int):
        self._connection = Connection(fd)
        self._poller = select.poll()  # Connection.poll() builds a selector on every call
        self._poller.register(fd, select.POLLIN)

    def fileno(self) -> int:
        return self._connection.fileno()

    def send(self, message: tuple) -> None:
        large: list[pickle.PickleBuffer] = []
        stream = pickle.dumps(message, protocol=5, buffer_callback=large.append)
        self._connection.send_bytes(stream)
        for buffer in large:
            self._connection.send_bytes(buffer.raw())

    def receive(self) -> tuple:
        """The next message; blocks until it has arrived whole. Raises EOFError when the other end is closed."""
        stream = self._connection.recv_bytes()
        # Pickle pulls one buffer from this iterator per out-of-band buffer it meets, and no more.
        large_buffers = iter(self._connection.recv_bytes, None)
        return _DataOnly(io.BytesIO(stream), buffers=large_buffers).load()

    def send_envelope(self, envelope: bytes, frames: Sequence[Any]) -> None:
        """Send a request or reply of the client protocol (see :mod:`rh_core.server`): its JSON
        envelope and the frames after it."""
        self.send((envelope, [as_frame(frame) for frame in frames]))

    def receive_envelope(self) -> tuple[bytes, list[bytes]]:
        """The next ``(envelope, frames)`` of the client protocol. Raises ProtocolError when a
        message arrived whole but has another shape (the link can go on), and what :meth:`receive`
        raises when it cannot be read."""
        message = self.receive()
        if not (isinstance(message, tuple) and len(message) == 2 and isinstance(message[1], list)
                and all(isinstance(frame, bytes) for frame in message[1])):
            raise ProtocolError("malformed request message")
        return message

    def watch(self, loop: asyncio.AbstractEventLoop, on_readable: Callable[..., None], *args: Any) -> None:
        """Have ``loop`` call ``on_readable(*args)`` whenever a message starts arriving. uvloop makes a
        watched descriptor non-blocking; it is set back, for a message is read whole once it starts
        arriving (its writer sends it at once, and :func:`bound_stalls` bounds a stall)."""
        loop.add_reader(self.fileno(), on_readable, *args)
        os.set_blocking(self.fileno(), True)

    def ready(self, timeout: float) -> bool:
        """Whether a message has (started to) arrive, or the other end closed, waiting up to ``timeout`` seconds."""
        return bool(self._poller.poll(timeout * 1000))

    def close(self) -> None:
        self._connection.close()
