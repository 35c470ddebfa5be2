"""Install speed on the local cluster: ``python bench/install.py [--runs N]``.

Prints one markdown table comparing, for a small wheel from a local folder (no index):

- **fresh env**: ``.to(cluster, env=rh.env(NEW_NAME, [wheel]))`` — creating the env's venv, pip
  installing the wheel, and starting the env's worker — against the baseline of doing the same by
  hand (``python -m venv --without-pip`` + ``pip --python VENV install``) in a subprocess;
- **repeat .to()**: the same ``.to()`` again with unchanged reqs (nothing to install), against a
  bare ``ping`` round trip to the server.

Everything lives under a fresh ``/tmp/rhb-install-*`` directory; the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import rh_core as rh
from rh_core.testing.functions import module_version
from rh_core.testing.packages import build_wheel


def median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh envs to create per column (default 5)")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="rhb-install-")
    wheels = os.path.join(root, "wheels")
    build_wheel(wheels, "rhbench-small", "1.0")
    requirement = rh.package(name="rhbench-small==1.0", install_method="pip", find_links=wheels, no_index=True)
    cluster = rh.LocalCluster(state_dir=os.path.join(root, "state"), executor_options={"num_workers": 1})
    try:
        cluster.connection()
        fresh, by_hand, repeat, ping = [], [], [], []
        for run in range(args.runs):
            print(f"fresh env {run + 1}/{args.runs}", file=sys.stderr)
            started = time.perf_counter()
            f = rh.function(module_version).to(cluster, env=rh.env(f"bench{run}", [requirement]))
            assert f("rhbench_small")[0] == "1.0"
            fresh.append(time.perf_counter() - started)

            venv = os.path.join(root, f"by-hand-{run}")
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
            subprocess.run([sys.executable, "-m", "pip", "--python", f"{venv}/bin/python", "install", "--quiet",
                            "--no-index", "--find-links", wheels, "rhbench-small==1.0"], check=True)
            subprocess.run([f"{venv}/bin/python", "-c", "import rhbench_small"], check=True)
            by_hand.append(time.perf_counter() - started)
        env = rh.env("bench0", [requirement])
        for _ in range(30):
            started = time.perf_counter()
            rh.function(module_version).to(cluster, env=env)
            repeat.append(time.perf_counter() - started)
            started = time.perf_counter()
            cluster.request("ping", {})
            ping.append(time.perf_counter() - started)
    finally:
        cluster.stop_server()
    print(f"`python bench/install.py --runs {args.runs}` on {platform.node()} ({os.cpu_count()} cores, "
          f"Python {platform.python_version()}), median of the runs:\n")
    print("| measure | rh_core | baseline | baseline is |")
    print("|---|---|---|---|")
    print(f"| fresh env + small wheel, first call | {median_ms(fresh)} | {median_ms(by_hand)} | venv + pip --python + import, by hand |")
    print(f"| repeat `.to()`, reqs unchanged | {median_ms(repeat)} | {median_ms(ping)} | one `ping` round trip |")


if __name__ == "__main__":
    main()
