"""Solving and installing conda packages with py-rattler, for clusters without a conda CLI.

rattler installs a whole environment at once: whatever is in the prefix but not in the records it
is given is removed. So every install solves again for all the specs this environment was ever
asked for (kept in ``<env root>/conda-requests.json``, one entry per package name, the newest
winning), preferring the versions already installed. Downloads and repodata are cached under the
environment's root, never in ``~/.cache``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

from rh_conda.request import CondaRequest, SolveFailed, env_label, package_name
from rh_core.errors import InstallError
from rh_core.support.files import write_atomically
from rh_core.plugin.interfaces import Environment, InstallStep

T = TypeVar("T")

REQUESTS_FILE = "conda-requests.json"


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a rattler coroutine to completion from synchronous code, also inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def record_identity(record: Any) -> str:
    """``name-version-build``, the way conda names a package file."""
    return f"{record.name.normalized}-{record.version}-{record.build}"


class RattlerBackend:
    name = "rattler"

    def solve(self, step: InstallStep, env: Environment, request: CondaRequest) -> list[str]:
        """The packages ``request`` alone resolves to, as ``name-version-build`` strings."""
        records = run_coroutine(self._solve(env, [request.channel_spec], list(request.channels), locked=[]))
        return sorted(record_identity(r) for r in records)

    def install(self, step: InstallStep, env: Environment, request: CondaRequest) -> None:
        import rattler

        requests = self._requests(env)
        requests[package_name(request.spec)] = {"spec": request.channel_spec, "channels": list(request.channels)}
        # This request's channels first, then those of earlier ones (their packages must stay solvable).
        channels = list(dict.fromkeys([*request.channels, *(c for e in requests.values() for c in e["channels"])]))
        installed = self._installed(env)
        specs = [entry["spec"] for entry in requests.values()]
        try:
            records = run_coroutine(self._solve(env, specs, channels, locked=installed))
        except SolveFailed as exc:
            earlier = [spec for spec in specs if spec != request.channel_spec]
            if not earlier:
                raise
            raise SolveFailed(f"It was solved together with what this environment asked for before "
                              f"({', '.join(earlier)}): ask for a version that fits them, or use another "
                              f"environment.\n{exc}") from exc
        try:
            run_coroutine(rattler.install(records, target_prefix=env.conda_prefix, cache_dir=self._cache(env, "pkgs"),
                                          installed_packages=installed, show_progress=False))
        except Exception as exc:  # rattler's download, extract and link errors
            raise InstallError(f"installing conda package {step.requirement!r} into {env_label(env)} failed: {exc}. "
                               f"The conda prefix is {env.conda_prefix}.") from exc
        self._write_requests(env, requests)

    # --- helpers -------------------------------------------------------------------------------

    async def _solve(self, env: Environment, specs: list[str], channels: list[str], locked: list[Any]) -> list[Any]:
        import rattler
        from rattler.platform import Subdir

        async def solve(sharded: bool) -> list[Any]:
            gateway = rattler.Gateway(cache_dir=self._cache(env, "repodata"),
                                      default_config=rattler.SourceConfig(sharded_enabled=sharded))
            return await rattler.solve(sources=channels, specs=specs, gateway=gateway, locked_packages=locked,
                                       platforms=[Subdir.current(), "noarch"],
                                       virtual_packages=rattler.VirtualPackage.detect())

        try:
            try:
                return await solve(sharded=True)
            except Exception as exc:
                if "304 Not Modified" not in str(exc):
                    raise
                # py-rattler 0.28 cannot revalidate a cached sharded index when the server answers
                # 304 (plain HTTP servers without ETag do): read the channel's repodata.json instead.
                return await solve(sharded=False)
        except Exception as exc:  # rattler's SolverError, GatewayError (channel unreachable), ...
            raise SolveFailed(str(exc).strip()) from exc

    @staticmethod
    def _cache(env: Environment, kind: str) -> str:
        path = os.path.join(env.root, "conda-cache", kind)
        os.makedirs(path, exist_ok=True)
        return path

    @staticmethod
    def _installed(env: Environment) -> list[Any]:
        import rattler

        meta = os.path.join(env.conda_prefix, "conda-meta")
        if not os.path.isdir(meta):
            return []
        return [rattler.PrefixRecord.from_path(os.path.join(meta, name))
                for name in sorted(os.listdir(meta)) if name.endswith(".json")]

    @staticmethod
    def _requests(env: Environment) -> dict[str, dict[str, Any]]:
        try:
            with open(os.path.join(env.root, REQUESTS_FILE)) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    @staticmethod
    def _write_requests(env: Environment, requests: dict[str, dict[str, Any]]) -> None:
        path = os.path.join(env.root, REQUESTS_FILE)
        write_atomically(path, json.dumps(requests, indent=1, sort_keys=True), 0o644)
