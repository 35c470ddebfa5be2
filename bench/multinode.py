"""A CPU-bound ``map`` on one vs two single-core machines: ``python bench/multinode.py`` (as root).

The machines are network-namespace test hosts (``plugins/ray/tests/netns_hosts.py``) on this box,
each a BYO cluster host reached over SSH; the ``ray`` executor runs one Ray CPU per host
(``num_cpus=1``), so two hosts are two single-core machines. The issue's goal: two hosts at least
1.7x as fast as one. Columns:

- **baseline**: the same items one after another in this process (one core, no rh_core at all).
- **1 host** / **2 hosts**: ``f.map(items)`` on ``rh.cluster(ips=[h1])`` / ``ips=[h1, h2]`` after a
  warm-up map; best of ``--repeat``.

Both hosts share this machine's cores, so run it on an idle machine: anything else running makes
the second host slower than a real second machine would be. Setting up (wheels, a venv with Ray,
the Ray head and worker node) takes 2-4 minutes on 2 cores; prints one markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(os.path.dirname(HERE), "plugins", "ray", "tests")
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import netns_hosts

import rh_core as rh


def burn(rounds: int) -> int:
    """CPU-bound work that holds the GIL: no I/O, no sleeping."""
    total = 0
    for i in range(rounds):
        total += i * i % 7
    return total


def calibrate(seconds: float) -> int:
    """How many rounds of :func:`burn` take about ``seconds`` here."""
    rounds = 100_000
    while True:
        started = time.perf_counter()
        burn(rounds)
        took = time.perf_counter() - started
        if took > 0.2:
            return int(rounds * seconds / took)
        rounds *= 4


def timed_map(cluster: rh.RemoteCluster, items: list[int], repeat: int) -> float:
    f = rh.function(burn).to(cluster)
    assert f.map(items[:4]) == [burn(items[0])] * 4  # warm the Ray workers of every node
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        f.map(items)
        best = min(best, time.perf_counter() - started)
    return best


def on_cluster(made: netns_hosts.NetnsHosts, remote_dir: str, addresses: list[str], items: list[int],
               repeat: int) -> float:
    cluster = rh.cluster(name=f"bench-multinode-{len(addresses)}-{os.getpid()}", ips=addresses,
                         ssh_creds=made.ssh_creds(str(made.directory / "known_hosts")), executor="ray",
                         executor_options={"num_cpus": 1})
    cluster.remote_dir = remote_dir
    started = time.monotonic()
    try:
        cluster.connection()
        deadline = time.monotonic() + 30  # the server re-reads Ray's node list every few seconds
        while (nodes := cluster.status()["executor_nodes"]) != len(addresses) and time.monotonic() < deadline:
            time.sleep(1)
        print(f"{len(addresses)} host(s) up in {time.monotonic() - started:.0f} s ({nodes} Ray nodes)", file=sys.stderr)
        if nodes != len(addresses):
            raise RuntimeError(f"expected {len(addresses)} Ray nodes, the head reports {nodes}")
        return timed_map(cluster, items, repeat)
    finally:
        cluster.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=16, help="map items (default 16)")
    parser.add_argument("--seconds", type=float, default=0.5, help="CPU seconds per item here (default 0.5)")
    parser.add_argument("--repeat", type=int, default=3, help="timed maps per column, best kept (default 3)")
    args = parser.parse_args()
    reason = netns_hosts.skip_reason()
    if reason:
        sys.exit(f"cannot make test hosts here: {reason}")
    rounds = calibrate(args.seconds)
    items = [rounds] * args.items
    started = time.perf_counter()
    for item in items:
        burn(item)
    baseline = time.perf_counter() - started
    directory = Path(tempfile.mkdtemp(prefix="rhb-multinode-", dir="/var/tmp"))  # not /tmp: each host has its own
    remote_dir = str(directory / "remote")
    try:
        with netns_hosts.netns_hosts(2, directory / "hosts", private_dirs=[remote_dir],
                                     shared_dirs=[f"{remote_dir}/venv"]) as made:
            one = on_cluster(made, remote_dir, made.addresses[:1], items, args.repeat)
            two = on_cluster(made, remote_dir, made.addresses, items, args.repeat)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"`python bench/multinode.py --items {args.items} --seconds {args.seconds} --repeat {args.repeat}` "
          f"on {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}\n")
    print(f"| {args.items} items of ~{args.seconds} CPU s | seconds | items/s | speed-up vs 1 host |")
    print("|---|---|---|---|")
    for name, seconds in (("baseline (this process, 1 core)", baseline), ("1 host (1 Ray CPU)", one),
                          ("2 hosts (1 Ray CPU each)", two)):
        print(f"| {name} | {seconds:.2f} | {args.items / seconds:.2f} | {one / seconds:.2f}x |")


if __name__ == "__main__":
    main()
