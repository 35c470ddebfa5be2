"""The provisioner contract: bring machines up, report how to reach them, take them down.

Subclass :class:`ProvisionerContract` and provide ``provisioner`` (an instance of the provisioner
under test) and ``cluster`` (a cluster object whose spec that provisioner serves) fixtures.
"""

from __future__ import annotations

import pytest

from rh_core.plugin.interfaces import ClusterInfo


class ProvisionerContract:
    @pytest.fixture
    def provisioner(self):  # pragma: no cover - provided by subclasses
        raise NotImplementedError("subclasses provide a `provisioner` fixture")

    @pytest.fixture
    def cluster(self):  # pragma: no cover - provided by subclasses
        raise NotImplementedError("subclasses provide a `cluster` fixture")

    def test_up_says_where_the_machines_are_and_how_to_reach_them(self, provisioner, cluster):
        info = provisioner.up(cluster)
        assert isinstance(info, ClusterInfo)
        assert info.head and info.head not in info.workers
        assert isinstance(info.transport, str) and info.transport
        assert set(info.host_options) <= {info.head, *info.workers}

    def test_up_twice_finds_the_same_machines(self, provisioner, cluster):
        first, second = provisioner.up(cluster), provisioner.up(cluster)
        assert (first.head, first.workers) == (second.head, second.workers)

    def test_status_is_one_of_the_documented_states(self, provisioner, cluster):
        provisioner.up(cluster)
        assert provisioner.status(cluster) in ("up", "stopped", "down", "unknown")
        assert not cluster._connection  # asking for status must not start the cluster's server

    def test_down_can_be_called_twice(self, provisioner, cluster):
        provisioner.up(cluster)
        provisioner.down(cluster)
        provisioner.down(cluster)
