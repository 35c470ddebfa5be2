"""Hosts unlike the client: a machine whose python3 is another CPython, brought up end to end."""

from __future__ import annotations

import os
import subprocess

import pytest

import rh_core as rh
from rh_core.testing import functions as fns
from rh_core.testing.sshd import loopback_cluster, python_only_mounts, start_sshd, stop

PYENV = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")


def _pyenv_python(minor: str) -> str | None:
    versions = os.path.join(PYENV, "versions")
    found = sorted(v for v in os.listdir(versions) if v.startswith(minor + ".")) if os.path.isdir(versions) else []
    return os.path.join(versions, found[-1], "bin", f"python{minor}") if found else None


@pytest.fixture(scope="module")
def python310_host(tmp_path_factory):
    """An sshd whose sessions find Python 3.10 as python3 and no python3.11 (this client's minor)."""
    python = _pyenv_python("3.10")
    if os.geteuid() != 0 or python is None:
        pytest.skip("needs root (a mount namespace) and a CPython 3.10 under pyenv")
    directory = tmp_path_factory.mktemp("py310-host")
    server, process = start_sshd(directory, bind_mounts=python_only_mounts(python, directory))
    try:
        yield server
    finally:
        stop(process)


@pytest.mark.slow
def test_a_host_whose_python3_is_3_10_runs_the_server_there(python310_host, tmp_path):
    ssh = ["ssh", "-i", str(python310_host.client_key), "-p", str(python310_host.port), "-o", "BatchMode=yes",
           "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
           f"{python310_host.user}@{python310_host.host}"]
    # (bash's `command -v` would name a file that is not executable; which() looks as the probe does.)
    seen = subprocess.run([*ssh, "python3 -c 'import shutil, sys; print(sys.version_info[:2], shutil.which(\"python3.11\"))'"],
                          capture_output=True, text=True, timeout=60)
    assert seen.stdout.strip() == "(3, 10) None", seen
    cluster = loopback_cluster(python310_host, tmp_path, name=f"py310-{os.getpid()}",
                               executor_options={"num_workers": 2})
    try:
        add = rh.function(fns.quiet_add).to(cluster)  # by reference: module and name
        assert add(20, 22) == 42
        info = cluster.status()
        assert info["python"] == "3.10" and info["python_executable"].startswith(str(tmp_path))
        assert rh.function(fns.double).to(cluster).map([1, 2, 3]) == [2, 4, 6]
        assert rh.get(add.remote(1, 2)) == 3
        with pytest.raises(ValueError, match="boom"):  # an exception made on 3.10, raised here on 3.11
            rh.function(fns.fail).to(cluster)("boom")
        with pytest.raises(rh.VersionMismatchError, match=r"travels by value .* Python 3\.10 on cluster"):
            rh.function(lambda x: x + 1).to(cluster)
    finally:
        cluster.down()
