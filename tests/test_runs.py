"""Runs: every call has a key; its logs are kept on the cluster, readable and followable later, and
it can be cancelled from anywhere that knows the key."""

import subprocess
import sys
import threading
import time

import pytest

import rh_core as rh
from rh_core.testing import functions as fns


def wait_until_running(cluster, key, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if key in cluster.runs()["running"]:
            return
        time.sleep(0.05)
    pytest.fail(f"run {key} never showed up as running: {cluster.runs()}")


def test_logs_of_a_run_so_far_then_followed_to_its_end(process_cluster, capsys):
    f = rh.function(fns.chatty).to(process_cluster)
    ref = f.remote(6, 0.2)
    time.sleep(0.5)
    so_far = process_cluster.logs(ref.key)
    assert so_far.startswith("line 0\n") and "line 5" not in so_far
    capsys.readouterr()
    followed = process_cluster.logs(ref.key, follow=True)  # returns when the run ends
    assert followed == "".join(f"line {i}\n" for i in range(6))
    printed = capsys.readouterr().out
    assert "line 5\n" in printed  # lines arrived here while following
    assert rh.get(ref) == 6
    assert process_cluster.logs(ref.key) == followed  # kept after the run


def test_logs_are_readable_from_another_process_by_key(process_cluster):
    ref = rh.function(fns.chatty).to(process_cluster).remote(2, 0)
    assert rh.get(ref) == 2
    code = (f"import rh_core as rh; c = rh.LocalCluster(state_dir={process_cluster.state_dir!r}); "
            f"print(c.logs({ref.key!r}), end='')")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert other.stdout == "line 0\nline 1\n", other.stderr


def test_cancelling_a_remote_run_stops_it_and_its_getter_gets_run_cancelled(process_cluster):
    f = rh.function(fns.chatty).to(process_cluster)
    ref = f.remote(600, 0.05)
    wait_until_running(process_cluster, ref.key)
    started = time.monotonic()
    process_cluster.cancel(ref.key)
    with pytest.raises(rh.RunCancelledError, match=f"run {ref.key} was cancelled"):
        rh.get(ref, timeout=10)
    assert time.monotonic() - started < 5
    assert ref.key not in process_cluster.runs()["running"]
    lines = process_cluster.logs(ref.key).count("\n")
    time.sleep(0.3)
    assert process_cluster.logs(ref.key).count("\n") == lines  # it really stopped printing
    assert f(1, 0) == 1  # its worker was replaced


def test_cancelling_a_blocking_call_raises_in_the_caller(process_cluster):
    f = rh.function(fns.sleep_then).to(process_cluster)
    outcome = {}

    def call():
        try:
            outcome["value"] = f(30, "finished")
        except Exception as exc:  # the assertion below says which
            outcome["error"] = exc

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 10
    while not (running := process_cluster.runs()["running"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    (key,) = running
    process_cluster.cancel(key)
    thread.join(10)
    assert not thread.is_alive() and isinstance(outcome.get("error"), rh.RunCancelledError)


def test_cancelling_a_map_cancels_every_chunk(process_cluster):
    f = rh.function(fns.sleep_then).to(process_cluster)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("error", _map_error(f)))
    thread.start()
    deadline = time.monotonic() + 10
    while not (running := process_cluster.runs()["running"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    (key,) = running
    assert running[key] > 1  # several chunks of one run
    process_cluster.cancel(key)
    thread.join(10)
    assert isinstance(outcome["error"], rh.RunCancelledError)
    assert process_cluster.runs()["running"] == {}


def _map_error(f):
    try:
        f.map([20] * 8, ["x"] * 8)
    except Exception as exc:
        return exc
    return None


def test_unknown_or_finished_runs_are_named_in_the_error(process_cluster):
    with pytest.raises(rh.ProtocolError, match="run 'no-such-run' is not running on this cluster; check the key"):
        process_cluster.cancel("no-such-run")
    ref = rh.function(fns.add).to(process_cluster).remote(1, 2)
    assert rh.get(ref) == 3
    with pytest.raises(rh.ProtocolError, match="it has already finished"):
        process_cluster.cancel(ref.key)
    with pytest.raises(rh.ProtocolError, match="no run 'no-such-run' on this cluster"):
        process_cluster.logs("no-such-run")


def rh_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "rh_core.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_rh_logs_and_rh_cancel_on_the_command_line():
    import json

    f = rh.function(fns.chatty).to(rh.here)
    done = f.remote(3, 0)
    assert rh.get(done) == 3
    shown = rh_cli("logs", "here", done.key)
    assert shown.returncode == 0 and shown.stdout == "line 0\nline 1\nline 2\n", shown.stderr
    as_json = json.loads(rh_cli("logs", "here", done.key, "--json").stdout)
    assert as_json["logs"] == shown.stdout

    running = f.remote(600, 0.05)
    wait_until_running(rh.here, running.key)
    listed = json.loads(rh_cli("logs", "here", "--json").stdout)
    assert running.key in listed["running"] and done.key in listed["finished"]
    cancelled = rh_cli("cancel", "here", running.key)
    assert cancelled.returncode == 0 and f"cancelled {running.key}" in cancelled.stdout
    with pytest.raises(rh.RunCancelledError):
        rh.get(running, timeout=10)
    again = rh_cli("cancel", "here", running.key, "--json")
    assert again.returncode == 1 and "already finished" in json.loads(again.stdout)["error"]


@pytest.mark.slow
def test_rh_notebook_serves_jupyterlab_until_interrupted():
    pytest.importorskip("rh_pip", reason="the notebook installs jupyterlab with the rh-pip plugin")
    import re
    import signal
    import urllib.request

    from rh_core.testing.sshd import free_port

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "rh_core.cli", "notebook", "here", "--port", str(port),
                                "--env", "notebook"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()  # printed once JupyterLab answers
        url = re.search(r"(http://\S+)", line).group(1)
        token = url.split("token=", 1)[1]
        status = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=10)
        assert status.status == 200
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(60)
    with pytest.raises(OSError):  # closed with the command
        for _ in range(50):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
            time.sleep(0.2)


@pytest.mark.parametrize("name", ["team/embed", "nul\0byte", "x" * 300, "../../escape"])
def test_runs_of_functions_with_odd_names_are_found_by_logs_and_cancel(process_cluster, name):
    f = rh.function(fns.chatty, name=name).to(process_cluster)
    ref = f.remote(600, 0.05)
    try:
        wait_until_running(process_cluster, ref.key)
        time.sleep(0.3)
        assert process_cluster.logs(ref.key).startswith("line 0\n")
    finally:
        process_cluster.cancel(ref.key)
    with pytest.raises(rh.RunCancelledError):
        rh.get(ref, timeout=10)
    assert ref.key not in process_cluster.runs()["running"]
    assert "/" not in ref.key and "\0" not in ref.key and len(ref.key) <= 81


@pytest.mark.parametrize("key", ["a/b", "nul\0byte", "x" * 5000, "../../../etc/passwd", ""])
def test_odd_run_keys_get_the_projects_own_error(process_cluster, key):
    for ask in (lambda: process_cluster.logs(key), lambda: process_cluster.cancel(key),
                lambda: process_cluster.get(key, timeout=1)):
        with pytest.raises(rh.ProtocolError, match="not a run key|no run|not running|no result"):
            ask()
    assert rh.function(fns.add).to(process_cluster)(1, 1) == 2
