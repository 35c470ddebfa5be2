"""A cluster machine without any package index: the user's requirements are resolved on the client for
its platform and shipped as wheels, as rh_core itself is."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

import rh_core as rh

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ray" / "tests"))
import netns_hosts  # noqa: E402  (the suite's network-namespace hosts live beside the Ray tests)

#: Where pip on this machine finds packages without the network (see `pip config list`): hidden from
#: the host, so that it really has no index.
LOCAL_PACKAGE_FOLDERS = ("/opt/wheels", "/opt/pypi", "/opt/pypi-more", os.path.expanduser("~/.cache/pip"))


def installed_versions(*names):
    import importlib.metadata

    return {name: importlib.metadata.version(name) for name in names}


@pytest.fixture(scope="module")
def offline_host():
    """One network-namespace host: no route anywhere but the bridge, and no local package folders."""
    reason = netns_hosts.skip_reason()
    if reason:
        pytest.skip(reason)
    directory = Path(tempfile.mkdtemp(prefix="rh-offline-", dir="/var/tmp"))  # outside each host's own /tmp
    remote_dir = str(directory / "remote")
    hidden = [remote_dir, *(path for path in LOCAL_PACKAGE_FOLDERS if os.path.isdir(path))]
    try:
        with netns_hosts.netns_hosts(1, directory / "hosts", private_dirs=hidden) as made:
            yield made, remote_dir
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.slow
def test_a_host_without_index_access_gets_the_users_requirements_from_the_client(offline_host, tmp_path,
                                                                                 monkeypatch):
    made, remote_dir = offline_host
    cluster = rh.cluster(name=f"offline-{os.getpid()}", ips=made.addresses,
                         ssh_creds=made.ssh_creds(str(tmp_path / "known_hosts")), executor_options={"num_workers": 1})
    cluster.remote_dir = remote_dir
    try:
        cluster.connection()  # rh_core itself: from the client's wheels
        python = cluster.status()["python_executable"]
        (code, _, err), = cluster.run([f"{python} -m pip download --no-cache-dir --retries 0 --timeout 3 "
                                       f"--dest /tmp/nothing idna"])
        assert code != 0, "the host can download from an index, so this test shows nothing"
        assert cluster.offline_platform() is not None
        project = tmp_path / "project"
        project.mkdir()
        (project / "requirements.txt").write_text("idna==3.10\nmarkupsafe  # a binary wheel\n")
        monkeypatch.chdir(project)  # .to() installs the working directory's requirements.txt
        versions = rh.function(installed_versions).to(cluster)
        found = versions("idna", "markupsafe")
        assert found["idna"] == "3.10" and found["markupsafe"]
        done = cluster.install_packages(["tomli==2.2.1"])  # a plain pip requirement too
        assert done["installed"] and versions("tomli") == {"tomli": "2.2.1"}
    finally:
        cluster.down()
