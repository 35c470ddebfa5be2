"""The ``process`` executor's remote instances (``rh.module``): each in a worker process of its own,
outside the pools.

An instance's worker (``python -m rh_core.worker LINK LOGS CONCURRENCY``) runs the class's
constructor as its first task and holds the instance from then on. Method calls come one message
each and are answered by key, as many at once as the instance's ``max_concurrency`` (the server
admits no more). A method call whose future is cancelled (its timeout, ``cluster.cancel``) is
stopped inside the worker where that leaves the instance as it is (a coroutine, a generator between
items); otherwise its process is killed, since a thread running Python cannot be stopped. A process
that ends other than by :meth:`InstanceProcesses.stop` fails the calls it ran with
:class:`InstanceDiedError` and is reported to the server; it is never started again on its own,
so a lost state never goes unnoticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
from typing import Any

from rh_core.builtin.process_pool import exit_cause, kill_group, spawn_worker
from rh_core.errors import InstanceDiedError, InstanceNotFoundError, WorkerDiedError
from rh_core.wire.link import Link, as_frame
from rh_core.wire.messages import cancel_to_link, done_from_link, task_to_link
from rh_core.plugin.interfaces import InstanceSpec, Outcome, ServerContext, Task


class _InstanceProcess:
    def __init__(self, spec: InstanceSpec, process: asyncio.subprocess.Process, link: Link,
                 loop: asyncio.AbstractEventLoop):
        self.spec = spec
        self.process = process
        self.link = link
        self.ready: asyncio.Future[None] = loop.create_future()  # it said it is ready
        self.calls: dict[str, asyncio.Future[Outcome]] = {}  # call key -> its outcome, while it runs there
        self.ending: str | None = None  # why we end its process, when we do

    def end(self, why: str) -> None:
        if self.ending is None:
            self.ending = why
        kill_group(self.process)


class InstanceProcesses:
    """The instances of one process executor, by instance id."""

    def __init__(self, context: ServerContext, start_timeout: float):
        self._context = context
        self._start_timeout = start_timeout
        self._loop = asyncio.get_running_loop()
        self._instances: dict[str, _InstanceProcess] = {}
        self._watchers: dict[str, asyncio.Task] = {}
        self._stopping = False

    def describe(self) -> list[str]:
        return sorted(instance.spec.name for instance in self._instances.values())

    def start(self, task: Task, spec: InstanceSpec) -> asyncio.Future[Outcome]:
        return asyncio.ensure_future(self._start(task, spec))

    async def _start(self, task: Task, spec: InstanceSpec) -> Outcome:
        env = self._context.environment(task.env)
        try:
            process, link = await spawn_worker(env, self._context.log_endpoint, str(spec.max_concurrency))
        except OSError as exc:
            raise WorkerDiedError(f"could not start a process for instance {spec.name!r}: {exc}") from exc
        instance = _InstanceProcess(spec, process, link, self._loop)
        self._instances[spec.id] = instance
        link.watch(self._loop, self._on_readable, instance)
        self._watchers[spec.id] = asyncio.ensure_future(self._watch(instance))
        try:
            try:
                await asyncio.wait_for(asyncio.shield(instance.ready), self._start_timeout)
            except asyncio.TimeoutError:  # not the builtin TimeoutError on Python 3.10
                instance.end(f"it did not report ready within {self._start_timeout:g} s")
                raise WorkerDiedError(
                    f"the process of instance {spec.name!r} did not report ready within {self._start_timeout:g} s; "
                    "see the server log. A slow machine may need a longer start: -o start_timeout=SECONDS"
                ) from None
            outcome = await self.submit(task)  # the constructor
        except BaseException:  # cancelled (the constructor's timeout), or it could not start
            await self.stop(spec.id)
            raise
        if outcome.status != "ok":  # the constructor failed: nothing is kept
            await self.stop(spec.id)
        return outcome

    def submit(self, task: Task) -> asyncio.Future[Outcome]:
        """Send a call (the constructor, or a method call) to its instance's process."""
        future: asyncio.Future[Outcome] = self._loop.create_future()
        name = task.header.instance.name
        instance = self._instances.get(task.header.instance.id)
        if instance is None:
            future.set_exception(InstanceNotFoundError(f"instance {name!r} has no process on this cluster"))
            return future
        if instance.ending is not None:  # being ended: the server hears of it once its process is gone
            future.set_exception(InstanceDiedError(
                f"instance {name!r} ended: {instance.ending}. Its state is gone; call the module again to create it anew"))
            return future
        instance.calls[task.key] = future
        future.add_done_callback(lambda done: self._on_settled(instance, task.key, done))
        try:
            instance.link.send(task_to_link(task, as_frame))
        except OSError:  # it died just now, or stopped reading: its watcher fails this call
            instance.end("it stopped reading its calls")
        return future

    def _on_settled(self, instance: _InstanceProcess, key: str, future: asyncio.Future) -> None:
        if future.cancelled() and key in instance.calls and instance.process.returncode is None:
            # Its timeout, or a cancel: ask the process to stop it; it answers whether it could.
            try:
                instance.link.send(cancel_to_link(key))
            except OSError:
                instance.end("it stopped reading its calls")

    def _on_readable(self, instance: _InstanceProcess) -> None:
        try:
            message = instance.link.receive()
        except EOFError:  # it exited: its watcher says how
            self._loop.remove_reader(instance.link.fileno())
            return
        except (OSError, pickle.UnpicklingError):
            self._loop.remove_reader(instance.link.fileno())
            instance.end("it wrote something that is not a message to its link")
            return
        kind = message[0]
        if kind == "ready":
            if not instance.ready.done():
                instance.ready.set_result(None)
        elif kind == "done":
            key, outcome = done_from_link(message)
            future = instance.calls.pop(key, None)
            if future is not None and not future.done():
                future.set_result(outcome)
        elif kind == "cancel":
            _, key, stopped = message
            if not stopped and key in instance.calls:
                instance.end(f"its call {key} was cancelled or timed out while it ran a method that only ending "
                             "the process can stop (a coroutine or a generator would have been stopped in place)")

    async def _watch(self, instance: _InstanceProcess) -> None:
        returncode = await instance.process.wait()
        self._loop.remove_reader(instance.link.fileno())
        instance.link.close()
        spec = instance.spec
        if self._instances.get(spec.id) is instance:
            del self._instances[spec.id]
        self._watchers.pop(spec.id, None)
        cause = instance.ending or f"its process (pid {instance.process.pid}) died: {exit_cause(returncode)}"
        error = InstanceDiedError(
            f"instance {spec.name!r} ended: {cause}. Its state is gone; create it anew (call the module again) "
            "to go on. Look for a crash in native code, os._exit or running out of memory in the server log."
            if instance.ending is None else f"instance {spec.name!r} ended: {cause}"
        )
        for future in instance.calls.values():
            if not future.done():
                future.set_exception(error)
        if not instance.ready.done():
            instance.ready.set_exception(error)
            instance.ready.exception()  # marked as seen: _start may have stopped waiting for it
        if instance.ending != _RELEASED and not self._stopping:
            self._context.instance_ended(spec.id, cause)

    async def stop(self, instance_id: str) -> None:
        """End an instance's process (released, or its constructor failed) and wait for it."""
        instance = self._instances.get(instance_id)
        watcher = self._watchers.get(instance_id)
        if instance is not None:
            instance.end(_RELEASED)
        if watcher is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(watcher)

    async def stop_all(self) -> None:
        self._stopping = True
        for instance in list(self._instances.values()):
            instance.end("the server stopped")
        watchers: list[Any] = list(self._watchers.values())
        if watchers:
            await asyncio.gather(*watchers, return_exceptions=True)


_RELEASED = "it was released"
