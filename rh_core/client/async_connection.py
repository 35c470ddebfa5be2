"""The client side of the wire protocol for asyncio programs: requests on the caller's event loop.

One :class:`AsyncConnection` per event loop and server carries every request the loop makes at
once, told apart by their ids, with no thread per call: a reader task hands each reply to the
request waiting for it. It speaks the same protocol as :class:`rh_core.client.connection.Connection`
(the link socket on the server's machine, ZeroMQ elsewhere) and reports a lost server the same
way: the link's end at once, a server that stops answering within a heartbeat (a ping on the same
connection) and, for a server elsewhere, whatever the cluster's liveness check finds, asked every
half second while requests wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import orjson

from rh_core import errors
from rh_core.client.connection import (
    HEARTBEAT_SECONDS,
    LINK_SCHEME,
    PING_TIMEOUT,
    POLL_SLICE_MS,
    Reply,
    rebuild_failure,
    take_output,
    zmq_request,
)
from rh_core.client.output import write_line
from rh_core.errors import ConnectionLostError
from rh_core.wire.link import ENVELOPE_MAX_BYTES, FRAME_COUNT, FRAME_LENGTH, LONG_FRAME_LENGTH, pack_envelope
from rh_core.wire.messages import OutputLine

OnLog = Callable[[OutputLine], None]


class _Waiting:
    """A request waiting for its replies: its final reply's future, its output's sink and, for a
    request that streams items, the queue they go to."""

    __slots__ = ("final", "items", "on_log")

    def __init__(self, final: asyncio.Future[Reply], on_log: OnLog, items: asyncio.Queue[Reply] | None):
        self.final, self.on_log, self.items = final, on_log, items


class AsyncConnection:
    """Talks to one server address from one event loop; open it with :meth:`open`."""

    def __init__(self, address: str, secret: str, liveness: Callable[[], str | None]):
        self.address = address
        self._secret = secret
        self._liveness = liveness
        self._ids = itertools.count()
        self._waiting: dict[int | str, _Waiting] = {}
        self._carrier: _LinkCarrier | _ZmqCarrier | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self.lost: ConnectionLostError | None = None  # set once the server is gone: open a new connection

    @classmethod
    async def open(cls, address: str, secret: str | None, liveness: Callable[[], str | None]) -> AsyncConnection:
        connection = cls(address, secret or "", liveness)
        if address.startswith(LINK_SCHEME):
            connection._carrier = await _LinkCarrier.open(address[len(LINK_SCHEME):], connection._on_message,
                                                          connection._on_closed)
        else:
            connection._carrier = _ZmqCarrier(address, connection._secret, connection._on_message,
                                              connection._on_closed)
        return connection

    async def request(self, op: str, header: dict[str, Any], frames: Sequence[Any] = (), *,
                      on_log: OnLog = write_line) -> Reply:
        """Send one request and wait for its final reply, passing its output lines to ``on_log``;
        ``fail`` replies are raised as the error they name."""
        waiting = self._send(op, header, frames, on_log, None)
        return await waiting.final

    async def stream(self, op: str, header: dict[str, Any], frames: Sequence[Any] = (), *,
                     on_log: OnLog = write_line) -> AsyncIterator[Reply]:
        """Like :meth:`request` for a request whose replies include ``item`` replies: yields each,
        then the final reply last."""
        items: asyncio.Queue[Reply] = asyncio.Queue()
        waiting = self._send(op, header, frames, on_log, items)
        while True:
            getting = asyncio.ensure_future(items.get())
            await asyncio.wait((getting, waiting.final), return_when=asyncio.FIRST_COMPLETED)
            if getting.done():
                yield getting.result()
                continue
            getting.cancel()
            while not items.empty():
                yield items.get_nowait()
            yield waiting.final.result()  # raises a failure
            return

    def send_soon(self, op: str, header: dict[str, Any]) -> None:
        """Send a request whose reply nobody waits for (a cancel as the caller's task is cancelled)."""
        if self.lost is None:
            with contextlib.suppress(Exception):
                self._send(op, header, (), lambda line: None, None).final.add_done_callback(_ignore)

    def close(self) -> None:
        if self._carrier is not None:
            self._carrier.close()
        if self._watchdog is not None:
            self._watchdog.cancel()

    # --- inside --------------------------------------------------------------------------------

    def _send(self, op: str, header: dict[str, Any], frames: Sequence[Any], on_log: OnLog,
              items: asyncio.Queue[Reply] | None) -> _Waiting:
        if self.lost is not None:
            raise self.lost
        assert self._carrier is not None
        request_id = next(self._ids)
        waiting = _Waiting(asyncio.get_running_loop().create_future(), on_log, items)
        self._waiting[request_id] = waiting
        waiting.final.add_done_callback(lambda _: self._waiting.pop(request_id, None))
        envelope = orjson.dumps({"id": request_id, "op": op, "auth": self._secret, **header})
        try:
            self._carrier.send(envelope, frames)
        except OSError as exc:
            self._lose(f"its socket refused the request ({exc})", sent=False)
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.ensure_future(self._watch())
        return waiting

    def _on_message(self, envelope: bytes, frames: list) -> None:
        fields = orjson.loads(envelope)
        waiting = self._waiting.get(fields.get("id"))
        if waiting is None or waiting.final.done():
            return  # a late reply to a request given up on
        kind = fields.pop("kind")
        if kind == "log":
            waiting.on_log(OutputLine.from_reply(fields, frames[0]))
            return
        if kind == "item" and waiting.items is not None:
            waiting.items.put_nowait(Reply(kind, fields, frames))
            return
        frames = take_output(fields, frames, waiting.on_log)
        if kind == "fail":
            waiting.final.set_exception(rebuild_failure(fields))
        elif kind == "item":
            waiting.final.set_exception(errors.ProtocolError("the server streams items in reply to a request "
                                                             "that does not read them"))
        else:
            waiting.final.set_result(Reply(kind, fields, frames))

    def _on_closed(self) -> None:
        """The carrier's end: the server closed the connection, which mostly means it died."""
        asyncio.ensure_future(self._lose_with_reason("it closed the connection"))

    async def _lose_with_reason(self, fallback: str) -> None:
        deadline = asyncio.get_running_loop().time() + 1.0
        reason = None
        while reason is None and asyncio.get_running_loop().time() < deadline:
            reason = await asyncio.to_thread(self._liveness)
            if reason is None:
                await asyncio.sleep(0.02)
        self._lose(reason or fallback)

    def _lose(self, reason: str, sent: bool = True) -> None:
        """The server is gone: every waiting request fails, now and later."""
        if self.lost is None:
            self.lost = ConnectionLostError(
                f"lost the cluster server at {self.address}: {reason}. The next call reconnects, or starts a new "
                "server; finished .remote() results are kept on the cluster's disk and stay fetchable by key.")
            self.lost.sent = sent
        for waiting in list(self._waiting.values()):
            if not waiting.final.done():
                waiting.final.set_exception(self.lost)
        self.close()

    async def _watch(self) -> None:
        """While requests wait: the cluster's liveness check every half second (in a thread: it may
        ping over the network), and a ping on this connection every ``HEARTBEAT_SECONDS``."""
        waited = 0.0
        while self._waiting and self.lost is None:
            await asyncio.sleep(POLL_SLICE_MS / 1000)
            waited += POLL_SLICE_MS / 1000
            reason = await asyncio.to_thread(self._liveness)
            if reason is None and waited >= HEARTBEAT_SECONDS:
                waited = 0.0
                ping = self._send("ping", {}, (), lambda line: None, None)
                try:
                    await asyncio.wait_for(asyncio.shield(ping.final), PING_TIMEOUT)
                except asyncio.TimeoutError:
                    reason = (f"it does not answer: no reply to a ping within {PING_TIMEOUT:g} s. Its process "
                              "lives, but is stopped (SIGSTOP, a debugger) or stuck; look at its log, or restart it")
                except Exception:  # noqa: BLE001 - lost meanwhile: _lose has said why
                    return
            if reason is not None:
                self._lose(reason)
                return


def _ignore(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it as never retrieved


class _LinkProtocol(asyncio.Protocol):
    """Reads client protocol messages (see :mod:`rh_core.wire.link`) off the server's link socket."""

    def __init__(self, on_message: Callable[[bytes, list], None], on_closed: Callable[[], None]):
        self._on_message, self._on_closed = on_message, on_closed
        self._buffer = bytearray()
        self._taken = 0
        self._envelope: bytes | None = None
        self._count = 0
        self._frames: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._taken = 0  # how much of the buffer the frames taken so far span; dropped once, at the end
        try:
            self._take_messages()
        finally:
            del self._buffer[:self._taken]

    def _take_messages(self) -> None:
        while (frame := self._next_frame()) is not None:
            if self._envelope is None:
                if len(frame) < FRAME_COUNT.size:
                    raise errors.ProtocolError("malformed reply message")
                (self._count,) = FRAME_COUNT.unpack_from(frame)
                self._envelope = frame[FRAME_COUNT.size:]
            else:
                self._frames.append(frame)
            if len(self._frames) == self._count:
                envelope, frames = self._envelope, self._frames
                self._envelope, self._frames = None, []
                self._on_message(envelope, frames)

    def _next_frame(self) -> bytes | None:
        """The next whole frame in the buffer (past what was taken); None until one has arrived."""
        buffer, start = self._buffer, self._taken
        if len(buffer) < start + FRAME_LENGTH.size:
            return None
        (size,) = FRAME_LENGTH.unpack_from(buffer, start)
        start += FRAME_LENGTH.size
        if size == -1:
            if len(buffer) < start + LONG_FRAME_LENGTH.size:
                return None
            (size,) = LONG_FRAME_LENGTH.unpack_from(buffer, start)
            start += LONG_FRAME_LENGTH.size
        if self._envelope is None and size > ENVELOPE_MAX_BYTES:
            raise errors.ProtocolError(f"a reply envelope of {size} bytes is beyond the limit of {ENVELOPE_MAX_BYTES}")
        if len(buffer) < start + size:
            return None
        self._taken = start + size
        return bytes(buffer[start:start + size])

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_closed()


class _LinkCarrier:
    def __init__(self, transport: asyncio.Transport):
        self._transport = transport

    @classmethod
    async def open(cls, path: str, on_message: Callable[[bytes, list], None],
                   on_closed: Callable[[], None]) -> _LinkCarrier:
        from rh_core.support.files import check_socket_peer

        transport, _ = await asyncio.get_running_loop().create_unix_connection(
            lambda: _LinkProtocol(on_message, on_closed), path)
        try:
            check_socket_peer(transport.get_extra_info("socket"), path)
        except BaseException:
            transport.abort()
            raise
        return cls(transport)

    def send(self, envelope: bytes, frames: Sequence[Any]) -> None:
        if self._transport.is_closing():
            raise OSError("the link socket is closed")
        self._transport.writelines(pack_envelope(envelope, frames))

    def close(self) -> None:
        self._transport.close()


class _ZmqCarrier:
    """Messages through a ZeroMQ DEALER socket of :mod:`zmq.asyncio`, read by a task of its own."""

    def __init__(self, address: str, secret: str, on_message: Callable[[bytes, list], None],
                 on_closed: Callable[[], None]):
        import zmq
        import zmq.asyncio

        from rh_core.wire.frames import authenticate_zmq

        self._socket = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        authenticate_zmq(self._socket, secret)
        self._socket.connect(address)
        self._on_message, self._on_closed = on_message, on_closed
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            while True:
                message = await self._socket.recv_multipart(copy=False)
                self._on_message(message[0].bytes, [frame.buffer for frame in message[1:]])
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the socket was closed under us
            self._on_closed()

    def send(self, envelope: bytes, frames: Sequence[Any]) -> None:
        self._socket.send_multipart(zmq_request(envelope, frames), copy=False)

    def close(self) -> None:
        self._reader.cancel()
        self._socket.close(linger=0)
