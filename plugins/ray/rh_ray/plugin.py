"""The rh-ray plugin's hooks: registers the ``ray`` executor without importing Ray."""

from __future__ import annotations

from typing import Callable

from rh_core import hookimpl


@hookimpl
def rh_register_executors(register: Callable[..., None]) -> None:
    # A "module:attribute" string, so Ray is imported only by a server that runs this executor.
    register("ray", "rh_ray.executor:RayExecutor")
