"""conda packages through a cluster server: named environments on a local cluster (two versions
side by side, a conda CLI on the server's PATH) and on a BYO cluster over a real sshd."""

from __future__ import annotations

import os

import pytest
from conda_functions import read_hello, run_tool

import rh_core as rh
from rh_core.errors import InstallError


def test_two_environments_hold_two_versions_side_by_side(local_cluster, http_channel):
    env_a = rh.env("conda-a", ["conda:rhtest-hello=1.0"])  # the file:// channel, from RH_CONDA_CHANNELS
    env_b = rh.env("conda-b", [rh.package(name="rhtest-hello=2.0", install_method="conda", channels=[http_channel])])
    hello_a = rh.function(run_tool).to(local_cluster, env=env_a)
    hello_b = rh.function(run_tool).to(local_cluster, env=env_b)
    assert hello_a("rhtest-hello")["output"] == "rhtest-hello 1.0"
    assert hello_b("rhtest-hello")["output"] == "rhtest-hello 2.0"
    assert hello_a("rhtest-hello")["prefix"].endswith(os.path.join("envs", "conda-a", "conda"))
    assert rh.function(read_hello).to(local_cluster, env=env_b)() == "hello 2.0"
    assert rh.function(read_hello).to(local_cluster, env=env_a)() == "hello 1.0"

    again = local_cluster.install_packages(list(env_a.reqs), env="conda-a")
    assert again["installed"] == [] and again["skipped"] == ["conda:rhtest-hello=1.0"]


def test_a_failing_solve_comes_back_as_install_error_and_records_nothing(local_cluster, channel_url):
    with pytest.raises(InstallError) as caught:
        local_cluster.install_packages(["conda:rhtest-other", "conda:rhtest-hello>=7"], env="conda-bad")
    assert "'conda:rhtest-hello>=7'" in str(caught.value) and channel_url in str(caught.value)
    status = local_cluster.install_packages([], env="conda-bad")
    assert status["environment"]["installed"] == {}


def test_a_conda_cli_on_the_servers_path_installs(fake_cli, tmp_path):
    # A server of its own: it inherits the PATH holding the fake micromamba.
    cluster = rh.LocalCluster(state_dir=str(tmp_path / "state"))
    try:
        hello = rh.function(run_tool).to(cluster, env=rh.env("cli", ["conda:rhtest-hello=1.0"]))
        assert hello("rhtest-hello")["output"] == "installed by the fake cli"
    finally:
        cluster.stop_server()
    assert [call[0] for call in fake_cli()] == ["create", "create"]  # the dry run, then the install


@pytest.mark.slow
def test_conda_packages_on_a_byo_cluster_over_ssh(ssh_cluster, http_channel):
    env = rh.env("conda-remote", [rh.package(name="rhtest-greeter", install_method="conda", channels=[http_channel])])
    greet = rh.function(run_tool).to(ssh_cluster, env=env)
    assert greet("rhtest-greeter")["output"] == "greeter: rhtest-hello 2.0"
    assert greet("rhtest-greeter")["prefix"].startswith(ssh_cluster.remote_dir)
    with pytest.raises(InstallError, match="rhtest-nothere"):
        ssh_cluster.install_packages(["conda:rhtest-nothere"], env="conda-remote")
