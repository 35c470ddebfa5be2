#!/usr/bin/env python
"""Speed benchmark of rh_core against raw Ray and bare pyzmq floors (one hop and two), in one run.

    python bench/bench.py                      # the full run (a few minutes on 2 cores)
    python bench/bench.py --quick              # smoke run with smaller sizes
    python bench/bench.py --only process,zmq,relay   # some columns only (process, ray, byo, rawray, zmq, relay)

Prints the command line, the machine and one markdown table (rows: metrics, columns: stacks) on
stdout; progress goes to stderr. See bench/README.md for what each row means.
"""

from __future__ import annotations

import os

# Before anything can import Ray: no token auth (it would write ~/.ray/auth_token and switch auth
# on for every later Ray on the machine) and no usage reporting.
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from typing import Any, Callable  # noqa: E402

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)  # workload and zmq_floor; Ray workers get the driver's script dir too

import workload  # noqa: E402

STACKS = {  # key -> column title, in column order
    "process": "rh_core `process`",
    "ray": "rh_core `ray`",
    "byo": "rh_core BYO over SSH (loopback)",
    "rawray": "raw Ray",
    "zmq": "pyzmq floor",
    "relay": "two-hop floor (unix sockets)",
}
RUN_ORDER = ("zmq", "relay", "process", "byo", "ray", "rawray")  # cheapest first: a broken setup shows early
NA = "n/a"
FAILED = "failed"
COLD_TIMEOUT = 300.0
COLD_REPS = 3  # cold starts counted (their median), after one that writes the bytecode cache
COLD_DIRS = {"process": "cp", "ray": "cr", "rawray": "cR", "zmq": "cz"}  # short: see run_dir


# -------------------------------------------------------------------------------------------------
# Parameters


class Params:
    def __init__(self, quick: bool):
        self.quick = quick
        self.seq_n = 100 if quick else 500
        self.seq_warmup = 50
        self.thread_calls = 200 if quick else 1000
        self.threads = 32
        self.map_n = 2_000 if quick else 10_000
        self.echo_bytes = (10 if quick else 100) * 1024 * 1024
        self.echo_reps = 3
        self.startup_reps = 5


def log(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# -------------------------------------------------------------------------------------------------
# The stacks: each offers call(a, b), map(n) (or None), echo(x), start() and stop().


class RhStack:
    def __init__(self, executor: str, state_dir: str):
        self.executor = executor
        self.state_dir = state_dir
        self.cluster = None
        self.server_pid: int | None = None

    def start(self) -> None:
        import rh_core as rh

        options = {"num_workers": 2} if self.executor == "process" else {"num_cpus": 2}
        self.cluster = rh.LocalCluster(state_dir=self.state_dir, executor=self.executor, executor_options=options)
        self._add = rh.function(workload.add).to(self.cluster)
        self._echo = rh.function(workload.echo).to(self.cluster)
        state = self.cluster.read_state() or {}
        self.server_pid = state.get("pid")
        for fn in (self._add, self._echo):
            shipped = fn._shipped  # private, but the benchmark must not silently measure by-value shipping
            if shipped is None or shipped.function_ref is None:
                raise RuntimeError(f"{fn.name} would go by value, not by reference; run from inside the git checkout")

    def call(self, a, b):
        return self._add(a, b)

    def map(self, n: int):
        return self._add.map(range(n), range(n))

    def echo(self, x):
        return self._echo(x)

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop_server()


class ByoStack(RhStack):
    """A BYO cluster on a loopback sshd the benchmark starts: calls go through bootstrap and a tunnel."""

    def __init__(self, run_dir: str, cells: dict):
        super().__init__("process", run_dir)
        self.cells = cells
        self._sshd = None

    def start(self) -> None:
        import pathlib

        import rh_core as rh
        from rh_core.bootstrap.wheels import Platform, cache_root, resolve_wheelhouse

        from rh_core.testing.sshd import start_sshd

        os.makedirs(self.state_dir, exist_ok=True)
        server, self._sshd = start_sshd(pathlib.Path(self.state_dir))
        creds = {"ssh_user": server.user, "ssh_private_key": str(server.client_key), "ssh_port": server.port,
                 "known_hosts": os.path.join(self.state_dir, "known_hosts"), "trust_new_host": True}

        def new_cluster():
            cluster = rh.cluster(name="bench-byo", ips=[server.host], ssh_creds=creds,
                                 executor_options={"num_workers": 2})
            cluster.remote_dir = os.path.join(self.state_dir, "remote")
            return cluster

        # "Once wheels are cached": the head is this machine, so its platform is this one's.
        resolve_wheelhouse(new_cluster()._distributions(), Platform.here(), cache_root())
        started = time.perf_counter()
        self.cluster = new_cluster()
        self._add = rh.function(workload.add).to(self.cluster)
        self._add(1, 2)
        self.cells["byo_fresh"]["byo"] = f"{(time.perf_counter() - started) * 1000:,.0f}"
        self._echo = rh.function(workload.echo).to(self.cluster)
        started = time.perf_counter()
        rh.function(workload.add).to(self.cluster)
        self.cells["byo_to"]["byo"] = f"{(time.perf_counter() - started) * 1000:,.0f}"
        started = time.perf_counter()
        again = new_cluster()
        again.status()
        self.cells["byo_reconnect"]["byo"] = f"{(time.perf_counter() - started) * 1000:,.0f}"
        again.transport.close()

    def stop(self) -> None:
        try:
            if self.cluster is not None:
                self.cluster.down()
        finally:
            if self._sshd is not None:
                self._sshd.terminate()
                self._sshd.wait(10)


class RawRayStack:
    def __init__(self, temp_dir: str):
        self.temp_dir = temp_dir
        self.ray = None

    def start(self) -> None:
        import ray

        self.ray = ray
        # _temp_dir only keeps this Ray's files (and process command lines) under the run's own
        # directory; it is otherwise the ray.init the brief asks for.
        ray.init(num_cpus=2, include_dashboard=False, address="local", _temp_dir=self.temp_dir)
        self._add = ray.remote(workload.add)
        self._echo = ray.remote(workload.echo)

    def call(self, a, b):
        return self.ray.get(self._add.remote(a, b))

    def map(self, n: int):
        return self.ray.get([self._add.remote(i, i) for i in range(n)])

    def echo(self, x):
        return self.ray.get(self._echo.remote(x))

    def stop(self) -> None:
        if self.ray is not None and self.ray.is_initialized():
            self.ray.shutdown()


class ZmqStack:
    """The bare floors: one hop to a server process through pyzmq, or (``relay_workers``) two over
    unix sockets, through a relay to worker processes: the shape of a local call to rh_core's
    ``process`` executor."""

    map = None  # a bare round trip has no map

    def __init__(self, relay_workers: int = 0):
        self.server = None
        self.relay_workers = relay_workers

    def start(self) -> None:
        import zmq_floor

        self.server = zmq_floor.FloorServer(self.relay_workers)

    def call(self, a, b):
        return self.server.call(workload.add, a, b)

    def echo(self, x):
        return self.server.call(workload.echo, x)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


# -------------------------------------------------------------------------------------------------
# Measurements


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    position = (len(sorted_values) - 1) * q
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def measure_sequential(call: Callable, n: int, warmup: int) -> str:
    for _ in range(warmup):
        call(1, 2)
    latencies = []
    clock = time.perf_counter
    for _ in range(n):
        start = clock()
        result = call(1, 2)
        latencies.append(clock() - start)
        if result != 3:
            raise AssertionError(f"add(1, 2) returned {result!r}")
    latencies.sort()
    return " / ".join(f"{percentile(latencies, q) * 1000:.3f}" for q in (0.50, 0.90, 0.99))


def measure_threads(call: Callable, total: int, threads: int) -> str:
    shares = [total // threads + (1 if i < total % threads else 0) for i in range(threads)]
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def worker(count: int) -> None:
        try:
            call(1, 2)  # this thread's own connection is set up before the clock starts
        except BaseException as exc:
            errors.append(exc)
        barrier.wait()
        try:
            for _ in range(count):
                if call(1, 2) != 3:
                    raise AssertionError("add(1, 2) != 3")
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(count,), daemon=True) for count in shares]
    for thread in pool:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return f"{total / elapsed:,.0f}"


def measure_map(map_fn: Callable | None, n: int) -> str:
    if map_fn is None:
        return NA
    map_fn(16)  # warm
    start = time.perf_counter()
    results = map_fn(n)
    elapsed = time.perf_counter() - start
    if list(results) != [2 * i for i in range(n)]:
        raise AssertionError("map returned wrong results")
    return f"{n / elapsed:,.0f}"


def measure_echo(echo: Callable, payload: Any, reps: int, same: Callable[[Any, Any], bool] | None = None) -> str:
    """MB/s of the best of ``reps`` round trips of ``payload`` (``bytes``, or anything ``same``
    compares: what comes back must be the same type, and ``same`` as what went)."""
    def equal(result: Any, sent: Any) -> bool:
        return type(result) is type(sent) and (same(result, sent) if same else result == sent)

    small = payload[: 1024 * 1024]
    if not equal(echo(small), small):  # warm: function loaded, buffers allocated once
        raise AssertionError("echo returned something else")
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        result = echo(payload)
        elapsed = time.perf_counter() - start
        if not equal(result, payload):
            raise AssertionError(f"echo returned a different {type(result).__name__}")
        del result
        best = min(best, elapsed)
    return f"{len(memoryview(payload)) / 1e6 / best:,.0f}"


def measure_array_echo(echo: Callable, payload: bytes, reps: int) -> str:
    """:func:`measure_echo` of a numpy ``uint8`` array holding ``payload``; it may come back
    read-only (a view of shared memory), as the function may receive it."""
    import numpy

    array = numpy.frombuffer(payload, dtype=numpy.uint8).copy()
    return measure_echo(echo, array, reps, numpy.array_equal)


def run_stack(key: str, stack: Any, params: Params, payload: bytes, cells: dict) -> None:
    started = time.perf_counter()
    log(f"{key}: starting")
    try:
        stack.start()
    except Exception:
        log(f"{key}: could not start:\n{traceback.format_exc()}")
        for row in ("seq", "threads", "map", "echo", "echo_numpy"):
            cells[row][key] = FAILED
        stack_stop(key, stack)
        return
    try:
        log(f"{key}: up after {time.perf_counter() - started:.1f} s")
        metrics = (
            ("seq", lambda: measure_sequential(stack.call, params.seq_n, params.seq_warmup)),
            ("threads", lambda: measure_threads(stack.call, params.thread_calls, params.threads)),
            ("map", lambda: measure_map(stack.map, params.map_n)),
            ("echo", lambda: measure_echo(stack.echo, payload, params.echo_reps)),
            ("echo_numpy", lambda: measure_array_echo(stack.echo, payload, params.echo_reps)),
        )
        for row, measure in metrics:
            t = time.perf_counter()
            try:
                cells[row][key] = measure()
            except Exception:
                log(f"{key}: {row} failed:\n{traceback.format_exc()}")
                cells[row][key] = FAILED
            log(f"{key}: {row} = {cells[row][key]} ({time.perf_counter() - t:.1f} s)")
    finally:
        stack_stop(key, stack)
    log(f"{key}: done in {time.perf_counter() - started:.1f} s")


def stack_stop(key: str, stack: Any) -> None:
    try:
        stack.stop()
    except Exception:
        log(f"{key}: stop failed:\n{traceback.format_exc()}")


def measure_cold(key: str, state_dir: str, reps: int = COLD_REPS) -> str:
    """The median of ``reps`` cold starts (:func:`cold_start`, each with a new state dir), after one
    that is not counted: it writes the bytecode cache (under the run dir, whatever
    PYTHONDONTWRITEBYTECODE says), as installing a package does, so that no run compiles sources."""
    env = {**os.environ, "PYTHONPYCACHEPREFIX": os.path.join(os.path.dirname(state_dir), "pycache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    times = []
    for rep in range(reps + 1):
        elapsed = cold_start(key, f"{state_dir}{rep}", env)
        if elapsed is None:
            return FAILED
        times.append(elapsed)
    return f"{statistics.median(times[1:]) * 1000:,.0f}"


def cold_start(key: str, state_dir: str, env: dict[str, str]) -> float | None:
    """Spawn ``cold.py`` and time spawn -> first result (wall clock, s), imports and server start included."""
    command = [sys.executable, os.path.join(BENCH, "cold.py"), key, state_dir]
    spawned = time.time()
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=COLD_TIMEOUT,
                              stdin=subprocess.DEVNULL, env=env)
    except subprocess.TimeoutExpired:
        log(f"cold {key}: no result within {COLD_TIMEOUT:.0f} s")
        return None
    finally:
        stop_leftover_server(state_dir)
    if done.returncode != 0:
        log(f"cold {key}: exit code {done.returncode}:\n{done.stderr[-3000:]}")
        return None
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report["first"] - spawned


def stop_leftover_server(state_dir: str) -> None:
    """If a cold start left its rh server running (it crashed or timed out), stop it by its pid."""
    try:
        with open(os.path.join(state_dir, "server.json")) as file:
            pid = int(json.load(file)["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if process_alive(pid) and state_dir in cmdline(pid):
        log(f"stopping server pid {pid} left by a cold start")
        terminate([pid])


def best_of(command: list[str], reps: int, *, parse: Callable[[str], float] | None = None) -> float:
    """Best of ``reps`` runs in fresh processes: the printed seconds if ``parse``, else the wall time."""
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=120)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{shlex.join(command)} exited with {done.returncode}: {done.stderr[-2000:]}")
        best = min(best, parse(done.stdout) if parse else wall)
    return best * 1000


IMPORT_PROBE = (
    "import time; t = time.perf_counter(); import rh_core; t = time.perf_counter() - t; "
    "import sys; print(t, int('ray' in sys.modules))"
)


def rh_script() -> list[str]:
    """The `rh` console script of this interpreter (not a pyenv shim, whose own cost is not rh's)."""
    beside = os.path.join(os.path.dirname(sys.executable), "rh")
    if os.access(beside, os.X_OK):
        return [beside]
    found = shutil.which("rh")
    return [found] if found else [sys.executable, "-c", "from rh_core.cli import main; main()"]


# -------------------------------------------------------------------------------------------------
# Processes this run started: the run directory appears in their command lines (servers, Ray's
# gcs_server and raylet), or they descend from this process.


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as file:
            return int(file.read().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def our_processes(run_dir: str) -> list[int]:
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me or not process_alive(int(entry)):
            continue
        pid = int(entry)
        if run_dir in cmdline(pid):
            found.append(pid)
            continue
        ancestor, hops = parent_of(pid), 0
        while ancestor not in (None, 0, 1) and hops < 64:
            if ancestor == me:
                found.append(pid)
                break
            ancestor, hops = parent_of(ancestor), hops + 1
    return found


def terminate(pids: list[int], grace: float = 5.0) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(process_alive(pid) for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        if process_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def clean_up(run_dir: str) -> None:
    deadline = time.monotonic() + 15  # Ray's processes take a few seconds to exit after shutdown
    left = our_processes(run_dir)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = our_processes(run_dir)
    if left:
        log(f"processes this run started are still there; stopping them: {left}")
        terminate(left)
    shutil.rmtree(run_dir, ignore_errors=True)


# -------------------------------------------------------------------------------------------------
# Report


def command_line() -> str:
    try:
        with open("/proc/self/cmdline", "rb") as file:
            return shlex.join(arg.decode() for arg in file.read().split(b"\0") if arg)
    except OSError:
        return shlex.join([sys.executable, *sys.argv])


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as file:
            cpu = next(line.split(":", 1)[1].strip() for line in file if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        with open("/proc/meminfo") as file:
            mem = f", {int(file.readline().split()[1]) / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        mem = ""
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"nproc {nproc} ({cpu}{mem}), {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}; load average at start {load}")


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for dist in ("rh-core", "rh-ray", "ray", "pyzmq", "cloudpickle"):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            pass
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "rh_core", "plugins"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        parts.append(f"git {head}{' + uncommitted changes in rh_core/plugins' if dirty else ''}")
    except (OSError, subprocess.SubprocessError):
        pass
    return ", ".join(parts)


def render(rows: list[tuple[str, dict[str, str]]], keys: list[str]) -> str:
    lines = ["| metric | " + " | ".join(STACKS[k] for k in keys) + " |",
             "|---|" + "---:|" * len(keys)]
    for label, cells in rows:
        lines.append(f"| {label} | " + " | ".join(cells.get(k, NA) for k in keys) + " |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: N=100, 200 threaded calls, map of 2,000, 10 MiB echo")
    parser.add_argument("--only", default=",".join(STACKS),
                        help=f"comma-separated columns to run, of {','.join(STACKS)} (default: all)")
    args = parser.parse_args(argv)
    keys = [key.strip() for key in args.only.split(",") if key.strip()]
    unknown = [key for key in keys if key not in STACKS]
    if unknown or not keys:
        parser.error(f"--only takes names from {','.join(STACKS)}; got {args.only!r}")
    keys = [key for key in STACKS if key in keys]  # column order
    params = Params(args.quick)

    # rh_core ships a function by reference when its module lies under the git root of the current
    # directory; run from the checkout whatever the caller's directory.
    os.chdir(REPO)
    header = [
        "# rh_core speed benchmark",
        "",
        f"command: `{command_line()}`  ",
        f"machine: {machine()}  ",
        f"versions: {versions()}",
        "",
    ]
    run_dir = tempfile.mkdtemp(prefix="rhb-", dir="/tmp")  # short: Ray's unix socket paths must fit 107 bytes
    signal.signal(signal.SIGTERM, _interrupt)  # so `finally` stops the servers on a plain kill too
    began = time.perf_counter()

    cells: dict[str, dict[str, str]] = {row: {} for row in (
        "seq", "threads", "map", "echo", "echo_numpy", "cold", "import", "help", "byo_fresh", "byo_to", "byo_reconnect")}
    try:
        payload = bytes(range(256)) * (params.echo_bytes // 256)
        for key in RUN_ORDER:
            if key not in keys:
                continue
            if key == "process":
                stack = RhStack("process", os.path.join(run_dir, "p"))
            elif key == "ray":
                stack = RhStack("ray", os.path.join(run_dir, "r"))
            elif key == "byo":
                stack = ByoStack(os.path.join(run_dir, "b"), cells)
            elif key == "rawray":
                stack = RawRayStack(os.path.join(run_dir, "R"))
            elif key == "relay":
                stack = ZmqStack(relay_workers=os.cpu_count() or 1)  # as many workers as `process` has
            else:
                stack = ZmqStack()
            run_stack(key, stack, params, payload, cells)
        del payload

        for key in RUN_ORDER:
            if key in keys and key in COLD_DIRS:
                log(f"cold start: {key}")
                cells["cold"][key] = measure_cold(key, os.path.join(run_dir, COLD_DIRS[key]))
                log(f"cold start: {key} = {cells['cold'][key]} ms")

        rh_keys = [key for key in ("process", "ray") if key in keys]
        if rh_keys:
            log("import rh_core and rh --help")
            try:
                ms = best_of([sys.executable, "-c", IMPORT_PROBE], params.startup_reps,
                             parse=lambda out: float(out.split()[0]))
                pulled_ray = subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True,
                                            cwd=REPO).stdout.split()[1] == "1"
                value = f"{ms:,.0f}" + (" (imports ray!)" if pulled_ray else "")
            except Exception:
                log(f"import timing failed:\n{traceback.format_exc()}")
                value = FAILED
            try:
                help_value = f"{best_of([*rh_script(), '--help'], params.startup_reps):,.0f}"
            except Exception:
                log(f"rh --help timing failed:\n{traceback.format_exc()}")
                help_value = FAILED
            for key in rh_keys:  # one measurement: neither depends on the executor
                cells["import"][key] = value
                cells["help"][key] = help_value
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        clean_up(run_dir)
        log(f"total {time.perf_counter() - began:.0f} s")

    from importlib.metadata import entry_points

    plugins = ", ".join(sorted(ep.name for ep in entry_points(group="rh_core.plugins"))) or "none"
    mib = params.echo_bytes // (1024 * 1024)
    rows = [
        (f"sequential `add(1, 2)`, p50 / p90 / p99 ms (N={params.seq_n}, after {params.seq_warmup} warm-up)",
         cells["seq"]),
        (f"{params.thread_calls:,} calls from {params.threads} threads, calls/s", cells["threads"]),
        (f"`map` over {params.map_n:,} items, items/s (raw Ray: {params.map_n:,} `.remote` + one `ray.get`)",
         cells["map"]),
        (f"{mib} MiB `bytes` echo, MB/s ({params.echo_bytes / 1e6:.1f} MB / round trip, best of {params.echo_reps})",
         cells["echo"]),
        (f"{mib} MiB numpy array (`uint8`) echo, MB/s (best of {params.echo_reps}; it may come back read-only)",
         cells["echo_numpy"]),
        ((f"cold start to first `add(1, 2)` result, ms (fresh process and state dir: imports, server/Ray start, "
          f"call; median of {COLD_REPS}, bytecode cached)"),
         cells["cold"]),
        (f"`import rh_core`, ms (fresh process, best of {params.startup_reps}; plugins installed: {plugins})",
         cells["import"]),
        (f"`rh --help` wall time, ms (best of {params.startup_reps})", cells["help"]),
        ("BYO: fresh host to first result, ms (venv, install from cached wheels, server start, tunnel)",
         cells["byo_fresh"]),
        ("BYO: a second `.to()` with an unchanged working directory, ms", cells["byo_to"]),
        ("BYO: reconnect to the running server from a new client, ms", cells["byo_reconnect"]),
    ]
    print("\n".join(header))
    print(render(rows, keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
