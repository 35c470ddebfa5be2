"""The built-in plugin that registers the ``process`` executor (implemented in
:mod:`rh_core.builtin.process_pool`, imported only when a server starts one: it loads asyncio and
ZeroMQ, which ``rh --help`` does not need)."""

from rh_core import hookimpl


@hookimpl
def rh_register_executors(register):
    register("process", "rh_core.builtin.process_pool:ProcessExecutor")
