"""A worker process of the ``process`` executor: ``python -m rh_core.worker TASKS LOGS WORKER_ID``.

It connects a DEALER socket to the executor's task endpoint, says ``ready``, and then runs one task
at a time, answering each with ``[b"done", status, logged, *frames]``.
"""

from __future__ import annotations

import json
import os
import sys

import zmq

from rh_core.plugin_types import Outcome, Task
from rh_core.runner import Runner


def encode_task(task: Task) -> list:
    """Frames for one task sent to a worker process (the inverse of :func:`decode_task`)."""
    refs = [[key, outcome.status, len(outcome.frames)] for key, outcome in task.refs.items()]
    head = {"key": task.key, "header": task.header, "n_args": len(task.arguments), "refs": refs}
    frames = [b"task", json.dumps(head).encode(), task.function or b"", *task.arguments]
    for outcome in task.refs.values():
        frames.extend(outcome.frames)
    return frames


def decode_task(frames: list) -> Task:
    head = json.loads(bytes(frames[1]))
    function = frames[2]
    position = 3 + head["n_args"]
    arguments = frames[3:position]
    refs = {}
    for key, status, count in head["refs"]:
        refs[key] = Outcome(status=status, frames=frames[position : position + count])
        position += count
    return Task(key=head["key"], header=head["header"], function=function, arguments=arguments, refs=refs)


def _die_with_parent() -> None:
    """Ask Linux to kill this worker when the server that spawned it dies (even by SIGKILL)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the parent check in main() still ends orphaned workers


def main(task_endpoint: str, log_endpoint: str, worker_id: str) -> None:
    server_pid = os.getppid()
    _die_with_parent()
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.IDENTITY, worker_id.encode())
    socket.setsockopt(zmq.LINGER, 5000)
    socket.connect(task_endpoint)
    runner = Runner(log_endpoint)
    socket.send_multipart([b"ready"])
    while True:
        if not socket.poll(1000):
            if os.getppid() != server_pid:
                return  # orphaned: the server is gone
            continue
        frames = socket.recv_multipart(copy=False)
        if bytes(frames[0]) != b"task":
            break
        # Frames are zmq.Frame objects; their .buffer views avoid copying large arguments.
        task = decode_task([frames[0].bytes, frames[1].bytes, *(f.buffer for f in frames[2:])])
        outcome = runner.run(task)
        logged = b"1" if outcome.logged else b""
        socket.send_multipart([b"done", outcome.status.encode(), logged, *outcome.frames], copy=False)


if __name__ == "__main__":
    main(*sys.argv[1:4])
