"""The firewall rule that lets SSH reach gcp-direct instances, and the network they join, against
the Compute API stand-in through the real google-cloud-compute client."""

from __future__ import annotations

import pytest

import rh_core as rh

from rh_gcp.compute import GCPCredentialsError, GCPError
from rh_gcp.provisioner import GCPProvisioner, firewall_rule_name
from rh_gcp.spec import GCPSpecError

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def provisioner(anonymous) -> GCPProvisioner:
    return GCPProvisioner()


def test_up_opens_the_ssh_port_once_per_network_for_instances_with_the_tag_and_down_leaves_it(
        provisioner, stand_in, options, sshd):
    port, tag = sshd.port, f"rh-gcp-ssh-{sshd.port}"
    first, second = (rh.cluster(name=name, **options()).provision_request() for name in ("fw1", "fw2"))
    provisioner.up(first)

    (insert,) = stand_in.calls("firewalls.insert")
    assert insert.body == {
        "name": f"rh-gcp-ssh-{port}-default", "network": "projects/test-project/global/networks/default",
        "direction": "INGRESS", "priority": 1000, "sourceRanges": ["0.0.0.0/0"], "targetTags": [tag],
        "allowed": [{"IPProtocol": "tcp", "ports": [str(port)]}],
        "description": f"rh-gcp: SSH (tcp:{port}) to instances tagged {tag}, for rh_core clusters"}
    assert stand_in.instance("fw1-head")["tags"] == {"items": [tag]}
    assert stand_in.instance("fw1-head")["networkInterfaces"][0]["network"].endswith("/global/networks/default")
    assert list(stand_in.firewalls) == [("test-project", f"rh-gcp-ssh-{port}-default")]

    provisioner.up(second)  # the rule is there: it is not created again
    provisioner.up(first)  # a cluster already running does not even look
    assert len(stand_in.calls("firewalls.insert")) == 1 and len(stand_in.calls("firewalls.list")) == 2

    provisioner.down(first)
    provisioner.down(second)
    assert not stand_in.calls("firewalls.delete")  # left on purpose (see rh_gcp.provisioner)
    assert list(stand_in.firewalls) == [("test-project", f"rh-gcp-ssh-{port}-default")]


@pytest.mark.parametrize(("rule", "counts"), [
    ({"ports": ("{port}",)}, True),  # like the console's default-allow-ssh, for every instance
    ({"ports": ("1-65535",), "target_tags": ("rh-gcp-ssh-{port}",)}, True),
    ({"ports": ("{port}",), "source_ranges": ("10.0.0.0/8",)}, False),  # not from anywhere
    ({"ports": ("{port}",), "target_tags": ("web",)}, False),  # other instances
    ({"ports": ("443",)}, False),
    ({"ports": ("{port}",), "network": "other"}, False),
])
def test_a_rule_that_already_lets_ssh_in_is_used_instead(provisioner, stand_in, options, sshd, rule, counts):
    stand_in.networks = ("default", "other")
    given = {key: tuple(value.format(port=sshd.port) for value in values) if isinstance(values, tuple) else values
             for key, values in rule.items()}
    stand_in.add_firewall("existing", **given)
    provisioner.up(rh.cluster(name="fw3", **options()).provision_request())
    assert len(stand_in.calls("firewalls.insert")) == (0 if counts else 1)


def test_a_rule_created_meanwhile_by_another_client_counts(provisioner, stand_in, options):
    stand_in.fail_next("firewalls.insert", 409, "The resource 'projects/test-project/global/firewalls/x' already "
                       "exists", "alreadyExists")
    info = provisioner.up(rh.cluster(name="fw4", **options()).provision_request())
    assert info.head == "127.0.0.1" and len(stand_in.calls("firewalls.insert")) == 1


def test_without_create_firewall_rule_the_firewall_is_not_touched(provisioner, stand_in, options):
    provisioner.up(rh.cluster(name="fw5", **options(create_firewall_rule=False)).provision_request())
    assert not stand_in.calls("firewalls.list") and not stand_in.calls("firewalls.insert")


def test_a_network_that_does_not_exist_is_named_with_the_fix(provisioner, stand_in, options):
    stand_in.networks = ("default", "vpc-a")
    with pytest.raises(GCPError) as caught:
        provisioner.up(rh.cluster(name="fw6", **options(network="missing")).provision_request())
    message = str(caught.value)
    assert "network 'missing' does not exist in project 'test-project' (its networks: default, vpc-a)" in message
    assert "network=NAME" in message and "gcloud compute networks create missing" in message
    assert not stand_in.calls("insert") and not stand_in.calls("firewalls.insert")


def test_no_permission_to_create_the_rule_says_which_and_how_to_do_without(provisioner, stand_in, options, sshd):
    stand_in.fail_next("firewalls.insert", 403, "Required 'compute.firewalls.create' permission for "
                       f"'projects/test-project/global/firewalls/rh-gcp-ssh-{sshd.port}-default'", "forbidden")
    with pytest.raises(GCPCredentialsError) as caught:
        provisioner.up(rh.cluster(name="fw7", **options()).provision_request())
    message = str(caught.value)
    assert f"creating firewall rule rh-gcp-ssh-{sshd.port}-default" in message
    assert "Compute Security Admin" in message and "create_firewall_rule=False" in message
    assert not stand_in.instances  # nothing was launched that SSH could not reach


def test_rule_names_fit_compute_engines_limit():
    assert firewall_rule_name("default", 22) == "rh-gcp-ssh-22-default"
    long = firewall_rule_name("n" * 63, 2222)
    assert len(long) == 63 and long != firewall_rule_name("n" * 62 + "m", 2222)


def test_a_malformed_network_name_is_refused_when_the_cluster_is_made():
    with pytest.raises(GCPSpecError, match="network='My_Net' is not a VPC network name"):
        rh.cluster(name="fw8", provider="gcp-direct", zone="us-central1-a", network="My_Net")


def test_the_compute_apis_errors_are_provision_errors(provisioner, stand_in, options):
    stand_in.networks = ("default",)
    with pytest.raises(rh.ProvisionError) as caught:  # what a caller catches without knowing the provider
        provisioner.up(rh.cluster(name="fw9", **options(network="missing")).provision_request())
    assert isinstance(caught.value, GCPError)
    with pytest.raises(rh.ProvisionError) as caught:
        rh.cluster(name="fw10", provider="gcp-direct", zone="us-central1-a", network="My_Net")
    assert isinstance(caught.value, GCPSpecError) and isinstance(caught.value, ValueError)
