#!/usr/bin/env python
"""Method calls on a remote instance: rh_core (``rh.module``) against a Ray actor, in one run.

    python bench/methods.py            # about a minute on 2 idle cores
    python bench/methods.py --quick    # smoke run

Columns: an instance of ``workload.Adder`` on rh_core's local cluster with the ``process`` executor
(its own worker process) and with the ``ray`` executor (an actor the server owns), a raw Ray actor
(``ray.init(num_cpus=2, address="local")``, ``ray.get(actor.add.remote(1, 2))``), and for scale a
plain function ``add`` on the ``process`` executor. Rows: ``add(1, 2)`` one call at a time
(p50/p90/p99 ms), and 1,000 calls from 32 threads (calls/s; the instance runs one method at a
time, as a Ray actor does by default). Prints the command, machine and a markdown table on stdout.
"""

from __future__ import annotations

import os

os.environ["RAY_AUTH_MODE"] = "disabled"  # before Ray can be imported: see bench.py
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable  # noqa: E402

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)

import bench  # noqa: E402  (its measurements, machine description and clean-up)
import workload  # noqa: E402

COLUMNS = {
    "process": "rh_core instance, `process`",
    "ray": "rh_core instance, `ray` (an actor)",
    "rawray": "raw Ray actor",
    "function": "rh_core function, `process`",
}


def rh_instance(executor: str, state_dir: str) -> tuple[Callable, Callable[[], None]]:
    import rh_core as rh

    options = {"num_workers": 2} if executor == "process" else {"num_cpus": 2}
    cluster = rh.LocalCluster(state_dir=state_dir, executor=executor, executor_options=options)
    adder = rh.module(workload.Adder).to(cluster, name="bench-adder")()
    return adder.add, cluster.stop_server


def rh_function(state_dir: str) -> tuple[Callable, Callable[[], None]]:
    import rh_core as rh

    cluster = rh.LocalCluster(state_dir=state_dir, executor="process", executor_options={"num_workers": 2})
    return rh.function(workload.add).to(cluster), cluster.stop_server


def ray_actor(temp_dir: str) -> tuple[Callable, Callable[[], None]]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, address="local", _temp_dir=temp_dir)
    actor = ray.remote(workload.Adder).remote()
    return (lambda a, b: ray.get(actor.add.remote(a, b))), ray.shutdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: N=100, 200 threaded calls")
    args = parser.parse_args(argv)
    params = bench.Params(args.quick)
    os.chdir(bench.REPO)  # the class travels by reference from the checkout
    run_dir = tempfile.mkdtemp(prefix="rhm-", dir="/tmp")
    starts: dict[str, Callable[[], tuple[Callable, Callable[[], None]]]] = {
        "process": lambda: rh_instance("process", os.path.join(run_dir, "p")),
        "ray": lambda: rh_instance("ray", os.path.join(run_dir, "r")),
        "rawray": lambda: ray_actor(os.path.join(run_dir, "R")),
        "function": lambda: rh_function(os.path.join(run_dir, "f")),
    }
    cells: dict[str, dict[str, str]] = {"seq": {}, "threads": {}}
    print(f"command: `{bench.command_line()}`  \nmachine: {bench.machine()}  \nversions: {bench.versions()}\n")
    began = time.perf_counter()
    try:
        for key, start in starts.items():
            bench.log(f"{key}: starting")
            stop: Callable[[], Any] | None = None
            try:
                call, stop = start()
                cells["seq"][key] = bench.measure_sequential(call, params.seq_n, params.seq_warmup)
                cells["threads"][key] = bench.measure_threads(call, params.thread_calls, params.threads)
            except Exception as exc:
                bench.log(f"{key} failed: {type(exc).__name__}: {exc}")
                cells["seq"].setdefault(key, bench.FAILED)
                cells["threads"].setdefault(key, bench.FAILED)
            finally:
                if stop is not None:
                    stop()
            bench.log(f"{key}: {cells['seq'][key]} ms, {cells['threads'][key]} calls/s")
    finally:
        bench.clean_up(run_dir)
        bench.log(f"total {time.perf_counter() - began:.0f} s")
    rows = [(f"sequential `add(1, 2)`, p50 / p90 / p99 ms (N={params.seq_n}, after {params.seq_warmup} warm-up)",
             cells["seq"]),
            (f"{params.thread_calls:,} calls from {params.threads} threads, calls/s", cells["threads"])]
    print("| metric | " + " | ".join(COLUMNS.values()) + " |")
    print("|---|" + "---:|" * len(COLUMNS))
    for label, row in rows:
        print(f"| {label} | " + " | ".join(row.get(key, bench.NA) for key in COLUMNS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
