"""Hook implementations of rh-git: the ``git`` installer, and the claim of ``git+URL[@REV]`` strings."""

from __future__ import annotations

from rh_core import hookimpl
from rh_core.plugin.interfaces import InstallerClaim


@hookimpl
def rh_register_installers(register):
    register("git", "rh_git.installer:GitInstaller")


@hookimpl
def rh_claim_requirement(requirement: str) -> InstallerClaim | None:
    """``git+https://...``, ``git+ssh://...``, ``git+git://...``, ``git+file://...`` (pip's form;
    ``name @ git+...`` stays with pip)."""
    if requirement.startswith("git+"):
        return InstallerClaim(method="git", spec=requirement)
    return None
