"""Processes on this machine: whether one runs, and whether it is still the one a record names."""

from __future__ import annotations

import os
from typing import Any


def pid_alive(pid: int | None) -> bool:
    """True if ``pid`` runs and is not a zombie."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True  # no /proc (macOS): kill(0) is all we have


def process_start_time(pid: int) -> str | None:
    """When process ``pid`` started, in the kernel's clock ticks since boot (``/proc/PID/stat``);
    with the pid, it names one process for good. None where there is no ``/proc`` (macOS)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def is_live_server(state: dict[str, Any]) -> bool:
    """Whether the process a ``server.json`` names still runs and is that server, not another
    process that got its pid after it died: only then may it be signalled."""
    pid = state.get("pid")
    if not isinstance(pid, int) or not pid_alive(pid):
        return False
    recorded = state.get("process_start")
    return recorded is None or recorded == process_start_time(pid)  # None: a record from before this check


def die_with_parent() -> None:
    """Ask Linux to kill this process when the server that spawned it dies (even by SIGKILL): a
    worker or an app process must not outlive it."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: workers still end once they notice their parent is gone
