"""Runs on a gcp-direct cluster's head beside the rh server: stops (or deletes) the cluster's
instances once no call has arrived for the autostop minutes.

The minutes and the action are read from the head instance's metadata (``rh-autostop-mins``,
``rh-autostop-action``) on every round, so ``cluster.keep_warm()`` and ``pause_autostop()`` on
the client change them while this runs. Activity is the server's call count moving, or calls in
flight, asked every INTERVAL seconds. The Compute API is called with the instance's own service
account, through the metadata server's token; workers go first, the head (this machine) last.

Sent to the head and run there as ``python -c SOURCE`` by the rh venv's Python (standard library
and rh_core only), with the arguments ``STATE_DIR SERVER_ENDPOINT SERVER_PID CONFIG_JSON``, where
the config holds ``metadata_url``, ``compute_url``, ``project``, ``zone``, ``instances`` (head
first) and ``interval``. It detaches itself, logs to its stdout, runs once per server (a lock file)
and exits when the server does or after it has stopped the cluster.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
import urllib.request


def log(message: str) -> None:
    print(time.strftime("%Y-%m-%d %H:%M:%S"), message, flush=True)


def metadata(config: dict, path: str) -> str:
    request = urllib.request.Request(f"{config['metadata_url']}/{path}", headers={"Metadata-Flavor": "Google"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def autostop_setting(config: dict) -> tuple[float, str]:
    """(minutes, action) from the head's metadata; -1 minutes: never."""
    minutes = float(metadata(config, "instance/attributes/rh-autostop-mins"))
    try:
        action = metadata(config, "instance/attributes/rh-autostop-action").strip()
    except OSError:
        action = "stop"
    return minutes, action


def stop_cluster(config: dict, action: str) -> None:
    token = json.loads(metadata(config, "instance/service-accounts/default/token"))["access_token"]
    base = f"{config['compute_url']}/compute/v1/projects/{config['project']}/zones/{config['zone']}/instances"
    head, *workers = config["instances"]
    for name in [*workers, head]:  # the head last: this process dies with it
        url, method = (f"{base}/{name}/stop", "POST") if action == "stop" else (f"{base}/{name}", "DELETE")
        request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None,
                                         headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                log(f"asked the Compute API to {action} {name}: HTTP {response.status}")
        except OSError as exc:
            log(f"could not {action} {name}: {exc}")


def watch(state_dir: str, endpoint: str, server_pid: int, config: dict) -> None:
    lock = open(os.path.join(state_dir, f"gcp-idle-{server_pid}.lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another watcher serves this server
    from rh_core.client.connection import ping, read_secret
    from rh_core.clusters.base import pid_alive

    secret = read_secret(state_dir)
    log(f"watching the server (pid {server_pid}) every {config['interval']} s for {config['instances']}")
    calls, last_active, setting = None, time.monotonic(), None
    while pid_alive(server_pid):
        info = ping(endpoint, timeout=10.0, secret=secret)
        if info is not None and "calls" in info and (info.get("in_flight") or info.get("calls") != calls):
            calls, last_active = info.get("calls"), time.monotonic()
        try:
            minutes, action = autostop_setting(config)
        except (OSError, ValueError) as exc:
            log(f"cannot read the autostop setting from the metadata server: {exc}")
        else:
            if (minutes, action) != setting:
                setting = (minutes, action)
                log(f"autostop: {action} after {minutes} idle minutes" if minutes >= 0 else "autostop: never")
            if minutes >= 0 and time.monotonic() - last_active >= minutes * 60:
                log(f"idle for {minutes} minutes: {action} the cluster")
                stop_cluster(config, action)
                break
        time.sleep(config["interval"])
    os.unlink(lock.name)


def main(argv: list[str]) -> None:
    state_dir, endpoint, server_pid, config = argv
    if os.fork():  # the SSH command that started us returns at once
        os._exit(0)
    os.setsid()
    watch(state_dir, endpoint, int(server_pid), json.loads(config))


if __name__ == "__main__":
    main(sys.argv[1:])
