#!/usr/bin/env python
"""rh_core's asyncio client against its blocking client and raw Ray, in one run (issue 21).

    python bench/asyncio_calls.py             # rounds of each; a few minutes on 2 cores
    python bench/asyncio_calls.py --quick
    python bench/asyncio_calls.py --no-ray    # rh_core only

Rows: 32 concurrent 1 s calls on 32 workers (rh_core: a local `process` cluster of 32 workers,
`asyncio.gather` of `acall`s; Ray: `ray.init(num_cpus=32)`, `asyncio.gather` of awaited ObjectRefs),
wall time to the last result; and calls/s of a trivial `add(1, 2)` made 1,000 at once from one event
loop (rh_core `acall` on a 2-worker cluster, Ray awaited ObjectRefs with num_cpus=2) beside
1,000 blocking calls spread over 32 threads on the same 2-worker cluster. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)

import workload  # noqa: E402


def threads_rate(call, total: int, threads: int) -> float:
    """Blocking calls/s from ``threads`` threads: bench.py's own measure, as a number."""
    from bench import measure_threads

    return float(measure_threads(call, total, threads).replace(",", ""))


async def gather_rate(make, total: int) -> float:
    await asyncio.gather(*(make() for _ in range(32)))  # warm: the loop's connection, the workers
    started = time.perf_counter()
    results = await asyncio.gather(*(make() for _ in range(total)))
    elapsed = time.perf_counter() - started
    if any(result != 3 for result in results):
        raise AssertionError("add(1, 2) != 3")
    return total / elapsed


async def wall_of(make, count: int) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(make() for _ in range(count)))
    return time.perf_counter() - started


def rh_figures(rounds: int, total: int) -> dict[str, list[float]]:
    import rh_core as rh

    figures: dict[str, list[float]] = {"wide": [], "gather": [], "threads": []}
    wide = rh.LocalCluster(state_dir=tempfile.mkdtemp(prefix="rh-aio-w"), executor_options={"num_workers": 32})
    try:
        nap = rh.function(workload.sleep_for).to(wide)
        asyncio.run(wall_of(lambda: nap.acall(0.2), 32))  # every worker up
        for _ in range(rounds):
            figures["wide"].append(asyncio.run(wall_of(lambda: nap.acall(1.0), 32)))
    finally:
        wide.stop_server()
    cluster = rh.LocalCluster(state_dir=tempfile.mkdtemp(prefix="rh-aio-2"), executor_options={"num_workers": 2})
    try:
        add = rh.function(workload.add).to(cluster)
        for _ in range(rounds):
            figures["gather"].append(asyncio.run(gather_rate(lambda: add.acall(1, 2), total)))
            figures["threads"].append(threads_rate(add, total, 32))
    finally:
        cluster.stop_server()
    return figures


def ray_figures(rounds: int, total: int) -> dict[str, list[float]]:
    import ray

    figures: dict[str, list[float]] = {"wide": [], "gather": []}
    nap = ray.remote(workload.sleep_for)
    add = ray.remote(workload.add)

    async def awaited(ref):
        return await ref

    ray.init(num_cpus=32, include_dashboard=False, log_to_driver=False)
    try:
        asyncio.run(wall_of(lambda: awaited(nap.remote(0.2)), 32))
        for _ in range(rounds):
            figures["wide"].append(asyncio.run(wall_of(lambda: awaited(nap.remote(1.0)), 32)))
    finally:
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for _ in range(rounds):
            figures["gather"].append(asyncio.run(gather_rate(lambda: awaited(add.remote(1, 2)), total)))
    finally:
        ray.shutdown()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 300 calls")
    parser.add_argument("--no-ray", action="store_true", help="rh_core only")
    args = parser.parse_args()
    rounds, total = (1, 300) if args.quick else (3, 1000)
    ours = rh_figures(rounds, total)
    theirs = ray_figures(rounds, total) if not args.no_ray else {}

    def cell(values: list[float] | None, fmt: str) -> str:
        if not values:
            return "n/a"
        return f"{fmt.format(statistics.median(values))} ({' / '.join(fmt.format(v) for v in values)})"

    print(f"`python bench/asyncio_calls.py{' --quick' if args.quick else ''}{' --no-ray' if args.no_ray else ''}`: "
          f"{rounds} round(s), median (each round); Python {sys.version.split()[0]}, "
          f"load average {os.getloadavg()[0]:.2f} at the end")
    print()
    print("| metric | rh_core | raw Ray |")
    print("|---|---:|---:|")
    print(f"| 32 concurrent 1 s calls on 32 workers, s to the last result | {cell(ours['wide'], '{:.2f}')} | "
          f"{cell(theirs.get('wide'), '{:.2f}')} |")
    print(f"| {total:,} concurrent calls from one event loop, calls/s | {cell(ours['gather'], '{:,.0f}')} | "
          f"{cell(theirs.get('gather'), '{:,.0f}')} |")
    print(f"| {total:,} blocking calls from 32 threads, calls/s (same cluster) | {cell(ours['threads'], '{:,.0f}')} | n/a |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
