"""On the client: start the idle watcher (:mod:`rh_gcp.idle_watcher`) beside a gcp-direct cluster's server."""

from __future__ import annotations

import json
import shlex
import warnings
from pathlib import Path
from typing import Any

from rh_gcp.provisioner import GCPProvisioner

WATCHER_SOURCE = Path(__file__).with_name("idle_watcher.py")

#: Where the watcher on the head asks for its metadata and its service account's token.
METADATA_URL = "http://metadata.google.internal/computeMetadata/v1"
COMPUTE_URL = "https://compute.googleapis.com"
CHECK_SECONDS = 30.0


def is_gcp_cluster(cluster: Any) -> bool:
    """True for clusters whose provisioner is this plugin's (under any of its names)."""
    provisioned_by = getattr(cluster, "provisioned_by", None)
    return provisioned_by is not None and provisioned_by(GCPProvisioner)


def watcher_command(info: dict[str, Any], provider_data: dict[str, Any], interval: float = CHECK_SECONDS) -> str:
    """The shell command that starts the watcher for the server ``info`` describes."""
    config = {"metadata_url": METADATA_URL, "compute_url": provider_data.get("api_endpoint") or COMPUTE_URL,
              "project": provider_data["project"], "zone": provider_data["zone"],
              "instances": provider_data["instances"], "interval": interval}
    argv = [info["python_executable"], "-c", WATCHER_SOURCE.read_text(), info["state_dir"], info["local_endpoint"],
            str(info["pid"]), json.dumps(config)]
    log = shlex.quote(f"{info['state_dir']}/gcp-idle.log")
    return f"{shlex.join(argv)} >> {log} 2>&1 < /dev/null"


def start_idle_watcher(cluster: Any, info: dict[str, Any]) -> None:
    """Make sure a watcher stops the cluster after its autostop minutes without calls. One that
    cannot start is a warning, not a failure: calls still work, the instances just keep running."""
    command = watcher_command(info, cluster.cluster_info.provider_data, CHECK_SECONDS)
    try:
        (code, out, err), = cluster.transport.run([command])
    except Exception as exc:  # the transport's own error already names the host and the cause
        code, out, err = -1, "", str(exc)
    if code != 0:
        warnings.warn(
            f"could not start the idle watcher on cluster {cluster.name!r} (exit {code}: {(err or out).strip()[-500:]}); "
            "it will not stop by itself: call cluster.down() when done",
            stacklevel=2,
        )
