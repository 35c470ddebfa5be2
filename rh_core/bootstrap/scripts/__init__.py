"""The bootstrap's scripts that run on a cluster machine, as real files: ``probe.py`` (with
``platform.py``) and ``index_check.py`` go as source with ``python -c`` (rh_core may not be there
yet); ``start_server.py`` runs as a module of the rh_core installed there."""

from __future__ import annotations

import functools
from importlib.resources import files


@functools.cache
def source(name: str) -> str:
    """The text of script ``name`` of this folder."""
    return files(__name__).joinpath(name).read_text()


def probe() -> str:
    """The probe's source as it is sent: the platform function, then the probe that calls it."""
    return source("platform.py") + "\n\n" + source("probe.py")
