"""A worker process of the ``process`` executor: ``python -m rh_core.worker LINK_FD LOGS [CONCURRENCY]``.

The executor talks to each of its workers over a socket pair it made when it spawned the worker
(a :class:`rh_core.wire.link.Link`).

The worker says ``("ready",)``, then runs one task at a time, answering each with
``("done", key, status, logged, frames)``.

With ``CONCURRENCY`` it is a remote instance's own worker: its first task creates the instance,
the rest are calls of its methods, up to ``CONCURRENCY`` at once in threads of their own, while
this thread reads on; ``("cancel", key)`` asks it to stop one (:meth:`Runner.cancel`), and it
answers ``("cancel", key, stopped)``: False when only ending the process stops that call.
"""

from __future__ import annotations

import os
import sys

from rh_core.wire.heap import keep_freed_memory
from rh_core.wire.link import Link, as_frame
from rh_core.plugin.interfaces import Outcome, Task
from rh_core.support.processes import die_with_parent
from rh_core.worker.runner import Runner


def task_message(task: Task) -> tuple:
    """What the executor sends a worker for one task (the inverse of :func:`task_from`)."""
    refs = [(key, outcome.status, [as_frame(f) for f in outcome.frames]) for key, outcome in task.refs.items()]
    return (task.key, task.header, as_frame(task.function or b""), [as_frame(f) for f in task.arguments], refs,
            task.variables)


def task_from(message: tuple) -> Task:
    key, header, function, arguments, refs, variables = message
    return Task(key=key, header=header, function=function, arguments=arguments,
                refs={ref_key: Outcome(status=status, frames=frames) for ref_key, status, frames in refs},
                variables=variables)


def done_message(key: str, outcome: Outcome) -> tuple:
    return ("done", key, outcome.status, outcome.logged, [as_frame(f) for f in outcome.frames])


def main(link_fd: str, log_endpoint: str, concurrency: str | None = None) -> None:
    server_pid = os.getppid()
    die_with_parent()
    keep_freed_memory()
    link = Link(int(link_fd))
    runner = Runner(log_endpoint)
    serve = _serve_tasks if concurrency is None else _instance_server(runner, link, int(concurrency))
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
        serve(runner, link, message)


def _serve_tasks(runner: Runner, link: Link, message: tuple) -> None:
    task = task_from(message)
    link.send(done_message(task.key, runner.run(task)))


def _instance_server(runner: Runner, link: Link, concurrency: int):
    """How an instance's worker serves a message: calls run in a pool of ``concurrency`` threads,
    so this thread stays free to read the next call, or a request to cancel one."""
    import concurrent.futures
    import threading

    calls = concurrent.futures.ThreadPoolExecutor(concurrency, thread_name_prefix="rh-instance-call")
    sending = threading.Lock()

    def run(task: Task) -> None:
        done = done_message(task.key, runner.run(task))
        with sending:
            link.send(done)

    def serve(runner: Runner, link: Link, message: tuple) -> None:
        if message[0] == "cancel":
            stopped = runner.cancel(message[1])
            with sending:
                link.send(("cancel", message[1], stopped))
        else:
            calls.submit(run, task_from(message))

    return serve


if __name__ == "__main__":
    main(*sys.argv[1:4])
