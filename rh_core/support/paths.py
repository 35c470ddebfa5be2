"""Where rh_core keeps its state on this machine."""

from __future__ import annotations

import os


def rh_home() -> str:
    """Where rh_core keeps local state: ``$RH_HOME``, else ``~/.rh``."""
    return os.environ.get("RH_HOME") or os.path.join(os.path.expanduser("~"), ".rh")
