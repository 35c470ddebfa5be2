"""The client's side of a server connection: sending calls and reading replies (``connection``),
and what a user sees while it happens (``progress``)."""

from rh_core import former_module

__getattr__ = former_module(__name__, "rh_core.client.connection")
