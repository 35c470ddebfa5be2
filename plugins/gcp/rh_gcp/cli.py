"""``rh gcp list|stop|down``: gcp-direct clusters on the command line, found by their labels.

Added to ``rh`` through the ``rh_register_commands`` hook; the Google client libraries are imported
only when one of these commands runs, so ``rh --help`` stays fast. A cluster is the instances
labelled ``rh-cluster=NAME`` in one project and zone, so every command takes ``--zone`` (or
``RH_GCP_ZONE``) and ``--project`` (default: the credentials' project).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from rh_core.errors import RhError
from rh_core.plugin.interfaces import ProvisionRequest


def _where(function: Callable[..., Any]) -> Callable[..., Any]:
    function = click.option("--api-endpoint", envvar="RH_GCP_API_ENDPOINT", default=None,
                            help="Another Compute API endpoint (Private Service Connect).")(function)
    function = click.option("--project", envvar="RH_GCP_PROJECT", default=None,
                            help="The project [default: the credentials' project].")(function)
    return click.option("--zone", envvar="RH_GCP_ZONE", required=True, help="The zone, e.g. us-central1-a.")(function)


def _api(zone: str, project: str | None, api_endpoint: str | None):
    from rh_gcp.compute import ComputeAPI

    try:
        return ComputeAPI(project=project, zone=zone, api_endpoint=api_endpoint)
    except RhError as exc:
        raise click.ClickException(str(exc)) from exc


def _rows(instances: list[Any], zone: str) -> list[dict[str, Any]]:
    from rh_gcp.provisioner import AUTOSTOP_KEYS, CLUSTER_LABEL

    rows = []
    for instance in instances:
        metadata = {item.key: item.value for item in instance.metadata.items}
        interface = instance.network_interfaces[0] if instance.network_interfaces else None
        external = [config.nat_i_p for config in interface.access_configs if config.nat_i_p] if interface else []
        rows.append({
            "cluster": instance.labels.get(CLUSTER_LABEL),
            "instance": instance.name,
            "role": instance.labels.get("rh-role"),
            "zone": zone,
            "status": instance.status,
            "spot": instance.scheduling.provisioning_model == "SPOT",
            "address": external[0] if external else (interface.network_i_p if interface else None),
            "autostop_mins": float(metadata[AUTOSTOP_KEYS[0]]) if AUTOSTOP_KEYS[0] in metadata else None,
        })
    return sorted(rows, key=lambda row: (row["cluster"] or "", row["role"] != "head", row["instance"]))


def _names_in(api: Any) -> list[str]:
    from rh_gcp.provisioner import CLUSTER_LABEL

    return sorted({instance.labels[CLUSTER_LABEL] for instance in api.list(f"labels.{CLUSTER_LABEL}:*")})


@click.group()
def gcp() -> None:
    """Clusters launched straight through the Compute Engine API (rh-gcp, provider='gcp-direct')."""


@gcp.command(name="list")
@_where
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_command(zone: str, project: str | None, api_endpoint: str | None, as_json: bool) -> None:
    """Show the instances of gcp-direct clusters in a zone: cluster, status, Spot, address, autostop."""
    from rh_gcp.provisioner import CLUSTER_LABEL

    api = _api(zone, project, api_endpoint)
    try:
        rows = _rows(api.list(f"labels.{CLUSTER_LABEL}:*"), zone)
    except RhError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo(f"no gcp-direct clusters in project {api.project!r}, zone {zone!r}")
        return
    click.echo(f"{'CLUSTER':20} {'INSTANCE':28} {'ZONE':16} {'STATUS':11} {'SPOT':4}  {'ADDRESS':15}  AUTOSTOP")
    for row in rows:
        autostop = row["autostop_mins"]
        autostop_text = "-" if autostop is None or autostop < 0 else f"{autostop:g} min"
        click.echo(f"{row['cluster']:20} {row['instance']:28} {row['zone']:16} {row['status']:11} "
                   f"{'yes' if row['spot'] else '-':4}  {row['address'] or '-':15}  "
                   f"{autostop_text if row['role'] == 'head' else ''}")


def _each_cluster(names: tuple[str, ...], zone: str, project: str | None, api_endpoint: str | None,
                  action: Callable[[Any, ProvisionRequest], None], done: str) -> None:
    from rh_gcp.provisioner import GCPProvisioner

    api = _api(zone, project, api_endpoint)
    provisioner = GCPProvisioner()
    try:
        existing = _names_in(api)
        missing = [name for name in names if name not in existing]
        if missing:
            raise click.ClickException(
                f"no instances of cluster {', '.join(map(repr, missing))} in project {api.project!r}, zone {zone!r}; "
                f"the clusters there: {', '.join(existing) or 'none'} (`rh gcp list --zone {zone}`)")
        for name in names:
            # What the provisioner needs to stop or delete a cluster: its name and where it is.
            where = {"zone": zone, "project": api.project, "api_endpoint": api_endpoint}
            action(provisioner, ProvisionRequest(cluster_name=name, spec=where))
            click.echo(f"{name}: {done}")
    except RhError as exc:
        raise click.ClickException(str(exc)) from exc


@gcp.command()
@click.argument("names", nargs=-1, required=True)
@_where
def stop(names: tuple[str, ...], zone: str, project: str | None, api_endpoint: str | None) -> None:
    """Stop clusters' instances, keeping their disks; a call or `cluster.up()` starts them again."""
    _each_cluster(names, zone, project, api_endpoint, lambda provisioner, request: provisioner.stop(request),
                  "stopped")


@gcp.command()
@click.argument("names", nargs=-1, required=True)
@_where
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def down(names: tuple[str, ...], zone: str, project: str | None, api_endpoint: str | None, yes: bool) -> None:
    """Delete clusters' instances and their boot disks."""
    if not yes:
        click.confirm(f"Delete the instances of {', '.join(names)} in zone {zone}, with their disks?", abort=True)
    _each_cluster(names, zone, project, api_endpoint, lambda provisioner, request: provisioner.down(request), "down")
