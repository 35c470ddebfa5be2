"""``rh gcp list|stop|down`` against the Compute API stand-in: in-process with click's runner (the
credentials are the anonymous ones of the ``anonymous`` fixture), and through the real ``rh``
entry point where no credentials are needed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from click.testing import CliRunner

import rh_core as rh

from rh_gcp.cli import gcp
from rh_gcp.provisioner import GCPProvisioner

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def two_clusters(stand_in, options, anonymous):
    """'alpha' (head and worker, autostop 30) and 'beta' (one Spot VM, preempted) in us-central1-a."""
    provisioner = GCPProvisioner()
    provisioner.up(rh.cluster(name="alpha", **options(num_nodes=2, autostop_mins=30)).provision_request())
    provisioner.up(rh.cluster(name="beta", **options(use_spot=True)).provision_request())
    stand_in.preempt("beta-head")
    return stand_in


def run(stand_in, *args: str, input: str | None = None):
    where = ["--zone", "us-central1-a", "--project", "test-project", "--api-endpoint", stand_in.endpoint]
    return CliRunner().invoke(gcp, [*args, *where], input=input, catch_exceptions=False)


def test_list_shows_the_instances_of_each_cluster(two_clusters):
    shown = run(two_clusters, "list")
    assert shown.exit_code == 0, shown.output
    header, *lines = shown.output.splitlines()
    assert header.split() == ["CLUSTER", "INSTANCE", "ZONE", "STATUS", "SPOT", "ADDRESS", "AUTOSTOP"]
    assert [line.split()[:6] for line in lines] == [
        ["alpha", "alpha-head", "us-central1-a", "RUNNING", "-", "127.0.0.1"],
        ["alpha", "alpha-worker-1", "us-central1-a", "RUNNING", "-", "127.0.0.2"],
        ["beta", "beta-head", "us-central1-a", "TERMINATED", "yes", "127.0.0.1"],
    ]
    assert lines[0].endswith("30 min")
    rows = json.loads(run(two_clusters, "list", "--json").output)
    assert {(row["instance"], row["status"], row["spot"]) for row in rows} == {
        ("alpha-head", "RUNNING", False), ("alpha-worker-1", "RUNNING", False), ("beta-head", "TERMINATED", True)}
    assert two_clusters.calls("list")[-1].query["filter"] == "labels.rh-cluster:*"


def test_stop_then_down_by_name(two_clusters):
    stopped = run(two_clusters, "stop", "alpha")
    assert stopped.exit_code == 0 and "alpha: stopped" in stopped.output, stopped.output
    assert {two_clusters.instance(name)["status"] for name in ("alpha-head", "alpha-worker-1")} == {"TERMINATED"}

    refused = run(two_clusters, "down", "alpha", input="n\n")
    assert refused.exit_code == 1 and "Aborted" in refused.output
    assert two_clusters.instance("alpha-head") is not None

    done = run(two_clusters, "down", "alpha", "--yes")
    assert done.exit_code == 0 and "alpha: down" in done.output, done.output
    assert sorted(call.path.rsplit("/", 1)[1] for call in two_clusters.calls("delete")) == ["alpha-head",
                                                                                          "alpha-worker-1"]
    assert [key[2] for key in two_clusters.instances] == ["beta-head"]


def test_an_unknown_cluster_is_named_with_the_ones_there(two_clusters):
    done = CliRunner().invoke(gcp, ["down", "gamma", "--yes", "--zone", "us-central1-a", "--project", "test-project",
                                    "--api-endpoint", two_clusters.endpoint])
    assert done.exit_code == 1
    assert "no instances of cluster 'gamma' in project 'test-project', zone 'us-central1-a'" in done.output
    assert "the clusters there: alpha, beta" in done.output
    assert not two_clusters.calls("delete")


def test_the_rh_entry_point_has_the_commands_and_says_how_to_get_credentials(stand_in, tmp_path):
    rh_path = shutil.which("rh") or pytest.fail("the `rh` entry point is not installed (pip install -e .)")
    env = {**os.environ, "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "missing.json"),
           "RH_GCP_ZONE": "us-central1-a", "RH_GCP_API_ENDPOINT": stand_in.endpoint}
    helped = subprocess.run([rh_path, "--help"], capture_output=True, text=True, env=env, timeout=60,
                            check=False)
    assert helped.returncode == 0 and "gcp" in helped.stdout
    listed = subprocess.run([rh_path, "gcp", "list"], capture_output=True, text=True, env=env, timeout=60,
                            check=False)
    assert listed.returncode == 1
    assert "gcloud auth application-default login" in listed.stderr and "missing.json" in listed.stderr
    assert not stand_in.requests
