"""rh_core: send ordinary Python functions to local or remote clusters and call them as if local.

    import rh_core as rh
    f = rh.function(add).to(rh.here)
    f(1, 2); rh.get(f.remote(1, 2)); f.map([1, 2], [3, 4])

Every name below is imported on first use, so ``import rh_core`` (and with it ``rh --help`` and
every plugin's ``from rh_core import hookimpl``) loads neither ZeroMQ, attrs nor pluggy.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# errors.py imports nothing, so its names are loaded at once.
from rh_core.errors import (
    AuthenticationError,
    CallTimeoutError,
    ConfigError,
    ConnectionLostError,
    ExecutorError,
    InstallError,
    InstanceDiedError,
    InstanceNotFoundError,
    InvalidNameError,
    PluginError,
    ProtocolError,
    ProvisionError,
    RemoteError,
    RemoteExitError,
    RemoteTraceback,
    ResourceExistsError,
    ResourceFormatError,
    ResourceNotFoundError,
    RhError,
    RunCancelledError,
    SecretError,
    SerializationError,
    ServerStartError,
    StaleCodeError,
    StoreError,
    TransportError,
    UnknownNameError,
    UntrustedPathError,
    VersionMismatchError,
    WorkerDiedError,
)

#: Public names loaded on first use, and the module each comes from.
_LAZY = {
    "Cluster": "rh_core.cluster",
    "LocalCluster": "rh_core.cluster",
    "here": "rh_core.cluster",
    "Function": "rh_core.function",
    "broadcast": "rh_core.function",
    "function": "rh_core.function",
    "Env": "rh_core.packages",
    "GitPackage": "rh_core.packages",
    "Package": "rh_core.packages",
    "env": "rh_core.packages",
    "package": "rh_core.packages",
    "Module": "rh_core.modules",
    "RemoteInstance": "rh_core.modules",
    "module": "rh_core.modules",
    "Ref": "rh_core.ref",
    "get": "rh_core.ref",
    "Secret": "rh_core.secrets",
    "AsgiApp": "rh_core.apps",
    "asgi": "rh_core.apps",
    "secret": "rh_core.secrets",
    "RemoteCluster": "rh_core.remote",
    "cluster": "rh_core.remote",
    "exists": "rh_core.names",
    "ls": "rh_core.names",
    "delete": "rh_core.names",
    "hookimpl": "rh_core.hookspecs",
    "PluginHost": "rh_core.plugins",
    "default_host": "rh_core.plugins",
}

__all__ = [
    "AsgiApp",
    "AuthenticationError",
    "CallTimeoutError",
    "Cluster",
    "ConfigError",
    "ConnectionLostError",
    "Env",
    "ExecutorError",
    "Function",
    "GitPackage",
    "InstallError",
    "InstanceDiedError",
    "InstanceNotFoundError",
    "InvalidNameError",
    "LocalCluster",
    "Module",
    "Package",
    "PluginError",
    "PluginHost",
    "ProtocolError",
    "ProvisionError",
    "Ref",
    "RemoteCluster",
    "RemoteError",
    "RemoteExitError",
    "RemoteInstance",
    "RemoteTraceback",
    "ResourceExistsError",
    "ResourceFormatError",
    "ResourceNotFoundError",
    "RhError",
    "RunCancelledError",
    "SecretError",
    "Secret",
    "SerializationError",
    "ServerStartError",
    "StaleCodeError",
    "StoreError",
    "TransportError",
    "UnknownNameError",
    "UntrustedPathError",
    "VersionMismatchError",
    "WorkerDiedError",
    "__version__",
    "asgi",
    "broadcast",
    "cluster",
    "default_host",
    "delete",
    "env",
    "exists",
    "function",
    "get",
    "here",
    "hookimpl",
    "ls",
    "module",
    "package",
    "secret",
]

if TYPE_CHECKING:
    from rh_core.apps import AsgiApp, asgi
    from rh_core.cluster import Cluster, LocalCluster, here
    from rh_core.function import Function, broadcast, function
    from rh_core.hookspecs import hookimpl
    from rh_core.modules import Module, RemoteInstance, module
    from rh_core.names import delete, exists, ls
    from rh_core.packages import Env, GitPackage, Package, env, package
    from rh_core.plugins import PluginHost, default_host
    from rh_core.ref import Ref, get
    from rh_core.secrets import Secret, secret
    from rh_core.remote import RemoteCluster, cluster


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rh_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    if name not in _SHADOWED:
        globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__


#: Exported names that are also submodules' names: ``rh.cluster`` is the factory in
#: rh_core/remote.py, but rh_core/cluster.py is a module of the same name.
_SHADOWED = ("cluster", "function")


class _Package(types.ModuleType):
    """Importing a submodule makes Python set it as an attribute of its package, which would make
    ``rh.cluster`` the module rh_core.cluster instead of the factory once anything imported that
    module. These properties keep the factories; the submodules stay in ``sys.modules``."""

    @property
    def cluster(self):  # type: ignore[override]
        from rh_core.remote import cluster

        return cluster

    @cluster.setter
    def cluster(self, value: Any) -> None:
        pass

    @property
    def function(self):  # type: ignore[override]
        from rh_core.function import function

        return function

    @function.setter
    def function(self, value: Any) -> None:
        pass


sys.modules[__name__].__class__ = _Package
