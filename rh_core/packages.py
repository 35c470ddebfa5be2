"""Packages and environments as the user names them, and installing them on a cluster.

A requirement is a string (``"numpy>=2"``, ``"pip:rich"``, ``"conda:hello"``, ``"local:./mylib"``,
``"requirements.txt"``, ``"git+https://..."``) or a :class:`Package`. A ``method:`` prefix names
the installer directly; any other string is offered to the plugins' ``rh_claim_requirement`` hooks
(the pip plugin claims whatever no one else does). Each installer prepares its step here, on the
client, and the cluster server runs all steps of one request under the environment's lock.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import attrs

from rh_core.server.envs import check_name
from rh_core.errors import InstallError
from rh_core.wire.messages import InstallRequest
from rh_core.plugin.interfaces import InstallerClaim, InstallStep

if TYPE_CHECKING:
    from rh_core.clusters.base import Cluster

# "pip:rich" or "conda:conda-forge::numpy", but not "https://..." nor "C:..." nor "name @ url"
_METHOD_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9_-]+):(?!//)(.*)$", re.DOTALL)


@attrs.frozen(kw_only=True)
class Package:
    """Code or a dependency to install on a cluster, and how: ``install_method`` is an installer's
    name (``local``, ``reqs``, ``pip``, ``conda``, ``git``, ...)."""

    install_method: str
    spec: str
    options: dict[str, Any] = attrs.field(factory=dict)

    def claim(self) -> InstallerClaim:
        return InstallerClaim(method=self.install_method, spec=self.spec, options=dict(self.options))

    def to(self, destination: str, *, endpoint_url: str | None = None) -> Package:
        """A copy of this local folder at ``destination`` (``s3://bucket/prefix``), which any cluster
        with access to the bucket installs from; only files that changed are uploaded again."""
        from rh_core.support import s3

        if not os.path.isdir(self.spec):
            raise InstallError(f"only a local folder can be copied to {destination}; {self.spec!r} is not one")
        bucket, prefix = s3.parse_url(destination)
        s3.upload_directory(self.spec, bucket, prefix, endpoint_url=endpoint_url)
        options = {**self.options, "source": "s3", "endpoint_url": endpoint_url or s3.endpoint_from_environment()}
        return attrs.evolve(self, spec=destination, options=options)


@attrs.frozen(kw_only=True, init=False)
class GitPackage(Package):
    """A package from a git repository at ``revision`` (tag, branch or commit), installed on the
    cluster with ``install_method`` once checked out. Needs the ``rh-git`` plugin."""

    def __init__(self, git_url: str, install_method: str = "pip", revision: str | None = None,
                 **options: Any):
        self.__attrs_init__(install_method="git", spec=git_url,
                            options={"install_method": install_method, "revision": revision, **options})

    @property
    def git_url(self) -> str:
        return self.spec

    @property
    def revision(self) -> str | None:
        return self.options.get("revision")


def package(path: str | None = None, *, install_method: str | None = None, name: str | None = None,
            **options: Any) -> Package:
    """A package from a local ``path`` (installed ``local`` by default: synced, then installed
    editable when it has a ``pyproject.toml`` or ``setup.py``), or ``name`` for an index package
    (``install_method='pip'`` or ``'conda'``)."""
    if (path is None) == (name is None):
        raise TypeError("rh.package takes either path= (a local folder or requirements file) or name= (a package)")
    method = install_method or ("local" if path is not None else "pip")
    spec = os.path.abspath(os.path.expanduser(path)) if path is not None else name
    return Package(install_method=method, spec=spec, options=options)


@attrs.frozen
class Env:
    """A named, isolated environment on a cluster, with the requirements it holds."""

    name: str = attrs.field(validator=lambda _, __, value: check_name(value))
    # A list, as the user passes it (hash=False: a list cannot be hashed, and the name identifies an env).
    reqs: list[Any] = attrs.field(factory=list, converter=list, hash=False)


def env(name: str, reqs: Iterable[Any] | None = None) -> Env:
    """A named environment: its own interpreter environment on each cluster it is used on.
    Functions sent with ``.to(cluster, env=...)`` run there."""
    return Env(name, list(reqs or ()))


def env_name(environment: Env | str | None) -> str | None:
    if environment is None or isinstance(environment, Env):
        return environment.name if environment is not None else None
    return check_name(environment)


def claim(requirement: Package | str, host) -> InstallerClaim:
    """Which installer takes a requirement, and what it should install."""
    if isinstance(requirement, Package):
        installers = host.registry("installer")
        if requirement.install_method not in installers.names():
            raise installers.unknown(requirement.install_method, called="install method")
        return requirement.claim()
    if not isinstance(requirement, str) or not requirement.strip():
        raise TypeError(f"a requirement is a string or an rh.Package, got {requirement!r}")
    requirement = requirement.strip()
    prefixed = _METHOD_PREFIX.match(requirement)
    if prefixed:
        method, rest = prefixed.groups()
        installers = host.registry("installer")
        if method not in installers.names():
            raise installers.unknown(method, called="install method")
        return InstallerClaim(method=method, spec=rest.strip())
    return host.claim_requirement(requirement)


def install_packages(cluster: Cluster, reqs: Iterable[Package | str], environment: Env | str | None = None
                     ) -> dict[str, Any]:
    """Install ``reqs`` into an environment on ``cluster`` (its default one, or a named one, which is
    created if new); what is already installed there is skipped. Returns what the server reports:
    ``installed`` and ``skipped`` requirements, and the environment's description."""
    host = cluster.host
    name = env_name(environment)
    reqs = [*(environment.reqs if isinstance(environment, Env) else ()), *reqs]
    claims = [claim(requirement, host) for requirement in reqs]  # every one checked before any work
    steps: list[InstallStep] = [host.installer(c.method)().prepare(cluster, c) for c in claims]
    reply = cluster.send(InstallRequest(env=name, steps=[step.to_json() for step in steps]))
    return reply.header
