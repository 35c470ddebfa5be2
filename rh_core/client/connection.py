"""The client side of the wire protocol (see :mod:`rh_core.server.server`).

Each thread gets its own DEALER socket, so threads never wait on each other. While a reply is
outstanding the client polls in short slices and asks the cluster whether its server is still
alive, so a dead server is reported within seconds instead of hanging; every
``HEARTBEAT_SECONDS`` (sooner for a call with a timeout) it also pings the server, so a server that
lives but does not answer (stopped with SIGSTOP, wedged) is reported too.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

from rh_core import errors
from rh_core.client.output import write_line
from rh_core.errors import ConnectionLostError, RhError
from rh_core.wire.frames import (
    SECRET_FILE,
    authenticate_zmq,
    recv_frames,
    send_frames,
    split_frames,
)
from rh_core.wire.messages import OutputLine, output_from_reply

POLL_SLICE_MS = 500
#: While a request waits for its reply, how often the client makes sure the server still answers
#: (a ping on a connection of its own): a stopped or wedged server is reported, never waited on.
HEARTBEAT_SECONDS = 30.0
PING_TIMEOUT = 5.0  # how long such a ping may take before the server counts as not answering


class Reply:
    __slots__ = ("frames", "header", "kind")

    def __init__(self, kind: str, header: dict[str, Any], frames: list):
        self.kind, self.header, self.frames = kind, header, frames


LINK_SCHEME = "link://"  # an address ``link:///path/to/link.sock``: the server's link socket (rh_core.wire.link)


class _ZmqCarrier:
    """Messages through a ZeroMQ DEALER socket: how clients on other machines reach the server
    (through an SSH tunnel or TLS)."""

    def __init__(self, address: str, secret: str):
        import zmq  # here, not at module level: `import rh_core` stays fast

        self._again = zmq.Again
        self._address = address
        self._socket = zmq.Context.instance().socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.RCVTIMEO, POLL_SLICE_MS)  # a receive gives up after a slice
        authenticate_zmq(self._socket, secret)
        # A refused handshake shows only as an event: watched, so a wrong secret is named at once.
        self._refusals = self._socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        self._socket.connect(address)

    def send(self, envelope: bytes, frames: Sequence[Any]) -> None:
        send_frames(self._socket, zmq_request(envelope, frames))

    def receive(self) -> tuple[Any, list] | None:
        """The next message as ``(envelope, frames)``, or None when none came within a slice."""
        try:
            message = recv_frames(self._socket)
        except self._again:
            if self._refusals.poll(0):
                raise errors.AuthenticationError(
                    f"the server at {self._address} refused this client's secret when it connected; clients read it "
                    "from the server's state directory on the cluster, so check that it is that server's secret"
                ) from None
            return None
        return message[0].buffer, [frame.buffer for frame in message[1:]]

    def close(self) -> None:
        self._socket.disable_monitor()
        self._refusals.close(linger=0)
        self._socket.close(linger=0)


def zmq_request(envelope: bytes, frames: Sequence[Any]) -> list[Any]:
    """A request's ZeroMQ frames: the envelope, then the frames, large ones in pieces (the envelope
    then says how many each became). An envelope a server would not read is refused here."""
    pieces, counts = split_frames(frames)
    if counts is not None:
        import orjson

        envelope = orjson.dumps({**orjson.loads(envelope), "pieces": counts})
    from rh_core.wire.link import ENVELOPE_MAX_BYTES

    if len(envelope) > ENVELOPE_MAX_BYTES:
        raise RhError(f"this request's header is {len(envelope)} bytes, more than the {ENVELOPE_MAX_BYTES} a "
                      "server reads in one frame; pass fewer refs or smaller options")
    return [envelope, *pieces]


def take_output(fields: dict[str, Any], frames: Sequence[Any], on_log: Callable[[OutputLine], None]) -> Sequence[Any]:
    """Pass the output lines a reply carries ahead of its frames (a call's printing, travelling with
    its result) to ``on_log``, taking them out of ``fields``; returns the frames after them."""
    if "output" not in fields:
        return frames
    lines, frames = output_from_reply(fields.pop("output"), frames)
    for line in lines:
        on_log(line)
    return frames


class _LinkCarrier:
    """Messages over the server's link socket: a client on the server's own machine."""

    def __init__(self, path: str):
        import socket

        from rh_core.support.files import check_socket_peer
        from rh_core.wire.link import ClientLink

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            check_socket_peer(sock, path)
        except BaseException:
            sock.close()
            raise
        self._link = ClientLink(sock)

    def send(self, envelope: bytes, frames: Sequence[Any]) -> None:
        self._link.send_envelope(envelope, frames)

    def receive(self) -> tuple[Any, list] | None:
        if not self._link.ready(POLL_SLICE_MS / 1000):
            return None
        return self._link.receive_envelope()

    def close(self) -> None:
        self._link.close()


class Connection:
    """Talks to one server address; ``liveness()`` returns why the server is gone, or None.

    Addresses are ZeroMQ's (``tcp://``, ``ipc://``) or ``link://`` followed by the path of a server's
    link socket, which clients on the server's machine use (see :mod:`rh_core.wire.link`)."""

    def __init__(self, address: str, liveness: Callable[[], str | None], secret: str | None = None):
        self.address = address
        self.liveness = liveness  # why the server is gone, or None (the cluster's check)
        self._secret = secret or ""
        self._local = threading.local()
        self._request_ids = itertools.count()  # unique per connection is enough: each thread has its own carrier

    def _new_carrier(self) -> _ZmqCarrier | _LinkCarrier:
        if self.address.startswith(LINK_SCHEME):
            return _LinkCarrier(self.address[len(LINK_SCHEME):])
        return _ZmqCarrier(self.address, self._secret)

    def _carrier(self) -> _ZmqCarrier | _LinkCarrier:
        carrier = getattr(self._local, "carrier", None)
        if carrier is None or self._local.pid != os.getpid():  # none yet, or the parent's (after fork)
            carrier = self._new_carrier()
            self._local.carrier, self._local.pid = carrier, os.getpid()
        return carrier

    def _drop_carrier(self) -> None:
        carrier = getattr(self._local, "carrier", None)
        if carrier is not None and self._local.pid == os.getpid():
            carrier.close()
        self._local.carrier = None

    def _why_closed(self) -> str:
        """Why the server closed this thread's link: it died, mostly, which liveness tells within moments."""
        deadline = time.monotonic() + 1.0
        while (reason := self.liveness()) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return reason or "it closed the connection"

    def _lost(self, op: str, reason: str) -> ConnectionLostError:
        return ConnectionLostError(
            f"lost the cluster server at {self.address} while waiting for {op!r}: {reason}. "
            "The next call reconnects, or starts a new server; finished .remote() results are kept "
            "on the cluster's disk and stay fetchable by key."
        )

    def request(
        self,
        op: str,
        header: dict[str, Any],
        frames: Sequence[Any] = (),
        *,
        on_log: Callable[[OutputLine], None] = write_line,
        timeout: float | None = None,
        check_after: float = HEARTBEAT_SECONDS,
    ) -> Reply:
        """Send one request and wait for its final reply, passing the output lines it brings to
        ``on_log`` (by default, written here as they are).

        ``fail`` replies are raised as the error they name. ``timeout`` bounds the wait here
        (None waits as long as the server lives). After ``check_after`` seconds without the
        reply, and every ``HEARTBEAT_SECONDS`` after that, the server must answer a ping, or the
        request fails with :class:`ConnectionLostError`.
        """
        carrier = self._carrier()
        try:
            request_id = self._send(carrier, op, header, frames)
            reply = self._next_reply(carrier, request_id, op, on_log, timeout, check_after)
        except BaseException:  # lost, timed out or interrupted: the stream may end in half a message
            self._drop_carrier()
            raise
        if reply.kind == "fail":
            raise rebuild_failure(reply.header)
        if reply.kind == "item":
            self._drop_carrier()  # the rest of the items would follow; this connection cannot be reused
            raise errors.ProtocolError(f"the server streams items in reply to {op!r}, which does not read them")
        return reply

    def stream(
        self,
        op: str,
        header: dict[str, Any],
        frames: Sequence[Any] = (),
        *,
        on_log: Callable[[OutputLine], None] = write_line,
        check_after: float = HEARTBEAT_SECONDS,
    ) -> Generator[Reply, None, Reply]:
        """Like :meth:`request` for a request whose replies include ``item`` replies: yields each as it
        arrives, and returns the final reply. It runs on a connection of its own, so the caller may
        make other requests on this thread between items; closing the generator early closes it."""
        try:
            carrier = self._new_carrier()
        except OSError as exc:
            lost = self._lost(op, self.liveness() or f"its link socket refused the request ({exc})")
            lost.sent = False
            raise lost from None
        try:
            request_id = self._send(carrier, op, header, frames)
            while True:
                reply = self._next_reply(carrier, request_id, op, on_log, None, check_after)
                if reply.kind == "fail":
                    raise rebuild_failure(reply.header)
                if reply.kind != "item":
                    return reply
                yield reply
        finally:
            carrier.close()

    def _send(self, carrier: _ZmqCarrier | _LinkCarrier, op: str, header: dict[str, Any], frames: Sequence[Any]) -> int:
        """Send a request on ``carrier``; returns its id."""
        import orjson

        request_id = next(self._request_ids)
        envelope = orjson.dumps({"id": request_id, "op": op, "auth": self._secret, **header})
        try:
            carrier.send(envelope, frames)
        except OSError as exc:  # a link socket nobody listens on, or closed: the server is gone
            lost = self._lost(op, self.liveness() or f"its link socket refused the request ({exc})")
            lost.sent = False  # the server reads a request whole before it acts on it
            raise lost from None
        return request_id

    def _next_reply(self, carrier: _ZmqCarrier | _LinkCarrier, request_id: int, op: str,
                    on_log: Callable[[OutputLine], None], timeout: float | None, check_after: float) -> Reply:
        """The next reply to ``request_id`` other than a log line (those go to ``on_log``): an item
        or the final reply (``fail`` included). Raises when the server is gone."""
        import orjson

        waited = 0.0
        while True:
            try:
                reply = carrier.receive()
            except (EOFError, OSError):
                raise self._lost(op, self._why_closed()) from None
            if reply is not None:
                fields = orjson.loads(reply[0])
                if fields.get("id") != request_id:
                    continue  # a late reply to a request we gave up on
                kind = fields.pop("kind")
                if kind == "log":
                    on_log(OutputLine.from_reply(fields, reply[1][0]))
                    continue
                return Reply(kind, fields, take_output(fields, reply[1], on_log))
            waited += POLL_SLICE_MS / 1000
            reason = self.liveness()
            if reason is None and waited >= check_after:
                check_after = waited + HEARTBEAT_SECONDS
                if not self._answers_ping():
                    reason = (f"it does not answer: no reply to a ping within {PING_TIMEOUT:g} s after "
                              f"{waited:.0f} s of waiting. Its process lives, but is stopped (SIGSTOP, a "
                              "debugger) or stuck; look at its log, or restart it")
            if reason is not None:
                raise self._lost(op, reason)
            if timeout is not None and waited >= timeout:
                raise TimeoutError(f"no reply to {op!r} from {self.address} within {timeout} s")

    def _answers_ping(self) -> bool:
        """Whether the server answers a ping within ``PING_TIMEOUT``, on a connection of its own."""
        import orjson

        try:
            carrier = self._new_carrier()
        except OSError:
            return False
        try:
            carrier.send(orjson.dumps({"id": "heartbeat", "op": "ping", "auth": self._secret}), [])
            deadline = time.monotonic() + PING_TIMEOUT
            while time.monotonic() < deadline:
                if carrier.receive() is not None:
                    return True
            return False
        except (OSError, EOFError, errors.ProtocolError):
            return False
        finally:
            carrier.close()

    @property
    def secret(self) -> str:
        return self._secret

    def close(self) -> None:
        self._drop_carrier()


def ping(address: str, timeout: float, secret: str | None = None) -> dict[str, Any] | None:
    """The server's info, or None when nothing answers at ``address`` within ``timeout`` seconds
    (also when ``secret`` is not the cluster's: the server refuses the connection)."""
    import zmq

    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    authenticate_zmq(socket, secret)
    try:
        socket.connect(address)
        socket.send(json.dumps({"id": "liveness", "op": "ping", "auth": secret or ""}).encode())
        if socket.poll(int(timeout * 1000)):
            return json.loads(socket.recv())
        return None
    finally:
        socket.close(linger=0)


def read_secret(state_dir: str) -> str | None:
    """The secret of the server whose state directory is ``state_dir`` (on this machine); one that
    is not ours alone raises :class:`rh_core.errors.UntrustedPathError`."""
    from rh_core.support.files import read_private

    secret = read_private(os.path.join(state_dir, SECRET_FILE), secret=True)
    return (secret or b"").decode().strip() or None


def rebuild_failure(header: dict[str, Any]) -> Exception:
    """The exception a ``fail`` reply names, raised here as the caller's own type where it is ours."""
    from rh_core.wire.messages import Failure

    failure = Failure.from_wire(header)
    if failure.type == "TimeoutError":
        return TimeoutError(failure.message)
    if failure.type == "KeyError":
        return KeyError(failure.message)
    cls = getattr(errors, failure.type, None)
    if not (isinstance(cls, type) and issubclass(cls, RhError)):
        cls = RhError
    try:
        return cls(failure.message)
    except TypeError:
        return RhError(failure.message)
