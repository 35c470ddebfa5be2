"""The built-in ``process`` executor: a pool of worker processes on the cluster's head machine.

Each worker runs one task at a time (see :mod:`rh_core.worker`); tasks wait in arrival order for
a free worker. A worker that dies mid-call fails that call with :class:`WorkerDiedError` and is
replaced; a call whose future is cancelled (its timeout expired) has its worker killed and replaced.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import signal
import sys
from typing import Any

import zmq

from rh_core import hookimpl
from rh_core.channel import Channel
from rh_core.errors import WorkerDiedError
from rh_core.plugin_types import Outcome, ServerContext, Task
from rh_core.worker import encode_task


WORKER_START_TIMEOUT = 60.0


@hookimpl
def rh_register_executors(register):
    register("process", ProcessExecutor)


class _Worker:
    def __init__(self, worker_id: str, process: asyncio.subprocess.Process):
        self.id = worker_id
        self.identity = worker_id.encode()
        self.process = process
        self.current: asyncio.Future[Outcome] | None = None  # the outcome of the task it runs now


class ProcessExecutor:
    """A fixed-size pool of worker processes; ``num_workers`` defaults to the CPU count."""

    name = "process"
    same_machine = True  # workers run beside the server: large buffers may go through /dev/shm

    def __init__(self, num_workers: int | None = None):
        self.num_workers = int(num_workers or os.cpu_count() or 1)
        self._ids = itertools.count()
        self._workers: dict[bytes, _Worker] = {}
        self._idle: list[_Worker] = []
        self._waiting: collections.deque[tuple[Task, asyncio.Future[Outcome]]] = collections.deque()
        self._channel: Channel | None = None
        self._stopping = False
        self._watchers: set[asyncio.Task] = set()
        self._all_ready: asyncio.Future[None] | None = None

    @property
    def parallelism(self) -> int:
        return self.num_workers

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name, "workers": sorted(w.process.pid for w in self._workers.values())}

    async def start(self, context: ServerContext) -> None:
        self._context = context
        self._endpoint = f"ipc://{context.state_dir}/workers.sock"
        socket = zmq.Context.instance().socket(zmq.ROUTER)
        socket.bind(self._endpoint)
        self._channel = Channel(socket, self._on_message)
        self._all_ready = asyncio.get_running_loop().create_future()
        for _ in range(self.num_workers):
            await self._spawn()
        try:
            await asyncio.wait_for(asyncio.shield(self._all_ready), WORKER_START_TIMEOUT)
        except TimeoutError:
            raise WorkerDiedError(
                f"{self.num_workers - len(self._idle)} of {self.num_workers} worker processes did not report "
                f"ready within {WORKER_START_TIMEOUT} s; see the server log"
            ) from None

    async def _spawn(self) -> None:
        worker_id = f"{os.getpid()}-w{next(self._ids)}"  # unique across server restarts
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rh_core.worker", self._endpoint, self._context.log_endpoint, worker_id,
            stdin=asyncio.subprocess.DEVNULL,
        )
        worker = _Worker(worker_id, process)
        self._workers[worker.identity] = worker
        watcher = asyncio.ensure_future(self._watch(worker))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _watch(self, worker: _Worker) -> None:
        returncode = await worker.process.wait()
        self._workers.pop(worker.identity, None)
        if worker in self._idle:
            self._idle.remove(worker)
        if self._stopping:
            return
        if worker.current is not None and not worker.current.done():
            cause = (f"killed by signal {signal.Signals(-returncode).name}" if returncode < 0
                     else f"exit code {returncode}")
            worker.current.set_exception(WorkerDiedError(
                f"the worker process (pid {worker.process.pid}) running this call died ({cause}); "
                "it has been replaced. Look for a crash in native code, os._exit or running out of memory."
            ))
        if self._all_ready is not None and not self._all_ready.done():
            self._all_ready.set_exception(WorkerDiedError(
                f"worker {worker.id} exited with code {returncode} while starting; see the server log"
            ))
            return
        await self._spawn()

    def _on_message(self, frames: list) -> None:
        worker = self._workers.get(frames[0].bytes)
        if worker is None:
            return
        kind = frames[1].bytes
        if kind == b"done":
            current, worker.current = worker.current, None
            if current is not None and not current.done():
                status, logged = frames[2].bytes.decode(), bool(frames[3].bytes)
                current.set_result(Outcome(status=status, frames=frames[4:], logged=logged))
        elif kind != b"ready":
            return
        self._idle.append(worker)
        if self._all_ready is not None and not self._all_ready.done() and len(self._idle) == self.num_workers:
            self._all_ready.set_result(None)
        self._dispatch()

    def submit(self, task: Task) -> asyncio.Future[Outcome]:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((task, future))
        self._dispatch()
        return future

    def _dispatch(self) -> None:
        while self._idle and self._waiting:
            task, future = self._waiting.popleft()
            if future.done():  # cancelled while it waited
                continue
            worker = self._idle.pop()
            worker.current = future
            future.add_done_callback(lambda f, worker=worker: self._on_settled(worker, f))
            self._channel.send([worker.identity, *encode_task(task)])

    def _on_settled(self, worker: _Worker, future: asyncio.Future) -> None:
        if future.cancelled() and worker.current is future:
            # Timed out or abandoned while running: the worker is still busy with it, so it goes.
            worker.current = None
            if worker.process.returncode is None:
                worker.process.kill()

    async def stop(self) -> None:
        self._stopping = True
        workers = list(self._workers.values())
        for worker in workers:
            if worker.process.returncode is None:
                worker.process.kill()
        for worker in workers:
            await worker.process.wait()
        for watcher in list(self._watchers):
            watcher.cancel()
        if self._channel is not None:
            self._channel.close()
