"""The built-in ``process`` executor: a pool of worker processes on the cluster's head machine.

Each worker runs one task at a time (see :mod:`rh_core.worker`). A worker that dies mid-call fails
that call with :class:`WorkerDiedError` and is replaced; a call past its timeout has its worker
killed and replaced.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
from typing import Any

import zmq
import zmq.asyncio

from rh_core import hookimpl
from rh_core.errors import WorkerDiedError
from rh_core.plugin_types import Outcome, ServerContext, Task
from rh_core.worker import encode_task


@hookimpl
def rh_register_executors(register):
    register("process", ProcessExecutor)


class _Worker:
    def __init__(self, worker_id: str, process: asyncio.subprocess.Process):
        self.id = worker_id
        self.process = process
        self.ready = asyncio.get_running_loop().create_future()
        self.current: asyncio.Future | None = None  # the outcome of the task it runs now


class ProcessExecutor:
    """A fixed-size pool of worker processes, ``num_workers`` defaulting to the CPU count."""

    name = "process"

    def __init__(self, num_workers: int | None = None):
        self.num_workers = num_workers or os.cpu_count() or 1
        self._ids = itertools.count()
        self._workers: dict[bytes, _Worker] = {}
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._socket: zmq.asyncio.Socket | None = None
        self._stopping = False
        self._background: set[asyncio.Task] = set()

    @property
    def parallelism(self) -> int:
        return self.num_workers

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name, "workers": [w.process.pid for w in self._workers.values()]}

    async def start(self, context: ServerContext) -> None:
        self._context = context
        self._endpoint = f"ipc://{context.state_dir}/workers.sock"
        self._socket = zmq.asyncio.Context.instance().socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(self._endpoint)
        self._spawn_task(self._receive())
        workers = [await self._spawn() for _ in range(self.num_workers)]
        await asyncio.gather(*(w.ready for w in workers))

    def _spawn_task(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _spawn(self) -> _Worker:
        worker_id = f"w{next(self._ids)}"
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rh_core.worker", self._endpoint, self._context.log_endpoint, worker_id,
            stdin=asyncio.subprocess.DEVNULL,
        )
        worker = _Worker(worker_id, process)
        self._workers[worker_id.encode()] = worker
        self._spawn_task(self._watch(worker))
        return worker

    async def _watch(self, worker: _Worker) -> None:
        returncode = await worker.process.wait()
        self._workers.pop(worker.id.encode(), None)
        if self._stopping:
            return
        if worker.current is not None and not worker.current.done():
            cause = f"killed by signal {signal.Signals(-returncode).name}" if returncode < 0 else f"exit code {returncode}"
            worker.current.set_exception(
                WorkerDiedError(
                    f"the worker process (pid {worker.process.pid}) running this call died ({cause}); "
                    "it has been replaced. Look for a crash in native code, os._exit or running out of memory."
                )
            )
        if not worker.ready.done():
            worker.ready.set_exception(WorkerDiedError(f"worker {worker.id} exited with {returncode} while starting"))
        await self._spawn()

    async def _receive(self) -> None:
        while True:
            frames = await self._socket.recv_multipart(copy=False)
            worker = self._workers.get(frames[0].bytes)
            if worker is None:
                continue
            kind = frames[1].bytes
            if kind == b"ready":
                worker.ready.set_result(None)
                self._idle.put_nowait(worker)
            elif kind == b"done" and worker.current is not None and not worker.current.done():
                outcome = Outcome(status=frames[2].bytes.decode(), frames=frames[4:], logged=bool(frames[3].bytes))
                worker.current.set_result(outcome)

    async def run(self, task: Task) -> Outcome:
        worker = await self._idle.get()
        while worker.process.returncode is not None:  # died while idle; its replacement queues itself
            worker = await self._idle.get()
        worker.current = asyncio.get_running_loop().create_future()
        try:
            await self._socket.send_multipart([worker.id.encode(), *encode_task(task)], copy=False)
            outcome = await worker.current
        except asyncio.CancelledError:
            # Timed out or abandoned: the worker is still busy with it, so it has to go.
            worker.current = None
            self._kill(worker)
            raise
        except WorkerDiedError:
            worker.current = None
            raise
        worker.current = None
        self._idle.put_nowait(worker)
        return outcome

    def _kill(self, worker: _Worker) -> None:
        if worker.process.returncode is None:
            worker.process.kill()

    async def stop(self) -> None:
        self._stopping = True
        for worker in list(self._workers.values()):
            self._kill(worker)
        for worker in list(self._workers.values()):
            await worker.process.wait()
        for task in list(self._background):
            task.cancel()
        if self._socket is not None:
            self._socket.close()
