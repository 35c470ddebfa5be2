"""Fixtures for rh-git: a bare repository with tagged revisions, served through file://, git daemon,
smart HTTP (open and token-protected) and ssh; a local cluster and a BYO cluster on a real sshd."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from git_repos import Repo, SmartHttp, make_repo, start_git_daemon

import rh_core as rh
from rh_core.server.envs import ClusterEnvironment
from rh_core.testing.sshd import stop


@pytest.fixture(scope="session")
def repo(tmp_path_factory) -> Repo:
    return make_repo(tmp_path_factory.mktemp("git"))


@pytest.fixture(scope="session")
def daemon_url(repo) -> Iterator[str]:
    """``git://127.0.0.1:PORT/rhtest-gitpkg.git``"""
    url, process = start_git_daemon(repo.base)
    try:
        yield f"{url}/{repo.bare.name}"
    finally:
        stop(process)


@pytest.fixture(scope="session")
def http_url(repo) -> Iterator[str]:
    server = SmartHttp(repo.base).start()
    try:
        yield f"{server.url}/{repo.bare.name}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def private_http(repo) -> Iterator[SmartHttp]:
    """Smart HTTP that wants a token (``private_http.token``) on every request."""
    server = SmartHttp(repo.base, token="rhtok-" + secrets.token_hex(12)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def env(tmp_path) -> ClusterEnvironment:
    """A named environment (a venv of its own) of a server whose state dir is ``tmp_path``."""
    return ClusterEnvironment.open(str(tmp_path / "state"), "gitenv")


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory) -> Iterator[rh.LocalCluster]:
    cluster = rh.LocalCluster(state_dir=str(tmp_path_factory.mktemp("git-local") / "state"))
    try:
        yield cluster
    finally:
        cluster.stop_server()


