"""The rh-byo-ssh plugin's hooks: registers the ``ssh`` transport without importing paramiko."""

from __future__ import annotations

import sys
from collections.abc import Callable

from rh_core import hookimpl


@hookimpl
def rh_register_transports(register: Callable[..., None]) -> None:
    # A "module:attribute" string, so paramiko is imported only when an ssh transport is first used.
    register("ssh", "rh_byo_ssh.transport:SSHTransport")


@hookimpl
def rh_register_provisioners(register: Callable[..., None]) -> None:
    # rh.cluster(ips=[...], ssh_creds=...) names no provider: it means the machines given by address.
    register("byo", "rh_byo_ssh.provisioner:ByoProvisioner", claims_keywords=("ips",))


@hookimpl
def rh_cluster_ready(cluster, info) -> None:
    """Keep ``ssh CLUSTER_NAME`` working: write the cluster's generated ssh config entry."""
    transport = getattr(cluster, "open_transport", None)  # remote clusters have one; rh.here does not
    # An SSHTransport exists only once its module has been imported: looking there, not importing
    # it, keeps paramiko (about 0.2 s) off the first call of every process that never used ssh.
    transport_module = sys.modules.get("rh_byo_ssh.transport")
    if transport_module is None or not isinstance(transport, transport_module.SSHTransport):
        return  # not reached through this plugin's transport
    from rh_byo_ssh import ssh_config

    ssh_config.write_entry(cluster.name, transport.ssh_config_entry(cluster.name))
    ssh_config.offer_include()


@hookimpl
def rh_register_commands(cli) -> None:
    import click

    @cli.command(name="ssh-config")
    @click.option("--include", "action", flag_value="include", help="Add the Include line to ~/.ssh/config.")
    @click.option("--remove", "action", flag_value="remove", help="Remove the Include line rh added.")
    def ssh_config_command(action):
        """Show or change how plain `ssh CLUSTER_NAME` reaches rh clusters (asks on a terminal)."""
        import sys

        from rh_byo_ssh import ssh_config

        if action is None and sys.stdin.isatty():
            ssh_config.ask_include(lambda question: click.confirm(question, default=False))
        elif action == "include":
            ssh_config.add_include()
        elif action == "remove":
            ssh_config.remove_include()
        state = "included" if ssh_config.is_included() else "not included"
        click.echo(f"{ssh_config.include_line()}: {state} in {ssh_config.user_config_path()}")
