"""Functions the multi-node tests send by reference: importable from this directory, which the client
syncs to the head as part of its working directory and the ray executor copies to the other nodes.
Imports nothing that the cluster's venv lacks (pytest, say): the Ray workers import this module.
"""

from __future__ import annotations

import socket
import sys
import time


def hostname_and_module_file(seconds: float) -> tuple[str, str]:
    """Where this ran, and which copy of this module it ran from."""
    time.sleep(seconds)
    return socket.gethostname(), __file__


def where_and_version(distribution: str, seconds: float) -> tuple[str, str, str]:
    """Where this ran, in which interpreter, and which version of ``distribution`` that interpreter has
    (read from its metadata each time: a reused worker may have imported an older one)."""
    from importlib.metadata import version

    time.sleep(seconds)
    return socket.gethostname(), sys.executable, version(distribution)


def ray_node_ids() -> list[str]:
    """The ids of the Ray nodes alive now, as a Ray worker of the cluster sees them."""
    import ray

    return sorted(node["NodeID"] for node in ray.nodes() if node["Alive"])


def count_in_actor() -> int:
    """Increment a counter kept in a detached Ray actor, created on first use: how many calls it has seen."""
    import ray

    @ray.remote(num_cpus=0)
    class Counter:
        def __init__(self):
            self.count = 0

        def increment(self):
            self.count += 1
            return self.count

    counter = Counter.options(name="rh-test-counter", namespace="rh-multinode", lifetime="detached",
                              get_if_exists=True).remote()
    return ray.get(counter.increment.remote())
