"""A worker process of the ``process`` executor: ``python -m rh_core.worker LINK_FD LOGS``.

The executor talks to each of its workers over a socket pair it made when it spawned the worker
(a :class:`Link`), not through ZeroMQ: a message written straight to the socket wakes the reader
directly, where a ZeroMQ message also passes through an I/O thread at each end. On this machine that
halves the round trip to a worker (BENCHMARKS.md, "Latency").

The worker says ``("ready",)``, then runs one task at a time, answering each with
``("done", status, logged, frames)``.
"""

from __future__ import annotations

import io
import os
import pickle
import select
import sys
from multiprocessing.connection import Connection
from typing import Any

from rh_core.heap import keep_freed_memory
from rh_core.plugin_types import Outcome, Task
from rh_core.runner import Runner
from rh_core.serialize import OUT_OF_BAND_MIN


class _DataOnly(pickle.Unpickler):
    """Loads plain data only: a message naming any class or function is refused, so reading what
    a worker sends can never run code in the server."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"a worker message may hold plain data only, not {module}.{name}")


def _as_frame(buffer: Any) -> bytes | pickle.PickleBuffer:
    """Small buffers go inside the message's pickle; large ones (wrapped) after it, uncopied."""
    view = memoryview(buffer)
    return pickle.PickleBuffer(buffer) if view.nbytes >= OUT_OF_BAND_MIN else view.tobytes()


class Link:
    """One end of the socket pair between the executor and a worker process.

    A message is a tuple of plain values (str, int, bytes, lists, dicts), pickled with protocol 5
    and sent with :class:`multiprocessing.connection.Connection`'s framing; buffers of at least
    ``OUT_OF_BAND_MIN`` bytes follow the pickle as messages of their own instead of being copied
    into it, and the reader takes exactly as many as the pickle asks for.
    """

    def __init__(self, fd: int):
        self._connection = Connection(fd)
        self._poller = select.poll()  # Connection.poll() builds a selector on every call
        self._poller.register(fd, select.POLLIN)

    def fileno(self) -> int:
        return self._connection.fileno()

    def send(self, message: tuple) -> None:
        large: list[pickle.PickleBuffer] = []
        stream = pickle.dumps(message, protocol=5, buffer_callback=large.append)
        self._connection.send_bytes(stream)
        for buffer in large:
            self._connection.send_bytes(buffer.raw())

    def receive(self) -> tuple:
        """The next message; blocks until it has arrived whole. Raises EOFError when the other end is closed."""
        stream = self._connection.recv_bytes()
        # Pickle pulls one buffer from this iterator per out-of-band buffer it meets, and no more.
        large_buffers = iter(self._connection.recv_bytes, None)
        return _DataOnly(io.BytesIO(stream), buffers=large_buffers).load()

    def ready(self, timeout: float) -> bool:
        """Whether a message has (started to) arrive, or the other end closed, waiting up to ``timeout`` seconds."""
        return bool(self._poller.poll(timeout * 1000))

    def close(self) -> None:
        self._connection.close()


def task_message(task: Task) -> tuple:
    """What the executor sends a worker for one task (the inverse of :func:`task_from`)."""
    refs = [(key, outcome.status, [_as_frame(f) for f in outcome.frames]) for key, outcome in task.refs.items()]
    return (task.key, task.header, _as_frame(task.function or b""), [_as_frame(f) for f in task.arguments], refs)


def task_from(message: tuple) -> Task:
    key, header, function, arguments, refs = message
    return Task(key=key, header=header, function=function, arguments=arguments,
                refs={ref_key: Outcome(status=status, frames=frames) for ref_key, status, frames in refs})


def done_message(outcome: Outcome) -> tuple:
    return ("done", outcome.status, outcome.logged, [_as_frame(f) for f in outcome.frames])


def _die_with_parent() -> None:
    """Ask Linux to kill this worker when the server that spawned it dies (even by SIGKILL)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the parent check in main() still ends orphaned workers


def main(link_fd: str, log_endpoint: str) -> None:
    server_pid = os.getppid()
    _die_with_parent()
    keep_freed_memory()
    link = Link(int(link_fd))
    runner = Runner(log_endpoint)
    link.send(("ready",))
    while True:
        if not link.ready(1.0):
            if os.getppid() != server_pid:
                return  # orphaned: the server is gone
            continue
        try:
            message = link.receive()
        except EOFError:
            return  # the executor closed its end: it is stopping
        link.send(done_message(runner.run(task_from(message))))


if __name__ == "__main__":
    main(*sys.argv[1:3])
