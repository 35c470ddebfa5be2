"""The rh-gcp plugin's hooks. Nothing here imports the Google client libraries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rh_core import hookimpl


@hookimpl
def rh_register_provisioners(register: Callable[..., None]) -> None:
    # Not "gcp": rh-sky registers that name for SkyPilot's GCP; this one talks to the Compute API itself.
    register("gcp-direct", "rh_gcp.provisioner:GCPProvisioner")


@hookimpl
def rh_register_commands(cli: Any) -> None:
    from rh_gcp.cli import gcp

    cli.add_command(gcp)


@hookimpl
def rh_cluster_ready(cluster: Any, info: dict[str, Any]) -> None:
    if getattr(cluster, "provisioned_by", None) is None:
        return  # not a provisioned cluster (rh.here): nothing to watch, and nothing to import for it
    from rh_gcp.autostop import is_gcp_cluster, start_idle_watcher

    if is_gcp_cluster(cluster):
        start_idle_watcher(cluster, info)
