"""Frames on a ZeroMQ socket, as both client and server send and read them: multipart messages
without pyzmq's per-frame Python layer, the handshake that proves the cluster's secret, and long
frames cut into pieces no longer than what the server reads before a request is authenticated."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rh_core import errors

# pyzmq's send_multipart/recv_multipart wrap every frame in Python and do arithmetic on enum flags,
# which costs more than libzmq's own send; these call its Cython layer with plain int flags.
_SNDMORE = 2  # zmq.SNDMORE
_zmq_socket: Any = None  # zmq.backend.Socket, imported on first use: `import rh_core` stays fast


def _base_socket() -> Any:
    global _zmq_socket
    if _zmq_socket is None:
        from zmq.backend import Socket

        _zmq_socket = Socket
    return _zmq_socket


def send_frames(socket: Any, frames: Sequence, flags: int = 0) -> None:
    """``socket.send_multipart(frames, flags, copy=False)`` without pyzmq's per-frame Python layer
    (frames under ``socket.copy_threshold`` bytes are still copied)."""
    send, more = _base_socket().send, flags | _SNDMORE
    for frame in frames[:-1]:
        send(socket, frame, more, False)
    send(socket, frames[-1], flags, False)


def recv_frames(socket: Any, flags: int = 0) -> list:
    """``socket.recv_multipart(flags, copy=False)`` without pyzmq's per-frame Python layer."""
    recv = _base_socket().recv
    frame = recv(socket, flags, False)
    frames = [frame]
    while frame.more:
        frame = recv(socket, 0, False)
        frames.append(frame)
    return frames


SECRET_FILE = "secret"  # in a server's state directory, owner-only: every request must carry it

# The ZeroMQ port reads no frame longer than rh_core.wire.link.ENVELOPE_MAX_BYTES, the link socket's
# limit for what is read before a request is authenticated: on this port the proof is the
# connection's handshake (ZMTP PLAIN, the secret as password, checked by the server's ZAP handler),
# and libzmq checks each frame's announced size before reading it (ZMQ_MAXMSGSIZE), so the
# handshake's frames are the only ones a stranger can send. libzmq holds authenticated clients to
# the limit too, so a client sends a longer frame in pieces (:func:`split_frames`), which the
# server joins once it has authenticated the request.
_PLAIN_USERNAME = b"rh"


def authenticate_zmq(socket: Any, secret: str | None) -> None:
    """Make a ZeroMQ client socket prove ``secret`` in its handshake, as the server requires of
    every connection (call before ``connect``)."""
    socket.plain_username = _PLAIN_USERNAME
    socket.plain_password = (secret or "").encode()


def split_frames(frames: Sequence[Any]) -> tuple[list[Any], list[int] | None]:
    """``frames`` with each one longer than ``ENVELOPE_MAX_BYTES`` cut into pieces of at most that
    size (views, not copies), and how many pieces each frame became (None when none was cut)."""
    from rh_core.wire.link import ENVELOPE_MAX_BYTES

    pieces: list[Any] = []
    counts: list[int] = []
    for frame in frames:
        view = memoryview(frame)
        if view.nbytes <= ENVELOPE_MAX_BYTES:
            pieces.append(frame)
            counts.append(1)
            continue
        view = view.cast("B")
        cut = [view[start:start + ENVELOPE_MAX_BYTES] for start in range(0, view.nbytes, ENVELOPE_MAX_BYTES)]
        pieces += cut
        counts.append(len(cut))
    return pieces, (counts if len(pieces) > len(counts) else None)


def join_frames(pieces: Sequence[Any], counts: Any) -> list[Any]:
    """The frames :func:`split_frames` cut into ``pieces``, whole again; ``counts`` comes from the
    request, so a wrong one is a ProtocolError."""
    if (not isinstance(counts, list) or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in counts)
            or sum(counts) != len(pieces)):
        raise errors.ProtocolError("malformed request: 'pieces' must count the pieces of each frame, adding up to "
                                   "the frames sent")
    frames, start = [], 0
    for count in counts:
        frames.append(pieces[start] if count == 1 else b"".join(pieces[start:start + count]))
        start += count
    return frames
