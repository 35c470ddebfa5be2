"""On the client: start the activity watcher (:mod:`rh_sky.activity_bridge`) beside a sky cluster's server."""

from __future__ import annotations

import shlex
import warnings
from pathlib import Path
from typing import Any

from rh_sky.provisioner import SkyProvisioner

BRIDGE_SOURCE = Path(__file__).with_name("activity_bridge.py")


def is_sky_cluster(cluster: Any) -> bool:
    """True for clusters whose provisioner is this plugin's (under any of its names)."""
    provisioned_by = getattr(cluster, "provisioned_by", None)
    return provisioned_by is not None and provisioned_by(SkyProvisioner)


def bridge_command(info: dict[str, Any], idle_timer_db: str, interval: float) -> str:
    """The shell command that starts the watcher for the server ``info`` describes.

    ``idle_timer_db`` stays in double quotes so the head's shell expands SkyPilot's runtime dir
    (``${SKY_RUNTIME_DIR:-$HOME}``) in it.
    """
    state_dir = info["state_dir"]
    argv = [info["python_executable"], "-c", BRIDGE_SOURCE.read_text(), state_dir, info["local_endpoint"],
            str(info["pid"])]
    log = shlex.quote(f"{state_dir}/sky-activity.log")
    return f'{shlex.join(argv)} "{idle_timer_db}" {float(interval)} >> {log} 2>&1 < /dev/null'


def watch_activity(cluster: Any, info: dict[str, Any]) -> None:
    """Make sure a watcher resets SkyPilot's idle timer while calls reach the server ``info``
    describes. A watcher that cannot start is a warning, not a failure: calls still work."""
    provider_data = cluster.cluster_info.provider_data
    command = bridge_command(info, provider_data["idle_timer_db"], provider_data["activity_check_seconds"])
    try:
        (code, out, err), = cluster.transport.run([command])
    except Exception as exc:  # the transport's own error already names the host and the cause
        code, err = -1, str(exc)
    if code != 0:
        warnings.warn(
            f"could not start the activity watcher on cluster {cluster.name!r} (exit {code}: {(err or out).strip()[-500:]}); "
            "SkyPilot may autostop it even while calls arrive. Use cluster.pause_autostop() around long work.",
            stacklevel=2,
        )
