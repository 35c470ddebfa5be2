"""The client side of the wire protocol (see :mod:`rh_core.server`).

Each thread gets its own DEALER socket, so threads never wait on each other. While a reply is
outstanding the client polls in short slices and asks the cluster whether its server is still
alive, so a dead server is reported within seconds instead of hanging.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from rh_core import errors
from rh_core.errors import ConnectionLostError, RhError

POLL_SLICE_MS = 500


class Reply:
    __slots__ = ("frames", "header", "kind")

    def __init__(self, kind: str, header: dict[str, Any], frames: list):
        self.kind, self.header, self.frames = kind, header, frames


def write_log(stream: str, text: bytes) -> None:
    """Default log sink: the function's stdout and stderr go to ours."""
    target = sys.stderr if stream == "stderr" else sys.stdout
    target.write(text.decode("utf-8", "replace"))
    target.flush()


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


class Connection:
    """Talks to one server address; ``liveness()`` returns why the server is gone, or None."""

    def __init__(self, address: str, liveness: Callable[[], str | None], secret: str | None = None):
        self.address = address
        self._liveness = liveness
        self._secret = secret or ""
        self._local = threading.local()
        self._closed = False
        self._request_ids = itertools.count()  # unique per connection is enough: each thread has its own socket

    def _socket(self) -> Any:
        socket = getattr(self._local, "socket", None)
        if socket is None:
            import zmq  # here, not at module level: `import rh_core` stays fast

            socket = zmq.Context.instance().socket(zmq.DEALER)
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.RCVTIMEO, POLL_SLICE_MS)  # a receive gives up after a slice: see request()
            socket.connect(self.address)
            self._local.socket = socket
        return socket

    def _drop_socket(self) -> None:
        socket = getattr(self._local, "socket", None)
        if socket is not None:
            socket.close(linger=0)
            self._local.socket = None

    def request(
        self,
        op: str,
        header: dict[str, Any],
        frames: Sequence[Any] = (),
        *,
        on_log: Callable[[str, bytes], None] = write_log,
        timeout: float | None = None,
    ) -> Reply:
        """Send one request and wait for its final reply, passing log replies to ``on_log``.

        ``fail`` replies are raised as the error they name. ``timeout`` bounds the wait here
        (None waits as long as the server lives).
        """
        import orjson
        import zmq

        socket = self._socket()
        request_id = next(self._request_ids)
        envelope = orjson.dumps({"id": request_id, "op": op, "auth": self._secret, **header})
        send_frames(socket, [envelope, *frames])
        waited = 0.0
        while True:
            try:
                reply = recv_frames(socket)
            except zmq.Again:  # nothing within a slice: check on the server, then wait on
                reply = None
            if reply is not None:
                fields = orjson.loads(reply[0].buffer)
                if fields.get("id") != request_id:
                    continue  # a late reply to a request we gave up on
                kind = fields.pop("kind")
                if kind == "log":
                    on_log(fields["stream"], reply[1].bytes)
                    continue
                if kind == "fail":
                    raise _rebuild_failure(fields)
                return Reply(kind, fields, [frame.buffer for frame in reply[1:]])
            waited += POLL_SLICE_MS / 1000
            reason = self._liveness()
            if reason is not None:
                self._drop_socket()
                raise ConnectionLostError(
                    f"lost the cluster server at {self.address} while waiting for {op!r}: {reason}. "
                    "The next call reconnects, or starts a new server; finished .remote() results are kept "
                    "on the cluster's disk and stay fetchable by key."
                )
            if timeout is not None and waited >= timeout:
                self._drop_socket()  # its reply, if it ever comes, must not be read as another's
                raise TimeoutError(f"no reply to {op!r} from {self.address} within {timeout} s")

    def close(self) -> None:
        self._drop_socket()


def ping(address: str, timeout: float, secret: str | None = None) -> dict[str, Any] | None:
    """The server's info, or None when nothing answers at ``address`` within ``timeout`` seconds.
    Without the cluster's ``secret`` the server answers with an authentication failure, which
    still shows that it is alive."""
    import zmq

    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(address)
        socket.send(json.dumps({"id": "liveness", "op": "ping", "auth": secret or ""}).encode())
        if socket.poll(int(timeout * 1000)):
            return json.loads(socket.recv())
        return None
    finally:
        socket.close(linger=0)


def read_secret(state_dir: str) -> str | None:
    """The secret of the server whose state directory is ``state_dir`` (on this machine)."""
    try:
        with open(os.path.join(state_dir, SECRET_FILE)) as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


def _rebuild_failure(header: dict[str, Any]) -> Exception:
    error_type = header.get("type", "RhError")
    if error_type == "TimeoutError":
        return TimeoutError(header["message"])
    if error_type == "KeyError":
        return KeyError(header["message"])
    cls = getattr(errors, error_type, None)
    if not (isinstance(cls, type) and issubclass(cls, RhError)):
        cls = RhError
    try:
        return cls(header["message"])
    except TypeError:
        return RhError(header["message"])
