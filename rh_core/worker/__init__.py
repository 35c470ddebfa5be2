"""A worker: the process that runs calls. ``process`` is the worker process of the built-in
``process`` executor (``python -m rh_core.worker``); ``runner`` runs one task inside any worker,
the Ray executor's included; ``http_calls`` decodes a call that arrived over HTTP."""

from rh_core import former_module

__getattr__ = former_module(__name__, "rh_core.worker.process")
