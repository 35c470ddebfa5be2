"""What rh.cluster(...) options become at SkyPilot's SDK boundary, and what bad input says.

The fake SDK (rh_sky.testing) records each call; launched Tasks are rebuilt with SkyPilot's own
``Task.from_yaml_config`` and checked through SkyPilot's real ``Resources``.
"""

from __future__ import annotations

import pytest

import rh_core as rh
from rh_core.errors import UnknownNameError
from rh_core.testing import ProvisionerContract
from rh_sky.provisioner import SkyProvisioner
from rh_sky.skypilot import SkyCredentialsError, SkyLaunchError
from rh_sky.spec import SkySpec, SkySpecError


def launched(fake, name="spec-test", **options):
    """Bring a cluster with ``options`` up through the fake and return (cluster, Task, Resources)."""
    cluster = rh.cluster(name=name, **options)
    cluster.cluster_info  # the provisioner's up(): SkyPilot's launch, then its record
    task = fake.launched_task()
    (resources,) = task.resources
    return cluster, task, resources


def test_accelerators_cloud_region_spot_image_nodes_and_disk(fake_sky):
    _, task, resources = launched(fake_sky, instance_type="A100:4", provider="gcp", region="us-east1",
                                  use_spot=True, image_id="my-image", num_nodes=2, disk_size=200)
    assert str(resources.cloud) == "GCP" and resources.region == "us-east1"
    assert resources.accelerators == {"A100": 4}
    assert resources.use_spot is True
    assert resources.image_id == {"us-east1": "my-image"}
    assert resources.disk_size == 200
    assert task.num_nodes == 2 and task.name == "spec-test"
    assert task.run is None and task.setup is None  # provisioning only: no job in SkyPilot's queue


def test_cpu_counts_become_vcpus_and_any_cloud_is_left_to_skypilot(fake_sky):
    _, _, resources = launched(fake_sky, instance_type="CPU:8")
    assert resources.cpus == "8" and resources.cloud is None and not resources.accelerators
    _, _, resources = launched(fake_sky, "spec-aws", instance_type="CPU:8+", provider="aws", region="us-east-1",
                               zone="us-east-1a")
    assert (resources.cpus, str(resources.cloud), resources.region, resources.zone) == ("8+", "AWS", "us-east-1",
                                                                                      "us-east-1a")


def test_cloud_instance_type_is_judged_by_skypilots_catalog(fake_sky):
    _, _, resources = launched(fake_sky, instance_type="g5.2xlarge", provider="aws")
    assert resources.instance_type == "g5.2xlarge" and resources.accelerators == {"A10G": 1}


def test_kubernetes_and_region_without_cloud(fake_sky):
    _, _, resources = launched(fake_sky, instance_type="H100:8", provider="kubernetes")
    assert str(resources.cloud) == "Kubernetes" and resources.accelerators == {"H100": 8}
    _, _, resources = launched(fake_sky, "spec-region", instance_type="V100:1", region="us-east-1")
    assert resources.cloud is None and resources.region == "us-east-1"


def test_autostop_defaults_to_30_minutes_and_minus_one_disables_it(fake_sky):
    launched(fake_sky, instance_type="CPU:2")
    assert fake_sky.calls("launch")[-1]["idle_minutes_to_autostop"] == 30
    fake_sky.get(fake_sky.down("spec-test"))
    launched(fake_sky, instance_type="CPU:2", autostop_mins=-1)
    assert fake_sky.calls("launch")[-1]["idle_minutes_to_autostop"] is None
    assert fake_sky.cluster("spec-test")["autostop"] == -1


def test_config_file_sets_default_provider_and_autostop(fake_sky, isolated_rh_home):
    from rh_core import config

    (isolated_rh_home / "config.yaml").write_text("default_provider: aws\ndefault_autostop_mins: 45\n")
    config.reload()
    try:
        cluster, _, resources = launched(fake_sky, instance_type="CPU:2")
        assert cluster.provisioner == "aws" and str(resources.cloud) == "AWS"
        assert fake_sky.calls("launch")[-1]["idle_minutes_to_autostop"] == 45
    finally:
        (isolated_rh_home / "config.yaml").unlink()
        config.reload()


def test_an_up_cluster_is_reused_and_a_stopped_one_restarted(fake_sky):
    cluster, _, _ = launched(fake_sky, instance_type="CPU:2", autostop_mins=10)
    again = rh.cluster(name="spec-test", instance_type="CPU:2", autostop_mins=10)
    assert again.cluster_info.head == cluster.cluster_info.head
    assert len(fake_sky.calls("launch")) == 1
    fake_sky.set_status("spec-test", "STOPPED")
    assert rh.cluster(name="spec-test", instance_type="CPU:2").cluster_info.head == "127.0.0.1"
    assert len(fake_sky.calls("launch")) == 1
    (start,) = fake_sky.calls("start")
    assert start["cluster_name"] == "spec-test" and start["idle_minutes_to_autostop"] == 30


def test_cluster_info_carries_skypilots_addresses_user_and_key(fake_sky, isolated_rh_home):
    cluster, _, _ = launched(fake_sky, instance_type="CPU:2", num_nodes=2)
    info = cluster.cluster_info
    assert (info.head, info.workers, info.transport) == ("127.0.0.1", ("127.0.0.2",), "ssh")
    options = info.transport_options
    assert options["user"] == "ubuntu" and options["port"] == 1 and options["trust_new_host"] is True
    key = isolated_rh_home / "sky" / "spec-test" / "ssh-key"
    assert options["private_key"] == str(key) and oct(key.stat().st_mode & 0o777) == "0o600"
    assert options["known_hosts"].startswith(str(isolated_rh_home / "sky" / "spec-test"))
    assert info.provider_data["idle_timer_db"].endswith("skylet/.sky/skylet_config.db")


# --- presets and routing ---------------------------------------------------------------------------


def test_builtin_presets_load_as_on_demand_clusters(fake_sky):
    gpu = rh.cluster(name="^rh-v100", dryrun=True)
    assert isinstance(gpu, rh.RemoteCluster) and gpu.name == "rh-v100"
    assert gpu.spec["instance_type"] == "V100:1" and gpu.spec["provider"] == "cheapest"
    on_gcp = rh.cluster(name="^rh-4-v100", provider="gcp", autostop_mins=5)
    assert (on_gcp.provisioner, on_gcp.spec["instance_type"], on_gcp.spec["autostop_mins"]) == ("gcp", "V100:4", 5)
    loaded = rh.cluster(name="^rh-cpu")  # a status check through SkyPilot, nothing launched
    assert loaded.last_status.machines == "down" and loaded.spec["instance_type"] == "CPU:2+"
    assert fake_sky.calls("status") and not fake_sky.calls("launch")


def test_provider_names_a_provisioner_or_its_alias(fake_sky):
    host = rh.default_host()
    for provider in ("gcp", "aws", "kubernetes", "cheapest", "sky"):
        assert host.provisioner(provider) is SkyProvisioner
    with pytest.raises(UnknownNameError, match=r"unknown provisioner 'gpc'; did you mean 'gcp'.*; valid provisioners: .*gcp"):
        rh.cluster(name="x", instance_type="A100:1", provider="gpc")


def test_on_demand_cluster_needs_a_name(fake_sky):
    with pytest.raises(TypeError, match="needs a name"):
        rh.cluster(instance_type="A100:1")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"instance_type": "A100:4", "autostop": 5}, r"unknown option\(s\) autostop .*valid options: .*autostop_mins"),
        ({"instance_type": "A100:four"}, r"count after ':' must be a number"),
        ({"instance_type": "A100:1", "zone": "us-east-1a"}, r"zone='us-east-1a' needs the region"),
        ({"instance_type": "A100:1", "num_nodes": 0}, r"num_nodes=0 is out of range"),
        ({"instance_type": "A100:1", "autostop_mins": "soon"}, r"autostop_mins='soon' must be a whole number"),
    ],
)
def test_bad_options_are_refused_when_the_cluster_is_made(fake_sky, options, message):
    with pytest.raises(SkySpecError, match=message):
        rh.cluster(name="bad", **options)


# --- SkyPilot's reasons, and what to do ----------------------------------------------------------


def test_unknown_instance_type_gives_skypilots_reason_and_where_to_look(fake_sky):
    cluster = rh.cluster(name="bad-type", instance_type="nope.large", provider="aws")
    with pytest.raises(SkySpecError, match=r"No instance type nope.large found.*sky show-gpus"):
        cluster.cluster_info
    assert not fake_sky.calls("launch")


def test_unknown_accelerator_or_region_gives_skypilots_reason_and_what_to_do(fake_sky):
    fake_sky.fail_next("launch", "ResourcesUnavailableError",
                       "No launchable resource found for task spec-test. Z999:4 is not offered in any region.")
    with pytest.raises(SkyLaunchError, match=r"Z999:4 is not offered.*another region or zone.*instance_type"):
        launched(fake_sky, instance_type="Z999:4", provider="gcp")
    # (A cloud whose regions rh-sky does not list itself: SkyPilot judges them at launch.)
    fake_sky.fail_next("launch", "ValueError", "Invalid region 'mars-1' for Azure.")
    with pytest.raises(SkySpecError, match=r"Invalid region 'mars-1' for Azure.*spelling of provider"):
        launched(fake_sky, "spec-mars", instance_type="CPU:2", provider="azure", region="mars-1")


def test_missing_credentials_say_to_run_sky_check_for_that_cloud(fake_sky):
    fake_sky.fail_next("launch", "NoCloudAccessError", "Cloud access is not set up. Run: \x1b[1msky check\x1b[0m")
    with pytest.raises(SkyCredentialsError) as raised:
        launched(fake_sky, instance_type="A100:1", provider="gcp")
    message = str(raised.value)
    assert "`sky check gcp`" in message and "credentials for gcp" in message and "\x1b" not in message


def test_a_launch_failing_partway_reports_skypilots_state_and_is_not_recorded_as_up(fake_sky):
    fake_sky.fail_next("launch", "ResourcesUnavailableError", "Failed to acquire resources in all zones: quota",
                       leave_status="INIT")
    cluster = rh.cluster(name="partway", instance_type="A100:8", provider="aws")
    with pytest.raises(SkyLaunchError, match=r"quota.*SkyPilot now reports cluster 'partway' as INIT"):
        cluster.cluster_info
    assert cluster._cluster_info is None
    assert SkyProvisioner().status(cluster.provision_request()) == "unknown"
    # The next try restarts what SkyPilot left (start retries provisioning of an INIT cluster).
    assert cluster.cluster_info.head == "127.0.0.1"
    assert fake_sky.calls("start")[-1]["cluster_name"] == "partway"


def test_skypilot_missing_is_reported_with_how_to_install(tmp_path):
    import subprocess
    import sys

    code = ("import sys; sys.modules['sky'] = None\n"
            "from rh_sky.skypilot import load_skypilot\n"
            "try:\n    load_skypilot()\nexcept ImportError as exc:\n    print(exc)\n")
    env = {key: value for key, value in __import__("os").environ.items() if key != "RH_SKY_SDK"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert "need SkyPilot, which is not installed" in out.stdout and "pip install rh-sky" in out.stdout


# --- the provisioner contract of rh_core ----------------------------------------------------------


class TestSkyProvisionerContract(ProvisionerContract):
    @pytest.fixture
    def provisioner(self, fake_sky):
        return SkyProvisioner()

    @pytest.fixture
    def cluster(self, fake_sky):
        return rh.cluster(name="contract", instance_type="CPU:2", num_nodes=2)


def test_a_region_the_provider_does_not_have_is_refused_with_the_valid_ones():
    with pytest.raises(SkySpecError, match=r"region='us-east-1' is not a region of gcp \(it is one of aws's\); "
                                           r"did you mean 'us-east1'.*gcp's regions: .*us-central1"):
        SkySpec.from_options({"provider": "gcp", "region": "us-east-1", "instance_type": "A100:1"})
    assert SkySpec.from_options({"provider": "gcp", "region": "us-east1"}).region == "us-east1"
    assert SkySpec.from_options({"provider": "azure", "region": "eastus"}).region == "eastus"  # left to SkyPilot


def test_skypilots_errors_are_provision_errors(fake_sky):
    from rh_sky.skypilot import SkyError, SkyLaunchError

    with pytest.raises(rh.ProvisionError) as caught:  # what a caller catches without knowing the provider
        rh.cluster(name="bad", instance_type="A100:four")
    assert isinstance(caught.value, SkySpecError) and isinstance(caught.value, ValueError)
    assert issubclass(SkyLaunchError, SkyError) and issubclass(SkyError, rh.ProvisionError)
