"""The server's book of remote instances (``rh.module``): which instance lives under which name,
which incarnation of it a handle names, and why one ended. The executor runs them (a process or a
Ray actor each, see :meth:`rh_core.plugin.interfaces.Executor.start_instance`); this only keeps count.

An instance whose process died keeps its name as a tombstone until it is created anew or released,
so every call on it says what happened rather than reach a fresh state.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from rh_core.errors import InstanceDiedError, InstanceNotFoundError, RhError
from rh_core.wire.messages import InstanceTarget
from rh_core.plugin.interfaces import Executor, InstanceSpec, Outcome, Task


@attrs.define
class _Record:
    spec: InstanceSpec
    env: str | None
    class_name: str | None  # the class's qualified name, as the creating client gave it
    ended: str | None = None  # why its process is gone, once it is


class Instances:
    """The remote instances of one server, by name."""

    def __init__(self, executor: Executor):
        self._executor = executor
        self._records: dict[str, _Record] = {}
        self._creating: dict[str, asyncio.Lock] = {}  # one constructor at a time per name

    async def get_or_create(self, task: Task,
                            start: Callable[[Task], Awaitable[Outcome]]) -> tuple[str, bool, Outcome | None]:
        """The instance ``task`` names: ``(id, False, None)`` for one that lives under its name (its
        constructor is not run again, whatever the arguments), else ``start(task)`` runs the
        constructor: ``(id, True, None)`` once it succeeded, ``(id, False, outcome)`` when it failed."""
        spec = spec_of(task.header.instance)
        class_name = task.header.instance.class_name
        async with self._creating.setdefault(spec.name, asyncio.Lock()):
            record = self._records.get(spec.name)
            if record is not None and record.ended is None:
                if class_name and record.class_name and class_name != record.class_name:
                    raise RhError(f"instance {spec.name!r} on this cluster is a {record.class_name}, not a "
                                  f"{class_name}; give this one another name, or release that one first")
                return record.spec.id, False, None
            outcome = await start(task)
            if outcome.status != "ok":
                return spec.id, False, outcome
            self._records[spec.name] = _Record(spec=spec, env=task.env, class_name=class_name)
            return spec.id, True, None

    def check(self, instance: InstanceTarget) -> None:
        """Refuse a method call on an instance that is not there (or is another incarnation), naming why."""
        name, record = instance.name, self._records.get(instance.name)
        if record is None:
            raise InstanceNotFoundError(
                f"no instance {name!r} on this cluster: it was released, or the server restarted since it was "
                "created. Call the module again to create it")
        if record.spec.id != instance.id:
            raise InstanceNotFoundError(
                f"instance {name!r} was created anew since this handle to it was made, so the state it knew is "
                "gone; call the module again to get the new one")
        if record.ended is not None:
            raise InstanceDiedError(f"instance {name!r} ended: {record.ended}. Its state is gone; call the module "
                                    "again to create it anew")

    def concurrency(self, instance: InstanceTarget) -> int:
        """How many method calls of ``instance`` may run at once."""
        record = self._records.get(instance.name)
        return record.spec.max_concurrency if record is not None else 1

    def ended(self, instance_id: str, reason: str) -> None:
        """The executor says an instance's process is gone (see :meth:`ServerContext.instance_ended`)."""
        for record in self._records.values():
            if record.spec.id == instance_id:
                record.ended = reason
                sys.stderr.write(f"rh server: instance {record.spec.name!r} ended: {reason}\n")

    async def release(self, name: str, instance_id: str | None) -> bool:
        """End the instance ``name`` (only if it is incarnation ``instance_id``, when given); False
        when there is no such instance."""
        record = self._records.get(name)
        if record is None or (instance_id is not None and record.spec.id != instance_id):
            return False
        del self._records[name]
        if record.ended is None:
            await self._executor.stop_instance(record.spec.id)
        return True

    def describe(self) -> dict[str, dict[str, Any]]:
        """name -> id, class, concurrency, environment, and why it ended (None while it lives)."""
        return {name: {"id": r.spec.id, "class": r.class_name, "max_concurrency": r.spec.max_concurrency, "env": r.env,
                       "ended": r.ended}
                for name, r in self._records.items()}


def spec_of(instance: InstanceTarget) -> InstanceSpec:
    """The :class:`InstanceSpec` of a create request's ``instance`` field."""
    return InstanceSpec(name=instance.name, id=instance.id, max_concurrency=instance.max_concurrency)
