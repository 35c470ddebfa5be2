"""create → bootstrap → call → autostop → restart → delete, and a Spot VM preempted during a call,
with the Compute API stand-in in front of loopback test machines: everything after the API boundary
(ssh, the venv, the server, the idle watcher) runs for real, and a stopped instance's machine is
really off (its processes killed, SSH refused) until the API starts it again."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

import rh_core as rh
from rh_core.support.processes import pid_alive
from rh_core.testing import functions as fns
from rh_core.testing.fixtures import wait_for

# Bootstrap builds wheels and a venv on first use (again whenever the checkout changes): minutes on a busy box.
pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

HEAD = "127.0.0.1"


def refuses_ssh(port: int) -> bool:
    try:
        socket.create_connection((HEAD, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture(scope="module")
def remote_dir(tmp_path_factory) -> str:
    """Where the instances keep rh's files: one "disk" for this module's clusters, so the runtime
    is installed once (the machines share this box's filesystem anyway)."""
    return str(tmp_path_factory.mktemp("gcp-remote") / "remote-rh")


@pytest.fixture
def watcher_on_stand_in(stand_in, monkeypatch):
    """The idle watcher asks the stand-in's metadata server, every half second instead of 30."""
    monkeypatch.setattr("rh_gcp.autostop.METADATA_URL", stand_in.metadata_url)
    monkeypatch.setattr("rh_gcp.autostop.CHECK_SECONDS", 0.5)


def test_a_gcp_direct_cluster_launches_runs_calls_stops_when_idle_restarts_on_the_next_call_and_is_deleted(
        stand_in, options, anonymous, watcher_on_stand_in, sshd, monkeypatch, remote_dir):
    # The client rechecks a connection idle for longer than this before the next call (60 s; autostop
    # is at least a minute). The autostop below lasts 3 s instead of minutes, so this shrinks alike.
    monkeypatch.setattr("rh_core.clusters.remote.IDLE_RECHECK_SECONDS", 1.0)
    gpu = rh.cluster(name="g1", **options(instance_type="n1-standard-8", num_nodes=2, autostop_mins=30))
    gpu.remote_dir = remote_dir
    try:
        add = rh.function(fns.quiet_add).to(gpu)
        assert add(1, 2) == 3
        assert add.map([1, 2], [10, 20]) == [11, 22]
        assert [call.body["name"] for call in stand_in.calls("insert")] == ["g1-head", "g1-worker-1"]
        assert gpu.status()["python_executable"].startswith(gpu.remote_dir)
        first_server = gpu._server_state["pid"]

        # keep_warm and pause_autostop go through the head's metadata, where the watcher reads them.
        provisioner = rh.default_host().provisioner(gpu.provisioner)()
        with gpu.pause_autostop():
            assert provisioner.autostop_minutes(gpu.provision_request()) == -1
        assert provisioner.autostop_minutes(gpu.provision_request()) == 30

        # Three idle seconds instead of thirty minutes (the watcher reads the head's metadata every
        # round): it stops the cluster through the API with the instance's token, workers first.
        stand_in.set_metadata_item("g1-head", "rh-autostop-mins", "0.05")
        log = Path(gpu._server_state["state_dir"]) / "gcp-idle.log"
        wait_for(lambda: len(stand_in.calls("stop")) == 2, 30, "the idle watcher stopped both instances",
                 lambda: log.read_text() if log.exists() else "(no watcher log)")
        stops = stand_in.calls("stop")
        assert [call.path.rsplit("/", 2)[1] for call in stops] == ["g1-worker-1", "g1-head"]
        assert {call.authorization for call in stops} == {"Bearer stand-in-token"}

        # The stop operations finish as the cloud's do, and the machines are off: the server (and the
        # watcher) are gone with them, and SSH is refused.
        wait_for(lambda: all(stand_in.instance(name)["status"] == "TERMINATED" for name in ("g1-head", "g1-worker-1")),
                 15, "both instances TERMINATED")
        wait_for(lambda: not pid_alive(first_server), 15, f"the server (pid {first_server}) ended with its machine")
        assert refuses_ssh(sshd.port)
        assert "idle for 0.05 minutes: stop the cluster" in log.read_text()
        assert gpu.status(refresh=True) == {"name": "g1", "machines": "stopped"}
        assert gpu.refresh_status().machines == "stopped"

        # The next call through the same object starts both instances, starts a server and answers.
        assert add(2, 3) == 5
        assert sorted(call.path.rsplit("/", 2)[1] for call in stand_in.calls("start")) == ["g1-head", "g1-worker-1"]
        assert len(stand_in.calls("insert")) == 2  # started, not re-created
        assert gpu._server_state["pid"] != first_server
        assert gpu.status(refresh=True)["machines"] == "up"
        assert add.map([3], [4]) == [7]
    finally:
        gpu.down()
    assert sorted(call.path.rsplit("/", 1)[1] for call in stand_in.calls("delete")) == ["g1-head", "g1-worker-1"]
    assert not stand_in.instances
    assert refuses_ssh(sshd.port)


def test_a_spot_vm_preempted_during_a_call_fails_it_with_the_apis_reason_and_up_brings_it_back(
        stand_in, options, anonymous, watcher_on_stand_in, sshd, remote_dir):
    spot = rh.cluster(name="s1", **options(use_spot=True))
    spot.remote_dir = remote_dir
    try:
        nap = rh.function(fns.sleep_then).to(spot)
        assert nap(0, "warm") == "warm"
        first_server = spot._server_state["pid"]

        preempted: list[str] = []
        timer = threading.Timer(2.0, lambda: preempted.append(stand_in.preempt("s1-head")))
        timer.start()
        started = time.monotonic()
        with pytest.raises(rh.ConnectionLostError) as caught:
            nap(120, "never")
        took = time.monotonic() - started
        timer.join()

        assert took < 2.0 + 10, f"the caller waited {took:.1f} s to learn that its server was gone"
        message = str(caught.value)
        assert "instance s1-head (a Spot VM) was preempted by Compute Engine" in message, message
        assert f"operation {preempted[0]}: Instance was preempted." in message, message
        assert "cluster.up(), or the next call, starts the cluster again" in message
        assert not pid_alive(first_server) and refuses_ssh(sshd.port)
        assert spot.status(refresh=True) == {"name": "s1", "machines": "stopped"}

        spot.up()
        assert [call.path.rsplit("/", 2)[1] for call in stand_in.calls("start")] == ["s1-head"]
        assert stand_in.instance("s1-head")["status"] == "RUNNING"
        assert nap(0, "back") == "back"
        assert spot._server_state["pid"] != first_server
    finally:
        spot.down()
    assert not stand_in.instances
