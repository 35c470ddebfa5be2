"""Load and memory under concurrency, against one local cluster: ``python bench/load.py``.

1. **concurrency**: 2 client processes × 32 threads × 500 calls of ``add(i, j)`` each; every
   result is checked; errors and wrong results are counted.
2. **enqueue order**: 8 threads each make 50 ``f.enqueue`` calls of one function, which records when
   each call ran: calls never overlap, and each caller's calls run in the order it made them.
3. **memory**: the server's resident memory (VmRSS) after 10,000 and after 100,000 plain calls.

Prints one markdown table (and the command); figures go into RELIABILITY.md. The server lives under
a fresh ``/tmp/rhb-load-*`` directory and is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import rh_core as rh  # noqa: E402

import workload  # noqa: E402


def client(state_dir: str, threads: int, calls: int, tag: int) -> None:
    """One client process: ``threads`` threads × ``calls`` calls; prints {"ok", "errors", "wrong"}."""
    cluster = rh.LocalCluster(state_dir=state_dir)
    f = rh.function(workload.add).to(cluster)
    counts = {"ok": 0, "errors": 0, "wrong": 0}
    lock = threading.Lock()
    first_errors: list[str] = []

    def run(thread: int) -> None:
        for i in range(calls):
            a, b = tag * 1_000_000 + thread * 1_000 + i, i
            try:
                result = f(a, b)
            except Exception as exc:  # counted: the load test reports every failure
                with lock:
                    counts["errors"] += 1
                    if len(first_errors) < 3:
                        first_errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                counts["ok" if result == a + b else "wrong"] += 1

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, range(threads)))
    print(json.dumps({**counts, "first_errors": first_errors}))


def server_rss_kib(cluster: rh.LocalCluster) -> int:
    pid = cluster.status()["pid"]
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def calls_from_threads(f, total: int, threads: int = 4) -> None:
    def run(count: int) -> None:
        for i in range(count):
            f(i, 1)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, [total // threads] * threads))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", nargs=4, metavar=("STATE_DIR", "THREADS", "CALLS", "TAG"), help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=500, help="calls per thread in the concurrency test")
    parser.add_argument("--memory-calls", type=int, default=100_000, help="calls before the second memory reading")
    args = parser.parse_args()
    if args.client:
        state_dir, threads, calls, tag = args.client
        client(state_dir, int(threads), int(calls), int(tag))
        return
    root = tempfile.mkdtemp(prefix="rhb-load-")
    cluster = rh.LocalCluster(state_dir=os.path.join(root, "state"), executor_options={"num_workers": 2})
    rows = []
    try:
        cluster.connection()
        print("concurrency: 2 processes x 32 threads", file=sys.stderr)
        started = time.perf_counter()
        processes = [subprocess.Popen([sys.executable, __file__, "--client", cluster.state_dir, "32", str(args.calls),
                                       str(tag)], stdout=subprocess.PIPE, text=True) for tag in (1, 2)]
        reports = [json.loads(p.communicate()[0]) for p in processes]
        elapsed = time.perf_counter() - started
        total = {key: sum(r[key] for r in reports) for key in ("ok", "errors", "wrong")}
        expected = 2 * 32 * args.calls
        rows.append(("2 processes × 32 threads × %d calls: correct / errors / wrong" % args.calls,
                     f"{total['ok']:,} / {total['errors']} / {total['wrong']} of {expected:,} "
                     f"({expected / elapsed:,.0f} calls/s)"))
        errors = [e for r in reports for e in r["first_errors"]]
        if errors:
            rows.append(("first errors", "; ".join(errors)))

        print("enqueue order: 8 callers", file=sys.stderr)
        log_path = os.path.join(root, "enqueued.log")
        recorder = rh.function(workload.record_enqueued).to(cluster)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda caller: [recorder.enqueue(log_path, caller, seq) for seq in range(50)], range(8)))
        with open(log_path) as f:
            runs = [(int(c), int(s), float(a), float(b)) for c, s, a, b in (line.split() for line in f)]
        runs.sort(key=lambda run: run[2])
        overlaps = sum(1 for before, after in zip(runs, runs[1:]) if after[2] < before[3])
        out_of_order = 0
        for caller in range(8):
            seqs = [seq for who, seq, _, _ in runs if who == caller]  # in the order they ran
            out_of_order += sum(1 for before, after in zip(seqs, seqs[1:]) if after < before)
        rows.append(("enqueue, 8 callers × 50 calls: calls / overlapping / out of caller order",
                     f"{len(runs)} / {overlaps} / {out_of_order}"))

        print("memory: 10,000 then %d calls" % args.memory_calls, file=sys.stderr)
        f = rh.function(workload.add).to(cluster)
        calls_from_threads(f, 10_000)
        at_10k = server_rss_kib(cluster)
        calls_from_threads(f, args.memory_calls - 10_000)
        at_end = server_rss_kib(cluster)
        rows.append((f"server RSS after 10,000 / {args.memory_calls:,} calls",
                     f"{at_10k / 1024:.1f} MiB / {at_end / 1024:.1f} MiB ({(at_end / at_10k - 1) * 100:+.1f}%)"))
    finally:
        cluster.stop_server()
    print(f"`python bench/load.py` on {platform.node()} ({os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f}):\n")
    print("| measure | result |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
