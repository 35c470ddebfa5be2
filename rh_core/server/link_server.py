"""The server's end of its link clients' connections (see :mod:`rh_core.wire.link`): an asyncio
protocol in the server's event loop, so that no client, however slowly it reads or writes, holds
the loop, and nothing of a request is read in bulk before its envelope is authenticated."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from rh_core.wire.heap import fresh_bytes
from rh_core.wire.link import (
    COALESCE_MAX,
    ENVELOPE_MAX_BYTES,
    FRAME_COUNT,
    FRAME_LENGTH,
    LONG_FRAME_LENGTH,
    pack_envelope,
)


class ServerLinkProtocol(asyncio.BufferedProtocol):
    """The server's end of one link client's connection, in its event loop, never blocking it.

    Reads frames into a scratch buffer (a large frame straight into a buffer of its own) and hands
    each whole message to ``on_message(protocol, request, frames)`` once ``authenticate(protocol,
    envelope)`` accepted its first frame: it returns the parsed request, or None after answering
    with the reason. The rest of a refused message is read past but not kept (never a buffer for
    it). A first frame larger than :data:`ENVELOPE_MAX_BYTES` closes the connection at once. Writes queue in the transport, so a client that reads slowly delays only
    itself; one that takes none of its queue for ``stall_seconds`` is dropped.
    """

    def __init__(self, authenticate: Callable[[ServerLinkProtocol, bytes], Any],
                 on_message: Callable[[ServerLinkProtocol, Any, list], None],
                 on_closed: Callable[[ServerLinkProtocol], None], stall_seconds: float):
        self._authenticate, self._on_message, self._on_closed = authenticate, on_message, on_closed
        self._stall_seconds = stall_seconds
        self.transport: asyncio.Transport | None = None
        self._scratch = bytearray(2 * COALESCE_MAX)
        self._have = 0  # bytes of _scratch filled
        self._large_frame: bytes | None = None  # a large frame being read into a bytes object of its own
        self._large: memoryview | None = None  # ... through this view of its memory
        self._large_filled = 0
        self._skip = 0  # bytes of a refused message's large frame still to read past
        self._request: Any = None  # the message being read: its parsed envelope, once accepted
        self._refused = False  # the message being read was refused
        self._wanted = 0  # frames of it still to come
        self._frames: list = []
        self._stall_check: asyncio.TimerHandle | None = None
        self._queued = 0  # bytes ever queued for the client

    # --- reading -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._large is not None:
            return self._large[self._large_filled:]
        return memoryview(self._scratch)[self._have:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._large is not None:
            self._large_filled += nbytes
            if self._large_filled == len(self._large):
                self._large.release()
                frame, self._large, self._large_frame = self._large_frame, None, None
                self._frame_done(frame)
            return
        if self._skip:
            skipped = min(nbytes, self._skip)
            self._skip -= skipped
            start = self._have + skipped
            self._scratch[self._have:self._have + nbytes - skipped] = self._scratch[start:start + nbytes - skipped]
            nbytes -= skipped
            if not self._skip:
                self._frame_done(None)
        self._have += nbytes
        self._parse()

    def _parse(self) -> None:
        scratch, position = self._scratch, 0
        while self.transport is not None and not self.transport.is_closing() and not self._skip:
            available = self._have - position
            if available < FRAME_LENGTH.size:
                break
            (size,) = FRAME_LENGTH.unpack_from(scratch, position)
            header = FRAME_LENGTH.size
            if size == -1:
                if available < header + LONG_FRAME_LENGTH.size:
                    break
                (size,) = LONG_FRAME_LENGTH.unpack_from(scratch, position + header)
                header += LONG_FRAME_LENGTH.size
            first = self._request is None and not self._refused
            if size < 0 or (first and size > ENVELOPE_MAX_BYTES):
                self.close()
                return
            if header + size <= available:
                start = position + header
                position = start + size
                self._frame_done(None if self._refused else bytes(scratch[start:position]))
                continue
            if header + size > len(scratch):  # larger than the scratch buffer: read it apart
                partial = available - header
                if self._refused:
                    self._skip = size - partial
                else:
                    self._large_frame, self._large = fresh_bytes(size)
                    self._large[:partial] = scratch[position + header:self._have]
                    self._large_filled = partial
                position = self._have
            break
        remaining = self._have - position
        if position and remaining:
            scratch[:remaining] = scratch[position:self._have]
        self._have = remaining

    def _frame_done(self, frame: Any) -> None:
        if self._request is None and not self._refused:  # the first frame of a message
            if len(frame) < FRAME_COUNT.size:
                self.close()
                return
            (self._wanted,) = FRAME_COUNT.unpack_from(frame)
            self._request = self._authenticate(self, bytes(memoryview(frame)[FRAME_COUNT.size:]))
            self._refused, self._frames = self._request is None, []
        else:
            if not self._refused:
                self._frames.append(frame)
            self._wanted -= 1
        if self._wanted == 0:
            if self._refused:  # answered already; the connection reads on, as ZeroMQ's would
                self._refused = False
                return
            request, frames = self._request, self._frames
            self._request, self._frames = None, []
            self._on_message(self, request, frames)

    # --- writing -------------------------------------------------------------------------------

    def send(self, envelope: bytes, frames: Sequence[Any]) -> bool:
        """Queue one message; False when the client is gone."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        chunks = pack_envelope(envelope, frames)
        self._queued += sum(memoryview(chunk).nbytes for chunk in chunks)
        transport.writelines(chunks)
        return True

    def _taken(self) -> int:
        """How many bytes the client has taken of all that was queued for it."""
        return self._queued - self.transport.get_write_buffer_size()

    def pause_writing(self) -> None:
        self._watch_progress(self._taken())

    def _watch_progress(self, taken_before: int) -> None:
        def check() -> None:
            if self.transport is None or self.transport.is_closing():
                return
            taken = self._taken()
            if taken <= taken_before:  # not a byte taken for a whole stall period
                self.transport.abort()
            else:
                self._watch_progress(taken)

        self._stall_check = asyncio.get_running_loop().call_later(self._stall_seconds, check)

    def resume_writing(self) -> None:
        if self._stall_check is not None:
            self._stall_check.cancel()
            self._stall_check = None

    # --- ending --------------------------------------------------------------------------------

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.resume_writing()
        self.transport = None
        self._on_closed(self)
