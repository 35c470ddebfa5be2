"""ZeroMQ sockets driven by the asyncio loop without a future per message.

pyzmq's own asyncio wrapper costs a few hundred microseconds per request here; reading in a loop
whenever the socket's file descriptor signals, and sending without blocking, costs a few tens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import zmq
from zmq.backend import Socket as _BaseSocket

# Plain ints: arithmetic on pyzmq's enum flags builds enum objects, a few µs every time.
_POLLIN, _NOBLOCK, _SNDMORE, _EVENTS = int(zmq.POLLIN), int(zmq.NOBLOCK), int(zmq.SNDMORE), int(zmq.EVENTS)


def send_frames(socket: zmq.Socket, frames: Sequence, flags: int = 0) -> None:
    """``socket.send_multipart(frames, flags, copy=False)`` without pyzmq's per-frame Python layer,
    which costs more than libzmq's own send (frames under ``socket.copy_threshold`` are still copied)."""
    send, more = _BaseSocket.send, flags | _SNDMORE
    for frame in frames[:-1]:
        send(socket, frame, more, False)
    send(socket, frames[-1], flags, False)


def recv_frames(socket: zmq.Socket, flags: int = 0) -> list[zmq.Frame]:
    """``socket.recv_multipart(flags, copy=False)`` without pyzmq's per-frame Python layer."""
    recv = _BaseSocket.recv
    frame = recv(socket, flags, False)
    frames = [frame]
    while frame.more:
        frame = recv(socket, 0, False)
        frames.append(frame)
    return frames


class Channel:
    """Calls ``on_message(frames)`` for every message the socket receives; ``send`` never blocks."""

    def __init__(self, socket: zmq.Socket, on_message: Callable[[list[zmq.Frame]], None]):
        self.socket = socket
        self._on_message = on_message
        self._loop = asyncio.get_running_loop()
        self._fd = socket.getsockopt(zmq.FD)
        self._loop.add_reader(self._fd, self._drain)
        self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        # The descriptor is edge-triggered: read everything queued, or the next signal never comes.
        socket, events = self.socket, _BaseSocket.get
        while not socket.closed and events(socket, _EVENTS) & _POLLIN:
            self._on_message(recv_frames(socket, _NOBLOCK))

    def send(self, frames: Sequence) -> None:
        send_frames(self.socket, frames, _NOBLOCK)
        # A send can consume the descriptor's edge for messages that arrived meanwhile: read those
        # soon. Reading ZMQ_EVENTS re-arms the descriptor for the ones that come later (pyzmq's
        # own asyncio sockets do the same), so no drain is scheduled when nothing is waiting.
        if _BaseSocket.get(self.socket, _EVENTS) & _POLLIN:
            self._loop.call_soon(self._drain)

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
        self.socket.close(linger=0)
