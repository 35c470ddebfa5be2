"""The server's table of the calls running or waiting, by task key (a map's chunk is ``KEY/3``).

It starts each task through the executor (through its function's :class:`CallGate` when some of
that function's calls are enqueued, or it is an instance's method), applies its timeout, cancels
it, and settles it into an :class:`Outcome` once the call's output has gone out. Every other part of
the server asks it what runs: the doors, kept results, run logs, the ``runs`` and ``cancel`` ops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from rh_core.errors import CallTimeoutError, RunCancelledError
from rh_core.plugin.interfaces import Executor, Outcome, Task
from rh_core.server.call_gate import CallGate
from rh_core.server.instances import Instances, spec_of
from rh_core.server.run_logs import run_key_of
from rh_core.wire import serialize

if TYPE_CHECKING:
    from rh_core.server.run_logs import RunLogs


class RunTable:
    """What runs on the server now. ``run_logs`` is set once the server's loop exists (the two
    ask each other: a call's result waits for its last lines, a run's log closes with its last task)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, executor: Executor, instances: Instances):
        self._loop = loop
        self._executor = executor
        self._instances = instances
        self.run_logs: RunLogs
        self._running: dict[str, tuple[asyncio.Future, asyncio.Future[Outcome]]] = {}  # task key -> (executor's, final)
        self._gates: dict[str, CallGate] = {}  # fn_id -> the gate of a function with enqueued calls
        self._calls_running: dict[str, int] = {}  # fn_id -> its calls that run outside any gate

    # --- what runs -----------------------------------------------------------------------------

    def __contains__(self, task_key: str) -> bool:
        return task_key in self._running

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._running))

    def __len__(self) -> int:
        return len(self._running)

    def tasks_of(self, run_key: str) -> list[str]:
        """The task keys of run ``run_key`` running or waiting (a map has one per chunk)."""
        return [key for key in self._running if run_key_of(key) == run_key]

    def finals_of(self, run_key: str) -> list[asyncio.Future[Outcome]]:
        """The futures the tasks of run ``run_key`` settle."""
        return [final for key, (_, final) in self._running.items() if run_key_of(key) == run_key]

    def running_call(self, task_key: str) -> asyncio.Future[Outcome] | None:
        """The future of the call with task key ``task_key`` while it runs or waits."""
        running = self._running.get(task_key)
        return None if running is None else running[1]

    def other_tasks_running(self, run_key: str, task_key: str) -> bool:
        """Whether a task of run ``run_key`` other than ``task_key`` runs or waits (a map's chunks share a run)."""
        return any(run_key_of(key) == run_key for key in self._running if key != task_key)

    # --- starting and stopping -----------------------------------------------------------------

    def start(self, task: Task, exclusive: bool = False) -> asyncio.Future[Outcome]:
        """Submit a task (``exclusive``: an enqueued call, which runs alone; see
        :mod:`rh_core.server.call_gate`); the returned future always resolves to an Outcome, after the
        call's timeout is applied, executor failures are turned into ``err`` outcomes, and the
        call's last log lines have gone out."""
        final: asyncio.Future[Outcome] = self._loop.create_future()
        final.add_done_callback(lambda _: self._running.pop(task.key, None))
        fn_id = task.header.fn_id
        gate = self._gates.get(fn_id)
        if gate is None and not exclusive and task.header.instance is None:
            # The common case: nothing of this function is enqueued, and it is no instance's method.
            self._calls_running[fn_id] = self._calls_running.get(fn_id, 0) + 1
            final.add_done_callback(lambda _: self._ungated_call_finished(fn_id))
            self._submit(task, final)
            return final
        if gate is None:
            instance = task.header.instance
            limit = self._instances.concurrency(instance) if instance and task.header.mode != "create" else None
            gate = self._gates[fn_id] = CallGate(running_plain=self._calls_running.get(fn_id, 0), limit=limit)
        self._running[task.key] = (self._loop.create_future(), final)  # cancellable while it waits
        ticket = gate.admit(exclusive, lambda: final.done() or self._submit(task, final))
        final.add_done_callback(lambda _: self._leave_gate(fn_id, gate, ticket))
        return final

    def cancel(self, task_keys: list[str]) -> None:
        """Stop these tasks wherever they are; whoever waits for them gets :class:`RunCancelledError`."""
        for task_key in task_keys:
            running, final = self._running[task_key]
            if not final.done():
                error = RunCancelledError(f"run {run_key_of(task_key)} was cancelled")
                final.set_result(error_outcome(error))
            running.cancel()  # the executor stops the worker (or Ray task) running it

    # --- inside --------------------------------------------------------------------------------

    def _submit(self, task: Task, final: asyncio.Future[Outcome]) -> None:
        if task.header.mode == "create":
            running = self._executor.start_instance(task, spec_of(task.header.instance))
        else:
            running = self._executor.submit(task)
        self._running[task.key] = (running, final)
        timeout = task.options.get("timeout")
        timer = self._loop.call_later(timeout, self._expire, running, final, timeout) if timeout else None

        def settle(running: asyncio.Future) -> None:
            if timer is not None:
                timer.cancel()
            if final.done():
                return
            if running.cancelled():
                return  # only _expire and cancel cancel, and they settled `final` themselves
            exc = running.exception()
            if exc is not None:
                final.set_result(error_outcome(exc))
                return
            outcome = running.result()
            if outcome.output:
                outcome = self.run_logs.took_output(task.key, outcome)
            if outcome.logged:
                self.run_logs.after_logs(task.key, lambda: final.done() or final.set_result(outcome))
            else:
                final.set_result(outcome)

        running.add_done_callback(settle)

    def _expire(self, running: asyncio.Future, final: asyncio.Future, timeout: float) -> None:
        error = CallTimeoutError(f"the call ran longer than its timeout of {timeout} s and was stopped")
        if not final.done():
            final.set_result(error_outcome(error))
        running.cancel()  # the executor stops whatever runs it

    def _ungated_call_finished(self, fn_id: str) -> None:
        left = self._calls_running[fn_id] - 1
        if left:
            self._calls_running[fn_id] = left
        else:
            del self._calls_running[fn_id]
        gate = self._gates.get(fn_id)
        if gate is not None:  # it ran when the gate was made, and counts there
            gate.plain_finished()
            self._forget_gate_when_idle(fn_id, gate)

    def _leave_gate(self, fn_id: str, gate: CallGate, ticket: Any) -> None:
        gate.leave(ticket)
        self._forget_gate_when_idle(fn_id, gate)

    def _forget_gate_when_idle(self, fn_id: str, gate: CallGate) -> None:
        if gate.idle and self._gates.get(fn_id) is gate:
            del self._gates[fn_id]


def error_outcome(exc: BaseException) -> Outcome:
    """The ``err`` outcome of an error the server itself met (a timeout, a cancel, an executor's
    failure): pickled for the caller, and named in ``error`` for readers that never unpickle."""
    return Outcome(status="err", frames=serialize.dumps_exception(exc), error=(type(exc).__name__, str(exc)))
