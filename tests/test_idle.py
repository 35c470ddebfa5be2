"""The idle watcher (rh_core.clusters.idle) against a real server, in real time with short intervals: calls
and calls in flight keep it from acting, a quiet server gets the idle action once, and it ends with
the server."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import rh_core as rh
from rh_core.clusters.idle import IdleWatcher, active
from rh_core.testing import functions as fns
from rh_core.testing.fixtures import wait_for

IDLE_SECONDS = 1.0


def watcher_for(cluster, **hooks) -> tuple[IdleWatcher, threading.Thread]:
    """A watcher of ``cluster``'s server, polling every 0.1 s, running in a thread."""
    state = cluster.read_state()
    watcher = IdleWatcher(cluster.state_dir, state["local_endpoint"], state["pid"], interval=0.1,
                          lock_name="test-idle", **hooks)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    return watcher, thread


def test_new_calls_and_calls_in_flight_count_as_activity_and_a_quiet_server_does_not():
    assert active(None, {"calls": 4})  # a client has just connected
    assert active({"calls": 4}, {"calls": 5})
    assert not active({"calls": 5}, {"calls": 5})
    assert active({"calls": 5}, {"calls": 5, "in_flight": 1})


def test_calls_keep_the_server_from_idling_and_a_quiet_one_gets_the_action_once(running_cluster, capsys):
    add = rh.function(fns.quiet_add).to(running_cluster)
    slow = rh.function(fns.sleep_then).to(running_cluster)
    idled: list[tuple[float, float]] = []
    activity: list[float] = []
    started = time.monotonic()
    watcher, thread = watcher_for(running_cluster, idle_minutes=lambda: IDLE_SECONDS / 60,
                                  on_idle=lambda minutes: idled.append((minutes, time.monotonic())),
                                  on_activity=lambda: activity.append(time.monotonic()))
    lock = os.path.join(running_cluster.state_dir, f"test-idle-{watcher.server_pid}.lock")
    wait_for(lambda: os.path.exists(lock), 5, "the watcher took its lock")
    for _ in range(8):  # 2 s of calls, twice the idle time
        assert add(1, 2) == 3
        time.sleep(0.25)
    assert slow(1.5, "done") == "done"  # one call in flight for longer than the idle time
    last_call = time.monotonic()
    assert not idled, "the watcher acted while calls arrived"
    assert len(activity) >= 5
    thread.join(timeout=10)
    assert not thread.is_alive(), "the watcher did not end after its idle action"
    assert len(idled) == 1 and idled[0][0] == IDLE_SECONDS / 60
    assert IDLE_SECONDS - 0.2 <= idled[0][1] - last_call <= IDLE_SECONDS + 2
    assert idled[0][1] - started > 3
    assert not os.path.exists(lock)  # the next watcher of this server may start
    assert f"watching the server (pid {watcher.server_pid}) every 0.1 s" in capsys.readouterr().out


def test_a_watcher_without_idle_minutes_never_acts_and_ends_with_the_server(tmp_path, capsys):
    server = subprocess.Popen(["sleep", "60"])  # stands in for the server's process
    idled: list[float] = []
    try:
        watcher = IdleWatcher(str(tmp_path), "unused", server.pid, interval=0.05, lock_name="test-idle",
                              ping=lambda: {"calls": 1}, idle_minutes=lambda: None, on_idle=idled.append)
        thread = threading.Thread(target=watcher.run, daemon=True)
        thread.start()
        time.sleep(0.5)
        # A second watcher for the same server returns at once: the first one holds the lock.
        second = IdleWatcher(str(tmp_path), "unused", server.pid, interval=0.05, lock_name="test-idle",
                             ping=lambda: {"calls": 1}, idle_minutes=lambda: 0, on_idle=idled.append)
        second.run()
        assert thread.is_alive() and not idled
    finally:
        server.kill()
        server.wait()
    thread.join(timeout=5)
    assert not thread.is_alive(), "the watcher outlived the server it watched"
    assert not idled
    assert f"the server (pid {server.pid}) exited; stopping" in capsys.readouterr().out
    assert os.listdir(tmp_path) == []


def test_a_refused_ping_is_logged_once_and_is_not_activity(tmp_path, capsys):
    server = subprocess.Popen(["sleep", "60"])
    answers = iter([{"calls": 3}] + [{"error": "AuthError", "message": "wrong secret"}] * 1000)
    idled: list[float] = []
    activity: list[float] = []
    try:
        watcher = IdleWatcher(str(tmp_path), "unused", server.pid, interval=0.05, lock_name="test-idle",
                              ping=lambda: next(answers), idle_minutes=lambda: 0.5 / 60, on_idle=idled.append,
                              on_activity=lambda: activity.append(time.monotonic()))
        started = time.monotonic()
        watcher.run()  # returns after the idle action
        took = time.monotonic() - started
    finally:
        server.kill()
        server.wait()
    assert len(activity) == 1 and idled == [0.5 / 60]
    assert 0.4 <= took < 2.5
    assert capsys.readouterr().out.count("the server refused the watcher's ping: wrong secret") == 1
