"""The cluster server and what it is made of: ``python -m rh_core.server --state-dir DIR``.

``server`` holds the :class:`~rh_core.server.server.Server` itself; beside it the doors it is reached
through (``link_door`` with ``link_server``, ``http_door``, ``front_door``), the books it keeps
(``run_table`` of what runs, with ``call_gate``; ``results``, ``run_logs``, ``instances``,
``secret_store``), the environments it
installs into (``envs``) and the ASGI apps it hosts (``app_host``, ``app_process``).
"""

from rh_core import former_module

__getattr__ = former_module(__name__, "rh_core.server.server")
