"""The real SkyPilot SDK on this machine, which reaches no cloud: a launch gets as far as SkyPilot's
local API server, whose refusal must come back as "run `sky check <cloud>`"."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SCRIPT = """
import rh_core as rh
try:
    rh.cluster(name="rh-sky-no-credentials", instance_type="CPU:2", provider="gcp").up()
except rh.RhError as exc:
    print(type(exc).__name__ + ": " + str(exc))
"""


def test_a_launch_without_credentials_says_to_run_sky_check(tmp_path):
    from rh_core.testing.sshd import free_port

    # An API server of this test's own, on a free port with its own runtime dir: a user's SkyPilot
    # server (on 46580, or a remote one named by SKYPILOT_API_SERVER_ENDPOINT) is neither used nor
    # stopped by it.
    env = {key: value for key, value in os.environ.items()
           if key not in ("RH_SKY_SDK", "RH_SKY_FAKE_DIR", "SKYPILOT_API_SERVER_ENDPOINT")}
    env.update(HOME=str(tmp_path), SKYPILOT_DISABLE_USAGE_COLLECTION="1", RH_HOME=str(tmp_path / "rh"),
               SKYPILOT_API_SERVER_LOCAL_PORT=str(free_port()), SKY_RUNTIME_DIR=str(tmp_path / "sky-runtime"))
    import socket

    users_server = socket.socket()  # what a user's own SkyPilot server would hold: SkyPilot's default port
    try:
        users_server.bind(("127.0.0.1", 46580))
        users_server.listen()
    except OSError:
        users_server.close()
        users_server = None  # taken already, perhaps by the user's real one: all the more reason
    try:
        done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    finally:
        if users_server is not None:
            users_server.close()
        # SkyPilot started its API server (a daemon) for the launch; stop it.
        sky = shutil.which("sky") or "sky"
        subprocess.run([sky, "api", "stop"], env=env, capture_output=True, timeout=120)
    error = next((line for line in done.stdout.splitlines() if line.startswith("SkyCredentialsError: ")), None)
    assert error is not None, done.stdout[-2000:] + done.stderr[-2000:]
    assert "`sky check gcp`" in error and "Cloud access is not set up" in error and "\x1b" not in error
