"""The provisioner contract: bring machines up, report how to reach them, take them down.

Subclass :class:`ProvisionerContract` and provide ``provisioner`` (an instance of the provisioner
under test) and ``cluster`` (a cluster object whose spec that provisioner serves) fixtures. The
provisioner is given the cluster's :class:`~rh_core.plugin.interfaces.ProvisionRequest`, as the
cluster gives it, never the cluster itself.
"""

from __future__ import annotations

import pytest

from rh_core.plugin.interfaces import ClusterInfo, ProvisionRequest, takes_request


class ProvisionerContract:
    @pytest.fixture
    def provisioner(self):  # pragma: no cover - provided by subclasses
        raise NotImplementedError("subclasses provide a `provisioner` fixture")

    @pytest.fixture
    def cluster(self):  # pragma: no cover - provided by subclasses
        raise NotImplementedError("subclasses provide a `cluster` fixture")

    @pytest.fixture
    def provision_request(self, cluster) -> ProvisionRequest:
        """What the cluster tells its provisioner in every call but ``up`` (named so because pytest
        has a ``request`` fixture of its own)."""
        return cluster.provision_request()

    def test_takes_a_request_rather_than_the_cluster(self, provisioner):
        assert takes_request(provisioner), "write its methods as up(self, request: ProvisionRequest), ..."

    def test_up_says_where_the_machines_are_and_how_to_reach_them(self, provisioner, cluster):
        info = provisioner.up(cluster.provision_request(with_head=False))  # up() gets no head: none is known yet
        assert isinstance(info, ClusterInfo)
        assert info.head and info.head not in info.workers
        assert isinstance(info.transport, str) and info.transport
        assert set(info.host_options) <= {info.head, *info.workers}

    def test_up_twice_finds_the_same_machines(self, provisioner, provision_request):
        first, second = provisioner.up(provision_request), provisioner.up(provision_request)
        assert (first.head, first.workers) == (second.head, second.workers)

    def test_status_is_one_of_the_documented_states(self, provisioner, cluster, provision_request):
        provisioner.up(provision_request)
        assert provisioner.status(provision_request) in ("up", "stopped", "down", "unknown")
        assert not cluster._connection  # asking for status must not start the cluster's server

    def test_down_can_be_called_twice(self, provisioner, provision_request):
        provisioner.up(provision_request)
        provisioner.down(provision_request)
        provisioner.down(provision_request)
