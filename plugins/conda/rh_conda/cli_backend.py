"""Solving and installing through a conda CLI (``micromamba``, ``mamba`` or ``conda``) found on the
cluster's PATH; used instead of py-rattler when one is there, since it is what the cluster's owner
set up (its package cache, its configuration).

Resolving is a dry run of ``create`` into a prefix that does not exist, so it reports every
package the request alone needs; installing is ``create`` (new prefix) or ``install`` (existing one)
with ``--override-channels`` and the request's channels in order.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from typing import Any

from rh_conda.request import CondaRequest, SolveFailed
from rh_core.errors import InstallError
from rh_core.plugin.interfaces import Environment, InstallStep

CLI_NAMES = ("micromamba", "mamba", "conda")


def find_cli(environ: Mapping[str, str] | None = None) -> str | None:
    """The first conda CLI on PATH (``micromamba``, ``mamba``, then ``conda``), or None."""
    path = (os.environ if environ is None else environ).get("PATH", "")
    for name in CLI_NAMES:
        found = shutil.which(name, path=path)
        if found:
            return found
    return None


def channel_args(channels: tuple[str, ...]) -> list[str]:
    args = ["--override-channels"]
    for channel in channels:
        args += ["--channel", channel]
    return args


def parse_json_output(output: str) -> dict[str, Any]:
    """The JSON document a CLI printed with ``--json`` (stderr warnings may precede it)."""
    start = output.find("{")
    while start != -1:
        try:
            document, _ = json.JSONDecoder().raw_decode(output, start)
            if isinstance(document, dict):
                return document
        except ValueError:
            pass
        start = output.find("{", start + 1)
    raise ValueError(f"no JSON document in its output: {output[-500:]!r}")


class CliBackend:
    def __init__(self, executable: str):
        self.executable = executable
        self.name = os.path.basename(executable)

    def solve(self, step: InstallStep, env: Environment, request: CondaRequest) -> list[str]:
        # A prefix that never exists: the dry run then lists everything the request needs.
        scratch = os.path.join(env.root, "conda-dry-run")
        argv = [self.executable, "create", "--dry-run", "--json", "--yes", "--prefix", scratch,
                *channel_args(request.channels), request.channel_spec]
        try:
            output = env.run(argv, step=step)
        except InstallError as exc:
            raise SolveFailed(str(exc)) from exc
        try:
            links = parse_json_output(output).get("actions", {}).get("LINK", [])
        except ValueError as exc:
            raise SolveFailed(f"{self.name} gave no readable dry-run result: {exc}") from exc
        return sorted(f"{p['name']}-{p['version']}-{p.get('build_string', p.get('build', ''))}" for p in links)

    def install(self, step: InstallStep, env: Environment, request: CondaRequest) -> None:
        verb = "install" if os.path.isdir(os.path.join(env.conda_prefix, "conda-meta")) else "create"
        env.run([self.executable, verb, "--yes", "--prefix", env.conda_prefix, *channel_args(request.channels),
                 request.channel_spec], step=step)
