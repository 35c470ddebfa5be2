"""Runs on a sky cluster's head beside the rh server, and resets SkyPilot's idle timer while calls arrive.

SkyPilot's skylet stops a cluster once its idle timer (``autostop_last_active_time`` in
``~/.sky/skylet_config.db``) is older than the autostop minutes. The skylet resets that timer only
while a job is in SkyPilot's queue or, by default, an interactive SSH session (one with a terminal)
is open; rh calls are neither. So this loop asks the rh server every INTERVAL seconds how many calls
it has received, and when the count moved, or the server reports calls in flight, it sets the timer
to now, as the skylet does when it sees a running job. A client connecting counts as activity too.

This file is sent to the head and run there as ``python -c SOURCE`` by the rh venv's Python (it
needs only the standard library and rh_core), with the arguments::

    STATE_DIR SERVER_ENDPOINT SERVER_PID IDLE_TIMER_DB INTERVAL

It detaches itself, writes what it does to STATE_DIR/sky-activity.log (through its stdout), runs
once per server (a lock file in STATE_DIR) and exits when the server does.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import time

from rh_core.clusters.idle import IdleWatcher, detach, log

TIMER_KEY = "autostop_last_active_time"  # sky/skylet/autostop_lib.py, SkyPilot 0.14


def reset_idle_timer(db_path: str, when: float) -> bool:
    """Set SkyPilot's idle timer to ``when``; False while SkyPilot's skylet has not created it."""
    if not os.path.exists(db_path):
        return False
    try:
        with contextlib.closing(sqlite3.connect(db_path, timeout=10)) as db, db:
            updated = db.execute("UPDATE config SET value = ? WHERE key = ?", (repr(float(when)), TIMER_KEY))
            return updated.rowcount == 1
    except sqlite3.Error as exc:
        log(f"could not write SkyPilot's idle timer in {db_path}: {exc}")
        return False


class SkyIdleTimer:
    """The watcher's action on activity: SkyPilot's idle timer set to now. SkyPilot's skylet does
    the stopping itself once the timer is older than the autostop minutes."""

    def __init__(self, db_path: str):
        self.db_path = db_path
        self.found: bool | None = None

    def touch(self) -> None:
        found = reset_idle_timer(self.db_path, time.time())
        if found != self.found:  # log changes only, not every reset
            log("resetting SkyPilot's idle timer while calls arrive" if found else
                f"SkyPilot's idle timer is not in {self.db_path} (yet); calls cannot keep the cluster up")
            self.found = found


def main(argv: list[str]) -> None:
    state_dir, endpoint, server_pid, db_path, interval = argv
    detach()
    log(f"SkyPilot's idle timer: {db_path}")
    IdleWatcher(state_dir, endpoint, int(server_pid), interval=float(interval), lock_name="sky-activity",
                on_activity=SkyIdleTimer(db_path).touch).run()


if __name__ == "__main__":
    main(sys.argv[1:])
