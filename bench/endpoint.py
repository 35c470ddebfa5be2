"""An HTTP endpoint's and an ASGI app's warm latency and throughput, against their floor: bare uvicorn.

``python bench/endpoint.py [--quick]`` prints the command, the machine and one markdown table
(progress on stderr). Every column serves ``add(a, b)`` of ``workload.py`` on loopback, JSON in
and JSON out, measured in the same run by the same client:

* **rh_core endpoint**: ``rh.function(add).to(cluster).endpoint()`` on a local cluster with the
  ``process`` executor (2 workers), called with the cluster's bearer token: the server's HTTP door
  (aiohttp in its uvloop), a worker that reads the body and writes the response, and back.
* **rh_core ASGI app**: ``rh.asgi(http_floor.app).to(cluster)``, the floor's own app under uvicorn
  in a process the server started, reached through the same door (token checked, request and
  response streamed over the app's Unix socket).
* **bare uvicorn (floor)**: ``http_floor.py``, uvicorn (its default loop and parser) in a process of its own
  with a raw ASGI app that parses the JSON, calls ``add`` in-process and answers JSON. No token,
  no worker hop, no proxy.

The client is aiohttp's, in this process, with keep-alive: **sequential** is one request at a time
on one connection (p50/p90/p99 of N after a warm-up), **concurrent** is 16 requests in flight on
16 connections for a fixed time (requests/s, every answer checked). The cluster's server and the
uvicorn processes live under a fresh ``/tmp/rhb-*`` directory and are stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import http_floor  # noqa: E402
import rh_core as rh  # noqa: E402
from workload import add  # noqa: E402

CONCURRENCY = 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def say(text: str) -> None:
    sys.stderr.write(f"[endpoint bench] {text}\n")
    sys.stderr.flush()


async def measure(url: str, headers: dict[str, str], requests: int, warmup: int, seconds: float) -> dict[str, float]:
    import aiohttp

    body = {"a": 1, "b": 2}
    async with aiohttp.ClientSession(headers=headers) as session:
        async def one() -> None:
            async with session.post(url, json=body) as response:
                assert response.status == 200, (response.status, await response.text())
                assert await response.json() == 3

        for _ in range(warmup):
            await one()
        times = []
        for _ in range(requests):
            started = time.perf_counter()
            await one()
            times.append(time.perf_counter() - started)
    times.sort()
    connector_limit = aiohttp.TCPConnector(limit=CONCURRENCY)
    done = 0
    async with aiohttp.ClientSession(headers=headers, connector=connector_limit) as session:
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with session.post(url, json=body) as response:
                    assert response.status == 200 and await response.json() == 3
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started

    def at(q: float) -> float:
        return times[min(len(times) - 1, int(q * len(times)))] * 1000

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "rps": done / elapsed}


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the floor's uvicorn exited with code {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"the floor's uvicorn did not listen on {port} within {timeout} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer requests, shorter load")
    args = parser.parse_args(argv)
    requests, warmup, seconds = (200, 20, 1.0) if args.quick else (2000, 200, 5.0)
    run_dir = tempfile.mkdtemp(prefix="rhb-", dir="/tmp")
    cluster = rh.LocalCluster(name="bench-endpoint", state_dir=os.path.join(run_dir, "rh"), executor="process",
                              executor_options={"num_workers": 2})
    floor = None
    results = {}
    try:
        say("rh_core endpoint: starting the local cluster and serving add")
        url = rh.function(add).to(cluster).endpoint()
        authorization = {"Authorization": f"Bearer {cluster.http_token()}"}
        results["rh_core endpoint"] = asyncio.run(measure(url, authorization, requests, warmup, seconds))
        say(f"rh_core endpoint: {results['rh_core endpoint']}")
        say("rh_core ASGI app: running http_floor.app with rh.asgi")
        app_url = rh.asgi(http_floor.app, name="floor").to(cluster).http_url()
        results["rh_core ASGI app"] = asyncio.run(measure(app_url, authorization, requests, warmup, seconds))
        say(f"rh_core ASGI app: {results['rh_core ASGI app']}")
        port = free_port()
        floor = subprocess.Popen([sys.executable, os.path.join(HERE, "http_floor.py"), str(port)],
                                 stdin=subprocess.DEVNULL)
        wait_for_port(port, floor)
        results["bare uvicorn (floor)"] = asyncio.run(measure(f"http://127.0.0.1:{port}/", {}, requests, warmup,
                                                              seconds))
        say(f"bare uvicorn: {results['bare uvicorn (floor)']}")
    finally:
        if floor is not None:
            floor.terminate()
            floor.wait(10)
        cluster.stop_server()
        shutil.rmtree(run_dir, ignore_errors=True)
    import importlib.util

    import aiohttp
    import uvicorn

    parser_name = "httptools" if importlib.util.find_spec("httptools") else "h11"

    print(f"`{' '.join(['python', 'bench/endpoint.py', *(argv if argv is not None else sys.argv[1:])])}` on "
          f"{platform.node()} ({os.cpu_count()} CPUs, Python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
          f"uvicorn {uvicorn.__version__} with {parser_name})\n")
    columns = list(results)
    print("| metric | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    print(f"| sequential `POST {{\"a\": 1, \"b\": 2}}`, p50 / p90 / p99 ms (N={requests}, after {warmup} warm-up) | "
          + " | ".join(f"{r['p50']:.3f} / {r['p90']:.3f} / {r['p99']:.3f}" for r in results.values()) + " |")
    print(f"| {CONCURRENCY} requests in flight for {seconds:g} s, requests/s | "
          + " | ".join(f"{r['rps']:,.0f}" for r in results.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
