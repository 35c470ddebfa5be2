"""Fixtures for rh-byo-ssh (the session's sshd comes from rh_core.testing.fixtures)."""

from __future__ import annotations

import os
import shutil

import pytest

from rh_core.testing.sshd import local_user


@pytest.fixture
def unix_user(sshd):
    """A fresh local user who logs in to the session's sshd with its client key (root only)."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("creating a user needs root and useradd")
    with local_user(sshd) as (name, _home):
        yield name
