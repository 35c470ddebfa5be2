"""pytest fixtures for plugin tests: a real sshd on loopback and a BYO cluster on it, one of each per
test session, and :func:`wait_for`. Use them with ``pytest_plugins = ["rh_core.testing.fixtures"]`` in the conftest.py
at your repository's root (rh_core's own root conftest does this).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rh_core.testing.sshd import SSHD, SSHServer, loopback_cluster, start_sshd, stop


def wait_for(condition: Callable[[], object], seconds: float, what: str,
             details: Callable[[], str] = lambda: "") -> None:
    """Poll ``condition`` every 0.2 s; fail the test with ``what`` (and ``details()``) if it is
    still false after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {seconds} s. {details()}")
        time.sleep(0.2)


@contextlib.contextmanager
def server_process(directory: Path, *options: str, preexec_fn: Callable[[], Any] | None = None
                   ) -> Iterator[tuple[subprocess.Popen, Any]]:
    """A server started as a process of its own, with command-line ``options`` (a memory budget)
    and ``preexec_fn`` (a descriptor limit), its state and log in ``directory``; yields the
    process and a LocalCluster that reaches it, and terminates it afterwards."""
    import rh_core as rh

    state_dir = str(directory / "state")
    os.makedirs(state_dir, mode=0o700)
    with open(directory / "server.log", "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "rh_core.server", "--state-dir", state_dir, *options],
                                  stdout=log, stderr=log, preexec_fn=preexec_fn)
    try:
        cluster = rh.LocalCluster(state_dir=state_dir)
        wait_for(lambda: cluster.read_state() is not None, 60, "the server did not write its state",
                 lambda: (directory / "server.log").read_text(errors="replace")[-2000:])
        yield server, cluster
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory) -> Iterator[SSHServer]:
    """A real OpenSSH server on 127.0.0.1 that logs in the current user with a test key; the test
    is skipped (saying what to install) where there is no sshd."""
    if not os.path.exists(SSHD):
        pytest.skip(f"{SSHD} is missing: install openssh-server (apt-get install -y openssh-server rsync)")
    server, process = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        stop(process)


@pytest.fixture(scope="session")
def ssh_cluster(sshd, tmp_path_factory):
    """A BYO cluster on :func:`sshd` with one worker, its remote state under a temp dir; bootstrapped
    on first use and taken down at the end of the session."""
    cluster = loopback_cluster(sshd, tmp_path_factory.mktemp("ssh-cluster"), name="loopback",
                               executor_options={"num_workers": 1})
    try:
        yield cluster
    finally:
        cluster.down()
