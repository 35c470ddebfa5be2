"""rh_core: send ordinary Python functions to local or remote clusters and call them as if local.

    import rh_core as rh
    f = rh.function(add).to(rh.here)
    f(1, 2); rh.get(f.remote(1, 2)); f.map([1, 2], [3, 4])
"""

__version__ = "0.1.0"

from rh_core.cluster import Cluster, LocalCluster, here  # noqa: E402
from rh_core.errors import (  # noqa: E402
    CallTimeoutError,
    ConnectionLostError,
    PluginError,
    ProtocolError,
    RemoteError,
    RemoteTraceback,
    RhError,
    SerializationError,
    ServerStartError,
    UnknownNameError,
    VersionMismatchError,
    WorkerDiedError,
)
from rh_core.function import Function, broadcast, function  # noqa: E402
from rh_core.ref import Ref, get  # noqa: E402
from rh_core.remote import RemoteCluster, cluster  # noqa: E402

__all__ = [
    "CallTimeoutError",
    "Cluster",
    "ConnectionLostError",
    "Function",
    "LocalCluster",
    "PluginError",
    "PluginHost",
    "ProtocolError",
    "Ref",
    "RemoteCluster",
    "RemoteError",
    "RemoteTraceback",
    "RhError",
    "SerializationError",
    "ServerStartError",
    "UnknownNameError",
    "VersionMismatchError",
    "WorkerDiedError",
    "__version__",
    "broadcast",
    "cluster",
    "default_host",
    "function",
    "get",
    "here",
    "hookimpl",
]


def __getattr__(name: str):
    # pluggy and the plugin host load on first use, keeping `import rh_core` fast.
    if name == "hookimpl":
        from rh_core.hookspecs import hookimpl

        return hookimpl
    if name in ("PluginHost", "default_host"):
        from rh_core import plugins

        return getattr(plugins, name)
    raise AttributeError(f"module 'rh_core' has no attribute {name!r}")
