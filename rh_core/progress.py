"""Bring-up steps: one INFO line per step with its duration, through the module's own logger."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator


@contextlib.contextmanager
def step(logger: logging.Logger, name: str, detail: str = "") -> Iterator[None]:
    """Log ``name: detail (1.23 s)`` at INFO when the block ends, or that it failed and after how long."""
    started = time.monotonic()
    try:
        yield
    except BaseException:
        logger.info("%s failed after %.2f s%s", name, time.monotonic() - started, f" ({detail})" if detail else "")
        raise
    logger.info("%s%s (%.2f s)", name, f": {detail}" if detail else "", time.monotonic() - started)
