"""Fixtures for rh-pip: a local cluster of its own, a loopback sshd cluster, and wheels built here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import rh_core as rh
from rh_core.testing.packages import build_wheel


@pytest.fixture(scope="session")
def wheels(tmp_path_factory) -> dict[str, str]:
    """Folders of wheels: ``one`` holds rhtest-a 1.0, ``two`` holds rhtest-a 2.0 (no index needed)."""
    root = tmp_path_factory.mktemp("wheels")
    build_wheel(str(root / "one"), "rhtest-a", "1.0")
    build_wheel(str(root / "two"), "rhtest-a", "2.0")
    return {"one": str(root / "one"), "two": str(root / "two")}


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory) -> Iterator[rh.LocalCluster]:
    """A local cluster of its own (installs into its default env must not touch rh.here's)."""
    cluster = rh.LocalCluster(state_dir=str(tmp_path_factory.mktemp("pip-local") / "state"),
                              executor_options={"num_workers": 1})
    yield cluster
    cluster.stop_server()


