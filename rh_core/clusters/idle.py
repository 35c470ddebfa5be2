"""The idle watcher: a process beside a cluster's server that notices when calls stop arriving and
then runs an action a plugin gives, such as stopping the machine. Plugins whose clusters stop
themselves when idle (rh-sky, rh-gcp) send a short script to the head that builds an
:class:`IdleWatcher` with their action and calls :func:`detach` and :meth:`IdleWatcher.run`.

Activity is what the server itself reports to a ping: the count of calls it has received moved
since the previous answer, or calls are in flight. A client connecting counts (its first answer is
new). The watcher runs with the rh venv's Python on the head and needs only rh_core there.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from typing import Any

from rh_core.support.processes import pid_alive

Ping = Callable[[], "dict[str, Any] | None"]


def log(message: str) -> None:
    """One timestamped line on stdout, which the script that started the watcher sends to its log."""
    print(time.strftime("%Y-%m-%d %H:%M:%S"), message, flush=True)


def detach() -> None:
    """Fork and go on in a new session as the child, so the SSH command that started the watcher
    returns at once and its end does not take the watcher along."""
    if os.fork():
        os._exit(0)
    os.setsid()


def active(before: dict[str, Any] | None, now: dict[str, Any]) -> bool:
    """Whether the server answered ``now`` after calls arrived since ``before`` (its previous
    answer, None on the first), or while calls run (when the server counts them)."""
    if now.get("in_flight"):
        return True
    return before is None or now.get("calls") != before.get("calls")


class IdleWatcher:
    """Watches the server whose process is ``server_pid`` every ``interval`` seconds until that
    process ends, and decides each round:

    * whether the server was **active** (:func:`active`): then ``on_activity()`` runs (rh-sky resets
      SkyPilot's idle timer there, and SkyPilot does the stopping) and the idle clock restarts;
    * whether it has been **idle** for the minutes ``idle_minutes()`` answers this round (read
      every round, so a setting changed on the client applies; None: never): then
      ``on_idle(minutes)`` runs once and the watcher ends, its work done (rh-gcp stops or deletes
      the instances there).

    The idle clock starts when the watcher does. A round without an answer from the server is not
    activity; an answer that is an error (the server refused the watcher's secret) is logged once
    per distinct message. One watcher per server: a second one for the same server (a lock file
    ``<lock_name>-<server_pid>.lock`` in ``state_dir``) returns at once from :meth:`run`.

    :param ping: how to ask the server for its counts; default: :func:`rh_core.client.connection.ping` at
        ``endpoint`` with the secret in ``state_dir``.
    """

    def __init__(self, state_dir: str, endpoint: str, server_pid: int, *, interval: float, lock_name: str,
                 on_idle: Callable[[float], None] | None = None,
                 idle_minutes: Callable[[], float | None] = lambda: None,
                 on_activity: Callable[[], None] = lambda: None, ping: Ping | None = None):
        self.state_dir, self.endpoint, self.server_pid = state_dir, endpoint, server_pid
        self.interval, self.lock_name = interval, lock_name
        self.on_idle, self.idle_minutes, self.on_activity = on_idle, idle_minutes, on_activity
        self._ping = ping

    def run(self) -> None:
        """Watch until the server's process ends or the idle action has run; see the class."""
        lock_path = os.path.join(self.state_dir, f"{self.lock_name}-{self.server_pid}.lock")
        lock = open(lock_path, "w")  # noqa: SIM115 - held for the watcher's whole life
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return  # another watcher serves this server (maybe one of a server just replaced)
        try:
            self._watch()
        finally:
            os.unlink(lock_path)
            lock.close()

    def _server_ping(self) -> Ping:
        if self._ping is not None:
            return self._ping
        from rh_core.client.connection import ping, read_secret

        secret = read_secret(self.state_dir)  # the server answers only requests that carry it
        return lambda: ping(self.endpoint, timeout=10.0, secret=secret)

    def _watch(self) -> None:
        ping = self._server_ping()
        log(f"watching the server (pid {self.server_pid}) every {self.interval} s")
        before, refused, last_active = None, None, time.monotonic()
        while pid_alive(self.server_pid):
            info = ping()
            if info is not None and "calls" not in info:  # an error reply, such as a refused secret
                if info.get("message") != refused:
                    refused = info.get("message")
                    log(f"the server refused the watcher's ping: {refused}")
            elif info is not None:
                if active(before, info):
                    last_active = time.monotonic()
                    self.on_activity()
                before = info
            minutes = self.idle_minutes()
            if self.on_idle is not None and minutes is not None and time.monotonic() - last_active >= minutes * 60:
                self.on_idle(minutes)
                return
            time.sleep(self.interval)
        log(f"the server (pid {self.server_pid}) exited; stopping")
