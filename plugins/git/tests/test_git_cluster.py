"""Git packages through a cluster server: two named environments holding two revisions on a local
cluster (one built by pip from a git daemon, one put on sys.path from file://), and a BYO cluster
over a real sshd."""

from __future__ import annotations

import pytest
from git_functions import package_version

import rh_core as rh
from rh_core.errors import InstallError


def test_two_revisions_in_two_environments(local_cluster, repo, daemon_url):
    env_a = rh.env("git-a", [rh.GitPackage(repo.file_url, install_method="local", revision="v1", subdirectory="src")])
    env_b = rh.env("git-b", [f"git+{daemon_url}@v2"])  # pip builds the checkout (setuptools from the index)
    in_a = rh.function(package_version).to(local_cluster, env=env_a)
    in_b = rh.function(package_version).to(local_cluster, env=env_b)
    assert in_a()["version"] == "1.0.0"
    assert in_b()["version"] == "2.0.0"
    assert "/envs/git-a/git/" in in_a()["file"]  # the checkout itself is on sys.path
    assert "/envs/git-b/venv/" in in_b()["file"]  # pip installed a copy into the venv
    assert in_a()["version"] == "1.0.0"

    again = local_cluster.install_packages(list(env_b.reqs), env="git-b")
    assert again["installed"] == [] and again["skipped"] == [f"git+{daemon_url}@v2"]


def test_a_missing_revision_comes_back_as_install_error(local_cluster, http_url):
    with pytest.raises(InstallError) as caught:
        rh.function(package_version).to(local_cluster, reqs=[f"git+{http_url}@v2.0"], env=rh.env("git-bad"))
    assert "revision 'v2.0' does not exist" in str(caught.value) and "v2 (tag)" in str(caught.value)
    assert local_cluster.install_packages([], env="git-bad")["environment"]["installed"] == {}


@pytest.mark.slow
def test_git_package_on_a_byo_cluster_over_ssh(ssh_cluster, daemon_url):
    package = rh.GitPackage(daemon_url, install_method="local", revision="v2", subdirectory="src")
    remote = rh.function(package_version).to(ssh_cluster, env=rh.env("git-remote", [package]))
    result = remote()
    assert result["version"] == "2.0.0" and result["file"].startswith(ssh_cluster.remote_dir)
