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
import fcntl
import os
import sqlite3
import sys
import time

TIMER_KEY = "autostop_last_active_time"  # sky/skylet/autostop_lib.py, SkyPilot 0.14


def active(before: dict | None, now: dict) -> bool:
    """Whether the server answered ``now`` after calls arrived since ``before`` (its previous
    answer, None on the first), or while calls run (when the server counts them)."""
    if now.get("in_flight"):
        return True
    return before is None or now.get("calls") != before.get("calls")


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


def log(message: str) -> None:
    print(time.strftime("%Y-%m-%d %H:%M:%S"), message, flush=True)


def watch(state_dir: str, endpoint: str, server_pid: int, db_path: str, interval: float) -> None:
    # One lock per server: a watcher of a server that was just replaced may not have noticed yet.
    lock = open(os.path.join(state_dir, f"sky-activity-{server_pid}.lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another watcher serves this server
    from rh_core.client.connection import ping, read_secret
    from rh_core.clusters.base import pid_alive

    secret = read_secret(state_dir)  # the server answers only requests that carry it
    log(f"watching the server (pid {server_pid}) every {interval} s; SkyPilot's idle timer: {db_path}")
    before, timer_found, refused = None, None, None
    while pid_alive(server_pid):
        info = ping(endpoint, timeout=10.0, secret=secret)
        if info is not None and "calls" not in info:  # an error reply, such as a refused secret
            if info.get("message") != refused:
                refused = info.get("message")
                log(f"the server refused the watcher's ping: {refused}")
        elif info is not None:
            if active(before, info):
                found = reset_idle_timer(db_path, time.time())
                if found != timer_found:  # log changes only, not every reset
                    log("resetting SkyPilot's idle timer while calls arrive" if found else
                        f"SkyPilot's idle timer is not in {db_path} (yet); calls cannot keep the cluster up")
                    timer_found = found
            before = info
        time.sleep(interval)
    log(f"the server (pid {server_pid}) exited; stopping")
    os.unlink(lock.name)


def main(argv: list[str]) -> None:
    state_dir, endpoint, server_pid, db_path, interval = argv
    if os.fork():  # the SSH command that started us returns at once
        os._exit(0)
    os.setsid()
    watch(state_dir, endpoint, int(server_pid), db_path, float(interval))


if __name__ == "__main__":
    main(sys.argv[1:])
