import json
import os
import subprocess
import sys
import time

import pytest


@pytest.fixture(scope="session")
def process_cluster(tmp_path_factory):
    """One local server with the process executor (2 workers), shared by the whole session."""
    import rh_core as rh

    cluster = rh.LocalCluster(
        name="test-process", state_dir=str(tmp_path_factory.mktemp("process")), executor="process",
        executor_options={"num_workers": 2},
    )
    yield cluster
    cluster.stop_server()


@pytest.fixture
def own_cluster(tmp_path):
    """A local cluster with a server of its own (one worker), for tests that kill, restart or
    attack it; its server starts on first use and is stopped afterwards."""
    import rh_core as rh

    cluster = rh.LocalCluster(state_dir=str(tmp_path / "state"), executor_options={"num_workers": 1})
    yield cluster
    cluster.stop_server()


@pytest.fixture
def running_cluster(own_cluster):
    """:func:`own_cluster` with its server already started."""
    own_cluster.connection()
    return own_cluster


@pytest.fixture
def exposed_server(tmp_path):
    """A server started as on a cluster, with --expose on a free port (self-signed certificate):
    its state (``server.json``) and its secret."""
    from rh_core.client import read_secret
    from rh_core.testing.sshd import free_port

    state_dir = str(tmp_path / "state")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "rh_core.server", "--state-dir", state_dir, "-o", "num_workers=1",
                                "--expose", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state_file = os.path.join(state_dir, "server.json")
    deadline = time.monotonic() + 60
    while not os.path.exists(state_file):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the exposed server did not start"
        time.sleep(0.05)
    with open(state_file) as f:
        state = json.load(f)
    yield state, read_secret(state_dir)
    process.terminate()
    process.wait(30)
