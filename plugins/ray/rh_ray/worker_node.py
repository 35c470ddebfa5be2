"""Runs on a worker machine of a multi-machine cluster: ``python -m rh_ray.worker_node join|leave|status``.

``join`` starts a Ray node there (``ray start --block``) that joins the head's Ray; ``leave`` stops
exactly the processes that node started. Each prints one JSON line. Never imports Ray: it runs the
``ray`` command of the same venv.

Which processes are ours: ``ray start`` runs with ``RH_RAY_NODE=<token>`` in its environment, and
every process Ray starts below it (raylet, agents, log monitor, worker processes) inherits it. A
process group would not do: Ray gives each worker process its own. ``ray stop`` is never used: it
stops every Ray of the user on the machine, the user's own clusters included.
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

from rh_core.cluster import tail
from rh_ray.executor import ray_temp_dir

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


def our_pids(token: str) -> list[int]:
    """Live processes carrying ``RH_RAY_NODE=<token>``: the node's processes, never anyone else's."""
    entry = f"\0{MARKER}={token}\0".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as file:
                environ = file.read()
        except OSError:  # gone, or another user's
            continue
        # A zombie's environ reads empty, so exited processes never count as alive.
        if entry in b"\0" + environ + b"\0":
            found.append(int(name))
    return found


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
    pids = our_pids(record["token"])
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    left = pids
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = our_pids(record["token"])
    killed = len(left)
    if left:
        _signal_all(left, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = our_pids(record["token"])
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


def join(root: str, gcs_address: str, node: str, timeout: float = JOIN_TIMEOUT) -> dict[str, Any]:
    """Make this machine a Ray node of the cluster whose GCS is at ``gcs_address``; idempotent."""
    directory = node_dir(root, node)
    try:
        ip = node_ip(node)
    except OSError as exc:
        return {"ok": False, "status": "failed",
                "error": f"{node!r} does not resolve to an IP address on the machine itself ({exc}); "
                         "give the cluster this machine's IP address instead"}
    with _locked(directory):
        return _join(directory, gcs_address, ip, node, timeout)


def _join(directory: str, gcs_address: str, ip: str, node: str, timeout: float) -> dict[str, Any]:
    record = read_record(directory)
    if record is not None:
        alive = our_pids(record["token"])
        if alive and record.get("gcs_address") == gcs_address and record.get("node_ip") == ip:
            return {"ok": True, "status": "running", "node_ip": ip, "pid": record["pid"], "pids": alive}
        # Joined to an earlier head (the server was restarted) or partly dead: replace it.
        stopped = _stop(directory)
        if not stopped["ok"]:
            return stopped
    problem = unreachable(gcs_address)
    if problem:
        return {"ok": False, "status": "unreachable", "error": problem}
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    if not os.path.exists(ray):
        ray = shutil.which("ray") or ray
    temp_dir = ray_temp_dir(directory)
    token = secrets.token_hex(8)
    env = dict(os.environ)
    env[MARKER] = token
    # Without an explicit mode, a ~/.ray/auth_token on this machine would turn token auth on for this
    # node only, and the head would refuse it. The head's executor sets the same defaults.
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    command = [ray, "start", "--block", f"--address={gcs_address}", f"--node-ip-address={ip}",
               f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    log_path = os.path.join(directory, "ray-start.log")
    started = time.monotonic()
    with open(log_path, "wb") as log:
        # --block keeps `ray start` as the node's watchdog: if its raylet dies it stops the rest.
        # Its own session, so it outlives this SSH command.
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=env, cwd=directory)
    record = {"token": token, "pid": process.pid, "gcs_address": gcs_address, "node": node, "node_ip": ip,
              "temp_dir": temp_dir, "started_at": time.time(), "command": command}
    with open(os.path.join(directory, RECORD), "w") as file:
        json.dump(record, file)
    while True:
        with open(log_path, errors="replace") as file:
            if _STARTED in file.read():
                return {"ok": True, "status": "started", "node_ip": ip, "pid": process.pid,
                        "seconds": round(time.monotonic() - started, 2)}
        if process.poll() is not None:
            _stop(directory, grace=2.0)  # processes it started before failing
            return {"ok": False, "status": "failed",
                    "error": f"`ray start` exited with code {process.returncode}", "log": tail(log_path, 25)}
        if time.monotonic() - started > timeout:
            _stop(directory, grace=2.0)
            return {"ok": False, "status": "timeout",
                    "error": f"`ray start` did not join within {timeout:.0f} s", "log": tail(log_path, 25)}
        time.sleep(0.2)


def status(root: str, node: str) -> dict[str, Any]:
    directory = node_dir(root, node)
    record = read_record(directory)
    if record is None:
        return {"ok": True, "status": "absent", "pids": []}
    pids = our_pids(record["token"])
    return {"ok": True, "status": "running" if pids else "dead", "pids": pids, **record}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rh_ray.worker_node", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["join", "leave", "status"])
    parser.add_argument("--root", required=True, help="the cluster's remote dir on this machine (~ allowed)")
    parser.add_argument("--node", required=True, help="this machine's address in the cluster")
    parser.add_argument("--gcs-address", help="the head's Ray address (host:port); join only")
    args = parser.parse_args(argv)
    if args.action == "join":
        if not args.gcs_address:
            parser.error("join needs --gcs-address")
        result = join(args.root, args.gcs_address, args.node)
    elif args.action == "leave":
        result = stop(node_dir(args.root, args.node))
    else:
        result = status(args.root, args.node)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
