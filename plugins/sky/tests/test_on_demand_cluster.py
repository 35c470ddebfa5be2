"""An on-demand cluster end to end: launch → bootstrap → call → map → autostop reset → autostop and
back → down. SkyPilot's SDK is the fake (rh_sky.testing); everything after it is real: the cluster
record points at a local sshd, bootstrap and calls go over SSH, and SkyPilot's idle timer is the
one SkyPilot's own skylet code writes and reads.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

import rh_core as rh
from rh_core.testing import functions as fns
from rh_core.testing.fixtures import wait_for
from rh_core.testing.sshd import SSHD, start_sshd, stop

from sky_helpers import use_fake_sky

pytestmark = pytest.mark.slow

NAME = "rh-sky-e2e"
HOUR = 3600.0


class IdleTimer:
    """SkyPilot's idle timer in a runtime dir standing for the head's, through SkyPilot's own code."""

    def __init__(self, runtime_dir: Path):
        from sky.skylet import autostop_lib, configs  # SKY_RUNTIME_DIR (set by the caller) says where

        self._autostop, self._configs = autostop_lib, configs
        # What the skylet does when autostop is set at launch: creates the timer, set to now.
        autostop_lib.set_autostop(30, "CloudVmRayBackend", autostop_lib.AutostopWaitFor.JOBS_AND_SSH, False)
        assert configs._DB_PATH.startswith(str(runtime_dir)), "SkyPilot's skylet db was opened elsewhere first"

    def set_hours_ago(self, hours: float) -> float:
        when = time.time() - hours * HOUR
        self._configs.set_config("autostop_last_active_time", str(when))
        return when

    @property
    def last_active(self) -> float:
        return self._autostop.get_last_active_time()


@pytest.fixture(scope="module")
def machines(tmp_path_factory):
    """Two sshds on loopback: where the cluster first runs, and where it runs after a restart
    (a stopped VM comes back at a new address). Both accept the first one's client key."""
    if not os.path.exists(SSHD):
        pytest.skip(f"{SSHD} is missing: install openssh-server (apt-get install -y openssh-server rsync)")
    first, first_process = start_sshd(tmp_path_factory.mktemp("machine-1"))
    second, second_process = start_sshd(tmp_path_factory.mktemp("machine-2"))
    second.authorized_keys.write_text(first.client_key.with_suffix(".pub").read_text())
    try:
        yield {"first": (first, first_process), "second": (second, second_process)}
    finally:
        stop(first_process)
        stop(second_process)


@pytest.fixture(scope="module")
def cloud(machines, tmp_path_factory):
    """The fake SkyPilot cloud (its machines: the first sshd), the idle timer, and a work dir."""
    (server, _) = machines["first"]
    tmp = tmp_path_factory.mktemp("sky-e2e")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SKY_RUNTIME_DIR", str(tmp / "skylet"))
        fake = use_fake_sky(patch, tmp / "cloud", addresses=[server.host], ssh_port=server.port,
                            ssh_user=server.user, private_key=server.client_key, runtime_dir=tmp / "skylet")
        timer = IdleTimer(tmp / "skylet")
        yield fake, timer, tmp


@pytest.fixture(scope="module")
def cluster(cloud):
    fake, _, tmp = cloud
    gpu = rh.cluster(name=NAME, instance_type="CPU:2", provider="aws", activity_check_seconds=1,
                     executor_options={"num_workers": 2})
    gpu.remote_dir = str(tmp / "remote-rh")
    yield gpu
    if fake.cluster(NAME) is not None:
        gpu.down()


def activity_log(cluster) -> str:
    path = Path(cluster._server_state["state_dir"]) / "sky-activity.log"
    return path.read_text() if path.exists() else "(no activity log)"


def test_first_call_launches_then_bootstraps_and_calls_over_ssh(cloud, cluster):
    fake, _, _ = cloud
    add = rh.function(fns.quiet_add).to(cluster)
    assert add(1, 2) == 3
    assert add.map([1, 2, 3], [10, 20, 30]) == [11, 22, 33]
    (launch,) = fake.calls("launch")
    assert launch["cluster_name"] == NAME and launch["idle_minutes_to_autostop"] == 30
    (resources,) = fake.launched_task().resources
    assert str(resources.cloud) == "AWS" and resources.cpus == "2"
    assert cluster.status()["python_executable"].startswith(cluster.remote_dir)


def test_calls_reset_skypilots_idle_timer_and_quiet_does_not(cloud, cluster):
    _, timer, _ = cloud
    add = rh.function(fns.quiet_add).to(cluster)
    old = timer.set_hours_ago(1)
    assert add(2, 3) == 5
    wait_for(lambda: timer.last_active > time.time() - 60, 15, "a call did not reset SkyPilot's idle timer",
             lambda: activity_log(cluster))
    old = timer.set_hours_ago(1)
    time.sleep(4)  # four checks of the watcher, and no call
    assert timer.last_active == pytest.approx(old), activity_log(cluster)


def test_keep_warm_and_pause_autostop_change_skypilots_setting(cloud, cluster):
    fake, _, _ = cloud
    cluster.keep_warm(mins=60)
    assert fake.cluster(NAME)["autostop"] == 60
    with cluster.pause_autostop():
        assert fake.cluster(NAME)["autostop"] == -1
    assert fake.cluster(NAME)["autostop"] == 60
    with pytest.raises(ZeroDivisionError), cluster.pause_autostop():
        1 / 0
    assert fake.cluster(NAME)["autostop"] == 60
    assert [call["idle_minutes"] for call in fake.calls("autostop")] == [60, -1, 60, -1, 60]


def test_status_refresh_and_up_if_not_reuse_the_running_cluster(cloud, cluster):
    fake, _, _ = cloud
    status = cluster.status(refresh=True)
    assert status["machines"] == "up" and status["pid"]
    assert fake.calls("status")[-1]["refresh"] == "FORCE"
    assert cluster.up_if_not() is cluster
    assert len(fake.calls("launch")) == 1 and not fake.calls("start")


def test_a_call_after_an_autostop_brings_the_cluster_back(cloud, cluster, machines, monkeypatch):
    """The machines stop (their sshd and the server die) and SkyPilot restarts them at a new address;
    the next call finds them stopped, restarts them through SkyPilot, bootstraps and runs."""
    fake, _, _ = cloud
    (_, first_process), (second, _) = machines["first"], machines["second"]
    add = rh.function(fns.quiet_add).to(cluster)
    server_pid = cluster.status()["pid"]
    fake.set_status(NAME, "STOPPED")  # what SkyPilot's autostop leaves behind
    os.kill(server_pid, signal.SIGTERM)
    stop(first_process)
    cluster.transport.close()  # the stopped machine's connections die with it
    fake.set_machines(ssh_port=second.port)
    monkeypatch.setattr("rh_core.clusters.remote.IDLE_RECHECK_SECONDS", 0.0)  # check the connection before every call
    assert add(20, 22) == 42
    assert fake.calls("start")[-1]["cluster_name"] == NAME
    assert cluster.cluster_info.transport_options["port"] == second.port
    assert cluster.status()["pid"] != server_pid


def test_down_stops_the_server_and_tears_the_machines_down(cloud, cluster):
    fake, _, _ = cloud
    if fake.cluster(NAME) is None:
        cluster.up()
    pid = cluster.status()["pid"]
    cluster.down()
    assert fake.cluster(NAME) is None and fake.calls("down")
    wait_for(lambda: not _alive(pid), 10, f"the server (pid {pid}) still runs after down()")
    assert cluster.status(refresh=True) == {"name": NAME, "machines": "down"}
    assert not (Path(os.environ["RH_HOME"]) / "sky" / NAME).exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
