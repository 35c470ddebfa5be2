"""Fixtures for every test directory (core and plugins)."""

import os

import pytest

# The shared sshd and BYO-cluster fixtures (sshd, ssh_cluster) for every test directory.
pytest_plugins = ["rh_core.testing.fixtures"]

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
