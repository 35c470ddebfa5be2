"""The launcher, the stop helper and the early forks of rh_core.support.processes, with real child processes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import pytest

from rh_core.support.processes import LaunchError, launch, pid_alive, stop_process, wait_ready

# Ignores SIGTERM, says so, and then waits to be killed.
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"


def python(source: str) -> list[str]:
    return [sys.executable, "-c", source]


def says(log, text: str):
    """A readiness check: ``log`` holds ``text``."""
    return lambda _: text in log.read_text()


def test_launch_detaches_the_process_and_sends_both_streams_to_its_log(tmp_path):
    log = tmp_path / "out.log"
    log.write_text("earlier run\n")
    child = launch(python("import os, sys; print('out', os.getsid(0)); print('err', file=sys.stderr)"), str(log),
                   cwd=str(tmp_path), env={"PATH": "/usr/bin:/bin", "ONLY": "1"})
    assert child.wait(timeout=30) == 0
    text = log.read_text()
    assert text.startswith("earlier run\n")  # appended, not overwritten
    assert f"out {child.pid}" in text  # it leads a session of its own
    assert "err" in text
    assert child.pid != os.getsid(0)


def test_launch_can_write_the_log_afresh_and_as_a_private_state_file(tmp_path):
    log = tmp_path / "private.log"
    log.write_text("old\n")
    log.chmod(0o600)
    child = launch(python("print('new')"), str(log), truncate_log=True, private_log=True)
    child.wait(timeout=30)
    assert log.read_text() == "new\n"
    fresh = tmp_path / "fresh.log"
    launch(python("pass"), str(fresh), private_log=True).wait(timeout=30)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600


def test_launch_waits_until_ready_and_wait_ready_returns_the_answer(tmp_path):
    log = tmp_path / "server.log"
    child = launch(python("import time; time.sleep(0.3); print('listening', flush=True); time.sleep(60)"), str(log),
                   ready=says(log, "listening"), interval=0.02)
    try:
        assert "listening" in log.read_text() and child.poll() is None
        answer = wait_ready(child, lambda process: {"pid": process.pid}, timeout=1, log_path=str(log))
        assert answer == {"pid": child.pid}
    finally:
        assert not stop_process(child, grace=5)  # it ends on SIGTERM: no SIGKILL needed


def test_an_early_exit_is_reported_with_its_code_and_the_logs_tail(tmp_path):
    log = tmp_path / "crash.log"
    with pytest.raises(LaunchError) as caught:
        launch(python("import sys; print('line 1'); sys.exit('port 8888 is taken')"), str(log),
               ready=says(log, "listening"), timeout=30)
    error = caught.value
    assert error.exited and error.process.returncode == 1  # reaped: no zombie left
    assert "port 8888 is taken" in error.log_tail(1)
    assert f"exited with code 1 before it was ready; its log ({log}) ends with:\nline 1\nport 8888" in str(error)


def test_a_timeout_leaves_the_process_running_for_the_caller_to_stop(tmp_path):
    log = tmp_path / "slow.log"
    started = time.monotonic()
    with pytest.raises(LaunchError, match=r"was not ready within 0.5 s") as caught:
        launch(python("import time; time.sleep(60)"), str(log), ready=says(log, "listening"), timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 3
    process = caught.value.process
    assert not caught.value.exited and process.poll() is None
    assert not stop_process(process, grace=5)
    assert process.returncode is not None


def test_a_process_that_ignores_sigterm_gets_sigkill_after_the_grace(tmp_path):
    log = tmp_path / "stubborn.log"
    child = launch(python(STUBBORN), str(log), ready=says(log, "ready"), timeout=30)
    started = time.monotonic()
    assert stop_process(child, grace=1.0)  # True: it had to be killed
    took = time.monotonic() - started
    assert 1.0 <= took < 3
    assert child.returncode == -9  # reaped by stop_process
    assert not stop_process(child, grace=1.0)  # stopping it again is no error, and signals no one


def test_a_pid_we_did_not_launch_is_stopped_and_a_gone_one_is_no_error(tmp_path):
    log = tmp_path / "stubborn.log"
    child = launch(python(STUBBORN), str(log), ready=says(log, "ready"), timeout=30)
    assert stop_process(child.pid, grace=0.5)
    assert not pid_alive(child.pid)  # a zombie until its parent (this test) waits: that counts as gone
    child.wait()
    assert not stop_process(child.pid, grace=0.5)  # gone: nothing to signal


def test_grace_zero_kills_at_once():
    child = subprocess.Popen(python("import time; time.sleep(60)"))
    started = time.monotonic()
    assert stop_process(child, grace=0)
    assert time.monotonic() - started < 1 and child.returncode == -9


def test_a_group_stop_ends_what_the_process_started_even_when_it_ended_itself(tmp_path):
    # The leader ends on SIGTERM at once; the child it started ignores SIGTERM and would outlive it.
    log = tmp_path / "group.log"
    leader = launch(python(f"import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', {STUBBORN!r}]); "
                           "print('child', child.pid, flush=True); time.sleep(60)"), str(log),
                    ready=says(log, "ready"), timeout=30)
    grandchild = int(log.read_text().split("child ")[1].split()[0])
    assert pid_alive(grandchild)
    assert not stop_process(leader, grace=1.0, group=True)  # the leader needed no SIGKILL ...
    deadline = time.monotonic() + 5
    while pid_alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(grandchild)  # ... but its group got one once the leader had ended


# A process forked by start_early reports what it became over its socket, then exits with a code;
# the program then takes over the ones it wants and stops the rest. Run in a child interpreter: a
# fork of pytest itself (with whatever threads earlier tests left) would prove nothing.
START_EARLY = r"""
import asyncio, json, os, socket, sys
from rh_core.support.processes import start_early, stop_started_early, take_started_early

def report():
    fd = int(sys.argv[1])
    with socket.socket(fileno=fd) as link:
        link.sendall(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "mark": os.environ.get("MARK"),
                                 "leader": os.getsid(0) == os.getpid(),
                                 "stdin": os.path.realpath("/proc/self/fd/0")}).encode())
    sys.exit(int(os.environ["MARK"]))

def fail():
    raise RuntimeError("the start failed")

start_early(lambda fd: [sys.executable, "-m", "some.module", str(fd)], report, env={"MARK": "3"}, cwd=sys.argv[1])
start_early(lambda fd: ["python", str(fd)], fail, env={"MARK": "4"}, cwd=sys.argv[1])
start_early(lambda fd: ["python", str(fd)], report, env={"MARK": "5"}, cwd=sys.argv[1])
wanted = take_started_early(lambda early: early.env["MARK"] == "3")
failing = take_started_early(lambda early: early.env["MARK"] == "4")
assert take_started_early(lambda early: early.env["MARK"] == "9") is None
left = take_started_early(lambda early: early.env["MARK"] == "5")
start_early(lambda fd: ["python", str(fd)], lambda: __import__("time").sleep(60), env={"MARK": "6"}, cwd="/")
import rh_core.support.processes as processes
sleeper = processes._started_early[-1].pid
stop_started_early()  # the one nobody took: killed and reaped
try:
    os.kill(sleeper, 0)
    raise AssertionError("a process nobody took was left running (or unreaped)")
except ProcessLookupError:
    pass
told = json.loads(wanted.ours.makefile("rb").read())
print(json.dumps({"told": told, "fd": wanted.child_fd, "codes": [asyncio.run(p.wait()) for p in (wanted, failing, left)]}))
"""


def test_start_early_forks_what_a_command_would_start_and_hands_it_over(tmp_path):
    import json

    done = subprocess.run([sys.executable, "-c", START_EARLY, str(tmp_path)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    told = result["told"]
    assert told["argv"] == [sys.executable, str(result["fd"])]  # as `python -m some.module FD` would see it
    assert told["cwd"] == str(tmp_path) and told["mark"] == "3" and told["leader"] and told["stdin"] == "/dev/null"
    assert result["codes"] == [3, 1, 5]  # sys.exit's code; an error's 1, with its traceback:
    assert "RuntimeError: the start failed" in done.stderr
