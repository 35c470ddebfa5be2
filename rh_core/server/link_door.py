"""The door clients on this machine come in by: the server's listening Unix socket (``link.sock``),
which hands each connection to a :class:`~rh_core.server.link_server.ServerLinkProtocol`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import sys
from collections.abc import Callable
from typing import Any

from rh_core.errors import ServerStartError
from rh_core.server.link_server import ServerLinkProtocol
from rh_core.wire import shm

CLIENT_STALL_SECONDS = 1  # how long a link client may take none of its replies before it is dropped
SHM_SWEEP_DELAY = 1.0  # after a local client leaves, when its orphaned shared-memory segments are removed
#: Descriptors kept free of link clients, for workers, log files and ZeroMQ's own (libzmq aborts
#: the process when it cannot get one): a quarter of the limit, at least this many.
RESERVED_DESCRIPTORS = 64


class LinkDoor:
    """The listening socket at ``path`` and the link clients it let in.

    It owns when to accept: never more clients than the process's descriptors allow (the rest wait
    in the socket's backlog until one leaves), and after a failed accept a pause rather than a spin.
    When a client leaves and the server passes buffers through shared memory (``shm_prefix``), it
    removes the segments their owner left behind, since a killed client cannot.

    The server hands it its event loop, how to ``authenticate`` and ``serve`` a request (see
    :class:`ServerLinkProtocol`), and ``stopping``: once that is true, clients that leave make no
    room for new ones.
    """

    def __init__(self, path: str, loop: asyncio.AbstractEventLoop,
                 authenticate: Callable[[ServerLinkProtocol, bytes], Any],
                 serve: Callable[[ServerLinkProtocol, Any, list], None],
                 shm_prefix: str | None, stopping: Callable[[], bool]):
        self.path = path
        self._loop = loop
        self._authenticate, self._serve = authenticate, serve
        self._shm_prefix = shm_prefix
        self._stopping = stopping
        self._socket: socket.socket  # once open() has bound it
        self._links: set[ServerLinkProtocol] = set()
        self._connecting: set[asyncio.Future] = set()  # held here so the loop does not drop them
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._capacity = limit - max(RESERVED_DESCRIPTORS, limit // 4) if limit > 0 else 1 << 20
        self._accepting = False
        self._shm_sweep: asyncio.TimerHandle | None = None

    def open(self) -> None:
        """Listen at ``path``; raises :class:`ServerStartError` when the path cannot be a socket's."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # left by a server that died
        door = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            door.bind(self.path)
        except OSError as exc:
            door.close()
            raise ServerStartError(
                f"cannot listen on {self.path}: {exc}. A Unix socket's path holds at most 107 bytes; "
                "give the server a shorter --state-dir (RH_HOME for the local cluster)"
            ) from None
        door.listen(128)
        door.setblocking(False)
        self._socket = door
        self._accept_again()

    def close(self) -> None:
        """Stop listening, remove the socket's path and close every client's connection."""
        self._stop_accepting()
        self._socket.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        for peer in list(self._links):
            peer.close()

    def _accept_again(self) -> None:
        if not self._accepting and self._socket.fileno() >= 0:
            self._accepting = True
            self._loop.add_reader(self._socket.fileno(), self._accept)

    def _stop_accepting(self) -> None:
        if self._accepting:
            self._accepting = False
            self._loop.remove_reader(self._socket.fileno())

    def _accept(self) -> None:
        while True:
            if len(self._links) >= self._capacity:  # more wait in the door's backlog until some leave
                sys.stderr.write(f"rh server: {len(self._links)} local clients are connected, the most its "
                                 "descriptors allow; others wait until one leaves\n")
                self._stop_accepting()
                return
            try:
                connection, _ = self._socket.accept()
            except BlockingIOError:  # none left waiting
                return
            except OSError as exc:  # out of file descriptors: wait a moment rather than spin
                sys.stderr.write(f"rh server: cannot accept a local client ({exc}); trying again in 1 s\n")
                self._stop_accepting()
                self._loop.call_later(1.0, self._accept_again)
                return
            connection.setblocking(False)
            peer = ServerLinkProtocol(self._authenticate, self._serve, self._forget, CLIENT_STALL_SECONDS)
            self._links.add(peer)
            connecting = asyncio.ensure_future(
                self._loop.connect_accepted_socket(lambda peer=peer: peer, sock=connection))
            self._connecting.add(connecting)
            connecting.add_done_callback(self._connecting.discard)

    def _forget(self, peer: ServerLinkProtocol) -> None:
        self._links.discard(peer)
        if len(self._links) < self._capacity and not self._stopping():
            self._accept_again()
        if self._shm_prefix is not None and self._shm_sweep is None:
            # The client may have been killed with shared-memory segments of its own: once the
            # dust settles, remove those whose owner is gone (in a thread: it opens each one).
            self._shm_sweep = self._loop.call_later(SHM_SWEEP_DELAY, self._sweep_orphaned_segments)

    def _sweep_orphaned_segments(self) -> None:
        self._shm_sweep = None

        def done(removed: asyncio.Future) -> None:
            if removed.result():
                sys.stderr.write(f"rh server: removed {len(removed.result())} shared-memory segments of clients that "
                                 "are gone\n")

        self._loop.run_in_executor(None, shm.sweep_orphans, self._shm_prefix).add_done_callback(done)
