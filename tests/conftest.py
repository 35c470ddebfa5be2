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
    from rh_core.testing.fixtures import server_process
    from rh_core.testing.sshd import free_port

    with server_process(tmp_path, "-o", "num_workers=1", "--expose", f"127.0.0.1:{free_port()}") as (_, cluster):
        yield cluster.read_state(), read_secret(cluster.state_dir)
