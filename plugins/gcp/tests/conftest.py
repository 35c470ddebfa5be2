"""Fixtures for rh-gcp: two loopback test machines (an sshd each, on 127.0.0.1 and 127.0.0.2 at
the same port, under an init of its own so that powering one off ends everything started through
it), and the Compute API stand-in (rh_gcp.testing) that the real google-cloud-compute client
talks to, which powers the machines on and off with the instances at their addresses."""

from __future__ import annotations

import dataclasses
import getpass
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.auth.credentials import AnonymousCredentials

from rh_core.testing.sshd import keygen

from rh_gcp.testing import ComputeStandIn, LoopbackHost, free_port_on

HEAD_ADDRESS, WORKER_ADDRESS = "127.0.0.1", "127.0.0.2"


@pytest.fixture(scope="session")
def machines(tmp_path_factory) -> Iterator[dict[str, LoopbackHost]]:
    """The test machines by address, powered off until an instance at their address runs. Their
    authorized_keys starts empty: the stand-in adds the key rh-gcp puts into instance metadata."""
    directory = tmp_path_factory.mktemp("gcp-hosts").resolve()
    host_key = keygen(directory / "host_key")
    authorized_keys = directory / "authorized_keys"
    authorized_keys.write_text("")
    authorized_keys.chmod(0o600)
    port = free_port_on([HEAD_ADDRESS, WORKER_ADDRESS])
    hosts = {address: LoopbackHost(address, port, directory, host_key, authorized_keys)
             for address in (HEAD_ADDRESS, WORKER_ADDRESS)}
    try:
        yield hosts
    finally:
        for host in hosts.values():
            host.stop()


@dataclasses.dataclass(frozen=True)
class SSHAccess:
    port: int
    user: str
    authorized_keys: Path


@pytest.fixture(scope="session")
def sshd(machines) -> SSHAccess:
    """How the test machines are reached: the port their sshds share, the user, the authorized_keys."""
    head = machines[HEAD_ADDRESS]
    return SSHAccess(head.port, getpass.getuser(), head.authorized_keys)


@pytest.fixture
def stand_in(machines) -> Iterator[ComputeStandIn]:
    head = machines[HEAD_ADDRESS]
    fake = ComputeStandIn(addresses=[HEAD_ADDRESS, WORKER_ADDRESS], authorized_keys=head.authorized_keys,
                          hosts=machines).start()
    yield fake
    fake.stop()


@pytest.fixture
def anonymous(monkeypatch) -> AnonymousCredentials:
    """Application-default credentials are anonymous ones without a project (no Google account here)."""
    credentials = AnonymousCredentials()
    monkeypatch.setattr("rh_gcp.compute.load_credentials", lambda: (credentials, None))
    return credentials


def gcp_options(stand_in: ComputeStandIn, sshd: SSHAccess, **options) -> dict:
    """rh.cluster options for a gcp-direct cluster on the stand-in and the test sshd."""
    return {"provider": "gcp-direct", "zone": "us-central1-a", "project": "test-project",
            "api_endpoint": stand_in.endpoint, "ssh_port": sshd.port, "ssh_user": sshd.user, **options}


@pytest.fixture
def options(stand_in, sshd):
    return lambda **extra: gcp_options(stand_in, sshd, **extra)
