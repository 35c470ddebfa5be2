"""ZeroMQ sockets driven by the asyncio loop without a future per message.

pyzmq's own asyncio wrapper costs a few hundred microseconds per request here; reading in a loop
whenever the socket's file descriptor signals, and sending without blocking, costs a few tens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import zmq
from zmq.backend import Socket as _BaseSocket

from rh_core.wire.frames import recv_frames, send_frames

_POLLIN, _NOBLOCK, _EVENTS = int(zmq.POLLIN), int(zmq.NOBLOCK), int(zmq.EVENTS)  # plain ints: see rh_core.client.connection


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
