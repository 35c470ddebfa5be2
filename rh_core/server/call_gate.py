"""When the calls of one function may run: the rule behind ``enqueue``.

``f.enqueue(x)`` runs alone: not beside another enqueued call of ``f``, nor beside a plain call,
a ``.remote()`` or a map of ``f`` (the spec: it "doesn't run simultaneously with other calls").
Calls are admitted in arrival order; plain calls run side by side as long as no enqueued call
waits before them. Functions no enqueued call has reached have no gate at all, so plain calls
pay nothing for the rule.

The methods of a remote instance share one gate whose ``limit`` is the instance's
``max_concurrency``: at most that many of its calls run at once (one, unless the class says more),
the others wait in arrival order.
"""

from __future__ import annotations

import collections
from collections.abc import Callable


class CallGate:
    """The calls of one function that run or wait. ``admit`` a call with what starts it; call
    ``leave`` with the returned ticket once it has finished (or was given up while waiting)."""

    def __init__(self, running_plain: int = 0, limit: int | None = None):
        self.running_plain = running_plain  # plain calls running now
        self.limit = limit  # how many plain calls may run at once; None: no limit
        self.exclusive_running = False  # an enqueued call runs now
        self._waiting: collections.deque[_Ticket] = collections.deque()

    def admit(self, exclusive: bool, start: Callable[[], None]) -> _Ticket:
        ticket = _Ticket(exclusive, start)
        self._waiting.append(ticket)
        self._wake()
        return ticket

    def leave(self, ticket: _Ticket) -> None:
        if not ticket.admitted:
            self._waiting.remove(ticket)  # given up while it waited
        elif ticket.exclusive:
            self.exclusive_running = False
        else:
            self.running_plain -= 1
        ticket.admitted = False
        self._wake()

    def plain_finished(self) -> None:
        """A plain call that was running when this gate was made has finished."""
        self.running_plain -= 1
        self._wake()

    @property
    def idle(self) -> bool:
        return not self._waiting and not self.exclusive_running and self.running_plain == 0

    def _wake(self) -> None:
        while self._waiting and not self.exclusive_running:
            ticket = self._waiting[0]
            if ticket.exclusive and self.running_plain:
                return  # it waits for the plain calls before it; later ones wait behind it
            if self.limit is not None and self.running_plain >= self.limit:
                return  # as many run as may; the next waits for one of them to finish
            self._waiting.popleft()
            ticket.admitted = True
            if ticket.exclusive:
                self.exclusive_running = True
            else:
                self.running_plain += 1
            ticket.start()


class _Ticket:
    __slots__ = ("admitted", "exclusive", "start")

    def __init__(self, exclusive: bool, start: Callable[[], None]):
        self.exclusive, self.start, self.admitted = exclusive, start, False
