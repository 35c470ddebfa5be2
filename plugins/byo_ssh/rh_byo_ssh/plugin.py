"""The rh-byo-ssh plugin's hooks: registers the ``ssh`` transport without importing paramiko."""

from __future__ import annotations

from collections.abc import Callable

from rh_core import hookimpl


@hookimpl
def rh_register_transports(register: Callable[..., None]) -> None:
    # A "module:attribute" string, so paramiko is imported only when an ssh transport is first used.
    register("ssh", "rh_byo_ssh.transport:SSHTransport")


@hookimpl
def rh_register_provisioners(register: Callable[..., None]) -> None:
    register("byo", "rh_byo_ssh.provisioner:ByoProvisioner")
