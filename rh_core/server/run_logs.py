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

import attrs

from rh_core.wire.messages import (
    EOF,
    ITEM,
    LogMessage,
    Outcome,
    OutputLine,
    check_run_key,
)

if TYPE_CHECKING:
    from rh_core.plugin.interfaces import Task
    from rh_core.server.server import Peer

RUN_LOG_DAYS = 7  # how long run logs stay on the cluster
JOURNAL_MAX_BYTES = 64 * 2**20  # how large the journal of short calls' output grows before a new one starts
JOURNAL_INDEX_MAX = 100_000  # runs whose records the server finds without reading the journals
RECENT_RUNS = 50  # how many runs that logged `cluster.runs()` lists
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
        self._journal = RunJournal(runs_dir)  # the output that short calls' results brought

    # --- routes --------------------------------------------------------------------------------

    def route(self, task: Task, peer: Peer, request_id: str) -> None:
        """Send what the task's worker sends while it runs to its caller: log lines when it asked for
        them, and a generator's items when it reads them one by one."""
        if task.options.get("stream_logs", True):
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
        run_key = run_key_of(key)
        if stream == EOF:
            ended = self._ends.setdefault(key, self._loop.create_future())
            if not ended.done():
                ended.set_result(None)
            if not self._other_tasks_running(run_key, key):
                self._close(run_key)
            return
        self._pass_on(key, [message.line()])

    def took_output(self, key: str, outcome: Outcome) -> Outcome:
        """A finished task's output that travelled with its result (see :mod:`rh_core.worker.output`):
        kept and passed on as live lines are, except that a caller who asked to see it gets it in
        the reply that carries the result. Returns the outcome as that reply should carry it."""
        routed = key in self._log_routes
        if not routed or run_key_of(key) in self._followers:  # else nobody but the caller reads them now
            self._pass_on(key, outcome.output, in_reply=routed, keep=False)
        try:
            self._journal.keep(run_key_of(key), b"".join(line.text for line in outcome.output))
        except OSError as exc:
            self._write_failed(exc)
        return outcome if routed else attrs.evolve(outcome, output=())

    def _pass_on(self, key: str, lines: Sequence[OutputLine], in_reply: bool = False, keep: bool = True) -> None:
        """Keep lines of task ``key`` in its run's log and send them to whoever reads them now: the
        clients following the run's log, and its caller when it asked for them (unless they go
        ``in_reply``, with the result), or else the server log."""
        run_key = run_key_of(key)
        chunk = int(key.rpartition("/")[2]) if "/" in key else None
        route = self._log_routes.get(key)
        followers = self._followers.get(run_key, ())
        for line in lines:
            if keep:
                self._keep(run_key, line.text)
            fields = attrs.evolve(line, chunk=chunk).fields()
            for peer, request_id in followers:
                self._reply(peer, request_id, "log", fields, [line.text])
            if in_reply:
                continue
            if route is not None:
                self._reply(route[0], route[1], "log", fields, [line.text])
            else:
                sys.stderr.write(f"[{key}] {line.text.decode('utf-8', 'replace')}")
        if route is None:
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
        return os.path.exists(self.path(run_key)) or self._journal.has(run_key)

    def read(self, run_key: str) -> bytes:
        """What the run has logged so far (nothing when it logged nothing): its own file's lines,
        then what its calls' results brought (the journal's)."""
        handle = self._files.get(run_key)
        if handle is not None:
            with contextlib.suppress(OSError):  # a full disk: what reached the file is still read
                handle.flush()
        try:
            with open(self.path(run_key), "rb") as f:
                own = f.read()
        except FileNotFoundError:
            own = b""
        return own + self._journal.read(run_key)

    def recent(self, limit: int = RECENT_RUNS) -> list[str]:
        """The keys of the last ``limit`` runs that logged anything, oldest first: those with a log
        file of their own, and those whose output this server kept in the journal."""
        when: dict[str, float] = {}
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.runs_dir):
                if entry.name.endswith(".log") and not entry.name.startswith("journal"):
                    when[entry.name[:-4]] = entry.stat().st_mtime
        when.update(self._journal.last_kept)
        return sorted(when, key=when.__getitem__)[-limit:]

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


class RunJournal:
    """The output of short calls, kept in one append-only file rather than a file per run: a
    function called a million times that prints a line each time makes one growing file, not a
    million small ones, and keeping a line costs a write, not a file's creation.

    A record is ``KEY LENGTH\n`` followed by LENGTH bytes of output. The journal is
    ``runs/journal.log`` until it holds :data:`JOURNAL_MAX_BYTES`, then it is renamed
    ``journal-<time>.log`` and a new one begins; old ones are swept with the run logs. Where each
    run's records are is remembered for the last :data:`JOURNAL_INDEX_MAX` runs; an older run's
    (or one from before the server restarted) is found by reading the journals through."""

    def __init__(self, runs_dir: str):
        self._dir = runs_dir
        self._path = os.path.join(runs_dir, "journal.log")
        self._file: IO[bytes] | None = None
        self._size = 0  # the journal's length, records held in the file's buffer included
        self._index: dict[str, list[tuple[str, int, int]]] = {}  # run key -> (path, offset, length) of its records
        self.last_kept: dict[str, float] = {}  # run key -> when its last record was kept (the indexed runs)

    def keep(self, run_key: str, text: bytes) -> None:
        if self._file is None:
            os.makedirs(self._dir, mode=0o700, exist_ok=True)
            self._file = open(self._path, "ab")  # noqa: SIM115 - open while the server runs
            self._size = os.fstat(self._file.fileno()).st_size
        header = b"%s %d\n" % (run_key.encode(), len(text))
        offset = self._size + len(header)  # counted here: asking the file would cost a system call per record
        self._file.write(header + text)
        self._size = offset + len(text)
        self._index.setdefault(run_key, []).append((self._path, offset, len(text)))
        self.last_kept[run_key] = time.time()
        if len(self._index) > JOURNAL_INDEX_MAX:
            oldest = next(iter(self._index))
            del self._index[oldest], self.last_kept[oldest]
        if offset + len(text) > JOURNAL_MAX_BYTES:
            self._start_anew()

    def has(self, run_key: str) -> bool:
        return run_key in self._index or bool(self._scan(run_key))

    def read(self, run_key: str) -> bytes:
        records = self._index.get(run_key)
        if records is None:
            return b"".join(self._scan(run_key))
        if self._file is not None:
            self._file.flush()
        texts = []
        for path, offset, length in records:
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    texts.append(f.read(length))
            except FileNotFoundError:  # swept meanwhile
                continue
        return b"".join(texts)

    def _start_anew(self) -> None:
        """Set the full journal aside under a name of its own; the next record starts a new one."""
        assert self._file is not None
        self._file.close()
        self._file = None
        kept = os.path.join(self._dir, f"journal-{time.time_ns()}.log")
        os.rename(self._path, kept)
        for records in self._index.values():
            records[:] = [(kept if path == self._path else path, offset, length) for path, offset, length in records]

    def _scan(self, run_key: str) -> list[bytes]:
        """The texts of ``run_key``'s records, read from every journal, oldest first."""
        if self._file is not None:
            self._file.flush()
        wanted = run_key.encode()
        found = []
        try:
            names = sorted(name for name in os.listdir(self._dir) if name.startswith("journal"))
        except FileNotFoundError:
            return []
        names.sort(key=lambda name: name == "journal.log")  # the current one is the newest
        for name in names:
            with contextlib.suppress(OSError), open(os.path.join(self._dir, name), "rb") as f:
                while header := f.readline():
                    key, _, length = header.rstrip(b"\n").partition(b" ")
                    if not length.isdigit() or len(text := f.read(int(length))) != int(length):
                        break  # a torn record at the end (a crash mid-write): nothing after it
                    if key == wanted:
                        found.append(text)
        return found
