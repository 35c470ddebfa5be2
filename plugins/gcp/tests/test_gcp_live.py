"""Against the real Compute API: runs only with Google Cloud credentials and RH_GCP_LIVE_ZONE set
(it launches a small instance, which costs money); skipped with the reason otherwise."""

from __future__ import annotations

import os
import uuid

import pytest

import rh_core as rh
from rh_core.testing import functions as fns


def _credentials_or_reason() -> str | None:
    try:
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError

        google.auth.default()
    except DefaultCredentialsError as exc:
        return f"no Google Cloud credentials ({exc})"
    if not os.environ.get("RH_GCP_LIVE_ZONE"):
        return "set RH_GCP_LIVE_ZONE (and optionally RH_GCP_LIVE_PROJECT) to launch a real instance"
    return None


@pytest.mark.timeout(1200)
def test_live_launch_call_and_delete():
    reason = _credentials_or_reason()
    if reason:
        pytest.skip(reason)
    cluster = rh.cluster(name=f"rh-live-{uuid.uuid4().hex[:6]}", provider="gcp-direct", instance_type="e2-small",
                         zone=os.environ["RH_GCP_LIVE_ZONE"], project=os.environ.get("RH_GCP_LIVE_PROJECT"),
                         autostop_mins=10)
    try:
        assert rh.function(fns.quiet_add).to(cluster)(1, 2) == 3
    finally:
        cluster.down()
    assert cluster.status(refresh=True)["machines"] == "down"
