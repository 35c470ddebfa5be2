"""The built-in ``process`` executor: pools of worker processes on the cluster's head machine.

Each environment has its own pool, started when its first task arrives (the default environment's
at server start, with workers forked from the server: see :mod:`rh_core.server.__main__`), whose
workers run that environment's interpreter. Tasks with secrets (``Task.variables``) get pools of
their own, one per environment and set of variable names, so a worker that ever held a secret's
values runs only tasks that are given the same variables. Each worker runs one task at a time
(see :mod:`rh_core.worker.process`); tasks wait in arrival order for a free worker of their pool.
After an install into an environment, its workers are replaced as they become idle, so new calls
see the new packages. A worker that dies mid-call fails that call with :class:`WorkerDiedError` and is
replaced; a call whose future is cancelled (its timeout expired) has its worker killed and replaced.

Starting is judged worker by worker: a worker has started once it says it is ready, however long
its first call then runs. A pool fails (its waiting tasks get the error) only when its workers
cannot start at all: none reported ready within ``start_timeout`` seconds, or several in a row
exited before they did. Each worker leads a process group of its own, so killing it also kills the
processes its call started.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import pickle
import signal
import socket
from collections.abc import Callable
from typing import Any

from rh_core.errors import WorkerDiedError
from rh_core.wire.link import Link, as_frame, bound_stalls
from rh_core.wire.messages import done_from_link, task_to_link
from rh_core.plugin.interfaces import Environment, InstanceSpec, Outcome, ServerContext, Task
from rh_core.support.processes import StartedEarly, stop_process, stop_started_early, take_started_early

START_TIMEOUT = 60.0  # how long a new worker may take to report ready (imports on a busy machine)
START_FAILURES = 3  # workers in a row that die before ready: the environment cannot start them


class _Worker:
    def __init__(self, worker_id: str, process: asyncio.subprocess.Process, link: Link, pool: _Pool):
        self.id = worker_id
        self.process = process
        self.link = link
        self.pool = pool
        self.generation = pool.generation
        self.started = False  # it said it is ready
        self.start_timed_out = False
        self.current: asyncio.Future[Outcome] | None = None  # the outcome of the task it runs now
        self.task_key: str | None = None  # that task's run key
        self.retiring = False  # killed as one more than the pool needs now: not replaced

    def kill(self) -> None:
        """Kill its process group if it still runs (the worker and whatever its call started); its
        watcher then fails its call and replaces it."""
        kill_group(self.process)


PoolKey = tuple  # (environment name, the sorted variable names of the secrets its tasks get)


class _Pool:
    """The workers of one environment (and set of secret variable names) and the tasks waiting for them."""

    def __init__(self, key: PoolKey, env: Environment, size: int):
        self.key = key
        self.env = env
        self.size = size
        self.generation = 0  # bumped when the environment changes; older workers are retired
        self.workers: set[_Worker] = set()
        self.idle: list[_Worker] = []
        self.waiting: collections.deque[tuple[Task, asyncio.Future[Outcome]]] = collections.deque()
        self.ever_started = False  # some worker of it reported ready: the environment can run workers
        self.start_failures = 0  # workers in a row that exited before they reported ready
        self.surplus = 0  # workers lent to waiting callers and given back: retired as they go idle

    @property
    def label(self) -> str:
        label = f"environment {self.env.name!r}" if self.env.name else "the default environment"
        return label + (f" (with secret variables {', '.join(self.key[1])})" if self.key[1] else "")


def worker_command(env: Environment, link_fd: int, log_endpoint: str, *arguments: str) -> list[str]:
    """How a worker process (``python -m rh_core.worker``, see there for ``arguments``) of ``env`` starts."""
    return [env.python, "-m", "rh_core.worker", str(link_fd), log_endpoint, *arguments]


async def spawn_worker(env: Environment, log_endpoint: str,
                       *arguments: str) -> tuple[asyncio.subprocess.Process, Link]:
    """Start a worker process of ``env``'s interpreter, and return it with the server's end of its link."""
    ours, theirs = socket.socketpair()
    bound_stalls(ours)  # a worker whose message stops half-way (it hangs, or wrote a broken one)
    try:
        process = await asyncio.create_subprocess_exec(
            *worker_command(env, theirs.fileno(), log_endpoint, *arguments),
            stdin=asyncio.subprocess.DEVNULL, env={**os.environ, **env.variables}, pass_fds=(theirs.fileno(),),
            start_new_session=True,  # a process group of its own: killing it ends what its call started too
        )
    except OSError:
        ours.close()
        raise
    finally:
        theirs.close()
    return process, Link(ours.detach())


def take_early_worker(env: Environment, log_endpoint: str) -> tuple[StartedEarly, Link] | None:
    """A worker of ``env`` that ``python -m rh_core.server`` started before the server was ready to
    (see :mod:`rh_core.server.__main__`), with the server's end of its link; None when none is left
    that runs exactly what :func:`spawn_worker` would."""
    variables = {**os.environ, **env.variables}
    early = take_started_early(
        lambda early: early.command == worker_command(env, early.child_fd, log_endpoint) and early.env == variables)
    if early is None:
        return None
    bound_stalls(early.ours)
    return early, Link(early.ours.detach())


def kill_group(process: asyncio.subprocess.Process) -> None:
    """Kill a worker's process group if it still runs: the worker and whatever its calls started."""
    if process.returncode is None:
        stop_process(process.pid, grace=0, group=True)


def exit_cause(returncode: int) -> str:
    return f"killed by signal {signal.Signals(-returncode).name}" if returncode < 0 else f"exit code {returncode}"


class ProcessExecutor:
    """Pools of worker processes, one per environment; ``num_workers`` (per pool) defaults to the CPU count."""

    name = "process"
    same_machine = True  # workers run beside the server: large buffers may go through /dev/shm

    def __init__(self, num_workers: int | None = None, start_timeout: float = START_TIMEOUT):
        self.num_workers = int(num_workers or os.cpu_count() or 1)
        self.start_timeout = float(start_timeout)
        self._ids = itertools.count()
        self._workers: set[_Worker] = set()
        self._pools: dict[PoolKey, _Pool] = {}
        self._stopping = False
        self._watchers: set[asyncio.Task] = set()

    @property
    def parallelism(self) -> int:
        return self.num_workers

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name, "workers": sorted(w.process.pid for w in self._workers),
                "environments": sorted({name or "default" for name, _ in self._pools}),
                "instances": self._instances.describe()}

    async def start(self, context: ServerContext) -> None:
        # The default pool's workers start now, while the server opens for clients: calls that
        # arrive first wait for them, so a cold start pays for the two start-ups side by side.
        from rh_core.builtin.process_instances import InstanceProcesses

        self._context = context
        self._loop = asyncio.get_running_loop()  # kept: asking for it costs a getpid() each time
        self._instances = InstanceProcesses(context, self.start_timeout)
        self._pool((None, ()))
        stop_started_early()  # workers started early that it did not take: not what it runs

    def start_instance(self, task: Task, instance: InstanceSpec) -> asyncio.Future[Outcome]:
        """A remote instance runs in a worker process of its own (see :mod:`rh_core.builtin.process_instances`)."""
        return self._instances.start(task, instance)

    async def stop_instance(self, instance_id: str) -> None:
        await self._instances.stop(instance_id)

    def _pool(self, key: PoolKey) -> _Pool:
        """The pool of an environment and set of secret variable names, started on first use."""
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(key, self._context.environment(key[0]), self.num_workers)
            for _ in range(pool.size):
                self._spawn(pool, take_early_worker(pool.env, self._context.log_endpoint))
        return pool

    def _check_started(self, worker: _Worker) -> None:
        """A worker still starting after ``start_timeout`` is killed; its watcher counts the failure."""
        if not worker.started and worker.process.returncode is None:
            worker.start_timed_out = True
            worker.kill()

    def _spawn(self, pool: _Pool, started: tuple[StartedEarly, Link] | None = None) -> None:
        """Start a worker for ``pool`` (or take over one ``started`` already) and watch it until it ends."""
        worker_id = f"{os.getpid()}-w{next(self._ids)}"  # unique across server restarts
        watcher = asyncio.ensure_future(self._start_and_watch(pool, worker_id, started))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _start_and_watch(self, pool: _Pool, worker_id: str, started: tuple[StartedEarly, Link] | None) -> None:
        try:
            process, link = started or await spawn_worker(pool.env, self._context.log_endpoint)
        except OSError as exc:
            self._pool_failed(pool, WorkerDiedError(f"could not start a worker in {pool.label}: {exc}"))
            return
        worker = _Worker(worker_id, process, link, pool)
        self._workers.add(worker)
        pool.workers.add(worker)
        worker.link.watch(self._loop, self._on_readable, worker)
        start_timer = self._loop.call_later(self.start_timeout, self._check_started, worker)
        returncode = await process.wait()
        start_timer.cancel()
        self._loop.remove_reader(worker.link.fileno())
        worker.link.close()
        self._workers.discard(worker)
        pool.workers.discard(worker)
        if worker in pool.idle:
            pool.idle.remove(worker)
        if self._stopping:
            return
        if worker.current is not None and not worker.current.done():
            worker.current.set_exception(WorkerDiedError(
                f"the worker process (pid {process.pid}) running this call died ({exit_cause(returncode)}); "
                "it has been replaced. Look for a crash in native code, os._exit or running out of memory."
            ))
        if not worker.started:
            pool.start_failures += 1
            if not pool.ever_started or pool.start_failures >= START_FAILURES:
                why = (f"did not report ready within {self.start_timeout:g} s" if worker.start_timed_out
                       else f"exited with code {returncode} while starting")
                self._pool_failed(pool, WorkerDiedError(
                    f"worker {worker.id} of {pool.label} {why}; see the server log. A slow machine may need "
                    "a longer start: start the server with -o start_timeout=SECONDS"
                ))
                return
        if self._pools.get(pool.key) is pool and not worker.retiring:  # a failed pool is not refilled
            self._spawn(pool)

    def _pool_failed(self, pool: _Pool, error: WorkerDiedError) -> None:
        """A pool whose workers cannot start fails its waiting tasks and is forgotten (retried later)."""
        while pool.waiting:
            _, future = pool.waiting.popleft()
            if not future.done():
                future.set_exception(error)
        if self._pools.get(pool.key) is pool:
            del self._pools[pool.key]
        for worker in list(pool.workers):
            if worker.current is None:  # calls that run go on; their workers retire when done
                worker.kill()

    def _on_readable(self, worker: _Worker) -> None:
        # One message per call: the loop calls again while more is waiting.
        try:
            message = worker.link.receive()
        except (EOFError, OSError, pickle.UnpicklingError):
            # The worker is gone (its watcher reports it) or wrote something unreadable: either way
            # it cannot be trusted with another task.
            self._loop.remove_reader(worker.link.fileno())
            worker.kill()
            return
        self._on_message(worker, message)

    def _on_message(self, worker: _Worker, message: tuple) -> None:
        if message[0] == "done":
            _, outcome = done_from_link(message)
            current, worker.current, worker.task_key = worker.current, None, None
            if current is not None and not current.done():
                current.set_result(outcome)
        pool = worker.pool
        if not worker.started:  # its first message: it is ready
            worker.started = pool.ever_started = True
            pool.start_failures = 0
        if worker.generation != pool.generation or self._pools.get(pool.key) is not pool:
            worker.kill()  # its environment changed since it started, or its pool failed
            return
        if pool.surplus and not pool.waiting:
            self._retire(worker)
            return
        pool.idle.append(worker)
        self._dispatch(pool)

    def lend_worker(self, run_key: str) -> Callable[[], None] | None:
        """The worker running ``run_key`` waits for a call it made to this cluster: its pool gets
        one more worker for as long as it waits, so callers that fill every worker (a ``map`` of
        functions that call other functions here) never wait for a worker that none will free.
        Returns what gives it back (the pool's extra worker retires once idle); None when no
        worker of a pool runs ``run_key``."""
        pool = next((p for p in self._pools.values() if any(w.task_key == run_key for w in p.workers)), None)
        if pool is None:
            return None
        self._spawn(pool)

        def give_back() -> None:
            pool.surplus += 1
            while pool.surplus and pool.idle and not pool.waiting:
                self._retire(pool.idle.pop())

        return give_back

    @staticmethod
    def _retire(worker: _Worker) -> None:
        worker.pool.surplus -= 1
        worker.retiring = True
        worker.kill()

    def submit(self, task: Task) -> asyncio.Future[Outcome]:
        if task.header.instance is not None:  # a method call: its instance's own process runs it
            return self._instances.submit(task)
        future: asyncio.Future[Outcome] = self._loop.create_future()
        pool = self._pool((task.env, tuple(sorted(task.variables))) if task.variables else (task.env, ()))
        pool.waiting.append((task, future))
        self._dispatch(pool)
        return future

    def environment_changed(self, env_name: str | None) -> None:
        """Packages changed in an environment: its workers are replaced as they become idle."""
        for pool in [pool for (name, _), pool in self._pools.items() if name == env_name]:
            pool.generation += 1
            for worker in list(pool.idle):
                pool.idle.remove(worker)
                worker.kill()

    def _dispatch(self, pool: _Pool) -> None:
        while pool.idle and pool.waiting:
            task, future = pool.waiting.popleft()
            if future.done():  # cancelled while it waited
                continue
            worker = pool.idle.pop()
            worker.current, worker.task_key = future, task.key
            future.add_done_callback(lambda f, worker=worker: self._on_settled(worker, f))
            try:
                worker.link.send(task_to_link(task, as_frame))
            except OSError:
                # It died just now, or stopped reading: its watcher fails this call and replaces it.
                worker.kill()

    def _on_settled(self, worker: _Worker, future: asyncio.Future) -> None:
        if future.cancelled() and worker.current is future:
            # Timed out or abandoned while running: the worker is still busy with it, so it goes.
            worker.current = None
            worker.kill()

    async def stop(self) -> None:
        await self._instances.stop_all()
        self._stopping = True
        workers = list(self._workers)
        for worker in workers:
            worker.kill()
        for worker in workers:
            await worker.process.wait()
        for watcher in list(self._watchers):
            watcher.cancel()
