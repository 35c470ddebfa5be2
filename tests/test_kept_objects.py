"""cluster.put / cluster.get of plain objects, and cluster.cancel_all(), against a real server."""

import json
import subprocess
import sys
import time

import pytest

import rh_core as rh
from rh_core.testing import functions as fns


def test_an_object_put_on_the_cluster_is_got_from_any_process_and_passed_by_ref(running_cluster):
    config = {"layers": [1, 2, 3], "blob": b"x" * 200_000}
    ref = running_cluster.put("model-config", config)
    assert running_cluster.get("model-config") == config
    assert rh.function(fns.length).to(running_cluster)(ref) == 2  # handed over on the cluster, not sent again
    script = ("import json, sys; from rh_core.clusters import from_config; "
              "print(from_config(json.loads(sys.argv[1])).get('model-config')['layers'])")
    out = subprocess.run([sys.executable, "-c", script, json.dumps(running_cluster.config())],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[1, 2, 3]", out.stderr
    running_cluster.put("model-config", "replaced")
    assert running_cluster.get("model-config") == "replaced"
    running_cluster.release(["model-config"])
    with pytest.raises(rh.ProtocolError, match="no result with key 'model-config'"):
        running_cluster.get("model-config")


def test_a_kept_object_outlives_a_server_restart(running_cluster):
    running_cluster.put("survivor", [1, 2])
    running_cluster.restart_server()  # a stopping server finishes writing kept results first
    assert running_cluster.get("survivor") == [1, 2]


def test_put_refuses_a_bad_key_a_running_runs_key_and_refs_inside(running_cluster):
    with pytest.raises(rh.ProtocolError, match="cannot keep an object under that key: '../x' is not a run key"):
        running_cluster.put("../x", 1)
    ref = rh.function(fns.sleep_then).to(running_cluster).remote(30)
    try:
        with pytest.raises(rh.ProtocolError, match="is running on this cluster"):
            running_cluster.put(ref.key, 1)
        with pytest.raises(TypeError, match="holds refs to results"):
            running_cluster.put("holder", {"inner": ref})
    finally:
        running_cluster.cancel(ref.key)


def test_cancel_all_stops_every_run_and_leaves_instances_alone(process_cluster):
    sleep = rh.function(fns.sleep_then).to(process_cluster)
    m = rh.module(fns.Counter).to(process_cluster, name="survives-cancel-all")(1)
    try:
        refs = [sleep.remote(60, i) for i in range(3)]  # two run, one waits for a worker
        deadline = time.monotonic() + 30
        while len(process_cluster.runs()["running"]) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.monotonic()
        cancelled = process_cluster.cancel_all()
        assert set(cancelled) >= {ref.key for ref in refs}
        for ref in refs:
            with pytest.raises(rh.RunCancelledError):
                ref.result(timeout=30)
        assert time.monotonic() - started < 20
        assert sleep.remote(0, "after").result(timeout=60) == "after"  # the workers were replaced
        assert m.incr() == 2
        assert process_cluster.cancel_all() == []
    finally:
        m.release()
