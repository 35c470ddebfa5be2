"""The gcp-direct provisioner against the Compute API stand-in, through the real google-cloud-compute
REST client: what it asks the API for, the states it reports, and its errors."""

from __future__ import annotations

import os
import stat

import pytest

import rh_core as rh
from rh_core.testing import ProvisionerContract

from rh_gcp.compute import GCPCredentialsError, GCPError, GCPQuotaError
from rh_gcp.provisioner import GCPProvisioner
from rh_gcp.spec import GCPSpecError

pytestmark = pytest.mark.timeout(120)


class TestGCPProvisionerContract(ProvisionerContract):
    @pytest.fixture
    def provisioner(self, anonymous):
        return GCPProvisioner()

    @pytest.fixture
    def cluster(self, options):
        return rh.cluster(name="contract", **options(num_nodes=2))


@pytest.fixture
def provisioner(anonymous) -> GCPProvisioner:
    return GCPProvisioner()


def test_up_creates_the_instances_as_asked_and_hands_them_to_the_ssh_transport(provisioner, stand_in, options, sshd):
    request = rh.cluster(name="g1", **options(instance_type="n1-standard-8", accelerators="nvidia-tesla-t4:1",
                                              use_spot=True, image_id="projects/p/global/images/family/f",
                                              autostop_mins=30, num_nodes=2)).provision_request()
    info = provisioner.up(request)

    assert (info.head, info.workers, info.transport) == ("127.0.0.1", ("127.0.0.2",), "ssh")
    head_body = next(call.body for call in stand_in.calls("insert") if call.body["name"] == "g1-head")
    assert [call.body["name"] for call in stand_in.calls("insert")] == ["g1-head", "g1-worker-1"]
    assert head_body["machineType"] == "zones/us-central1-a/machineTypes/n1-standard-8"
    assert head_body["guestAccelerators"] == [{"acceleratorType": "zones/us-central1-a/acceleratorTypes/nvidia-tesla-t4",
                                               "acceleratorCount": 1}]
    assert head_body["scheduling"] == {"provisioningModel": "SPOT", "instanceTerminationAction": "STOP",
                                       "onHostMaintenance": "TERMINATE"}
    assert head_body["disks"][0]["initializeParams"]["sourceImage"] == "projects/p/global/images/family/f"
    assert head_body["labels"] == {"rh-cluster": "g1", "rh-role": "head"}
    metadata = {item["key"]: item["value"] for item in head_body["metadata"]["items"]}
    assert metadata["rh-autostop-mins"] == "30" and metadata["rh-autostop-action"] == "stop"
    # The generated key is in the metadata, owner-only on disk, and what the transport logs in with.
    key = info.transport_options["private_key"]
    with open(key + ".pub") as public:
        assert metadata["ssh-keys"] == f"{sshd.user}:{public.read().strip()}"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(key)).st_mode) == 0o700
    assert info.transport_options["port"] == sshd.port and info.transport_options["trust_new_host"] is True
    assert len(stand_in.calls("operation")) >= 2  # both creations were waited for
    transport = rh.default_host().transport("ssh")(info.workers[0], **info.transport_options)
    try:
        assert transport.run(["echo reached"])[0][:2] == (0, "reached\n")
    finally:
        transport.close()


def test_stopped_and_preempted_instances_are_reported_stopped_and_started_again(provisioner, stand_in, options):
    request = rh.cluster(name="g2", **options(num_nodes=2, use_spot=True)).provision_request()
    provisioner.up(request)
    assert provisioner.status(request) == "up"

    stand_in.set_status("g2-worker-1", "TERMINATED")  # a Spot VM preempted
    assert provisioner.status(request) == "unknown"  # the head still runs: not the whole cluster
    provisioner.stop(request)
    assert [call.path.rsplit("/", 2)[1] for call in stand_in.calls("stop")] == ["g2-head"]  # the other one was stopped
    assert provisioner.status(request) == "stopped"

    info = provisioner.up(request)
    assert sorted(call.path.rsplit("/", 2)[1] for call in stand_in.calls("start")) == ["g2-head", "g2-worker-1"]
    assert len(stand_in.calls("insert")) == 2 and info.head == "127.0.0.1"
    assert provisioner.status(request) == "up"


def test_why_a_server_went_is_told_from_the_apis_own_report(provisioner, stand_in, options):
    request = rh.cluster(name="g4", **options(num_nodes=2, use_spot=True)).provision_request()
    provisioner.up(request)
    assert provisioner.explain_lost(request) is None  # every instance runs: the API cannot tell

    operation = stand_in.preempt("g4-worker-1")
    report = provisioner.explain_lost(request)
    assert "project 'test-project', zone 'us-central1-a'" in report
    assert (f"instance g4-worker-1 (a Spot VM) was preempted by Compute Engine at "
            f"{stand_in.operations[operation]['endTime']} (operation {operation}: Instance was preempted.) "
            "and is TERMINATED") in report
    assert "g4-head" not in report and report.endswith("cluster.up(), or the next call, starts the cluster again")
    assert provisioner.status(request) == "unknown"  # the head still runs

    # Started again and stopped through the API: the old preemption is history, not the cause.
    provisioner.up(request)
    provisioner.stop(request)
    report = provisioner.explain_lost(request)
    stopped_at = stand_in.instance("g4-worker-1")["lastStopTimestamp"]
    assert f"instance g4-worker-1 is TERMINATED since {stopped_at} (stopped through the API" in report
    assert "preempted" not in report and "instance g4-head is TERMINATED" in report

    stand_in.instances.pop(("test-project", "us-central1-a", "g4-head"))
    assert "instance g4-head no longer exists (it was deleted)" in provisioner.explain_lost(request)


def test_autostop_shorter_than_a_minute_is_refused_with_the_reason(provisioner, stand_in, options):
    with pytest.raises(GCPSpecError, match=r"autostop_mins=0.5 must be -1 \(never\) or at least 1.*restarting"):
        rh.cluster(name="short", **options(autostop_mins=0.5))
    request = rh.cluster(name="short", **options(autostop_mins=5)).provision_request()
    provisioner.up(request)
    with pytest.raises(GCPSpecError, match="autostop of cluster 'short': 0 minutes"):
        provisioner.set_autostop(request, 0)
    assert provisioner.autostop_minutes(request) == 5


def test_down_deletes_every_instance_and_autostop_lives_in_the_heads_metadata(provisioner, stand_in, options):
    request = rh.cluster(name="g3", **options(num_nodes=2, autostop_mins=15)).provision_request()
    provisioner.up(request)
    assert provisioner.autostop_minutes(request) == 15
    provisioner.set_autostop(request, -1)
    assert provisioner.autostop_minutes(request) == -1
    assert stand_in.calls("setMetadata")[0].body["fingerprint"]  # changed with the API's optimistic lock

    provisioner.down(request)
    assert sorted(call.path.rsplit("/", 1)[1] for call in stand_in.calls("delete")) == ["g3-head", "g3-worker-1"]
    assert provisioner.status(request) == "down" and not stand_in.instances


# --- faults -----------------------------------------------------------------------------------------


def test_no_credentials_says_how_to_get_them(stand_in, options, monkeypatch, tmp_path):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    request = rh.cluster(name="nocreds", **options()).provision_request()
    with pytest.raises(GCPCredentialsError, match="gcloud auth application-default login") as caught:
        GCPProvisioner().up(request)
    assert "missing.json" in str(caught.value)
    assert not stand_in.requests


def test_a_missing_project_is_named(provisioner, stand_in, options):
    no_project = {key: value for key, value in options().items() if key != "project"}
    with pytest.raises(GCPError, match="no Google Cloud project given.*project='my-proj'"):
        provisioner.up(rh.cluster(name="noproj", **no_project).provision_request())
    with pytest.raises(GCPError, match="'elsewhere'.*projects/elsewhere' was not found.*exists"):
        provisioner.up(rh.cluster(name="noproj", **options(project="elsewhere")).provision_request())


def test_quota_exhausted_names_the_instance_and_deletes_what_was_created(provisioner, stand_in, options):
    stand_in.fail_next_operation("insert", "QUOTA_EXCEEDED", "Quota 'NVIDIA_T4_GPUS' exceeded. Limit: 0.0 in region us-central1.")
    with pytest.raises(GCPQuotaError) as caught:
        provisioner.up(rh.cluster(name="quota", **options(num_nodes=2, accelerators="nvidia-tesla-t4"))
                       .provision_request())
    message = str(caught.value)
    assert "creating instance quota-head" in message and "NVIDIA_T4_GPUS" in message and "more quota" in message
    assert "deleted: quota-head, quota-worker-1" in " ".join(caught.value.__notes__)
    assert not stand_in.instances  # the worker that was created is gone


def test_a_zone_without_the_accelerator_says_so(provisioner, stand_in, options):
    stand_in.fail_next("insert", 400, "Invalid value for field 'resource.guestAccelerators[0].acceleratorType': "
                       "'zones/europe-west1-b/acceleratorTypes/nvidia-tesla-t4'. Accelerator type not found.", "invalid")
    with pytest.raises(GCPError, match=r"(?s)creating instance acc-head.*Accelerator type not found.*"
                                       r"accelerator-types list --filter=zone:europe-west1-b"):
        provisioner.up(rh.cluster(name="acc", **options(zone="europe-west1-b", accelerators="nvidia-tesla-t4:1"))
                       .provision_request())


def test_a_failure_note_says_which_instances_were_not_deleted(provisioner, stand_in, options):
    stand_in.fail_next_operation("insert", "QUOTA_EXCEEDED", "Quota 'CPUS' exceeded.")
    for _ in range(2):  # the head's deletion, then the worker's
        stand_in.fail_next("delete", 403, "Required 'compute.instances.delete' permission", "forbidden")
    with pytest.raises(GCPQuotaError) as caught:
        provisioner.up(rh.cluster(name="note", **options(num_nodes=2)).provision_request())
    (note,) = caught.value.__notes__
    assert "could NOT be deleted" in note and "note-worker-1" in note and "compute.instances.delete" in note
    assert list(stand_in.instances) == [("test-project", "us-central1-a", "note-worker-1")]  # reported, not hidden


@pytest.mark.parametrize(("options_", "message"), [
    ({"accelerators": "t4:x"}, "NAME:COUNT"),
    ({"gpus": 1}, "does not take gpus"),
    ({"zone": None}, "needs a zone"),
    ({"num_nodes": 0}, "at least 1"),
    ({"autostop_action": "hibernate"}, "autostop_action"),
])
def test_bad_options_are_refused_when_the_cluster_is_made(options_, message):
    given = {"provider": "gcp-direct", "zone": "us-central1-a", **options_}
    with pytest.raises(GCPSpecError, match=message):
        rh.cluster(name="bad", **{key: value for key, value in given.items() if value is not None})


def test_a_cluster_name_compute_engine_refuses_is_named(provisioner, options):
    with pytest.raises(GCPSpecError, match="'My_Cluster' cannot name Compute Engine instances"):
        provisioner.up(rh.cluster(name="My_Cluster", **options()).provision_request())


def test_autostop_defaults_to_the_configs_default_as_for_every_on_demand_cluster():
    from rh_gcp.spec import GCPSpec

    assert GCPSpec.from_options({"zone": "us-central1-a"}).autostop_mins == 30
    assert GCPSpec.from_options({"zone": "us-central1-a", "autostop_mins": -1}).autostop_mins == -1
