"""The ``rh`` command line. Plugins add commands through the ``rh_register_commands`` hook."""

from __future__ import annotations

import json
import sys

import click

from rh_core.plugins import PluginHost


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rh-core", prog_name="rh")
def cli() -> None:
    """Send Python functions to local or remote clusters."""


@cli.group()
def server() -> None:
    """The local cluster's server (rh.here)."""


def _local(executor: str | None = None, workers: int | None = None):
    from rh_core.cluster import LocalCluster

    options = {"num_workers": workers} if workers else {}
    return LocalCluster(executor=executor, executor_options=options)


@server.command()
@click.option("--executor", default=None, help="executor to start with (default: process)")
@click.option("--workers", type=int, default=None, help="worker processes for the process executor")
def start(executor: str | None, workers: int | None) -> None:
    """Start the local server, or report the one already running."""
    cluster = _local(executor, workers)
    info = cluster.status()
    click.echo(f"server running: pid {info['pid']}, port {info['port']}, executor {info['executor']}")


@server.command()
def stop() -> None:
    """Stop the local server."""
    if _local().stop_server():
        click.echo("server stopped")
    else:
        click.echo("no server was running")


@server.command()
@click.option("--executor", default=None, help="executor to restart with (default: the running one)")
def restart(executor: str | None) -> None:
    """Restart the local server (results it holds are lost)."""
    cluster = _local()
    state = cluster.read_state()
    cluster.stop_server()
    cluster = _local(executor or (state or {}).get("executor"))
    info = cluster.status()
    click.echo(f"server running: pid {info['pid']}, port {info['port']}, executor {info['executor']}")


@server.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(as_json: bool) -> None:
    """Show the local server's state; exits 1 when none runs."""
    cluster = _local()
    state = cluster.read_state()
    if state is None:
        message = {"running": False, "state_dir": cluster.state_dir, "log": cluster.log_file}
        click.echo(json.dumps(message) if as_json else
                   f"no server running (state dir {cluster.state_dir}; last log: {cluster.log_file})")
        sys.exit(1)
    info = cluster.status()
    if as_json:
        click.echo(json.dumps({"running": True, **info}))
        return
    for key in ("pid", "port", "version", "python", "executor", "parallelism", "calls", "state_dir"):
        click.echo(f"{key:12} {info.get(key)}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def plugins(as_json: bool) -> None:
    """List installed plugins, their versions and hooks, and any that failed to load."""
    rows = PluginHost().plugins()
    if as_json:
        click.echo(json.dumps([{"name": r.name, "distribution": r.distribution, "version": r.version,
                                "hooks": list(r.hooks), "error": r.error} for r in rows]))
        return
    for row in rows:
        click.echo(f"{row.name}  ({row.distribution} {row.version})")
        if row.error:
            click.echo(f"    FAILED TO LOAD: {row.error}")
        for hook in row.hooks:
            click.echo(f"    {hook}")


def main() -> None:
    PluginHost().add_commands(cli)
    cli()


if __name__ == "__main__":
    main()
