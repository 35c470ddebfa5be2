"""A worker process of the ``process`` executor: ``python -m rh_core.worker LINK_FD LOGS [CONCURRENCY]``.

The executor talks to each of its workers over a socket pair it made when it spawned the worker
(a :class:`rh_core.wire.link.Link`).

The worker says it is ready, then runs one task at a time, answering each with what came of it
(the messages are :mod:`rh_core.wire.messages`'s: ``task_to_link``, ``done_to_link``, ...).

With ``CONCURRENCY`` it is a remote instance's own worker: its first task creates the instance,
the rest are calls of its methods, up to ``CONCURRENCY`` at once in threads of their own, while
this thread reads on; a cancel message asks it to stop one (:meth:`Runner.cancel`), and it
answers whether it stopped: False when only ending the process stops that call.
"""

from __future__ import annotations

import os
import sys

from rh_core.wire.heap import keep_freed_memory
from rh_core.wire.link import Link, as_frame
from rh_core.wire.messages import READY, cancelled_to_link, done_to_link, task_from_link
from rh_core.plugin.interfaces import Task
from rh_core.support.processes import die_with_parent
from rh_core.worker.runner import Runner


def main(link_fd: str, log_endpoint: str, concurrency: str | None = None) -> None:
    server_pid = os.getppid()
    die_with_parent()
    keep_freed_memory()
    link = Link(int(link_fd))
    runner = Runner(log_endpoint)
    serve = _serve_tasks if concurrency is None else _instance_server(runner, link, int(concurrency))
    link.send(READY)
    while True:
        if not link.ready(1.0):
            if os.getppid() != server_pid:
                return  # orphaned: the server is gone
            continue
        try:
            message = link.receive()
        except EOFError:
            return  # the executor closed its end: it is stopping
        serve(runner, link, message)


def _serve_tasks(runner: Runner, link: Link, message: tuple) -> None:
    task = task_from_link(message)
    link.send(done_to_link(task.key, runner.run(task), as_frame))


def _instance_server(runner: Runner, link: Link, concurrency: int):
    """How an instance's worker serves a message: calls run in a pool of ``concurrency`` threads,
    so this thread stays free to read the next call, or a request to cancel one."""
    import concurrent.futures
    import threading

    calls = concurrent.futures.ThreadPoolExecutor(concurrency, thread_name_prefix="rh-instance-call")
    sending = threading.Lock()

    def run(task: Task) -> None:
        done = done_to_link(task.key, runner.run(task), as_frame)
        with sending:
            link.send(done)

    def serve(runner: Runner, link: Link, message: tuple) -> None:
        if message[0] == "cancel":
            stopped = runner.cancel(message[1])
            with sending:
                link.send(cancelled_to_link(message[1], stopped))
        else:
            calls.submit(run, task_from_link(message))

    return serve


if __name__ == "__main__":
    main(*sys.argv[1:4])
