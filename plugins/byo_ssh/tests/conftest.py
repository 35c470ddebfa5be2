"""Fixtures for rh-byo-ssh: one real sshd for the session (helpers in byo_sshd.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from byo_sshd import SSHD, SSHServer, start_sshd, stop


@pytest.fixture(scope="session")
def sshd(tmp_path_factory) -> Iterator[SSHServer]:
    if not os.path.exists(SSHD):
        pytest.skip(f"{SSHD} is missing: install openssh-server (apt-get install -y openssh-server rsync)")
    server, process = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        stop(process)
