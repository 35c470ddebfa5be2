"""rh_core: send ordinary Python functions to local or remote clusters and call them as if local.

    import rh_core as rh
    f = rh.function(add).to(rh.here)
    f(1, 2); rh.get(f.remote(1, 2)); f.map([1, 2], [3, 4])

Every name below is imported on first use, so ``import rh_core`` (and with it ``rh --help`` and
every plugin's ``from rh_core import hookimpl``) loads neither ZeroMQ, attrs nor pluggy.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
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
    "Cluster": "rh_core.clusters.base",
    "LocalCluster": "rh_core.clusters.local",
    "here": "rh_core.clusters.local",
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
    "Ref": "rh_core.clusters.ref",
    "get": "rh_core.clusters.ref",
    "Secret": "rh_core.secrets",
    "AsgiApp": "rh_core.apps",
    "asgi": "rh_core.apps",
    "secret": "rh_core.secrets",
    "RemoteCluster": "rh_core.clusters.remote",
    "cluster": "rh_core.cluster",
    "exists": "rh_core.names",
    "ls": "rh_core.names",
    "delete": "rh_core.names",
    "hookimpl": "rh_core.plugin.hookspecs",
    "PluginHost": "rh_core.plugin.host",
    "default_host": "rh_core.plugin.host",
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
    from rh_core.clusters.base import Cluster
    from rh_core.clusters.local import LocalCluster, here
    from rh_core.function import Function, broadcast, function
    from rh_core.plugin.hookspecs import hookimpl
    from rh_core.modules import Module, RemoteInstance, module
    from rh_core.names import delete, exists, ls
    from rh_core.packages import Env, GitPackage, Package, env, package
    from rh_core.plugin.host import PluginHost, default_host
    from rh_core.clusters.ref import Ref, get
    from rh_core.secrets import Secret, secret
    from rh_core.cluster import cluster
    from rh_core.clusters.remote import RemoteCluster


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rh_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__


#: Exported names that are also the names of modules: the factories ``rh.cluster`` and
#: ``rh.function`` live in the modules rh_core/cluster.py and rh_core/function.py.
_SHADOWED = ("cluster", "function")


class _Package(types.ModuleType):
    """Importing a submodule makes Python bind it as an attribute of its package, which would make
    ``rh.cluster`` the module instead of the factory once anything imported that module. This class
    refuses only that binding; any other assignment (``mock.patch("rh_core.cluster", ...)`` in a
    user's test, and the undoing of it) behaves as on a plain module."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


#: Modules that moved when rh_core was laid out in layers (one folder per layer), and where they
#: went. Their old names import for one release, so plugins written against them keep working; new
#: code imports the new names. (rh_core.client, .server and .worker became packages of the same
#: name: they serve their old module's names through :func:`former_module`.)
_MOVED = {
    "rh_core.remote": "rh_core.clusters.remote",
    "rh_core.tls": "rh_core.clusters.tls",
    "rh_core.status": "rh_core.clusters.status",
    "rh_core.notebook": "rh_core.clusters.notebook",
    "rh_core.wheels": "rh_core.bootstrap.wheels",
    "rh_core.progress": "rh_core.client.progress",
    "rh_core.channel": "rh_core.wire.channel",
    "rh_core.serialize": "rh_core.wire.serialize",
    "rh_core.shm": "rh_core.wire.shm",
    "rh_core.heap": "rh_core.wire.heap",
    "rh_core.link": "rh_core.wire.link",
    "rh_core.link_server": "rh_core.server.link_server",
    "rh_core.http_door": "rh_core.server.http_door",
    "rh_core.app_host": "rh_core.server.app_host",
    "rh_core.app_process": "rh_core.server.app_process",
    "rh_core.instances": "rh_core.server.instances",
    "rh_core.results": "rh_core.server.results",
    "rh_core.call_gate": "rh_core.server.call_gate",
    "rh_core.secret_store": "rh_core.server.secret_store",
    "rh_core.envs": "rh_core.server.envs",
    "rh_core.runner": "rh_core.worker.runner",
    "rh_core.http_calls": "rh_core.worker.http_calls",
    "rh_core.hookspecs": "rh_core.plugin.hookspecs",
    "rh_core.plugin_types": "rh_core.plugin.interfaces",
    "rh_core.plugins": "rh_core.plugin.host",
    "rh_core.files": "rh_core.support.files",
    "rh_core.processes": "rh_core.support.processes",
    "rh_core.redact": "rh_core.support.redact",
    "rh_core.compat": "rh_core.support.compat",
    "rh_core.s3": "rh_core.support.s3",
    "rh_core.workdir": "rh_core.support.workdir",
    "rh_core.ref": "rh_core.clusters.ref",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports a module's old name (see ``_MOVED``) as the module itself, with a DeprecationWarning."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in _MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> types.ModuleType:
        import warnings

        new = _MOVED[spec.name]
        warnings.warn(f"{spec.name} is now {new}; import it by that name (the old one goes in the next release)",
                      DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        _REAL_SPECS[new] = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        # The import system gave the module the old name's spec: give it back its own.
        module.__spec__ = _REAL_SPECS.pop(module.__name__, module.__spec__)


_REAL_SPECS: dict[str, Any] = {}


sys.meta_path.append(_MovedModules())


def former_module(package: str, module: str) -> Any:
    """A ``__getattr__`` for a package that was a module before the layout in layers (``package``
    rh_core.server, whose old contents are ``module`` rh_core.server.server): the old module's
    names still import from the package for one release, with a DeprecationWarning. A submodule's
    name is left to the import system, which asks the package first when it loads one."""

    def __getattr__(name: str) -> Any:
        if name.startswith("__") or importlib.util.find_spec(f"{package}.{name}") is not None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        try:
            value = getattr(importlib.import_module(module), name)
        except AttributeError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        import warnings

        warnings.warn(f"{package}.{name} is now {module}.{name}; import it from there (the old name goes in the "
                      "next release)", DeprecationWarning, stacklevel=2)
        return value

    return __getattr__
