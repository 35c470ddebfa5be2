"""``rh sky status|stop|down|autostop``: SkyPilot's clusters on the command line.

Added to ``rh`` through the ``rh_register_commands`` hook; SkyPilot is imported only when one of
these commands runs, so ``rh --help`` stays fast.
"""

from __future__ import annotations

import json
from typing import Any

import click

from rh_core.errors import RhError
from rh_core.plugin.interfaces import ProvisionRequest


def _provisioner():
    from rh_sky.provisioner import SkyProvisioner

    return SkyProvisioner()


def _rows(records: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for record in records:
        handle = record["handle"]
        addresses = list(getattr(handle, "cached_external_ips", None) or ()) if handle is not None else []
        status = record["status"]
        rows.append({
            "name": record["name"],
            "status": getattr(status, "value", status),
            "autostop_mins": record["autostop"],
            "autodown": bool(record["to_down"]),
            "nodes": record.get("nodes"),
            "resources": record.get("resources_str"),
            "head": addresses[0] if addresses else None,
        })
    return rows


def _autostop_text(row: dict[str, Any]) -> str:
    if row["autostop_mins"] is None or row["autostop_mins"] < 0:
        return "-"
    return f"{row['autostop_mins']} min" + (" (down)" if row["autodown"] else "")


@click.group()
def sky() -> None:
    """On-demand clusters launched through SkyPilot (rh-sky)."""


@sky.command()
@click.argument("names", nargs=-1)
@click.option("--refresh", is_flag=True, help="Ask the clouds for the current state (takes seconds).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(names: tuple[str, ...], refresh: bool, as_json: bool) -> None:
    """Show SkyPilot's clusters, or those NAMES: state, autostop, machines and head address.

    Exits 1 when a cluster asked for by name does not exist.
    """
    from rh_sky.skypilot import explain, load_skypilot, result

    try:
        sdk = load_skypilot()
    except RhError as exc:
        raise click.ClickException(str(exc)) from exc
    mode = sdk.StatusRefreshMode.FORCE if refresh else sdk.StatusRefreshMode.NONE
    try:
        records = result(sdk, sdk.status(list(names) or None, refresh=mode, all_users=bool(names)))
    except Exception as exc:
        raise click.ClickException(str(explain(exc, sdk, cluster_name=", ".join(names) or "*", doing="looking up"))) from exc
    rows = _rows(records)
    missing = [name for name in names if name not in {row["name"] for row in rows}]
    if as_json:
        click.echo(json.dumps(rows + [{"name": name, "status": None} for name in missing]))
    else:
        if rows:
            click.echo(f"{'NAME':20} {'STATUS':12} {'AUTOSTOP':12} {'NODES':5}  {'HEAD':15}  RESOURCES")
        for row in rows:
            click.echo(f"{row['name']:20} {row['status']:12} {_autostop_text(row):12} {row['nodes'] or '':<5}  "
                       f"{row['head'] or '-':15}  {row['resources'] or ''}")
        if not rows and not names:
            click.echo("SkyPilot has no clusters")
        for name in missing:
            click.echo(f"{name}: SkyPilot has no such cluster", err=True)
    if missing:
        raise SystemExit(1)


@sky.command()
@click.argument("names", nargs=-1, required=True)
def stop(names: tuple[str, ...]) -> None:
    """Stop clusters, keeping their disks; a call or `cluster.up()` restarts them."""
    _each(names, lambda request: _provisioner().stop(request), "stopped")


@sky.command()
@click.argument("names", nargs=-1)
@click.option("--all", "-a", "everything", is_flag=True, help="Tear down every cluster SkyPilot lists.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def down(names: tuple[str, ...], everything: bool, yes: bool) -> None:
    """Tear clusters down (NAMES, or --all of SkyPilot's): their machines and disks are deleted."""
    if bool(names) == everything:
        raise click.UsageError("name the clusters to tear down, or pass --all (not both)")
    if everything:
        from rh_sky.skypilot import load_skypilot, result

        try:
            sdk = load_skypilot()
            names = tuple(row["name"] for row in _rows(result(sdk, sdk.status(None, refresh=sdk.StatusRefreshMode.NONE))))
        except RhError as exc:
            raise click.ClickException(str(exc)) from exc
        if not names:
            click.echo("SkyPilot has no clusters")
            return
    if not yes:
        click.confirm(f"Tear down {', '.join(names)}? Their machines and disks are deleted", abort=True)
    _each(names, lambda request: _provisioner().down(request), "down")


def _each(names: tuple[str, ...], action, done: str) -> None:
    """``action`` on each named cluster in turn, saying ``NAME: done`` after each; the first
    failure ends the command with its message."""
    for name in names:
        try:
            action(ProvisionRequest(cluster_name=name))  # all SkyPilot needs: the name
        except RhError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"{name}: {done}")


@sky.command()
@click.argument("name")
@click.option("--idle-minutes", "-i", "minutes", type=int, default=30, show_default=True,
              help="Stop the cluster after this many idle minutes; -1 cancels autostop.")
def autostop(name: str, minutes: int) -> None:
    """Set when a running cluster stops by itself: after MINUTES without calls (-1: never)."""
    try:
        _provisioner().set_autostop(ProvisionRequest(cluster_name=name), minutes)
    except RhError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{name}: autostop cancelled" if minutes < 0 else f"{name}: stops after {minutes} idle minutes")
