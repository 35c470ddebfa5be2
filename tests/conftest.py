import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session", autouse=True)
def isolated_rh_home(tmp_path_factory):
    """Every test session gets its own ~/.rh, so rh.here never meets a developer's server."""
    home = tmp_path_factory.mktemp("rh_home")
    previous = os.environ.get("RH_HOME")
    os.environ["RH_HOME"] = str(home)
    yield home
    import rh_core as rh

    rh.here.stop_server()
    if previous is None:
        os.environ.pop("RH_HOME", None)
    else:
        os.environ["RH_HOME"] = previous


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
