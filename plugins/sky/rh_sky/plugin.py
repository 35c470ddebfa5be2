"""The rh-sky plugin's hooks. Nothing here imports SkyPilot: it is imported on first use."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rh_core import hookimpl

from rh_sky.presets import PRESETS
from rh_sky.spec import ANY_CLOUD, CLOUDS

if TYPE_CHECKING:
    import click


@hookimpl
def rh_register_provisioners(register: Callable[..., None]) -> None:
    # provider='gcp' (any cloud SkyPilot knows) or 'cheapest' names this provisioner.
    register("sky", "rh_sky.provisioner:SkyProvisioner", aliases=tuple(n for n in ANY_CLOUD + CLOUDS if n != "sky"))


@hookimpl
def rh_register_cluster_presets(register: Callable[..., None]) -> None:
    for name, options in PRESETS.items():
        register(name, options)


@hookimpl
def rh_register_commands(cli: click.Group) -> None:
    from rh_sky.cli import sky

    cli.add_command(sky)


@hookimpl
def rh_cluster_ready(cluster: Any, info: dict[str, Any]) -> None:
    if getattr(cluster, "provisioned_by", None) is None:
        return  # not a provisioned cluster (rh.here): nothing to watch, and nothing to import for it
    from rh_sky.activity import is_sky_cluster, watch_activity

    if is_sky_cluster(cluster):
        watch_activity(cluster, info)
