"""A remote call's stdout and stderr, shown here: in this process's own streams, each line
prefixed with where it ran, ``(cluster run-key)``, and for a ``map`` the item that wrote it.

Shown by default; ``stream_logs=False`` (per call, or ``rh config set stream_logs false``) keeps it
on the cluster, where ``cluster.logs(key)`` reads it. ``rh config set output_prefix false`` shows
the lines as the function wrote them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from rh_core.wire.messages import OutputLine


def write_line(line: OutputLine) -> None:
    """Write a line of output as it is (``stderr`` to ours, anything else to stdout)."""
    _write(line.stream, line.text.decode("utf-8", "replace"))


def _write(stream: str, text: str) -> None:
    target = sys.stderr if stream == "stderr" else sys.stdout
    target.write(text)
    target.flush()


class CallOutputShown:
    """Shows the output of one call (``run_key`` on ``cluster``) as it arrives.

    ``item_starts``: for a ``map``, the index of each chunk's first item, so a line a chunk's item
    wrote is labelled with the item's index among all of the map's. ``marked()`` says whether lines
    get their marks, else they are written as they are; it is asked when the first line comes
    (most calls print nothing)."""

    def __init__(self, cluster: str, run_key: str, *, item_starts: Sequence[int] = (),
                 marked: Callable[[], bool] = lambda: True):
        self._cluster, self._run_key = cluster, run_key
        self._item_starts = item_starts
        self._marked: Callable[[], bool] | bool = marked
        self._mid_line: dict[tuple[str, int | None], bool] = {}  # a stream's last text ended mid-line

    def __call__(self, line: OutputLine) -> None:
        if not isinstance(self._marked, bool):
            self._marked = self._marked()
        if not self._marked:
            write_line(line)
            return
        item = None
        if line.item is not None:
            chunk = line.chunk or 0
            item = line.item + (self._item_starts[chunk] if chunk < len(self._item_starts) else 0)
        where = f"({self._cluster} {self._run_key}"
        label = f"{where} item {item}) " if item is not None else f"{where}) "
        text = line.text.decode("utf-8", "replace")
        source = (line.stream, item)
        pieces = text.splitlines(keepends=True)
        shown = []
        for index, piece in enumerate(pieces):
            continues = index == 0 and self._mid_line.get(source, False)
            shown.append(piece if continues else label + piece)
        if pieces:
            self._mid_line[source] = not pieces[-1].endswith(("\n", "\r"))
        _write(line.stream, "".join(shown))

