"""Hook implementations of rh-pip: the ``pip``, ``reqs`` and ``local`` installers, and the claims
of requirement strings that carry no ``method:`` prefix."""

from __future__ import annotations

import os

from rh_core import hookimpl
from rh_core.plugin.interfaces import InstallerClaim


@hookimpl
def rh_register_installers(register):
    register("pip", "rh_pip.installers:PipInstaller")
    register("reqs", "rh_pip.installers:RequirementsInstaller")
    register("local", "rh_pip.installers:LocalInstaller")


@hookimpl
def rh_claim_requirement(requirement: str) -> InstallerClaim | None:
    """``requirements.txt`` (any existing ``*.txt`` file) goes to ``reqs``; a local folder to ``local``."""
    path = os.path.expanduser(requirement)
    if requirement.endswith(".txt") and os.path.isfile(path):
        return InstallerClaim(method="reqs", spec=path)
    if requirement.startswith((".", "/", "~")) and os.path.isdir(path):
        return InstallerClaim(method="local", spec=path)
    return None


@hookimpl(specname="rh_claim_requirement", trylast=True)
def claim_anything_else_for_pip(requirement: str) -> InstallerClaim:
    """The catch-all, asked after every other plugin: ``numpy>=2``, ``rich``, ``pkg @ url``, a wheel path."""
    return InstallerClaim(method="pip", spec=requirement)
