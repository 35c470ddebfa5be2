#!/usr/bin/env python
"""What showing a function's output costs a call (issue 21): p50 of a quiet ``add`` against the same
``add`` printing one line per call, shown here (the default), in the same run on one local
``process`` cluster (2 workers), in alternating rounds so a busy moment hurts both alike.

    python bench/output.py            # 5 rounds of 2,000 calls each
    python bench/output.py --quick

The shown lines go to /dev/null (a terminal's own drawing cost is not rh's). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)

import workload  # noqa: E402


def p50_ms(call, n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        if call(1, 2) != 3:
            raise AssertionError("add(1, 2) != 3")
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 300 calls")
    args = parser.parse_args()
    rounds, n = (2, 300) if args.quick else (5, 2000)

    import rh_core as rh

    state = tempfile.mkdtemp(prefix="rh-bench-output-")
    cluster = rh.LocalCluster(state_dir=state, executor="process", executor_options={"num_workers": 2})
    shown_here = sys.stdout
    try:
        quiet = rh.function(workload.add).to(cluster)
        loud = rh.function(workload.add_and_print).to(cluster)
        silenced = loud.options(stream_logs=False)
        columns = {"quiet add": quiet, "prints a line, shown here": loud, "prints a line, stream_logs=False": silenced}
        figures: dict[str, list[float]] = {name: [] for name in columns}
        with open(os.devnull, "w") as devnull:
            sys.stdout = devnull
            for call in columns.values():
                p50_ms(call, 200)  # warm: functions imported, connections made
            for _ in range(rounds):
                for name, call in columns.items():
                    figures[name].append(p50_ms(call, n))
    finally:
        sys.stdout = shown_here
        cluster.stop_server()
    quiet_p50 = statistics.median(figures["quiet add"])
    print(f"`python bench/output.py{' --quick' if args.quick else ''}`: {rounds} rounds of {n} sequential calls, "
          f"median of the rounds' p50; Python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f} at the end")
    print()
    print("| call | p50 ms (each round) | median | x quiet |")
    print("|---|---|---:|---:|")
    for name, values in figures.items():
        median = statistics.median(values)
        print(f"| {name} | {' / '.join(f'{v:.3f}' for v in values)} | {median:.3f} | {median / quiet_p50:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
