"""Messages between processes of one machine over a Unix socket, without ZeroMQ.

The server talks to each ``process`` worker over a socket pair it made when it spawned the worker
(:class:`Link`: tuples of plain data), and to clients on its own machine over its link socket
(``DIR/link.sock``: requests and replies of the client protocol, see :class:`ClientLink` and
:class:`ServerLinkProtocol`). A message written straight to a socket wakes its reader directly,
where a ZeroMQ message also passes through an I/O thread at each end: on this machine that halves
a round trip (BENCHMARKS.md, "Latency"). ZeroMQ stays the protocol for every client on another
machine.

Every frame on either kind of link has :mod:`multiprocessing.connection`'s framing: a 4-byte
big-endian length (-1 and an 8-byte length beyond 2 GiB), then that many bytes. A client protocol
message is one frame holding a 4-byte count and the JSON envelope, then ``count`` frames.
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
from rh_core.wire.serialize import OUT_OF_BAND_MIN

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


# -------------------------------------------------------------------------------------------------
# The client protocol over the link socket

#: A request's envelope is JSON of a few hundred bytes: a first frame larger than this is refused
#: before it is read, so nothing is read in bulk before the request is authenticated.
ENVELOPE_MAX_BYTES = 1 << 20
FRAME_LENGTH = struct.Struct("!i")
LONG_FRAME_LENGTH = struct.Struct("!Q")
FRAME_COUNT = struct.Struct("!I")
COALESCE_MAX = 64 * 1024  # frames up to this size go out in one write with their neighbours


def frame_header(size: int) -> bytes:
    if size <= 0x7FFFFFFF:
        return FRAME_LENGTH.pack(size)
    return FRAME_LENGTH.pack(-1) + LONG_FRAME_LENGTH.pack(size)


def pack_envelope(envelope: bytes, frames: Sequence[Any]) -> list[Any]:
    """A client protocol message as the buffers to write, in order: small frames are joined
    (one write for a whole small message), large ones stay views of the caller's buffers."""
    out: list[Any] = []
    small = bytearray(frame_header(FRAME_COUNT.size + len(envelope)))
    small += FRAME_COUNT.pack(len(frames))
    small += envelope
    for frame in frames:
        view = memoryview(frame).cast("B")
        small += frame_header(view.nbytes)
        if view.nbytes <= COALESCE_MAX:
            small += view
        else:
            out.append(bytes(small))
            out.append(view)
            small = bytearray()
    if small:
        out.append(bytes(small))
    return out


class ClientLink:
    """The client's end of a connection to the server's link socket: blocking, one thread's."""

    def __init__(self, sock: socket.socket):
        sock.setblocking(True)
        self._sock = sock
        self._poller = select.poll()
        self._poller.register(sock.fileno(), select.POLLIN)
        self._buffer = bytearray()  # received, not yet taken

    def fileno(self) -> int:
        return self._sock.fileno()

    def send_envelope(self, envelope: bytes, frames: Sequence[Any]) -> None:
        for chunk in pack_envelope(envelope, frames):
            self._sock.sendall(chunk)

    def ready(self, timeout: float) -> bool:
        """Whether a message has (started to) arrive, or the server closed, waiting up to ``timeout`` seconds."""
        return bool(self._buffer) or bool(self._poller.poll(timeout * 1000))

    def receive_envelope(self) -> tuple[bytes, list[bytes]]:
        """The next ``(envelope, frames)``; blocks until it has arrived whole. Raises EOFError when
        the server closed the connection, ProtocolError when what arrived is not a message."""
        first = self._frame(ENVELOPE_MAX_BYTES)
        if len(first) < FRAME_COUNT.size:
            raise ProtocolError("malformed reply message")
        (count,) = FRAME_COUNT.unpack_from(first)
        return bytes(first[FRAME_COUNT.size:]), [self._frame() for _ in range(count)]

    def _frame(self, limit: int | None = None) -> bytes:
        header = self._take(FRAME_LENGTH.size)
        (size,) = FRAME_LENGTH.unpack(header)
        if size == -1:
            (size,) = LONG_FRAME_LENGTH.unpack(self._take(LONG_FRAME_LENGTH.size))
        if size < 0 or (limit is not None and size > limit):
            raise ProtocolError(f"a link message frame of {size} bytes is beyond the limit of {limit}")
        return self._take(size)

    def _take(self, size: int) -> bytes:
        if len(self._buffer) >= size:
            taken = bytes(self._buffer[:size])
            del self._buffer[:size]
            return taken
        if size > COALESCE_MAX:  # large: straight into a bytes object of its own, without growing ours
            from rh_core.wire.heap import fresh_bytes

            out, view = fresh_bytes(size)
            with view:
                filled = len(self._buffer)
                view[:filled] = self._buffer
                self._buffer.clear()
                while filled < size:
                    got = self._sock.recv_into(view[filled:])
                    if not got:
                        raise EOFError("the server closed the link")
                    filled += got
            return out
        while len(self._buffer) < size:
            chunk = self._sock.recv(max(COALESCE_MAX, size))
            if not chunk:
                raise EOFError("the server closed the link")
            self._buffer += chunk
        return self._take(size)

    def close(self) -> None:
        self._sock.close()
