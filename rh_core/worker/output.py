"""A call's stdout and stderr in a worker: held while the call is short, sent live once it is not.

A worker replaces ``sys.stdout`` and ``sys.stderr`` with :class:`CallOutput`, which hands each line
to :class:`CallOutputs` under the key of the call that wrote it. What a call writes is held, and
travels with its result (``Outcome.output``): one message, so a function that prints a line per call
costs little more than a quiet one. Output held for :data:`FLUSH_AFTER` seconds (looked at once per
interval), or more than :data:`HOLD_MAX_BYTES` of it, goes live instead, to the server's log
endpoint as ``[key, stream, text]``; a call that sent anything live ends with an end-of-logs marker ``[key, b"eof", b""]``, so
the server delivers every line before the result. A generator's items go the same way, live.

A process the function forks gets none of this: the ZeroMQ socket must not cross a fork, so a
child's output goes to the worker's own stdout and stderr (the server log).
"""

from __future__ import annotations

import contextvars
import io
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from rh_core.errors import RhError
from rh_core.wire.messages import OutputLine, eof_frames, item_frames, log_frames

#: How long a call's output may be held before it goes live: a line shows at most twice this late.
FLUSH_AFTER = 0.1
#: How much output a call may hold; beyond it the output goes live at once.
HOLD_MAX_BYTES = 64 * 1024

#: The run key of the call the current thread or task works for (see :meth:`CallOutputs.current`).
call_key: contextvars.ContextVar[str | None] = contextvars.ContextVar("rh_call_key", default=None)


class _Held:
    """What one running call wrote and has not sent yet."""

    __slots__ = ("item", "lines", "live", "since", "size")

    def __init__(self) -> None:
        self.lines: list[OutputLine] = []
        self.size = 0
        self.since = 0.0  # when the oldest held line was written
        self.live = False  # it has sent output (or items) live: an end-of-logs marker follows
        self.item: int | None = None  # the map item running now, within its chunk


class CallOutputs:
    """The output of the calls a worker runs, by call key: held, then sent with the result or live.

    Live output goes through a PUSH socket to the server's log endpoint, shared by the worker's
    threads (``endpoint`` None: no such socket; then output travels only with results, and what
    does not fit goes to the worker's own streams)."""

    def __init__(self, endpoint: str | None):
        self._lock = threading.Lock()
        self._socket = None
        if endpoint:
            import zmq

            self._socket = zmq.Context.instance().socket(zmq.PUSH)
            self._socket.setsockopt(zmq.LINGER, 2000)
            self._socket.connect(endpoint)
        self._calls: dict[str, _Held] = {}  # the calls running now
        self._lone: str | None = None  # the key of the one call running, for threads it started itself
        self._forked = False
        self._holding = threading.Event()  # some call holds output: the flusher watches the clock
        self._flusher: threading.Thread | None = None
        os.register_at_fork(after_in_child=self._forget_in_child)

    def _forget_in_child(self) -> None:
        # The socket object is kept (never closed here): closing it would touch the parent's context.
        self._calls, self._lone, self._forked, self._lock = {}, None, True, threading.Lock()

    # --- a call's life -------------------------------------------------------------------------

    def begin(self, key: str) -> contextvars.Token:
        """A call starts in this thread (or task): its output goes out under ``key``."""
        with self._lock:
            self._calls[key] = _Held()
            self._lone = key if len(self._calls) == 1 else None
        return call_key.set(key)

    def at_item(self, index: int) -> None:
        """The current call (a map chunk) starts its item ``index``: lines from now on are that item's."""
        held = self._calls.get(call_key.get() or "")
        if held is not None:
            held.item = index

    def end(self, key: str, token: contextvars.Token) -> tuple[bool, tuple[OutputLine, ...]]:
        """The call ``key`` has finished. Returns whether it sent output live (then the end-of-logs
        marker has followed it) and the output it still held, which travels with its result."""
        with self._lock:
            held = self._calls.pop(key, None)
            self._lone = next(iter(self._calls)) if len(self._calls) == 1 else None
            if held is not None and held.live and self._socket is not None:
                self._send_held(key, held)
                self._socket.send_multipart(eof_frames(key))
        call_key.reset(token)
        if held is None or held.live:
            return held is not None and held.live, ()
        return False, tuple(held.lines)

    def current(self) -> str | None:
        """The key output written now belongs to: the call this thread or task runs; else, for a
        thread the function started, the one call running; None when no call can claim it."""
        if self._forked:
            return None
        return call_key.get() or self._lone

    # --- what calls write ----------------------------------------------------------------------

    def write(self, stream: str, text: str) -> bool:
        """Hold ``text`` (whole lines) for the call writing it; False when no call can take it."""
        key = self.current()
        if key is None:
            return False
        data = text.encode("utf-8", "replace")
        with self._lock:
            held = self._calls.get(key)
            if held is None:
                return False
            if held.size + len(data) > HOLD_MAX_BYTES and self._socket is None:
                return False  # no live way out: the worker's own stream takes the excess
            lines = held.lines
            if lines and lines[-1].stream == stream and lines[-1].item == held.item:
                lines[-1] = OutputLine(stream, lines[-1].text + data, held.item)
            else:
                if not lines:
                    held.since = time.monotonic()
                    self._wake_flusher()
                lines.append(OutputLine(stream, data, held.item))
            held.size += len(data)
            if held.size > HOLD_MAX_BYTES:
                self._send_held(key, held)
        return True

    def send_item(self, frames: Sequence[Any]) -> None:
        """One item a generator of the current call yielded, as pickled frames, after the lines
        the call wrote before it."""
        key = self.current()
        if key is None or self._socket is None:
            raise RhError("a generator's items cannot be streamed from here: this worker has no way to the "
                          "server's log endpoint (a Ray node without the log relay). Return a list instead")
        with self._lock:
            held = self._calls.get(key)
            if held is not None:
                self._send_held(key, held)
            self._socket.send_multipart(item_frames(key, frames))

    # --- live output ---------------------------------------------------------------------------

    def _send_held(self, key: str, held: _Held) -> None:
        """Send what ``held`` holds live (the lock is held). Without a socket, nothing goes live."""
        if self._socket is None:
            return
        for line in held.lines:
            self._socket.send_multipart(log_frames(key, line))
        held.lines, held.size, held.live = [], 0, True

    def _wake_flusher(self) -> None:
        """A call holds output now: make sure it goes live if the call runs on (the lock is held)."""
        if self._socket is None or self._holding.is_set():
            return
        self._holding.set()
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_when_due, name="rh-output", daemon=True)
            self._flusher.start()

    def _flush_when_due(self) -> None:
        """The flusher thread: output held :data:`FLUSH_AFTER` seconds goes live. It looks once per
        interval while some call holds output, and sleeps first: nothing held is due sooner, and
        most calls end (their output going with the result) before it looks. Woken at once
        instead, it would cost every short call that prints a thread switch."""
        while True:
            self._holding.wait()
            time.sleep(FLUSH_AFTER)
            with self._lock:
                now = time.monotonic()
                for key, held in self._calls.items():
                    if held.lines and held.since + FLUSH_AFTER <= now:
                        self._send_held(key, held)
                if not any(held.lines for held in self._calls.values()):
                    self._holding.clear()


class CallOutput(io.TextIOBase):
    """Replaces ``sys.stdout``/``sys.stderr`` in a worker: whole lines go to the call that wrote
    them (:class:`CallOutputs`); output no call can claim goes to ``fallback``, the worker's own."""

    def __init__(self, name: str, outputs: CallOutputs, fallback: Any):
        self.name, self._outputs, self._fallback = name, outputs, fallback
        self._pending: dict[str, str] = {}  # call key -> the start of a line it has not finished

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        key = self._outputs.current()
        if key is None:
            return self._fallback.write(text)
        pending = self._pending.pop(key, "") + text
        # A line ends at "\n", or at "\r" as a progress bar redraws its line: both go out whole.
        end = max(pending.rfind("\n"), pending.rfind("\r")) + 1
        if end:
            head, pending = pending[:end], pending[end:]
            if not self._outputs.write(self.name, head):
                self._fallback.write(head)
        if pending:
            self._pending[key] = pending
        return len(text)

    def flush(self) -> None:
        key = self._outputs.current()
        pending = self._pending.pop(key, "") if key is not None else ""
        if pending and not self._outputs.write(self.name, pending):
            self._fallback.write(pending)
        self._fallback.flush()

    def fileno(self) -> int:
        return self._fallback.fileno()

    def isatty(self) -> bool:
        return False
