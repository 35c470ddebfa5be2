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
    env = {key: value for key, value in os.environ.items() if key not in ("RH_SKY_SDK", "RH_SKY_FAKE_DIR")}
    env.update(HOME=str(tmp_path), SKYPILOT_DISABLE_USAGE_COLLECTION="1", RH_HOME=str(tmp_path / "rh"))
    try:
        done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    finally:
        # SkyPilot started its API server (a daemon) for the launch; stop it.
        sky = shutil.which("sky") or "sky"
        subprocess.run([sky, "api", "stop"], env=env, capture_output=True, timeout=120)
    error = next((line for line in done.stdout.splitlines() if line.startswith("SkyCredentialsError: ")), None)
    assert error is not None, done.stdout[-2000:] + done.stderr[-2000:]
    assert "`sky check gcp`" in error and "Cloud access is not set up" in error and "\x1b" not in error
