"""What workers send the server while calls run, on its log channel: log lines, kept per run under
``runs/`` and passed on to whoever reads them, and a streaming call's items, passed to its caller."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO, TYPE_CHECKING, Any

from rh_core.wire.messages import EOF, ITEM, LogMessage, check_run_key

if TYPE_CHECKING:
    from rh_core.plugin.interfaces import Task
    from rh_core.server.server import Peer

RUN_LOG_DAYS = 7  # how long run logs stay on the cluster
LOG_FLUSH_TIMEOUT = 2.0  # how long a result waits for the last log lines of its call

#: How the server replies to a client: ``reply(peer, request_id, kind, fields, frames)``, False when
#: the reply could not be delivered.
Reply = Callable[["Peer", str, str, "dict[str, Any]", Sequence[Any]], bool]


def run_key_of(task_key: str) -> str:
    """The run a task belongs to: a map's chunks (``KEY/3``) belong to the map's run ``KEY``."""
    return task_key.split("/", 1)[0]


class RunLogs:
    """The server's books of what running calls send besides their result.

    It owns: each run's log file under ``runs_dir`` (open while a task of the run is running,
    swept :data:`RUN_LOG_DAYS` after its last line); the routes that take a call's log lines (when
    it asked to stream them) and a generator's items to the client waiting for the call; the clients
    following a run's logs (``cluster.logs(key, follow=True)``); and the end-of-logs markers a
    result waits for, so that a caller sees a call's last lines before its result.

    The server hands it what it cannot know itself: the event loop, how to ``reply`` to a client,
    and whether ``other_tasks_running(run_key, task_key)`` of the same run still run (a map's run log
    stays open until its last chunk ends).
    """

    def __init__(self, runs_dir: str, loop: asyncio.AbstractEventLoop, reply: Reply,
                 other_tasks_running: Callable[[str, str], bool]):
        self.runs_dir = runs_dir
        self._loop = loop
        self._reply = reply
        self._other_tasks_running = other_tasks_running
        self._files: dict[str, IO[bytes]] = {}  # run key -> its open log file
        self._write_warned = False
        self._log_routes: dict[str, tuple[Peer, str]] = {}  # task key -> (client, request id)
        self._item_routes: dict[str, tuple[Peer, str]] = {}  # task key -> the client reading its items
        self._ends: dict[str, asyncio.Future[None]] = {}  # task key -> its end-of-logs marker arrived
        self._followers: dict[str, list[tuple[Peer, str]]] = {}  # run key -> clients following its logs

    # --- routes --------------------------------------------------------------------------------

    def route(self, task: Task, peer: Peer, request_id: str) -> None:
        """Send what the task's worker sends while it runs to its caller: log lines when it asked for
        them, and a generator's items when it reads them one by one."""
        if task.options.get("stream_logs"):
            self._log_routes[task.key] = (peer, request_id)
        if task.header.stream:
            self._item_routes[task.key] = (peer, request_id)

    def unroute(self, task: Task) -> None:
        self._log_routes.pop(task.key, None)
        self._item_routes.pop(task.key, None)

    @contextlib.contextmanager
    def following(self, run_key: str, peer: Peer, request_id: str) -> Iterator[None]:
        """Within it, ``peer`` gets every new log line of the run. Enter it in the same loop step as
        the run's log is read, so no line falls in between."""
        self._followers.setdefault(run_key, []).append((peer, request_id))
        try:
            yield
        finally:
            followers = self._followers.get(run_key, [])
            if (peer, request_id) in followers:
                followers.remove((peer, request_id))
            if not followers:
                self._followers.pop(run_key, None)

    # --- the log channel -----------------------------------------------------------------------

    def on_log(self, frames: list) -> None:
        """One message from a worker: ``[task key, stream, *parts]`` (see :class:`LogMessage`)."""
        message = LogMessage.from_wire(frames)
        key, stream = message.key, message.stream
        if stream == ITEM:  # one item of a generator, pickled: straight on to the caller reading them
            route = self._item_routes.get(key)
            if route is not None:
                self._reply(route[0], route[1], "item", {}, message.parts)
            return
        text = bytes(message.parts[0]) if message.parts else b""
        run_key = run_key_of(key)
        if stream == EOF:
            ended = self._ends.setdefault(key, self._loop.create_future())
            if not ended.done():
                ended.set_result(None)
            if not self._other_tasks_running(run_key, key):
                self._close(run_key)
            return
        self._keep(run_key, text)
        for peer, request_id in self._followers.get(run_key, ()):
            self._reply(peer, request_id, "log", {"stream": stream.decode()}, [text])
        route = self._log_routes.get(key)
        if route is not None:
            peer, request_id = route
            self._reply(peer, request_id, "log", {"stream": stream.decode()}, [text])
        else:
            sys.stderr.write(f"[{key}] {text.decode('utf-8', 'replace')}")
            sys.stderr.flush()

    def after_logs(self, key: str, then: Callable[[], Any]) -> None:
        """Run ``then`` once the end-of-logs marker of ``key`` arrived (or after a short wait)."""
        ended = self._ends.setdefault(key, self._loop.create_future())
        timer = self._loop.call_later(LOG_FLUSH_TIMEOUT, lambda: ended.done() or ended.set_result(None))

        def done(_):
            timer.cancel()
            self._ends.pop(key, None)
            then()

        ended.add_done_callback(done)

    # --- the files under runs/ -----------------------------------------------------------------

    def path(self, run_key: str) -> str:
        """Where a run's log is kept; raises :class:`ProtocolError` for a key that is no run's."""
        return os.path.join(self.runs_dir, check_run_key(run_key) + ".log")

    def has(self, run_key: str) -> bool:
        return os.path.exists(self.path(run_key))

    def read(self, run_key: str) -> bytes:
        """What the run has logged so far (nothing when it logged nothing)."""
        handle = self._files.get(run_key)
        if handle is not None:
            with contextlib.suppress(OSError):  # a full disk: what reached the file is still read
                handle.flush()
        try:
            with open(self.path(run_key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    def sweep(self) -> None:
        """Delete the run logs whose last line is older than RUN_LOG_DAYS days."""
        cutoff = time.time() - RUN_LOG_DAYS * 86400
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.runs_dir):
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)

    def _keep(self, run_key: str, text: bytes) -> None:
        """Append a run's log line to its file, where ``logs`` reads it later. A full or broken disk
        costs the kept copy only: the lines still reach whoever streams them."""
        handle = self._files.get(run_key)
        try:
            if handle is None:
                os.makedirs(self.runs_dir, mode=0o700, exist_ok=True)
                # Open for as long as the run runs (closed at its end-of-logs), not per line.
                handle = self._files[run_key] = open(self.path(run_key), "ab")  # noqa: SIM115
            handle.write(text)
        except OSError as exc:
            self._write_failed(exc)

    def _close(self, run_key: str) -> None:
        handle = self._files.pop(run_key, None)
        if handle is not None:
            try:
                handle.close()
            except OSError as exc:
                self._write_failed(exc)

    def _write_failed(self, exc: OSError) -> None:
        if not self._write_warned:  # once: a full disk would otherwise repeat it for every line
            self._write_warned = True
            sys.stderr.write(f"rh server: cannot keep run logs in {self.runs_dir} ({exc}); they are streamed only\n")
