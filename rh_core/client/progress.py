"""What a bring-up is doing, for people: one INFO log line per step with its duration (through the
caller's module logger), and, on a terminal or in a notebook, a live status line naming the step.

The status line uses rich (the display SkyPilot and Runhouse users know) and shows only where
nobody reads rh_core's INFO lines already: with logging at INFO the log lines say it all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rh_core.wire.messages import OutputLine

#: Loggers whose level ``log_level`` sets: the core's and the plugins' that ship with it.
OWN_LOGGERS = ("rh_core", "rh_byo_ssh", "rh_ray", "rh_pip", "rh_conda", "rh_git", "rh_sky", "rh_gcp")


def show_logs(level: str, stream: Any = None) -> None:
    """Send rh_core's and its plugins' log lines at ``level`` and above to ``stream`` (stderr):
    what the ``rh`` command does with the config file's ``log_level``. Nothing else is changed;
    other libraries' lines keep their own level (paramiko's stay off, see rh-byo-ssh)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for name in OWN_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if not any(getattr(h, "rh_show_logs", False) for h in logger.handlers):
            handler.rh_show_logs = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
            logger.propagate = False  # one line, not one more from a root handler


@contextlib.contextmanager
def step(logger: logging.Logger, name: str, detail: str = "") -> Iterator[None]:
    """Log ``name: detail (1.23 s)`` at INFO when the block ends (or that it failed, and after how
    long); meanwhile the status line, where one shows, names the step."""
    started = time.monotonic()
    token = _STATUS.begin(f"{name}: {detail}" if detail else name, show=not logger.isEnabledFor(logging.INFO))
    try:
        yield
    except BaseException:
        logger.info("%s failed after %.2f s%s", name, time.monotonic() - started, f" ({detail})" if detail else "")
        raise
    finally:
        _STATUS.end(token)
    logger.info("%s%s (%.2f s)", name, f": {detail}" if detail else "", time.monotonic() - started)


@contextlib.contextmanager
def items_done(total: int, chunk_sizes: list[int], output: Callable[[OutputLine], None], *,
               show: bool) -> Iterator[Callable[[OutputLine], None]]:
    """A ``map``'s progress bar on stderr while the block runs, when ``show``: yields the log sink
    of its request, which advances the bar by a chunk's items when the server says that chunk is
    done (a ``progress`` line naming its index) and passes the function's output on to ``output``."""
    if not show:
        yield output
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    bar = Progress(TextColumn("map"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True))
    items = bar.add_task("map", total=total)

    def on_log(line: OutputLine) -> None:
        if line.stream == "progress":
            bar.advance(items, chunk_sizes[int(line.text)])
        else:
            output(line)

    with bar:
        yield on_log


def _wanted() -> bool:
    """A person watches: stderr is a terminal, or this runs in a Jupyter kernel."""
    if os.environ.get("RH_NO_STATUS"):
        return False
    if "ipykernel" in sys.modules:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _StatusLine:
    """The live lines on stderr (one per step in progress: bring-ups of several clusters may run
    at once in threads). There is one terminal per process, so there is one of these."""

    def __init__(self) -> None:
        # Reentrant: starting the display draws it at once, and drawing reads the steps. The display
        # is stopped outside the lock, since stopping waits for its refresh thread, which reads them.
        self._lock = threading.RLock()
        self._steps: dict[int, tuple[str, float]] = {}
        self._next = 0
        self._live: Any = None

    def begin(self, text: str, *, show: bool) -> int | None:
        if not show or not _wanted():
            return None
        with self._lock:
            self._next += 1
            self._steps[self._next] = (text, time.monotonic())
            if self._live is None:
                self._start()
            return self._next

    def end(self, token: int | None) -> None:
        if token is None:
            return
        with self._lock:
            self._steps.pop(token, None)
            live = self._live if not self._steps else None
            if live is not None:
                self._live = None
        if live is not None:
            live.stop()

    def _start(self) -> None:
        try:
            from rich.console import Console
            from rich.live import Live
        except ImportError:  # rich is a dependency; a broken install just shows no status line
            return
        self._live = Live(_Rendered(self), console=Console(stderr=True), transient=True, refresh_per_second=8)
        self._live.start()

    def lines(self) -> list[tuple[str, float]]:
        with self._lock:
            return list(self._steps.values())


class _Rendered:
    """What the live display draws each refresh: a spinner, the step and its seconds so far."""

    def __init__(self, status: _StatusLine) -> None:
        self._status = status

    def __rich__(self) -> Any:
        from rich.spinner import Spinner
        from rich.table import Table
        from rich.text import Text

        grid = Table.grid(padding=(0, 1))
        now = time.monotonic()
        for text, started in self._status.lines():  # Text, not markup: host names may hold "[...]"
            grid.add_row(Spinner("dots", style="cyan"), Text.assemble(f"rh {text} ", (f"{now - started:.0f}s", "dim")))
        return grid


_STATUS = _StatusLine()
