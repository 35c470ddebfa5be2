"""create → bootstrap → call → autostop → delete, with the Compute API stand-in in front of a real
sshd: everything after the API boundary (ssh, the venv, the server, the idle watcher) runs for real."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import rh_core as rh
from rh_core.testing import functions as fns

pytestmark = pytest.mark.timeout(300)


def wait_for(condition, seconds: float, what: str, details=lambda: "") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {seconds} s. {details()}")
        time.sleep(0.2)


def test_a_gcp_direct_cluster_launches_runs_calls_stops_when_idle_and_is_deleted(
        stand_in, options, anonymous, monkeypatch, tmp_path):
    monkeypatch.setattr("rh_gcp.autostop.METADATA_URL", stand_in.metadata_url)
    monkeypatch.setattr("rh_gcp.autostop.CHECK_SECONDS", 0.5)
    gpu = rh.cluster(name="g1", **options(instance_type="n1-standard-8", num_nodes=2, autostop_mins=30))
    gpu.remote_dir = str(tmp_path / "remote-rh")
    try:
        add = rh.function(fns.quiet_add).to(gpu)
        assert add(1, 2) == 3
        assert add.map([1, 2], [10, 20]) == [11, 22]
        assert [call.body["name"] for call in stand_in.calls("insert")] == ["g1-head", "g1-worker-1"]
        assert gpu.status()["python_executable"].startswith(gpu.remote_dir)

        # keep_warm and pause_autostop go through the head's metadata, where the watcher reads them.
        with gpu.pause_autostop():
            assert gpu._provisioner().autostop_minutes(gpu) == -1
        assert gpu._provisioner().autostop_minutes(gpu) == 30

        # Three idle seconds instead of thirty minutes: the watcher on the head stops the cluster
        # through the API with the instance's token, workers first.
        stand_in.set_metadata_item("g1-head", "rh-autostop-mins", "0.05")
        log = Path(gpu._server_state["state_dir"]) / "gcp-idle.log"
        wait_for(lambda: len(stand_in.calls("stop")) == 2, 30, "the idle watcher stopped both instances",
                 lambda: log.read_text() if log.exists() else "(no watcher log)")
        stops = stand_in.calls("stop")
        assert [call.path.rsplit("/", 2)[1] for call in stops] == ["g1-worker-1", "g1-head"]
        assert {call.authorization for call in stops} == {"Bearer stand-in-token"}
        for operation in list(stand_in.operations):  # the stop operations finish as the cloud's would
            stand_in._operation(operation, wait=True)
        assert gpu.status(refresh=True) == {"name": "g1", "machines": "stopped"}
    finally:
        # The stand-in "stops" instances only on paper: the server still runs on the sshd host,
        # and down() skips stopping the server of machines the API reports stopped.
        gpu.stop_server()
        gpu.down()
    assert sorted(call.path.rsplit("/", 1)[1] for call in stand_in.calls("delete")) == ["g1-head", "g1-worker-1"]
    assert not stand_in.instances
