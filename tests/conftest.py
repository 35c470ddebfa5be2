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
