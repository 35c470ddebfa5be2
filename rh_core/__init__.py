"""rh_core: send ordinary Python functions to local or remote clusters and call them as if local.

    import rh_core as rh
    f = rh.function(add).to(rh.here)
    f(1, 2); rh.get(f.remote(1, 2)); f.map([1, 2], [3, 4])
"""

import pluggy

__version__ = "0.1.0"

#: Marks a plugin's hook implementations; the only thing a plugin needs to import at import time.
hookimpl = pluggy.HookimplMarker("rh_core")

from rh_core.cluster import Cluster, LocalCluster, here  # noqa: E402
from rh_core.errors import *  # noqa: E402,F401,F403
from rh_core.function import Function, broadcast, function  # noqa: E402
from rh_core.plugins import PluginHost, default_host  # noqa: E402
from rh_core.ref import Ref, get  # noqa: E402

__all__ = [
    "Cluster",
    "Function",
    "LocalCluster",
    "PluginHost",
    "Ref",
    "__version__",
    "broadcast",
    "default_host",
    "function",
    "get",
    "here",
    "hookimpl",
]
