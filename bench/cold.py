"""One cold start, run by bench.py in a fresh interpreter: ``python bench/cold.py STACK STATE_DIR``.

Imports, starting the server (or Ray, or the pyzmq floor server) and the first ``add(1, 2)`` all
happen here, so all of them count. Prints one JSON line: the wall-clock time (``time.time()``) at
which the first result arrived, for the parent to subtract its own spawn time from; then stops
what it started.
"""

import time

_T0 = time.time()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


def main(stack: str, state_dir: str) -> None:
    first = None
    if stack in ("process", "ray"):
        import rh_core as rh

        import workload

        options = {"num_workers": 2} if stack == "process" else {"num_cpus": 2}
        cluster = rh.LocalCluster(state_dir=state_dir, executor=stack, executor_options=options)
        try:
            f = rh.function(workload.add).to(cluster)
            result = f(1, 2)
            first = time.time()
        finally:
            cluster.stop_server()
    elif stack == "rawray":
        import ray

        import workload

        ray.init(num_cpus=2, include_dashboard=False, address="local", _temp_dir=state_dir)
        try:
            result = ray.get(ray.remote(workload.add).remote(1, 2))
            first = time.time()
        finally:
            ray.shutdown()
    elif stack == "zmq":
        import workload
        import zmq_floor

        server = zmq_floor.FloorServer()
        try:
            result = server.call(workload.add, 1, 2)
            first = time.time()
        finally:
            server.stop()
    else:
        raise SystemExit(f"unknown stack {stack!r}")
    if result != 3:
        raise SystemExit(f"add(1, 2) returned {result!r}")
    print(json.dumps({"first": first, "started": _T0}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
