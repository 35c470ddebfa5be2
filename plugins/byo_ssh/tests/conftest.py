"""Fixtures for rh-byo-ssh: one real sshd for the session (helpers in rh_core.testing.sshd)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from collections.abc import Iterator

import pytest

from rh_core.testing.sshd import SSHD, SSHServer, start_sshd, stop


@pytest.fixture(scope="session")
def sshd(tmp_path_factory) -> Iterator[SSHServer]:
    if not os.path.exists(SSHD):
        pytest.skip(f"{SSHD} is missing: install openssh-server (apt-get install -y openssh-server rsync)")
    server, process = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        stop(process)


@pytest.fixture
def unix_user(sshd):
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("creating a user needs root and useradd")
    name = f"rhtest{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True)
    try:
        # useradd leaves the account locked ('!'), and with UsePAM no sshd then refuses the login.
        subprocess.run(["usermod", "-p", "*", name], check=True)
        home = Path(os.path.expanduser(f"~{name}"))
        subprocess.run(["install", "-d", "-m700", "-o", name, "-g", name, str(home / ".ssh")], check=True)
        authorized = home / ".ssh" / "authorized_keys"
        subprocess.run(
            ["install", "-m600", "-o", name, "-g", name, f"{sshd.client_key}.pub", str(authorized)], check=True
        )
        yield name
    finally:
        # userdel refuses while the user's sshd session is still winding down; give it a moment.
        for _ in range(50):
            done = subprocess.run(["userdel", "-r", name], capture_output=True, text=True)
            if done.returncode in (0, 6) or "mail spool" in done.stderr:  # 6: no such user
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"could not remove the test user {name}: {done.stderr}")
