"""The spec of an on-demand cluster, checked without SkyPilot, and turned into SkyPilot's Task.

``rh.cluster(name=..., instance_type='A100:4', provider='gcp', ...)`` stores its options in the
cluster's spec dict; :meth:`SkySpec.from_options` checks them when the cluster is created (cheap:
SkyPilot is not imported), and :meth:`SkySpec.task` builds SkyPilot's ``Task`` and ``Resources``
when the cluster is launched, which is where SkyPilot judges accelerators, regions and images.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

import attrs

from rh_core.errors import ProvisionError

if TYPE_CHECKING:
    from types import ModuleType

DEFAULT_AUTOSTOP_MINS = 30
DEFAULT_ACTIVITY_CHECK_SECONDS = 30.0

#: ``provider=`` values that leave the choice of cloud to SkyPilot's optimizer (the cheapest one
#: enabled in ``sky check``).
ANY_CLOUD = ("sky", "cheapest")

#: The clouds of SkyPilot 0.14 (``sky.utils.registry.CLOUD_REGISTRY`` and its aliases), each a
#: ``provider=`` name of this plugin. SkyPilot's "ssh" node pools are left out: the name would read
#: as the ssh transport, and they are not clouds that launch machines.
CLOUDS = (
    "aws", "azure", "cudo", "do", "digitalocean", "fluidstack", "gcp", "hyperbolic", "ibm", "k8s",
    "kubernetes", "lambda", "mithril", "nebius", "oci", "paperspace", "primeintellect", "runpod", "scp",
    "seeweb", "shadeform", "slurm", "vast", "verda", "vsphere", "yotta",
)


#: The regions of the clouds whose names people mix up most (the spec's own snippet pairs
#: provider="gcp" with AWS's "us-east-1"), checked before anything is launched. Other clouds' regions
#: are left to SkyPilot, which checks them against its catalog at launch.
REGIONS = {
    "gcp": (
        "africa-south1", "asia-east1", "asia-east2", "asia-northeast1", "asia-northeast2", "asia-northeast3",
        "asia-south1", "asia-south2", "asia-southeast1", "asia-southeast2", "australia-southeast1",
        "australia-southeast2", "europe-central2", "europe-north1", "europe-north2", "europe-southwest1",
        "europe-west1", "europe-west2", "europe-west3", "europe-west4", "europe-west6", "europe-west8",
        "europe-west9", "europe-west10", "europe-west12", "me-central1", "me-central2", "me-west1",
        "northamerica-northeast1", "northamerica-northeast2", "northamerica-south1", "southamerica-east1",
        "southamerica-west1", "us-central1", "us-east1", "us-east4", "us-east5", "us-south1", "us-west1",
        "us-west2", "us-west3", "us-west4",
    ),
    "aws": (
        "af-south-1", "ap-east-1", "ap-east-2", "ap-northeast-1", "ap-northeast-2", "ap-northeast-3",
        "ap-south-1", "ap-south-2", "ap-southeast-1", "ap-southeast-2", "ap-southeast-3", "ap-southeast-4",
        "ap-southeast-5", "ap-southeast-7", "ca-central-1", "ca-west-1", "eu-central-1", "eu-central-2",
        "eu-north-1", "eu-south-1", "eu-south-2", "eu-west-1", "eu-west-2", "eu-west-3", "il-central-1",
        "me-central-1", "me-south-1", "mx-central-1", "sa-east-1", "us-east-1", "us-east-2", "us-gov-east-1",
        "us-gov-west-1", "us-west-1", "us-west-2",
    ),
}


class SkySpecError(ProvisionError, ValueError):
    """An on-demand cluster's options are wrong; the message names the option and what to pass."""


def _positive(name: str, minimum: float):
    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        if value is not None and value < minimum:
            raise SkySpecError(f"{name}={value!r} is out of range; it must be at least {minimum}")

    return check


def _whole_number(name: str):
    def convert(value: Any) -> int | None:
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise SkySpecError(f"{name}={value!r} must be a whole number")

    return convert


@attrs.frozen(kw_only=True)
class SkySpec:
    """What to launch. Every field is an ``rh.cluster`` keyword argument of the same name.

    :param provider: a cloud SkyPilot knows (``"aws"``, ``"gcp"``, ``"kubernetes"``, ...), or
        ``"cheapest"`` to let SkyPilot pick the cheapest enabled cloud.
    :param instance_type: ``"A100:4"`` (accelerator and count), ``"CPU:8"`` or ``"CPU:8+"`` (vCPUs),
        or a cloud's own instance type such as ``"g5.2xlarge"``. ``None``: SkyPilot's default machine.
    :param num_nodes: machines in the cluster; the first is the head.
    :param region: the cloud's region (``"us-east-1"``); ``None`` lets SkyPilot choose.
    :param zone: a zone within ``region``.
    :param use_spot: spot (preemptible) machines; the account needs spot quota.
    :param image_id: a machine image (an AMI, a GCP image, ``docker:<image>``).
    :param disk_size: the boot disk in GB.
    :param autostop_mins: stop the machines after this many idle minutes; ``-1`` never.
    :param activity_check_seconds: how often the head checks whether calls arrived, to reset
        SkyPilot's idle timer.
    """

    provider: str = "cheapest"
    instance_type: str | None = None
    num_nodes: int = attrs.field(default=1, converter=_whole_number("num_nodes"),
                                 validator=_positive("num_nodes", 1))
    region: str | None = None
    zone: str | None = None
    use_spot: bool = False
    image_id: str | None = None
    disk_size: int | None = attrs.field(default=None, converter=_whole_number("disk_size"),
                                        validator=_positive("disk_size", 1))
    autostop_mins: int = attrs.field(default=DEFAULT_AUTOSTOP_MINS, converter=_whole_number("autostop_mins"),
                                     validator=_positive("autostop_mins", -1))
    activity_check_seconds: float = attrs.field(default=DEFAULT_ACTIVITY_CHECK_SECONDS,
                                                validator=_positive("activity_check_seconds", 1))

    def __attrs_post_init__(self) -> None:
        if self.provider not in ANY_CLOUD + CLOUDS:
            raise SkySpecError(
                f"provider={self.provider!r} is not a cloud SkyPilot knows; valid providers: "
                f"{', '.join(ANY_CLOUD + CLOUDS)}"
            )
        if self.zone and not self.region:
            raise SkySpecError(f"zone={self.zone!r} needs the region it is in: pass region= as well")
        known = REGIONS.get(self.provider)
        if self.region and known and self.region not in known:
            other = next((cloud for cloud, regions in REGIONS.items() if self.region in regions), None)
            near = difflib.get_close_matches(self.region, known, n=3, cutoff=0.6)
            raise SkySpecError(
                f"region={self.region!r} is not a region of {self.provider}"
                + (f" (it is one of {other}'s)" if other else "")
                + (f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else "")
                + f"; {self.provider}'s regions: {', '.join(known)}")
        if not isinstance(self.use_spot, bool):
            raise SkySpecError(f"use_spot={self.use_spot!r} must be True or False")
        if self.instance_type is not None:
            if not isinstance(self.instance_type, str):
                raise SkySpecError(f"instance_type={self.instance_type!r} must be a string such as 'A100:4'")
            name, _, count = self.instance_type.partition(":")
            if not name or (self.instance_type.count(":") > 1):
                raise SkySpecError(
                    f"instance_type={self.instance_type!r} is not understood; write an accelerator and "
                    "count ('A100:4'), vCPUs ('CPU:8' or 'CPU:8+'), or a cloud instance type ('g5.2xlarge')"
                )
            if ":" in self.instance_type and not count.rstrip("+").replace(".", "", 1).isdigit():
                raise SkySpecError(
                    f"instance_type={self.instance_type!r}: the count after ':' must be a number, "
                    "as in 'A100:4' or 'CPU:8+'"
                )

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "SkySpec":
        """The spec of ``rh.cluster(**options)``; unknown options are named with the valid ones.

        ``autostop_mins`` defaults to ``default_autostop_mins`` in ``~/.rh/config.yaml``, else 30.
        """
        valid = [field.name for field in attrs.fields(cls)]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise SkySpecError(
                f"unknown option(s) {', '.join(unknown)} for an on-demand cluster; valid options: {', '.join(valid)}"
            )
        given = {key: value for key, value in options.items() if value is not None}
        if "autostop_mins" not in given:
            given["autostop_mins"] = configured_default_autostop_mins()
        try:
            return cls(**given)
        except SkySpecError:
            raise
        except (TypeError, ValueError) as exc:  # attrs' own checks, e.g. a value of the wrong type
            raise SkySpecError(f"on-demand cluster options {given}: {exc}") from exc

    def to_options(self) -> dict[str, Any]:
        """The JSON-safe options this spec was made from (defaults filled in), for the cluster's spec."""
        return attrs.asdict(self)

    @property
    def cloud(self) -> str | None:
        """The cloud asked for, or None when SkyPilot chooses."""
        return None if self.provider in ANY_CLOUD else self.provider

    @property
    def infra(self) -> str | None:
        """SkyPilot's ``infra`` string: ``cloud[/region[/zone]]``, with ``*`` for any cloud."""
        parts = [self.cloud or "*", self.region, self.zone]
        parts = [part for part in parts if part]
        return None if parts == ["*"] else "/".join(parts)

    def resources_options(self) -> dict[str, Any]:
        """The keyword arguments of ``sky.Resources`` for this spec."""
        options: dict[str, Any] = {}
        if self.infra:
            options["infra"] = self.infra
        if self.instance_type:
            name, colon, count = self.instance_type.partition(":")
            if colon and name.lower() == "cpu":
                options["cpus"] = count
            elif colon:
                options["accelerators"] = self.instance_type
            else:
                options["instance_type"] = self.instance_type
        if self.use_spot:
            options["use_spot"] = True
        if self.image_id:
            options["image_id"] = self.image_id
        if self.disk_size:
            options["disk_size"] = self.disk_size
        return options

    def task(self, sky: ModuleType, cluster_name: str) -> Any:
        """SkyPilot's ``Task`` that launches this cluster: no setup and no run command, so SkyPilot
        only provisions the machines (and queues no job, which would count against its idle timer)."""
        task = sky.Task(name=cluster_name, num_nodes=self.num_nodes)
        task.set_resources(sky.Resources(**self.resources_options()))
        return task


def configured_default_autostop_mins() -> int:
    """``default_autostop_mins`` of the user's config (``~/.rh/config.yaml``; 30 when unset)."""
    from rh_core.config import current

    return current().default_autostop_mins
