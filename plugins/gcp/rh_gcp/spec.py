"""The options of a ``gcp-direct`` cluster, checked when ``rh.cluster(...)`` is called."""

from __future__ import annotations

import re
from typing import Any

import attrs

from rh_core.errors import ProvisionError

#: Compute Engine resource names: lowercase letter first, then letters, digits and dashes. The
#: cluster name is also a label value and the prefix of instance names (``<name>-worker-12``).
NAME_PATTERN = re.compile(r"^[a-z]([-a-z0-9]{0,40}[a-z0-9])?$")
#: A VPC network's name (Compute Engine allows 63 characters).
NETWORK_PATTERN = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")

DEFAULT_IMAGE = "projects/debian-cloud/global/images/family/debian-12"
AUTOSTOP_ACTIONS = ("stop", "delete")


class GCPSpecError(ProvisionError, ValueError):
    """An option of ``rh.cluster(provider='gcp-direct', ...)`` is missing or malformed."""


def _accelerators(value: str | None) -> str | None:
    if value is None:
        return None
    name, _, count = str(value).partition(":")
    if not name or (count and not count.isdigit()) or count == "0":
        raise GCPSpecError(
            f"accelerators={value!r} is not NAME or NAME:COUNT; write it as Compute Engine names it, "
            "e.g. accelerators='nvidia-tesla-t4:1' (`gcloud compute accelerator-types list` shows them)"
        )
    return f"{name}:{count or 1}"


@attrs.frozen(kw_only=True)
class GCPSpec:
    """What ``rh.cluster(provider='gcp-direct', ...)`` launches.

    :param project: the Google Cloud project; default: the project of the application-default
        credentials (``gcloud config set project``), looked up when machines are first launched.
    :param zone: the zone of every instance (``us-central1-a``).
    :param instance_type: the machine type (``n1-standard-8``).
    :param accelerators: ``NAME:COUNT`` of GPUs per instance (``nvidia-tesla-t4:1``).
    :param use_spot: launch Spot VMs; a preempted one is stopped, and the next call restarts it.
    :param image_id: the boot image (or image family) URL.
    :param disk_size_gb: boot disk size.
    :param num_nodes: instances in the cluster: a head and ``num_nodes - 1`` workers.
    :param autostop_mins: idle minutes after which the cluster's server stops its instances (-1:
        never); at least 1, since the client checks a connection idle for a minute before using it
        again, which is what makes the next call restart stopped instances instead of failing.
    :param autostop_action: ``"stop"`` (keep disks) or ``"delete"`` when autostop fires.
    :param ssh_user: the account the generated key logs in as (GCE's guest agent creates it).
    :param ssh_port: where sshd listens on the instances.
    :param use_internal_ips: reach instances by their VPC address (from inside the VPC or a VPN).
    :param network: the VPC network of the instances (its name, in the cluster's project).
    :param create_firewall_rule: when no firewall rule of ``network`` lets SSH (``ssh_port``) in
        from anywhere, create one (``rh-gcp-ssh-PORT-NETWORK``) for instances carrying the network tag
        ``rh-gcp-ssh-PORT``; False: open the port yourself (the credentials then need no
        ``compute.firewalls.create``).
    :param api_endpoint: a Compute API endpoint other than ``https://compute.googleapis.com``
        (a Private Service Connect endpoint, or a local stand-in in tests).
    :param provider: the provisioner name the cluster was made with (kept for its saved record).
    """

    zone: str
    project: str | None = None
    instance_type: str = "n1-standard-4"
    accelerators: str | None = attrs.field(default=None, converter=_accelerators)
    use_spot: bool = False
    image_id: str = DEFAULT_IMAGE
    disk_size_gb: int = 50
    num_nodes: int = 1
    autostop_mins: float = -1
    autostop_action: str = "stop"
    ssh_user: str = "rh"
    ssh_port: int = 22
    use_internal_ips: bool = False
    network: str = "default"
    create_firewall_rule: bool = True
    api_endpoint: str | None = None
    provider: str = "gcp-direct"

    def __attrs_post_init__(self) -> None:
        if self.num_nodes < 1:
            raise GCPSpecError(f"num_nodes={self.num_nodes} must be at least 1 (the head)")
        if self.autostop_action not in AUTOSTOP_ACTIONS:
            raise GCPSpecError(f"autostop_action={self.autostop_action!r} must be one of {AUTOSTOP_ACTIONS}")
        if self.autostop_mins < 1 and self.autostop_mins != -1:
            raise GCPSpecError(
                f"autostop_mins={self.autostop_mins} must be -1 (never) or at least 1: the client rechecks a "
                "connection idle for a minute before its next call, so shorter autostops would fail that call "
                "instead of restarting the instances")
        if not NETWORK_PATTERN.match(self.network):
            raise GCPSpecError(f"network={self.network!r} is not a VPC network name (lowercase letters, digits and "
                               "dashes, e.g. network='default'; `gcloud compute networks list` shows them)")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> GCPSpec:
        """The spec from ``rh.cluster``'s keyword arguments; unknown or missing ones are named."""
        fields = {field.name for field in attrs.fields(cls)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise GCPSpecError(
                f"rh.cluster(provider='gcp-direct') does not take {', '.join(unknown)}; "
                f"it takes {', '.join(sorted(fields))}"
            )
        if not options.get("zone"):
            raise GCPSpecError("a gcp-direct cluster needs a zone, e.g. rh.cluster(..., zone='us-central1-a')")
        if options.get("autostop_mins") is None:  # as every other on-demand cluster: the config's default, else 30
            from rh_core.config import current

            options = {**options, "autostop_mins": current().default_autostop_mins}
        try:
            return cls(**options)
        except TypeError as exc:
            raise GCPSpecError(f"bad gcp-direct options: {exc}") from exc

    def to_options(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @property
    def accelerator_name(self) -> str | None:
        return self.accelerators.partition(":")[0] if self.accelerators else None

    @property
    def accelerator_count(self) -> int:
        return int(self.accelerators.partition(":")[2]) if self.accelerators else 0


def check_cluster_name(name: str) -> str:
    """``name`` when Compute Engine accepts it as an instance-name prefix and a label value."""
    if not NAME_PATTERN.match(name):
        raise GCPSpecError(
            f"cluster name {name!r} cannot name Compute Engine instances: use at most 42 lowercase letters, "
            "digits and dashes, starting with a letter and not ending with a dash (e.g. 'g1', 'train-a100')"
        )
    return name


def instance_names(cluster_name: str, num_nodes: int) -> list[str]:
    """The instances of a cluster, head first."""
    return [f"{cluster_name}-head", *(f"{cluster_name}-worker-{i}" for i in range(1, num_nodes))]
