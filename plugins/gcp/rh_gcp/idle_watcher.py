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

import json
import sys
import urllib.request

from rh_core.clusters.idle import IdleWatcher, detach, log


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


class GCPAutostop:
    """The watcher's idle setting and action for a gcp-direct cluster: the minutes and the action
    (``stop`` or ``delete``) as the head's metadata says this round, and the Compute API call."""

    def __init__(self, config: dict):
        self.config = config
        self.setting: tuple[float, str] | None = None

    def minutes(self) -> float | None:
        try:
            minutes, action = autostop_setting(self.config)
        except (OSError, ValueError) as exc:
            log(f"cannot read the autostop setting from the metadata server: {exc}")
            return None
        if (minutes, action) != self.setting:
            log(f"autostop: {action} after {minutes} idle minutes" if minutes >= 0 else "autostop: never")
        self.setting = (minutes, action)
        return minutes if minutes >= 0 else None

    def stop(self, minutes: float) -> None:
        assert self.setting is not None  # minutes() answered this round
        action = self.setting[1]
        log(f"idle for {minutes} minutes: {action} the cluster")
        stop_cluster(self.config, action)


def main(argv: list[str]) -> None:
    state_dir, endpoint, server_pid, config = argv
    detach()
    settings = json.loads(config)
    log(f"the cluster's instances: {settings['instances']}")
    autostop = GCPAutostop(settings)
    IdleWatcher(state_dir, endpoint, int(server_pid), interval=settings["interval"], lock_name="gcp-idle",
                idle_minutes=autostop.minutes, on_idle=autostop.stop).run()


if __name__ == "__main__":
    main(sys.argv[1:])
