"""A real cloud, when this machine has credentials for one and the run opts in (machines cost money).

    RH_SKY_LIVE=1 python -m pytest plugins/sky/tests/test_live.py

Uses the real SkyPilot SDK and the user's real home (their cloud credentials and ~/.sky), in a
process of its own; launches the cheapest 2-vCPU machine SkyPilot finds, calls a function on it,
and tears it down.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys

import pytest

#: Where the clouds SkyPilot supports keep credentials, relative to the user's real home.
CREDENTIAL_FILES = {
    "aws": ".aws/credentials",
    "gcp": ".config/gcloud/application_default_credentials.json",
    "azure": ".azure/azureProfile.json",
    "lambda": ".lambda_cloud/lambda_keys",
    "kubernetes": ".kube/config",
}
CREDENTIAL_VARIABLES = {"aws": "AWS_ACCESS_KEY_ID", "gcp": "GOOGLE_APPLICATION_CREDENTIALS"}


def clouds_with_credentials(home: str) -> list[str]:
    found = {cloud for cloud, path in CREDENTIAL_FILES.items() if os.path.exists(os.path.join(home, path))}
    found |= {cloud for cloud, variable in CREDENTIAL_VARIABLES.items() if os.environ.get(variable)}
    return sorted(found)


REAL_HOME = pwd.getpwuid(os.getuid()).pw_dir
CLOUDS = clouds_with_credentials(REAL_HOME)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CLOUDS, reason=f"no cloud credentials on this machine (looked for "
                                          f"{', '.join(CREDENTIAL_FILES.values())} under {REAL_HOME}, and "
                                          f"{', '.join(CREDENTIAL_VARIABLES.values())}); set some up and run `sky check`"),
    pytest.mark.skipif(os.environ.get("RH_SKY_LIVE") != "1",
                       reason=f"credentials found for {', '.join(CLOUDS) or 'no cloud'}, but a live test launches a "
                              "paid machine: set RH_SKY_LIVE=1 to run it"),
]


LIVE_SCRIPT = """
import uuid
import rh_core as rh
from rh_core.testing import functions as fns

cluster = rh.cluster(name=f"rh-sky-live-{uuid.uuid4().hex[:6]}", instance_type="CPU:2", autostop_mins=10)
try:
    assert rh.function(fns.quiet_add).to(cluster)(1, 2) == 3
    assert cluster.status(refresh=True)["machines"] == "up"
finally:
    cluster.down()
assert cluster.status(refresh=True)["machines"] == "down"
print("live test passed")
"""


def test_launch_call_and_tear_down_on_a_real_cloud():
    # A process of its own: SkyPilot reads HOME when imported, and this one must see the real home.
    env = {key: value for key, value in os.environ.items() if key not in ("RH_SKY_SDK", "RH_SKY_FAKE_DIR")}
    env["HOME"] = REAL_HOME
    done = subprocess.run([sys.executable, "-c", LIVE_SCRIPT], env=env, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0 and "live test passed" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
