"""Refs: results that stay on the cluster until someone asks for them."""

from __future__ import annotations

import os
import re
import sys
from collections import defaultdict
from collections.abc import Generator, Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from rh_core.wire import serialize

if TYPE_CHECKING:
    from rh_core.clusters.base import Cluster


def new_run_key(function_name: str) -> str:
    """A fresh run key for a call of ``function_name``: the name made plain (any other character
    becomes ``_``, at most 64 of them) and 16 random hex digits."""
    plain = re.sub(r"[^A-Za-z0-9_.-]", "_", function_name)[:64] or "function"
    return f"{plain}-{os.urandom(8).hex()}"


R = TypeVar("R")


class Ref(Generic[R]):
    """The result of ``f.remote(...)``: a key naming a result held by the cluster's server
    (``Ref[int]`` for a function that returns an ``int``).

    ``ref.result(timeout=...)`` or ``rh.get(ref)`` fetch it, ``await ref`` too; passing a ref as an
    argument to another function on the same cluster hands it the value without a round trip.
    """

    __slots__ = ("cluster", "key")

    def __init__(self, key: str, cluster: Cluster | None):
        self.key = key
        self.cluster = cluster

    @property
    def __rh_ref_key__(self) -> str:
        return self.key

    @classmethod
    def _from_key(cls, key: str) -> Ref[Any]:
        return cls(key, None)

    def __reduce__(self):
        return serialize.reduce_ref(self)

    def __repr__(self) -> str:
        where = self.cluster.name if self.cluster is not None else "?"
        return f"Ref({self.key!r} on {where})"

    def _cluster(self) -> Cluster:
        if self.cluster is None:
            from rh_core.clusters.local import here

            return here
        return self.cluster

    def result(self, timeout: float | None = None, *, stream_logs: bool = False) -> R:
        """The value, waiting up to ``timeout`` seconds; raises the function's own exception.

        A ``.remote()`` call's output stays in its run's log on the cluster; ``stream_logs=True``
        shows it here (as a plain call's is shown) once the run has ended, before the value."""
        cluster = self._cluster()
        try:
            return cluster.get(self.key, timeout=timeout)
        finally:
            if stream_logs:
                self._show_logs(cluster)

    def _show_logs(self, cluster: Cluster) -> None:
        from rh_core.client.output import CallOutputShown
        from rh_core.config import current
        from rh_core.wire.messages import OutputLine

        try:
            text = cluster.logs(self.key)
        except Exception as exc:  # the result (or its error) matters more than its log
            sys.stderr.write(f"rh: could not read the log of run {self.key}: {exc}\n")
            return
        if text:
            shown = CallOutputShown(cluster.name, self.key, marked=lambda: current().output_prefix)
            shown(OutputLine("stdout", text.encode()))

    def done(self) -> bool:
        return self._cluster().run_states([self.key])[self.key] == "done"

    def release(self) -> None:
        """Let the cluster drop the result."""
        self._cluster().release([self.key])

    def __await__(self) -> Generator[Any, None, R]:
        """``await ref``: the value, fetched on the caller's event loop (no thread); cancelling the
        awaiting task leaves the run alone: the ref may be awaited again."""
        return self._cluster().aget(self.key).__await__()


@overload
def get(refs: Ref[R], timeout: float | None = None) -> R: ...
@overload
def get(refs: Iterable[Ref[R]], timeout: float | None = None) -> list[R]: ...


def get(refs, timeout: float | None = None):
    """Fetch the value of one ref, or the values of many (one request per cluster)."""
    if isinstance(refs, Ref):
        return refs.result(timeout=timeout)
    refs = list(refs)
    clusters: dict[int, Cluster] = {}
    positions: dict[int, list[int]] = defaultdict(list)
    for index, ref in enumerate(refs):
        if not isinstance(ref, Ref):
            raise TypeError(f"rh.get takes Refs (from .remote()), got {type(ref).__name__} at position {index}")
        cluster = ref._cluster()
        clusters[id(cluster)] = cluster
        positions[id(cluster)].append(index)
    values: list[Any] = [None] * len(refs)
    for cluster_id, indices in positions.items():
        fetched = clusters[cluster_id].get_many([refs[i].key for i in indices], timeout=timeout)
        for index, value in zip(indices, fetched):
            values[index] = value
    return values
