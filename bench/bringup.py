#!/usr/bin/env python
"""Bring-up speed: fresh hosts to their first result, with the wheels already cached on the client.

    python bench/bringup.py            # one host, then four at once (threads), 3 rounds each

Each "host" is a fresh remote_dir on one loopback sshd the benchmark starts (so a fresh venv,
install, server and tunnel each time; the SSH, CPU and disk are this machine's). A warm-up
bring-up first fills the client's wheel cache. Prints the per-step log lines of one bring-up and
a markdown table on stdout.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import pathlib
import statistics
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)

import rh_core as rh  # noqa: E402
from rh_core.testing.sshd import loopback_cluster, start_sshd, stop  # noqa: E402

import workload  # noqa: E402

ROUNDS = 3
PARALLEL = 4


def bring_up(server, root: pathlib.Path, name: str) -> float:
    """Seconds from rh.cluster(...) to the first result on a host never used before."""
    started = time.perf_counter()
    cluster = loopback_cluster(server, root / name, name=name, executor_options={"num_workers": 1})
    try:
        assert rh.function(workload.add).to(cluster)(1, 2) == 3
        return time.perf_counter() - started
    finally:
        cluster.down()


def main() -> None:
    root = pathlib.Path(tempfile.mkdtemp(prefix="rh-bench-bringup-"))
    os.environ.setdefault("RH_HOME", str(root / "rh-home"))
    server, process = start_sshd(pathlib.Path(tempfile.mkdtemp(prefix="sshd-", dir=root)))
    try:
        bring_up(server, root, "warmup")  # fills the wheel cache: later bring-ups reuse it
        logging.basicConfig(level=logging.WARNING, format="  %(message)s", stream=sys.stderr)
        logging.getLogger("rh_core.clusters.remote").setLevel(logging.INFO)
        print("one bring-up, step by step:", file=sys.stderr)
        single = [bring_up(server, root, f"one-{i}") for i in range(ROUNDS)]
        logging.getLogger("rh_core.clusters.remote").setLevel(logging.WARNING)
        together = []
        for i in range(ROUNDS):
            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
                list(pool.map(lambda j: bring_up(server, root, f"par-{i}-{j}"), range(PARALLEL)))
            together.append(time.perf_counter() - started)
    finally:
        stop(process)
    one, four = statistics.median(single), statistics.median(together)
    print(f"`python bench/bringup.py`, {ROUNDS} rounds, medians; Python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print("| bring-up (wheels cached) | seconds | rounds |")
    print("|---|---|---|")
    print(f"| one fresh host to first result | {one:.2f} | {', '.join(f'{s:.2f}' for s in single)} |")
    print(f"| {PARALLEL} fresh hosts at once, until the last result | {four:.2f} ({four / one:.2f}x one) | "
          f"{', '.join(f'{s:.2f}' for s in together)} |")


if __name__ == "__main__":
    main()
