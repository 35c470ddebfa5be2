"""The cluster server and what it is made of: ``python -m rh_core.server --state-dir DIR``.

``server`` holds the :class:`~rh_core.server.server.Server` itself; beside it the doors it is reached
through (``link_door`` with ``link_server``, ``http_door``, ``front_door``), the books it keeps
(``results``, ``run_logs``, ``instances``, ``secret_store``, ``call_gate``), the environments it
installs into (``envs``) and the ASGI apps it hosts (``app_host``, ``app_process``).
"""

import importlib
import importlib.util
from typing import Any


def __getattr__(name: str) -> Any:
    # rh_core.server was one module before it became this package: its names stay importable from
    # here for one release (``from rh_core.server import Server``). A submodule's name is left to
    # the import system, which asks here before it loads one.
    if name.startswith("__") or importlib.util.find_spec(f"{__name__}.{name}") is not None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return getattr(importlib.import_module("rh_core.server.server"), name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
