"""The ``pip``, ``reqs`` and ``local`` installers.

``prepare`` runs on the client: it checks local paths and syncs them to the cluster (so a path in a
step is always a path on the cluster). ``resolve`` and ``install`` run in the cluster server, with
pip run against the environment's interpreter (:meth:`rh_core.server.envs.ClusterEnvironment.pip`).
"""

from __future__ import annotations

import hashlib
import os
import re
import sysconfig
from typing import Any

from rh_core.clusters.base import Cluster
from rh_core.support.compat import file_digest
from rh_core.errors import InstallError
from rh_core.plugin.interfaces import Environment, InstallerClaim, InstallStep

PROJECT_FILES = ("pyproject.toml", "setup.py", "setup.cfg")
PROJECT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _digest(*paths: str) -> str:
    """sha256 over the contents of the files that exist among ``paths``."""
    digest = hashlib.sha256()
    for path in paths:
        if os.path.isfile(path):
            digest.update(path.encode() + b"\0")
            with open(path, "rb") as f:
                digest.update(file_digest(f, "sha256").digest())
    return digest.hexdigest()[:16]


def _local_path(spec: str, requirement: str, *, kind: str) -> str:
    path = os.path.abspath(os.path.expanduser(spec))
    if not os.path.exists(path):
        raise InstallError(f"{kind} {spec!r} (from requirement {requirement!r}) does not exist on this machine "
                           f"(looked at {path}); fix the path, relative to {os.getcwd()}")
    return path


def _on_cluster(cluster: Cluster, path: str) -> str:
    """Sync the folder holding ``path`` (or ``path`` itself when it is a folder); its path on the cluster."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    remote_folder = cluster.sync_directory(folder)
    return remote_folder if folder == path else f"{remote_folder}/{os.path.basename(path)}"


def _shipped_if_offline(cluster: Cluster, lines: list[str], *, digest: str = "", cwd: str | None = None
                        ) -> dict[str, Any]:
    """For a cluster that reaches no package index: resolve the requirement ``lines`` here for its
    platform, ship the wheels, and return the options that make pip install from them alone."""
    platform = cluster.offline_platform()
    if platform is None:
        return {}
    from rh_core.bootstrap.wheels import resolve_requirements

    folder = resolve_requirements(lines, platform, digest=digest, cwd=cwd)
    return {"find_links": cluster.sync_directory(folder), "no_index": True}


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.endswith((".whl", ".tar.gz", ".zip"))


class PipInstaller:
    """``pip install SPEC`` into the environment. Package options: ``find_links`` (a local folder of
    wheels, synced to the cluster), ``index_url``, ``no_index``; a local wheel or folder as the spec."""

    def prepare(self, cluster: Cluster, claim: InstallerClaim) -> InstallStep:
        spec, options = claim.spec, dict(claim.options)
        requirement = claim.spec if not claim.options else f"{claim.spec} ({', '.join(sorted(claim.options))})"
        if _looks_like_path(spec):
            path = _local_path(spec, claim.spec, kind="package path")
            options["digest"] = _digest(path) if os.path.isfile(path) else _digest(
                *(os.path.join(path, name) for name in PROJECT_FILES))
            spec = _on_cluster(cluster, path)
        if options.get("find_links"):
            local = _local_path(options["find_links"], claim.spec, kind="find_links folder")
            options["find_links"] = _on_cluster(cluster, local)
            options["find_links_digest"] = _digest(*sorted(os.path.join(local, n) for n in os.listdir(local)))
        elif not _looks_like_path(claim.spec):
            index = [f"--index-url {options['index_url']}"] if options.get("index_url") else []
            options.update(_shipped_if_offline(cluster, [*index, claim.spec]))
        return InstallStep(method="pip", spec=spec, requirement=requirement, options=options)

    def resolve(self, step: InstallStep, env: Environment) -> str:
        return "pip:" + step.spec + "".join(f" {k}={v}" for k, v in sorted(step.options.items()))

    def install(self, step: InstallStep, env: Environment) -> None:
        env.pip(["install", *pip_options(step.options), step.spec], step=step)

    def slot(self, step: InstallStep) -> str | None:
        """The project name: ``numpy>=2`` and ``numpy==1.26`` replace each other."""
        named = PROJECT_NAME.match(step.spec)
        if named is None or _looks_like_path(step.spec):
            return f"pip:{step.spec}"
        return "pip:" + re.sub(r"[-_.]+", "-", named.group(1)).lower()


def pip_options(options: dict[str, Any]) -> list[str]:
    args = []
    if options.get("find_links"):
        args += ["--find-links", options["find_links"]]
    if options.get("index_url"):
        args += ["--index-url", options["index_url"]]
    if options.get("no_index"):
        args.append("--no-index")
    return args


class RequirementsInstaller:
    """``pip install -r FILE``: a requirements file (and the folder around it, for the relative
    paths it may name) synced to the cluster. Reinstalled when the file's content changes."""

    def prepare(self, cluster: Cluster, claim: InstallerClaim) -> InstallStep:
        path = _local_path(claim.spec, f"reqs:{claim.spec}", kind="requirements file")
        if os.path.isdir(path):
            path = os.path.join(path, "requirements.txt")
            if not os.path.isfile(path):
                raise InstallError(f"{claim.spec!r} is a folder without a requirements.txt; name the file to install")
        digest = _digest(path)
        shipped = _shipped_if_offline(cluster, [f"-r {path}"], digest=digest, cwd=os.path.dirname(path))
        return InstallStep(method="reqs", spec=_on_cluster(cluster, path), requirement=claim.spec,
                           options={**claim.options, "digest": digest, **shipped})

    def resolve(self, step: InstallStep, env: Environment) -> str:
        return f"reqs:{step.spec}:{step.options['digest']}"

    def install(self, step: InstallStep, env: Environment) -> None:
        env.pip(["install", *pip_options(step.options), "-r", step.spec], step=step, cwd=os.path.dirname(step.spec))

    def slot(self, step: InstallStep) -> str:
        return f"reqs:{step.spec}"  # a changed file replaces what it installed before


class LocalInstaller:
    """A local folder: synced to the cluster (or fetched there from an S3 copy, see
    :meth:`rh_core.Package.to`), then installed editable when it is a Python project
    (``pyproject.toml`` or ``setup.py``), otherwise put on the environment's ``sys.path``."""

    def prepare(self, cluster: Cluster, claim: InstallerClaim) -> InstallStep:
        if claim.options.get("source") == "s3":
            return InstallStep(method="local", spec=claim.spec, requirement=claim.spec, options=dict(claim.options))
        path = _local_path(claim.spec, f"local:{claim.spec}", kind="local folder")
        if not os.path.isdir(path):
            raise InstallError(f"local:{claim.spec} is a file, not a folder; install a wheel or archive with pip:{claim.spec}")
        digest = _digest(*(os.path.join(path, name) for name in PROJECT_FILES))
        return InstallStep(method="local", spec=cluster.sync_directory(path), requirement=claim.spec,
                           options={**claim.options, "digest": digest})

    def resolve(self, step: InstallStep, env: Environment) -> str:
        if step.options.get("source") == "s3":
            from rh_core.support import s3

            bucket, prefix = s3.parse_url(step.spec)
            folder = self._s3_folder(step, env)
            digest = s3.download_directory(bucket, prefix, folder, endpoint_url=step.options.get("endpoint_url"))
            return f"local:{step.spec}:{digest}"
        if not os.path.isdir(step.spec):
            raise InstallError(f"the folder {step.spec} for {step.requirement!r} is missing on the cluster")
        return f"local:{step.spec}:{step.options['digest']}"

    def slot(self, step: InstallStep) -> str:
        return f"local:{step.spec}"

    @staticmethod
    def _s3_folder(step: InstallStep, env: Environment) -> str:
        return os.path.join(env.root, "packages", step.spec[len("s3://"):].replace("/", "_"))

    def install(self, step: InstallStep, env: Environment) -> None:
        folder = self._s3_folder(step, env) if step.options.get("source") == "s3" else step.spec
        if any(os.path.isfile(os.path.join(folder, name)) for name in ("pyproject.toml", "setup.py")):
            env.pip(["install", "--editable", folder], step=step)
            return
        site_packages = env.run([env.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                step=step).strip() or sysconfig.get_paths()["purelib"]
        name = "rh_local_" + hashlib.sha256(folder.encode()).hexdigest()[:12] + ".pth"
        with open(os.path.join(site_packages, name), "w") as f:
            f.write(folder + "\n")
