"""Tests of rh-ray: the plugin's registration and import cost, and the ``ray`` executor end to end.

The end-to-end tests share one local server with one Ray (starting Ray takes 10-30 s on 2 cores).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

import rh_core as rh
from rh_core.support.processes import pid_alive
from rh_core.testing import ExecutorContract
from rh_ray.executor import RayExecutor, ray_temp_dir

# Functions and the exception type live here, so they travel by reference: the Ray workers import
# this module from its directory, which the runner puts on sys.path.


class Oops(Exception):
    pass


def add(a, b):
    return a + b


def shout(text):
    print(text)
    print(f"err:{text}", file=sys.stderr)
    return len(text)


def fail(message):
    raise Oops(message)


def record_pid_and_sleep(path, seconds):
    with open(path, "w") as file:
        file.write(str(os.getpid()))
    time.sleep(seconds)


def die():
    os._exit(3)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    # Also set by the executor itself; here too so no Ray this test run starts could turn token auth on.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    state_dir = tmp_path_factory.mktemp("rh-ray") / "state"
    cluster = rh.LocalCluster(state_dir=str(state_dir), executor="ray", executor_options={"num_cpus": 2})
    try:
        cluster.connection()
        yield cluster
    finally:
        cluster.stop_server()


# -------------------------------------------------------------------------------------------------
# The plugin, without Ray


def test_plugin_is_listed_with_its_distribution():
    rows = {row.name: row for row in rh.PluginHost().plugins()}
    assert "ray" in rows, f"the ray plugin is not loaded; loaded: {sorted(rows)}"
    assert rows["ray"].distribution == "rh-ray"
    assert rows["ray"].error is None
    assert "rh_register_executors" in rows["ray"].hooks


def test_importing_the_plugin_does_not_import_ray():
    code = "import rh_core, rh_ray.plugin, sys; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_resolving_the_executor_does_not_import_ray():
    code = (
        "import sys, rh_core\n"
        "host = rh_core.PluginHost()\n"
        "assert host.executor('ray').__name__ == 'RayExecutor'\n"
        "assert 'ray' not in sys.modules, 'Ray must wait until the executor starts'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_address_and_num_cpus_together_are_refused():
    with pytest.raises(ValueError, match="only one of them"):
        RayExecutor(address="auto", num_cpus=2)


def test_ray_temp_dir_stays_short_enough_for_unix_sockets(tmp_path):
    short_state_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    try:
        assert ray_temp_dir(short_state_dir) == os.path.join(short_state_dir, "ray")
    finally:
        shutil.rmtree(short_state_dir)
    long_state_dir = str(tmp_path / ("x" * 60))
    path = ray_temp_dir(long_state_dir)
    try:
        assert os.path.isdir(path) and path.startswith("/tmp/rh-ray-")
        assert len(path) + 72 <= 107
        assert path == ray_temp_dir(long_state_dir)  # the same server always gets the same dir
    finally:
        os.rmdir(path)


def test_a_temp_dir_ray_opened_to_everyone_is_closed_again_and_another_users_is_refused(tmp_path):
    from rh_core.errors import UntrustedPathError

    long_state_dir = str(tmp_path / ("y" * 60))
    path = ray_temp_dir(long_state_dir)
    try:
        os.chmod(path, 0o777)  # what `ray start` does to its temp dir
        assert ray_temp_dir(long_state_dir) == path  # a server restarted beside the same Ray head
        assert os.stat(path).st_mode & 0o777 == 0o700
        if os.geteuid() == 0:  # only root can give a folder away
            os.chown(path, 65534, 65534)  # made first by another user (nobody), under the predictable name
            with pytest.raises(UntrustedPathError, match="belongs to user"):
                ray_temp_dir(long_state_dir)
    finally:
        os.rmdir(path)


# -------------------------------------------------------------------------------------------------
# The executor, through a real server


@pytest.mark.slow
def test_server_describes_the_ray_executor(cluster):
    status = cluster.status()
    assert status["executor"] == "ray"
    assert status["parallelism"] == 2
    assert status["executor_nodes"] == 1
    assert status["executor_ray_address"]


@pytest.mark.slow
def test_ray_options_reach_ray(cluster):
    assert rh.function(add).to(cluster).options(num_cpus=1)(2, 2) == 4


@pytest.mark.slow
def test_impossible_request_ends_in_timeout_not_a_hang(cluster):
    f = rh.function(add).to(cluster).options(resources={"nonexistent": 1}, timeout=5)
    started = time.monotonic()
    with pytest.raises(rh.CallTimeoutError):
        f(1, 2)
    assert time.monotonic() - started < 30
    assert rh.function(add).to(cluster)(1, 1) == 2  # and the cluster still serves calls


@pytest.mark.slow
def test_timeout_kills_the_running_task(cluster, tmp_path):
    pid_file = tmp_path / "pid"
    ref = rh.function(record_pid_and_sleep).to(cluster).options(timeout=6).remote(str(pid_file), 120)
    deadline = time.monotonic() + 6
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    with pytest.raises(rh.CallTimeoutError):
        rh.get(ref)
    deadline = time.monotonic() + 15
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"the timed-out task's worker (pid {pid}) is still running"
        time.sleep(0.1)


@pytest.mark.slow
def test_dead_worker_raises_worker_died(cluster):
    with pytest.raises(rh.WorkerDiedError, match="worker process running this call died"):
        rh.function(die).to(cluster)()
    assert rh.function(add).to(cluster)(3, 4) == 7


@pytest.mark.slow
class TestRayExecutorContract(ExecutorContract):
    """The whole Function API, as every executor must support it, on the ray executor."""

    @pytest.fixture(scope="class")
    @classmethod
    def cluster(cls, cluster):
        return cluster


@pytest.mark.slow
def test_a_ray_of_its_own_takes_large_buffers_through_shared_memory(cluster):
    assert cluster.status()["shm"] is True
    data = os.urandom(2 * 1024 * 1024)
    assert rh.function(echo).to(cluster)(data) == data


def echo(data):
    return data


def test_a_function_sent_to_a_named_env_runs_in_ray_workers_of_its_interpreter(cluster, tmp_path):
    pytest.importorskip("rh_pip", reason="installing into an environment needs the rh-pip plugin")
    from rh_core.testing.functions import module_version
    from rh_core.testing.packages import build_wheel

    build_wheel(str(tmp_path / "wheels"), "rhtest-ray-env", "1.5")
    requirement = rh.package(name="rhtest-ray-env==1.5", install_method="pip", find_links=str(tmp_path / "wheels"),
                             no_index=True)
    f = rh.function(module_version).to(cluster, env=rh.env("ray-env", [requirement]))
    version, python = f("rhtest_ray_env")
    assert version == "1.5" and python.endswith("envs/ray-env/venv/bin/python")
    assert f.map(["rhtest_ray_env"] * 2) == [(version, python)] * 2
