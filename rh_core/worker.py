"""A worker process of the ``process`` executor: ``python -m rh_core.worker LINK_FD LOGS``.

The executor talks to each of its workers over a socket pair it made when it spawned the worker
(a :class:`rh_core.link.Link`).

The worker says ``("ready",)``, then runs one task at a time, answering each with
``("done", status, logged, frames)``.
"""

from __future__ import annotations

import os
import sys

from rh_core.heap import keep_freed_memory
from rh_core.link import Link, as_frame
from rh_core.plugin_types import Outcome, Task
from rh_core.processes import die_with_parent
from rh_core.runner import Runner


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


def done_message(outcome: Outcome) -> tuple:
    return ("done", outcome.status, outcome.logged, [as_frame(f) for f in outcome.frames])


def main(link_fd: str, log_endpoint: str) -> None:
    server_pid = os.getppid()
    die_with_parent()
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
