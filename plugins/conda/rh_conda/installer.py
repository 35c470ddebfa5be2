"""The ``conda`` installer: conda packages into the environment's conda prefix on the cluster
(``<env root>/conda``, whose ``bin`` the environment's processes then have on their PATH).

``prepare`` (client) parses the requirement and its channels (see :mod:`rh_conda.request`).
``resolve`` and ``install`` (cluster server) go through a backend: the conda CLI the cluster has
on PATH (:mod:`rh_conda.cli_backend`), else py-rattler (:mod:`rh_conda.rattler_backend`); the
package option ``tool`` (``"rattler"``, ``"conda"``, ``"mamba"``, ``"micromamba"`` or a path)
chooses one explicitly. The identity of a step is the package records it resolves to
(``name-version-build``), so a repeated request with an unchanged channel does nothing.
"""

from __future__ import annotations

import os
import shutil
import urllib.parse
from typing import TYPE_CHECKING, Protocol

from rh_conda.request import CondaRequest, SolveFailed, env_label, parse
from rh_core.errors import InstallError
from rh_core.plugin.interfaces import Environment, InstallerClaim, InstallStep

if TYPE_CHECKING:
    from rh_core.clusters.base import Cluster

PACKAGE_OPTIONS = ("channels", "tool")


class Backend(Protocol):
    name: str

    def solve(self, step: InstallStep, env: Environment, request: CondaRequest) -> list[str]:
        """``name-version-build`` of every package ``request`` needs; raise SolveFailed if none fit."""

    def install(self, step: InstallStep, env: Environment, request: CondaRequest) -> None:
        """Install ``request`` into ``env.conda_prefix``, keeping what is there."""


class CondaInstaller:
    """``conda:[CHANNEL::]SPEC``; package options ``channels`` and ``tool`` (see the module docstring)."""

    def prepare(self, cluster: Cluster | None, claim: InstallerClaim) -> InstallStep:
        """Parse the spec and channels (no cluster needed: channels are used as the cluster sees them)."""
        unknown = sorted(set(claim.options) - set(PACKAGE_OPTIONS))
        if unknown:
            raise InstallError(f"conda package {claim.spec!r} got unknown options {unknown}; "
                               f"the conda install method takes {list(PACKAGE_OPTIONS)}")
        request = parse(claim.spec, claim.options)
        options = {**request.to_options(), "tool": claim.options.get("tool") or "auto"}
        return InstallStep(method="conda", spec=request.spec, requirement=f"conda:{claim.spec}", options=options)

    def resolve(self, step: InstallStep, env: Environment) -> str:
        request = CondaRequest.from_step(step.spec, step.options)
        _check_file_channels(step, request)
        backend = choose_backend(step)
        try:
            records = backend.solve(step, env, request)
        except SolveFailed as exc:
            raise _no_solution(step, env, request, backend, exc) from exc
        if not records:
            raise InstallError(f"{backend.name} resolved conda package {step.requirement!r} to no package at all; "
                               f"check the spec against the channels {', '.join(request.channels)}")
        return "conda:" + " ".join(records)

    def install(self, step: InstallStep, env: Environment) -> None:
        request = CondaRequest.from_step(step.spec, step.options)
        backend = choose_backend(step)
        try:
            backend.install(step, env, request)
        except SolveFailed as exc:  # the new package conflicts with what the environment already holds
            raise _no_solution(step, env, request, backend, exc) from exc

    def slot(self, step: InstallStep) -> str:
        """The package name: another version of it replaces this one in the prefix."""
        from rh_conda.request import package_name

        return "conda:" + package_name(step.spec)


def choose_backend(step: InstallStep) -> Backend:
    """The ``tool`` option's backend; for ``auto``, a conda CLI on PATH, else py-rattler."""
    from rh_conda.cli_backend import CLI_NAMES, CliBackend, find_cli
    from rh_conda.rattler_backend import RattlerBackend

    tool = step.options.get("tool") or "auto"
    if tool == "rattler":
        return RattlerBackend()
    if tool == "auto":
        found = find_cli()
        return CliBackend(found) if found else RattlerBackend()
    executable = shutil.which(tool)
    if executable is None:
        raise InstallError(
            f"conda package {step.requirement!r} asks for tool={tool!r}, which is not on the cluster's PATH; "
            f"install it there, or use tool='auto' ({', '.join(CLI_NAMES)} when found, else py-rattler) or 'rattler'"
        )
    return CliBackend(executable)


def _check_file_channels(step: InstallStep, request: CondaRequest) -> None:
    for channel in request.channels:
        if channel.startswith("file://"):
            path = urllib.parse.unquote(urllib.parse.urlparse(channel).path)
            if not os.path.isdir(path):
                raise InstallError(
                    f"the conda channel {channel} of {step.requirement!r} is not a folder on the cluster: a local "
                    "channel must be a path that exists on the cluster; copy it there, or serve it over HTTP"
                )


def _no_solution(step: InstallStep, env: Environment, request: CondaRequest, backend: Backend,
                 cause: SolveFailed) -> InstallError:
    return InstallError(
        f"cannot install conda package {step.requirement!r} into {env_label(env)}: {backend.name} found no "
        f"solution in the channels {', '.join(request.channels)}.\n{cause}\n"
        "Check the package name and version, or name a channel that has it: conda:CHANNEL::SPEC, "
        "rh.package(name=..., install_method='conda', channels=[...]), or RH_CONDA_CHANNELS on the client."
    )
