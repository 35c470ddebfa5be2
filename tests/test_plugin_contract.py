"""The typed plugin contract: one error root per plugin kind, optional capabilities asked in one
place, and what an executor declares it keeps across a server restart."""

from __future__ import annotations

import os
import warnings
from typing import ClassVar

import pytest

import rh_core as rh
from rh_core import errors
from rh_core.plugin import interfaces as plugin_types
from rh_core import hookimpl
from rh_core.builtin.local_transport import LocalTransport
from rh_core.clusters.remote import RemoteCluster
from rh_core.builtin.process_pool import ProcessExecutor
from rh_core.errors import ExecutorError, PluginError, ProvisionError, RhError, StoreError, WorkerDiedError
from rh_core.plugin.interfaces import (
    CAPABILITIES,
    Autostops,
    ClusterInfo,
    LendsWorkers,
    PreparesForward,
    ProvisionRequest,
    ReplacesSlots,
    ReportsTunnelProblems,
    SharesMachine,
    WatchesEnvironments,
    capability,
    keep_marker,
    takes_request,
)
from rh_core.plugin.host import PluginHost, Registry

# --- the error tree ------------------------------------------------------------------------------


@pytest.mark.parametrize("root", [errors.ProvisionError, errors.TransportError, errors.InstallError,
                                  errors.ExecutorError, errors.StoreError])
def test_each_plugin_kind_has_its_root_under_rh_error_and_exported(root):
    assert issubclass(root, RhError)
    assert getattr(rh, root.__name__) is root
    assert root.__doc__ and "raise" in root.__doc__  # says who raises it


def test_a_dead_worker_is_an_executor_error():
    with pytest.raises(ExecutorError):
        raise errors.InstanceDiedError("the instance's process was killed")
    assert issubclass(WorkerDiedError, ExecutorError)


def test_store_error_keeps_its_old_import_path():
    from rh_core.names import StoreError as from_names

    assert from_names is StoreError


def test_an_executor_without_remote_instances_refuses_them_with_an_executor_error():
    import asyncio

    class Plain(plugin_types.CoroutineExecutor):
        name = "plain"

    async def create() -> None:
        await Plain().start_instance(None, plugin_types.InstanceSpec(name="x", id="1"))  # type: ignore[arg-type]

    with pytest.raises(ExecutorError, match="'plain' executor runs no remote instances"):
        asyncio.run(create())


# --- optional capabilities ----------------------------------------------------------------------


def test_the_process_executor_has_every_executor_capability():
    executor = ProcessExecutor(num_workers=1)
    assert capability(executor, SharesMachine) is executor and executor.same_machine
    assert capability(executor, LendsWorkers) is executor
    assert capability(executor, WatchesEnvironments) is executor


def test_the_local_transport_has_no_tunnel_capabilities():
    transport = LocalTransport()
    assert capability(transport, PreparesForward) is None
    assert capability(transport, ReportsTunnelProblems) is None


def test_a_capability_of_two_members_needs_both():
    class HalfAutostop:
        def autostop_minutes(self, request):
            return 10

    class FullAutostop(HalfAutostop):
        def set_autostop(self, request, minutes):
            pass

    assert capability(HalfAutostop(), Autostops) is None
    assert capability(FullAutostop(), Autostops) is not None


def test_the_pip_installer_names_what_it_replaces():
    installer = rh.default_host().installer("pip")()
    replaces = capability(installer, ReplacesSlots)
    assert replaces is not None
    step = plugin_types.InstallStep(method="pip", spec="numpy==2.0", requirement="numpy==2.0")
    assert replaces.slot(step) == "pip:numpy"


def test_keep_warm_on_machines_that_never_stop_by_themselves_is_a_provision_error():
    cluster = rh.cluster(name="byo-keep", ips=["192.0.2.1"], ssh_creds={"ssh_user": "nobody"})
    with pytest.raises(ProvisionError, match=r"no keep_warm\(\): its 'byo' provisioner does not stop machines"):
        cluster.keep_warm(10)
    with pytest.raises(ProvisionError, match=r"no pause_autostop\(\)"), cluster.pause_autostop():
        pass


def test_every_capability_is_documented_for_plugin_authors():
    path = os.path.join(os.path.dirname(__file__), "..", "docs", "writing-a-plugin.md")
    with open(path) as f:
        guide = f.read()
    for kind, protocols in CAPABILITIES.items():
        for protocol in protocols:
            assert f"`{protocol.__name__}`" in guide, f"{kind} capability {protocol.__name__} is not documented"
    for root in ("ProvisionError", "TransportError", "InstallError", "ExecutorError", "StoreError"):
        assert f"`{root}`" in guide


# --- provisioners are given a request, not the cluster --------------------------------------------


class HereTransport(LocalTransport):
    """The local shell as the transport of a remote cluster's head (which it creates with an address)."""

    def __init__(self, address: str, **options) -> None:
        self.address = address


class RequestProvisioner:
    """Written for requests: the machine it brings up is this one, and it asks the head whether it answers."""

    given: ClassVar[list[tuple[str, ProvisionRequest]]] = []

    def up(self, request: ProvisionRequest) -> ClusterInfo:
        self.given.append(("up", request))
        return ClusterInfo(head="127.0.0.1", transport="here")

    def down(self, request: ProvisionRequest) -> None:
        self.given.append(("down", request))

    def status(self, request: ProvisionRequest) -> str:
        self.given.append(("status", request))
        (code, out, _), = request.head.run([f"echo {request.spec['answer']}"])
        return out.strip() if code == 0 else "unknown"


class ClusterProvisioner:
    """Written before requests: its methods take the cluster object."""

    given: ClassVar[list[tuple[str, RemoteCluster]]] = []

    def up(self, cluster):
        self.given.append(("up", cluster))
        return ClusterInfo(head="127.0.0.1", transport="here")

    def down(self, cluster):
        self.given.append(("down", cluster))

    def status(self, cluster):
        self.given.append(("status", cluster))
        return "stopped"


class ProvisionersForTests:
    @hookimpl
    def rh_register_provisioners(self, register):
        register("requests", RequestProvisioner)
        register("clusters", ClusterProvisioner)

    @hookimpl
    def rh_register_transports(self, register):
        register("here", HereTransport)


@pytest.fixture
def test_provisioners(monkeypatch):
    """A host with both provisioners, used by every RemoteCluster of the test."""
    host = PluginHost(autoload=False)
    host.register(ProvisionersForTests(), name="provisioners-for-tests")
    monkeypatch.setattr(RemoteCluster, "host", property(lambda self: host))
    monkeypatch.setattr(RequestProvisioner, "given", [])
    monkeypatch.setattr(ClusterProvisioner, "given", [])
    return host


def test_a_provisioner_is_given_the_clusters_name_and_spec_and_a_way_to_its_head(test_provisioners):
    cluster = RemoteCluster(name="asked", provisioner="requests", spec={"answer": "stopped"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the current form: no deprecation
        assert cluster.status(refresh=True) == {"name": "asked", "machines": "stopped"}  # echoed by the head
    (what, asked), (then, up_request) = RequestProvisioner.given
    assert (what, then) == ("status", "up")  # status asked the head, whose transport needed the machines
    assert asked == ProvisionRequest(cluster_name="asked", spec={"answer": "stopped"})
    assert asked.head is not None and up_request.head is None  # up() is never handed a head: none is known yet
    with pytest.raises(TypeError):
        asked.spec["answer"] = "changed"  # type: ignore[index]
    assert cluster.spec == {"answer": "stopped"}


def test_a_provisioner_that_takes_the_cluster_still_gets_it_with_a_deprecation_warning(test_provisioners):
    cluster = RemoteCluster(name="old", provisioner="clusters", spec={"zone": "z"})
    with pytest.warns(DeprecationWarning, match=r"'clusters' provisioner \(.*ClusterProvisioner\) takes the cluster "
                                                r"object.*take `request: rh_core.plugin.interfaces.ProvisionRequest` "
                                                r"and read request.cluster_name, request.spec"):
        assert cluster.status(refresh=True) == {"name": "old", "machines": "stopped"}
    with pytest.warns(DeprecationWarning):
        assert cluster.cluster_info.head == "127.0.0.1"
    assert ClusterProvisioner.given == [("status", cluster), ("up", cluster)]


class TakesRequest:
    def up(self, request): ...


class TakesAnnotatedRequest:
    def up(self, request: ProvisionRequest) -> ClusterInfo: ...


class TakesRequestNamedCluster:
    def up(self, cluster: "ProvisionRequest"): ...  # noqa: UP037  (a quoted annotation is what is read here)


class TakesSpec:
    def up(self, spec): ...


class TakesCluster:
    def up(self, cluster): ...


class TakesAnnotatedCluster:
    def up(self, cluster: RemoteCluster) -> ClusterInfo: ...


@pytest.mark.parametrize(("written", "current"), [
    (TakesRequest, True), (TakesAnnotatedRequest, True), (TakesRequestNamedCluster, True), (TakesSpec, True),
    (TakesCluster, False), (TakesAnnotatedCluster, False),
])
def test_the_old_form_is_told_by_its_up_taking_a_cluster(written, current):
    assert takes_request(written()) is current


# --- what an executor keeps across a server restart ----------------------------------------------


def test_an_executor_declares_what_it_keeps_and_others_may_not():
    registry = Registry("executor")
    registry.register("kept", "somewhere:Executor", aliases=("kept2",), keeps=("ray",), owner="plug")
    registry.register("plain", "somewhere:Other", owner="plug")
    assert registry.keeps("kept") == registry.keeps("kept2") == ("ray",)
    assert registry.keeps("plain") == ()
    with pytest.raises(PluginError, match="only executors declare"):
        Registry("transport").register("ssh2", "x:Y", keeps=("ray",), owner="plug")
    with pytest.raises(ValueError, match="cannot name what an executor keeps"):
        registry.register("bad", "x:Y", keeps=("../etc",), owner="plug")


def test_the_ray_executor_declares_it_keeps_ray_without_being_imported():
    host = PluginHost()
    assert host.registry("executor").keeps("ray") == ("ray",)
    assert host.registry("executor").keeps("process") == ()


def test_keep_marker_is_a_file_in_the_state_dir():
    assert keep_marker("/state/server/", "ray") == "/state/server/keep-ray"
    with pytest.raises(ValueError):
        keep_marker("/state", "a/b")


def test_asking_an_executor_to_keep_what_it_cannot_refuses_before_stopping_anything(running_cluster):
    pid = running_cluster.read_state()["pid"]
    with pytest.raises(ExecutorError, match=r"'process' executor .* cannot keep 'ray' .*it can keep nothing"):
        running_cluster.restart_server(keep=("ray",))
    assert running_cluster.read_state()["pid"] == pid
    assert not os.path.exists(keep_marker(running_cluster.state_dir, "ray"))


def test_restart_ray_still_works_for_one_release_with_a_deprecation_warning(running_cluster):
    pid = running_cluster.read_state()["pid"]
    with pytest.warns(DeprecationWarning, match=r"restart_ray=\.\.\.\) is deprecated: pass keep=\('ray',\)"):
        running_cluster.restart_server(restart_ray=False)  # the process executor keeps no Ray: ignored
    assert running_cluster.read_state()["pid"] != pid
    assert not os.path.exists(keep_marker(running_cluster.state_dir, "ray"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        running_cluster.restart_server()  # no restart_ray: no warning
