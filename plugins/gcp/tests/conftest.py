"""Fixtures for rh-gcp: a loopback sshd answering on two addresses (the "instances"), and the
Compute API stand-in (rh_gcp.testing) that the real google-cloud-compute client talks to."""

from __future__ import annotations

import getpass
import os
import subprocess
from collections.abc import Iterator

import pytest
from google.auth.credentials import AnonymousCredentials

from rh_core.testing.sshd import SSHD, SSHServer, free_port, keygen, sshd_config, stop, wait_for_port

from rh_gcp.testing import ComputeStandIn

HEAD_ADDRESS, WORKER_ADDRESS = "127.0.0.1", "127.0.0.2"


@pytest.fixture(scope="session")
def sshd(tmp_path_factory) -> Iterator[SSHServer]:
    """One sshd listening on 127.0.0.1 and 127.0.0.2, so a two-node cluster has two addresses. Its
    authorized_keys starts empty: the stand-in adds the key rh-gcp puts into instance metadata."""
    directory = tmp_path_factory.mktemp("gcp-sshd").resolve()
    host_key, client_key = keygen(directory / "host_key"), keygen(directory / "client_key")
    authorized_keys = directory / "authorized_keys"
    authorized_keys.write_text("")
    authorized_keys.chmod(0o600)
    port = free_port()
    config = directory / "sshd_config"
    config.write_text(sshd_config(port=port, listen=HEAD_ADDRESS, host_key=host_key, pid_file=directory / "sshd.pid",
                                  authorized_keys=authorized_keys) + f"ListenAddress {WORKER_ADDRESS}\n")
    os.makedirs("/run/sshd", exist_ok=True)
    log = directory / "sshd.log"
    process = subprocess.Popen([SSHD, "-D", "-f", str(config), "-E", str(log)], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port, process, log)
        yield SSHServer(HEAD_ADDRESS, port, getpass.getuser(), directory, client_key, client_key, authorized_keys,
                        host_key, log)
    finally:
        stop(process)


@pytest.fixture
def stand_in(sshd) -> Iterator[ComputeStandIn]:
    fake = ComputeStandIn(addresses=[HEAD_ADDRESS, WORKER_ADDRESS], authorized_keys=sshd.authorized_keys).start()
    yield fake
    fake.stop()


@pytest.fixture
def anonymous(monkeypatch) -> AnonymousCredentials:
    """Application-default credentials are anonymous ones without a project (no Google account here)."""
    credentials = AnonymousCredentials()
    monkeypatch.setattr("rh_gcp.compute.load_credentials", lambda: (credentials, None))
    return credentials


def gcp_options(stand_in: ComputeStandIn, sshd: SSHServer, **options) -> dict:
    """rh.cluster options for a gcp-direct cluster on the stand-in and the test sshd."""
    return {"provider": "gcp-direct", "zone": "us-central1-a", "project": "test-project",
            "api_endpoint": stand_in.endpoint, "ssh_port": sshd.port, "ssh_user": sshd.user, **options}


@pytest.fixture
def options(stand_in, sshd):
    return lambda **extra: gcp_options(stand_in, sshd, **extra)
