"""Faults of the server itself and of the client-server pairing."""

import os
import signal
import threading
import time

import pytest

import rh_core as rh
from rh_core.wire import serialize
from rh_core.testing import functions as fns


def test_server_killed_during_a_call_errors_within_seconds_and_next_call_restarts(own_cluster):
    slow = rh.function(fns.sleep_then).to(own_cluster)
    pid = own_cluster.status()["pid"]
    threading.Timer(0.5, os.kill, (pid, signal.SIGKILL)).start()
    started = time.monotonic()
    with pytest.raises(rh.ConnectionLostError, match=f"pid {pid}"):
        slow(60)
    assert time.monotonic() - started < 5
    assert slow(0, "again") == "again"
    assert own_cluster.status()["pid"] != pid


def test_server_killed_between_calls_is_replaced_by_the_next_call_which_succeeds(own_cluster):
    add = rh.function(fns.quiet_add).to(own_cluster)
    assert add(1, 1) == 2
    pid = own_cluster.status()["pid"]
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    assert add(1, 2) == 3  # its request never reached the dead server: it went to a new one
    assert own_cluster.status()["pid"] != pid


def test_a_server_restarted_by_another_process_between_calls_serves_the_next_call(own_cluster):
    add = rh.function(fns.quiet_add).to(own_cluster)
    assert add(1, 1) == 2
    pid = own_cluster.status()["pid"]
    other = rh.LocalCluster(state_dir=own_cluster.state_dir, executor_options={"num_workers": 1})
    other.restart_server()  # as `rh server stop` and a new client in another process would
    assert add(2, 2) == 4
    assert own_cluster.status()["pid"] == other.status()["pid"] != pid


def test_refs_of_a_dead_server_say_so(own_cluster):
    finished = rh.function(fns.quiet_add).to(own_cluster).remote(1, 2)
    assert finished.result() == 3
    ref = rh.function(fns.sleep_then).to(own_cluster).remote(30, "never")  # still running when its server goes
    own_cluster.restart_server()
    with pytest.raises(rh.ProtocolError, match="server restarted"):
        ref.result()
    assert finished.result() == 3  # finished results are kept on disk (tests/test_results.py)


def test_a_client_of_another_python_minor_calls_by_reference_and_is_told_why_not_by_value(own_cluster, monkeypatch):
    own_cluster.status()  # the server runs our Python
    monkeypatch.setattr(serialize, "python_version", lambda: "3.99")
    other_client = rh.LocalCluster(name="mismatched", state_dir=own_cluster.state_dir)
    ours = f"{os.sys.version_info.major}.{os.sys.version_info.minor}"
    assert rh.function(fns.quiet_add).to(other_client)(2, 3) == 5  # by reference: module and name
    with pytest.raises(rh.VersionMismatchError,
                       match=rf"travels by value .* Python 3\.99 here .* Python {ours} on cluster 'mismatched'. "
                             r"Move it to a module file"):
        rh.function(lambda x: x).to(other_client)


def test_server_that_cannot_start_reports_its_log(tmp_path):
    cluster = rh.LocalCluster(name="broken", state_dir=str(tmp_path / "s"), executor="no-such-executor")
    with pytest.raises(rh.ServerStartError, match="unknown executor 'no-such-executor'; valid executors: .*process"):
        cluster.connection()


def test_second_client_process_reuses_the_running_server(own_cluster):
    pid = own_cluster.status()["pid"]
    again = rh.LocalCluster(name="again", state_dir=own_cluster.state_dir)
    assert again.status()["pid"] == pid


def test_here_starts_on_first_use_and_is_shared(isolated_rh_home):
    assert rh.function(fns.quiet_add).to(rh.here)(2, 5) == 7
    assert rh.here.state_dir == os.path.join(str(isolated_rh_home), "local")
    assert rh.LocalCluster().status()["pid"] == rh.here.status()["pid"]


def test_run_setup_runs_once_until_forced(process_cluster, tmp_path):
    counter = tmp_path / "count"
    command = f"echo x >> {counter}"
    assert process_cluster.run_setup([command])[0][0] == 0
    assert process_cluster.run_setup([command]) == []
    assert process_cluster.run_setup([command], force=True)[0][0] == 0
    assert counter.read_text().count("x") == 2
    with pytest.raises(rh.RhError, match="setup command 'exit 7' failed"):
        process_cluster.run_setup(["exit 7"])
    with pytest.raises(rh.RhError):
        process_cluster.run_setup(["exit 7"])  # a failed setup is not remembered as done


def test_run_and_run_python_on_the_local_cluster(process_cluster):
    (code, out, _), = process_cluster.run(["echo hi"])
    assert (code, out) == (0, "hi\n")
    (code, out, _), = process_cluster.run_python(["print(6 * 7)"])
    assert (code, out.strip()) == (0, "42")


def test_server_killed_during_a_map_errors_within_seconds_and_the_next_map_works(own_cluster):
    slow = rh.function(fns.sleep_then).to(own_cluster)
    pid = own_cluster.status()["pid"]
    threading.Timer(0.5, os.kill, (pid, signal.SIGKILL)).start()
    started = time.monotonic()
    with pytest.raises(rh.ConnectionLostError, match=f"pid {pid}"):
        slow.map([30] * 4, ["x"] * 4)
    assert time.monotonic() - started < 5
    assert slow.map([0] * 4, list("abcd")) == list("abcd")


def test_a_killed_client_leaves_its_remote_call_running_and_its_result_fetchable_by_key(own_cluster):
    import subprocess
    import sys

    own_cluster.connection()
    code = (
        "import sys, rh_core as rh\n"
        "from rh_core.testing import functions as fns\n"
        "c = rh.LocalCluster(state_dir=sys.argv[1])\n"
        "ref = rh.function(fns.sleep_then).to(c).remote(1.5, 'survived')\n"
        "print(ref.key, flush=True)\n"
        "import time; time.sleep(60)\n"
    )
    client = subprocess.Popen([sys.executable, "-c", code, own_cluster.state_dir], stdout=subprocess.PIPE, text=True)
    key = client.stdout.readline().strip()
    client.kill()
    client.wait()
    assert own_cluster.get(key, timeout=30) == "survived"
    assert own_cluster.get(key) == "survived"  # fetched again: the same result, not a second run


def test_a_killed_client_leaves_its_blocking_call_running_and_its_result_kept_by_key(own_cluster):
    import subprocess
    import sys

    own_cluster.connection()
    code = (
        "import sys, rh_core as rh\n"
        "from rh_core.testing import functions as fns\n"
        "c = rh.LocalCluster(state_dir=sys.argv[1])\n"
        "rh.function(fns.sleep_then).to(c)(1.5, 'kept')\n"
    )
    client = subprocess.Popen([sys.executable, "-c", code, own_cluster.state_dir])
    deadline = time.monotonic() + 30
    while not own_cluster.runs()["running"]:
        assert time.monotonic() < deadline, "the client's call never started"
        time.sleep(0.05)
    (key,) = own_cluster.runs()["running"]
    client.kill()
    client.wait()
    assert own_cluster.get(key, timeout=30) == "kept"
    assert key in own_cluster.runs()["finished"]
    own_cluster.restart_server()  # kept on disk too, like a .remote() result
    assert own_cluster.get(key) == "kept"


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MiB tmpfs as the state directory's disk (root only)."""
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mountpoint)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_a_full_state_disk_keeps_results_in_memory_and_calls_working(tiny_disk):
    cluster = rh.LocalCluster(state_dir=str(tiny_disk / "state"), executor_options={"num_workers": 1})
    try:
        echo = rh.function(fns.echo).to(cluster)
        big = b"x" * (3 * 2**20)  # more than the whole disk
        ref = echo.remote(big)
        assert rh.get(ref) == big  # not spilled (no space), still served from memory
        loud = rh.function(fns.chatty).to(cluster)
        filler = tiny_disk / "state" / "filler"
        with open(filler, "wb") as f:  # fill what is left, so run logs cannot be written either
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        assert loud(3, 0) == 3  # its log lines have nowhere to go on disk; the call still works
        assert echo(b"small") == b"small"
        assert cluster.status()["pid"]
    finally:
        cluster.stop_server()


def test_the_server_works_in_its_own_directory_not_the_one_it_was_started_from(tmp_path):
    import subprocess
    import sys

    starter = tmp_path / "starter"
    starter.mkdir()
    state_dir = tmp_path / "state"
    subprocess.run([sys.executable, "-c", "import rh_core as rh, sys; "
                    f"rh.LocalCluster(state_dir={str(state_dir)!r}).connection()"], cwd=starter, check=True, timeout=120)
    cluster = rh.LocalCluster(state_dir=str(state_dir))
    try:
        starter.rmdir()  # the starter's directory is gone; the server never depended on it
        pid = cluster.status()["pid"]
        assert os.readlink(f"/proc/{pid}/cwd") == str(state_dir)
        pytest.importorskip("rh_pip", reason="installing a wheel needs the rh-pip plugin")
        from rh_core.testing.packages import build_wheel

        build_wheel(str(tmp_path / "wheels"), "rhtest-cwd", "1.0")
        requirement = rh.package(name="rhtest-cwd==1.0", install_method="pip", find_links=str(tmp_path / "wheels"),
                                 no_index=True)
        done = cluster.install_packages([requirement], env=rh.env("cwd-gone"))  # pip, run by the server
        assert done["installed"] == ["rhtest-cwd==1.0 (find_links, no_index)"]
    finally:
        cluster.stop_server()


def test_a_deleted_state_directory_stops_its_server(own_cluster):
    import shutil

    from rh_core.support.processes import pid_alive

    pid = own_cluster.status()["pid"]
    shutil.rmtree(own_cluster.state_dir)
    deadline = time.monotonic() + 20
    while pid_alive(pid) and time.monotonic() < deadline:
        own_cluster._liveness()  # reaps it when this process started it
        time.sleep(0.2)
    assert not pid_alive(pid), "a server whose state directory was deleted ran on, out of reach"
    assert rh.function(fns.quiet_add).to(own_cluster)(1, 1) == 2  # a new one starts where the old one was


def test_a_record_whose_pid_now_belongs_to_another_process_is_never_signalled(own_cluster):
    import json
    import subprocess

    own_cluster.connection()
    state = own_cluster.read_state()
    own_cluster.stop_server()
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        # The record of a server that died, whose pid the kernel has since given to the bystander.
        record = {**state, "pid": bystander.pid}
        os.makedirs(own_cluster.state_dir, exist_ok=True)
        with open(own_cluster.state_file, "w") as f:
            json.dump(record, f)
        assert own_cluster.read_state() is None
        assert own_cluster.stop_server() is False
        assert rh.function(fns.quiet_add).to(own_cluster)(2, 2) == 4  # a new server, started over the record
        assert bystander.poll() is None, "the bystander was signalled"
    finally:
        bystander.kill()
        bystander.wait()


def test_a_stopped_server_fails_a_call_with_a_timeout_within_seconds_saying_it_does_not_answer(own_cluster):
    slow = rh.function(fns.sleep_then).to(own_cluster)
    assert slow(0, "warm") == "warm"
    pid = own_cluster.status()["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(rh.ConnectionLostError, match="does not answer"):
            slow.options(timeout=3)(1, "never")
        assert time.monotonic() - started < 15
    finally:
        os.kill(pid, signal.SIGCONT)
    assert slow(0, "after") == "after"  # resumed, it serves again
