"""Ray nodes that rh starts and stops itself: worker nodes (``python -m rh_ray.worker_node
join|leave|status`` on a worker machine) and the head a ``ray`` executor starts (:func:`start_head`).

``join`` starts a Ray node there (``ray start --block``) that joins the head's Ray; ``leave`` stops
exactly the processes that node started. Each prints one JSON line. Never imports Ray: it runs the
``ray`` command of the same venv.

Which processes are ours: ``ray start`` runs with ``RH_RAY_NODE=<token>`` in its environment, and
every process Ray starts below it (raylet, agents, log monitor, worker processes) inherits it. A
process group would not do: Ray gives each worker process its own. Processes that rename
themselves (``ray::DashboardAgent``: setproctitle reuses the memory /proc shows as the environment)
lose the visible tag, so ``ray start`` also runs in a session of its own, and the processes of that
session count as the node's too. ``ray stop`` is never used: it stops every Ray of the user on the
machine, the user's own clusters included.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from rh_core.plugin.interfaces import keep_marker
from rh_core.support.processes import LaunchError, launch, tail, wait_ready
from rh_ray.executor import HEAD_DIR, ray_temp_dir

MARKER = "RH_RAY_NODE"
RECORD = "node.json"
JOIN_TIMEOUT = 120.0  # `ray start` takes 4-11 s on an idle 2-core machine, far more when it is busy
GCS_CONNECT_TIMEOUT = 10.0
STOP_GRACE = 10.0  # then SIGKILL: a raylet whose head is gone may ignore SIGTERM
_STARTED = "Ray runtime started"  # what `ray start` prints once the node has joined


def node_dir(root: str, node: str) -> str:
    """State of the Ray node a cluster started for ``node`` on this machine. Keyed by the node's
    address, so machines that share a home directory (NFS) keep apart."""
    safe = "".join(c if c.isalnum() or c in ".-_" else "_" for c in node)
    if set(safe) <= {"."}:  # "." or ".." would leave ray-nodes/
        safe = safe.replace(".", "_")
    return os.path.join(os.path.expanduser(root), "ray-nodes", safe)


def node_ip(node: str) -> str:
    """The IP Ray registers this node under: ``node`` itself, or what that name resolves to here."""
    try:
        return str(ipaddress.ip_address(node))
    except ValueError:
        return socket.gethostbyname(node)


def our_pids(token: str, session: int | None = None) -> list[int]:
    """Live processes carrying ``RH_RAY_NODE=<token>``, or (with ``session``, the pid of the node's
    ``ray start``) in that process's session: the node's processes, never anyone else's."""
    entry = f"\0{MARKER}={token}\0".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as file:
                environ = file.read()
            if session is not None and not environ:
                continue  # a zombie (its environ reads empty), or not ours to read
            if entry not in b"\0" + environ + b"\0" and (session is None or _session_of(name) != session):
                continue
        except OSError:  # gone, or another user's
            continue
        found.append(int(name))
    return found


def _session_of(pid: str) -> int:
    with open(f"/proc/{pid}/stat") as file:
        # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses.
        return int(file.read().rpartition(")")[2].split()[3])


def read_record(directory: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(directory, RECORD)) as file:
            return json.load(file)
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _locked(directory: str) -> Iterator[None]:
    """One join or leave at a time per node: two clients connecting at once must not start two nodes."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    with open(os.path.join(directory, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def stop(directory: str, grace: float = STOP_GRACE) -> dict[str, Any]:
    """Stop the node recorded in ``directory``: SIGTERM its processes, SIGKILL what is left after
    ``grace`` seconds, then forget it."""
    if not os.path.isdir(directory):
        return {"ok": True, "status": "absent", "stopped": 0}
    with _locked(directory):
        return _stop(directory, grace)


def _stop(directory: str, grace: float = STOP_GRACE) -> dict[str, Any]:
    record = read_record(directory)
    if record is None:
        return {"ok": True, "status": "absent", "stopped": 0}
    session = record.get("pid")
    pids = our_pids(record["token"], session)
    # `ray start --block` stops its node's processes itself on SIGTERM, in a few seconds; signalled
    # all at once, several of them would ignore it until SIGKILL. The rest get SIGTERM once it is gone.
    watchdog = record.get("pid") if record.get("pid") in pids else None
    _signal_all([watchdog] if watchdog else pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    left = pids
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = our_pids(record["token"], session)
        if watchdog and watchdog not in left:
            _signal_all(left, signal.SIGTERM)
            watchdog = None
    killed = len(left)
    if left:
        _signal_all(left, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = our_pids(record["token"], session)
    if left:
        return {"ok": False, "status": "stuck", "pids": left,
                "error": f"processes {left} of the Ray node survived SIGKILL; look at them with `ps -o pid,stat,args -p "
                         f"{','.join(map(str, left))}`"}
    os.unlink(os.path.join(directory, RECORD))
    temp_dir = record.get("temp_dir") or ""
    if temp_dir.startswith("/tmp/rh-ray-"):  # a fallback dir of ours outside the state dir: not left behind
        shutil.rmtree(temp_dir, ignore_errors=True)
    return {"ok": True, "status": "stopped", "stopped": len(pids), "killed": killed}


def unreachable(gcs_address: str, timeout: float = GCS_CONNECT_TIMEOUT) -> str | None:
    """Why this machine cannot open a TCP connection to the head's GCS, or None when it can.
    `ray start` itself would retry an unreachable head for as long as we let it."""
    host, _, port = gcs_address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        return f"this machine cannot reach the Ray head's GCS at {gcs_address}: {exc}"
    return None


def join(root: str, gcs_address: str, node: str, num_cpus: int | None = None,
         timeout: float = JOIN_TIMEOUT) -> dict[str, Any]:
    """Make this machine a Ray node of the cluster whose GCS is at ``gcs_address``, offering
    ``num_cpus`` CPUs (default: all it has); idempotent."""
    directory = node_dir(root, node)
    try:
        ip = node_ip(node)
    except OSError as exc:
        return {"ok": False, "status": "failed",
                "error": f"{node!r} does not resolve to an IP address on the machine itself ({exc}); "
                         "give the cluster this machine's IP address instead"}
    with _locked(directory):
        return _join(directory, gcs_address, ip, node, num_cpus, timeout)


def _join(directory: str, gcs_address: str, ip: str, node: str, num_cpus: int | None,
          timeout: float) -> dict[str, Any]:
    record = read_record(directory)
    if record is not None:
        alive = our_pids(record["token"])
        same = (record.get("gcs_address"), record.get("node_ip"), record.get("num_cpus")) == (gcs_address, ip, num_cpus)
        if alive and same:
            return {"ok": True, "status": "running", "node_ip": ip, "pid": record["pid"], "pids": alive}
        # Joined to an earlier head (the server was restarted), other settings, or partly dead: replace it.
        stopped = _stop(directory)
        if not stopped["ok"]:
            return stopped
    problem = unreachable(gcs_address)
    if problem:
        return {"ok": False, "status": "unreachable", "error": problem}
    temp_dir = ray_temp_dir(directory)
    command = [_ray_command(), "start", "--block", f"--address={gcs_address}", f"--node-ip-address={ip}",
               f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    if num_cpus is not None:
        command.append(f"--num-cpus={num_cpus}")
    result, _ = _start_node(directory, command, {"gcs_address": gcs_address, "node": node, "node_ip": ip,
                                                 "num_cpus": num_cpus, "temp_dir": temp_dir}, timeout)
    return result


def _ray_command() -> str:
    """The ``ray`` command beside this Python (the venv's), else the one on the PATH."""
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    if not os.path.exists(ray):
        ray = shutil.which("ray") or ray
    return ray


def _start_node(directory: str, command: list[str], record: dict[str, Any], timeout: float,
                env_vars: dict[str, str] | None = None) -> tuple[dict[str, Any], subprocess.Popen | None]:
    """Run ``command`` (a ``ray start --block``) tagged with a new token, record it in ``directory``
    and wait until Ray says the node runs; the result and the ``ray start`` process (None on failure)."""
    token = secrets.token_hex(8)
    env = {**os.environ, **(env_vars or {}), MARKER: token}
    # Without an explicit mode, a ~/.ray/auth_token on this machine would turn token auth on for this
    # node only, and the other nodes would refuse it (or it them). The head's executor sets the same.
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    log_path = os.path.join(directory, "ray-start.log")
    started = time.monotonic()
    # --block keeps `ray start` as the node's watchdog: if its raylet dies it stops the rest.
    # Its own session, so it outlives the SSH command (or the server) that started it.
    process = launch(command, log_path, truncate_log=True, env=env, cwd=directory)
    record = {**record, "token": token, "pid": process.pid, "started_at": time.time(), "command": command}
    with open(os.path.join(directory, RECORD), "w") as file:
        json.dump(record, file)

    def joined(_: subprocess.Popen) -> bool:
        with open(log_path, errors="replace") as file:
            return _STARTED in file.read()

    try:
        wait_ready(process, joined, timeout=timeout, log_path=log_path, interval=0.2)
    except LaunchError as exc:
        _stop(directory, grace=2.0)  # processes it started before failing, or all of it when too slow
        if exc.exited:
            return {"ok": False, "status": "failed",
                    "error": f"`ray start` exited with code {process.returncode}", "log": tail(log_path, 25)}, None
        process.wait()
        return {"ok": False, "status": "timeout",
                "error": f"`ray start` did not start within {timeout:.0f} s", "log": tail(log_path, 25)}, None
    return {"ok": True, "status": "started", "node_ip": record["node_ip"], "pid": process.pid,
            "gcs_address": record["gcs_address"], "seconds": round(time.monotonic() - started, 2)}, process


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free right now (held open together, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def start_head(directory: str, node_ip: str, temp_dir: str, num_cpus: int | None = None,
               env_vars: dict[str, str] | None = None,
               timeout: float = JOIN_TIMEOUT) -> tuple[dict[str, Any], subprocess.Popen | None]:
    """Make sure a Ray head recorded in ``directory`` runs on this machine, detached from the caller,
    so it can outlive the server that starts it (``restart_server(keep=("ray",))``).

    A head recorded there that still runs with the same ``node_ip``, ``num_cpus`` and ``env_vars``
    and answers at its GCS is reused (status ``"running"``); otherwise it is stopped and a new one
    started (``"started"``), at free ports, so heads of other servers on the machine never clash.
    Returns the result (``gcs_address`` among it) and the ``ray start`` process when this call
    started it. Its processes carry the same tag as worker nodes, so :func:`stop` ends only them.
    """
    settings = {"node_ip": node_ip, "num_cpus": num_cpus, "env_vars": env_vars or {}}
    with _locked(directory):
        record = read_record(directory)
        if record is not None:
            alive = our_pids(record["token"])
            same = all(record.get(key) == value for key, value in settings.items())
            if alive and same and unreachable(record["gcs_address"], timeout=2.0) is None:
                return {"ok": True, "status": "running", "node_ip": node_ip, "pid": record["pid"],
                        "gcs_address": record["gcs_address"], "pids": alive}, None
            stopped = _stop(directory)
            if not stopped["ok"]:
                return stopped, None
        gcs_port, client_port, agent_port = free_ports(3)
        command = [_ray_command(), "start", "--head", "--block", f"--port={gcs_port}", f"--node-ip-address={node_ip}",
                   f"--temp-dir={temp_dir}", "--include-dashboard=false", f"--ray-client-server-port={client_port}",
                   f"--dashboard-agent-listen-port={agent_port}", "--disable-usage-stats"]
        if num_cpus is not None:
            command.append(f"--num-cpus={num_cpus}")
        host = f"[{node_ip}]" if ":" in node_ip else node_ip
        return _start_node(directory, command, {**settings, "gcs_address": f"{host}:{gcs_port}", "node": "head",
                                                "temp_dir": temp_dir}, timeout, env_vars)


def stop_head(state_dir: str) -> dict[str, Any]:
    """Stop what is left of the Ray head that the server with ``state_dir`` started (nothing, when
    that server stopped it itself), unless ``restart_server(keep=("ray",))`` asked to keep it for
    the next server (status ``"kept"``)."""
    state_dir = os.path.expanduser(state_dir)
    if os.path.exists(keep_marker(state_dir, "ray")):
        return {"ok": True, "status": "kept"}
    return stop(os.path.join(state_dir, HEAD_DIR))


def status(root: str, node: str) -> dict[str, Any]:
    directory = node_dir(root, node)
    record = read_record(directory)
    if record is None:
        return {"ok": True, "status": "absent", "pids": []}
    pids = our_pids(record["token"])
    return {"ok": True, "status": "running" if pids else "dead", "pids": pids, **record}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rh_ray.worker_node", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["join", "leave", "status", "stop-head"])
    parser.add_argument("--root", help="the cluster's remote dir on this machine (~ allowed); not for stop-head")
    parser.add_argument("--node", help="this machine's address in the cluster; not for stop-head")
    parser.add_argument("--state-dir", help="the server's state dir (~ allowed); stop-head only")
    parser.add_argument("--gcs-address", help="the head's Ray address (host:port); join only")
    parser.add_argument("--num-cpus", type=int, help="CPUs this node offers Ray (default: all); join only")
    args = parser.parse_args(argv)
    if args.action == "stop-head":
        if not args.state_dir:
            parser.error("stop-head needs --state-dir")
        print(json.dumps(result := stop_head(args.state_dir)))
        return 0 if result["ok"] else 1
    if not (args.root and args.node):
        parser.error(f"{args.action} needs --root and --node")
    if args.action == "join":
        if not args.gcs_address:
            parser.error("join needs --gcs-address")
        result = join(args.root, args.gcs_address, args.node, args.num_cpus)
    elif args.action == "leave":
        result = stop(node_dir(args.root, args.node))
    else:
        result = status(args.root, args.node)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
