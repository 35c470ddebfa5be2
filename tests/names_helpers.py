"""Fixtures for the names, config and CLI tests: a home per test, a moto S3 server, a shared
directory, a working directory of importable code, a real sshd, and a plugin with builtins.

Test modules import the fixtures they use from here (``from names_helpers import ...``).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import subprocess
import sys
import textwrap
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rh_core.testing.sshd import SSHServer, free_port, wait_for_http


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh $RH_HOME for one test (a user of their own), with the config cache forgotten."""
    from rh_core import config

    path = tmp_path / "home"
    monkeypatch.setenv("RH_HOME", str(path))
    config.reload()
    yield path
    config.reload()


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory) -> Iterator[str]:
    """An S3 API on loopback: moto's server in a process of its own (its auth switch is global)."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{endpoint}/moto-api/", process, "moto's S3 server", timeout=60)
    except RuntimeError as exc:
        process.kill()
        process.wait()
        pytest.fail(f"{exc}:\n{log_path.read_text(errors='replace')}")
    try:
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def aws_env(monkeypatch) -> None:
    """Credentials moto accepts (the boto3 chain reads them; the config file never holds them)."""
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


def set_moto_auth(endpoint: str, enforced: bool) -> None:
    """Make moto check credentials (unknown keys are then denied), or stop checking."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0" if enforced else b"inf",
                                     method="POST", headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(request, timeout=10).close()


@pytest.fixture
def s3_store(moto_endpoint, aws_env) -> dict:
    """Shared-store settings for a new bucket of its own on the moto server."""
    import boto3

    bucket = f"rh-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    return {"backend": "s3", "bucket": bucket, "prefix": "teams/ml", "endpoint_url": moto_endpoint}


@pytest.fixture
def dir_store(tmp_path) -> dict:
    """Shared-store settings for a directory standing in for a shared filesystem."""
    shared = tmp_path / "shared-fs"
    shared.mkdir()
    return {"backend": "dir", "path": str(shared)}


@pytest.fixture(params=["s3", "dir"])
def shared_store(request) -> dict:
    """Each shared-store backend in turn."""
    return request.getfixturevalue(f"{request.param}_store")


def write_config(store: dict) -> None:
    """Point the config file of the current $RH_HOME at ``store``, as `rh config set` would."""
    from rh_core import config

    for key, value in store.items():
        config.set_value(f"store.{key}", value)


@dataclasses.dataclass
class Project:
    """A working directory with a module ``module`` whose ``embed`` calls a sibling ``helper`` module."""

    path: Path
    module: str
    helper: str

    @property
    def embed(self):
        return importlib.import_module(self.module).embed


@pytest.fixture
def code_dir(tmp_path, monkeypatch) -> Iterator[Project]:
    """A working directory (not a git repo) of importable code under module names unique to this
    test; the process runs from it."""
    suffix = uuid.uuid4().hex[:8]
    project = Project(tmp_path / "project", f"rhtest_embed_{suffix}", f"rhtest_helper_{suffix}")
    project.path.mkdir()
    (project.path / f"{project.helper}.py").write_text("def size(text):\n    return len(text)\n")
    (project.path / f"{project.module}.py").write_text(textwrap.dedent(f"""
        import {project.helper}

        def embed(texts):
            return [{project.helper}.size(text) for text in texts]
    """))
    monkeypatch.chdir(project.path)
    monkeypatch.syspath_prepend(str(project.path))
    yield project
    for name in (project.module, project.helper):
        sys.modules.pop(name, None)


def forget_project(project: Project) -> None:
    """Make the project's code unimportable from its original place, as in another process elsewhere."""
    for name in (project.module, project.helper):
        module = sys.modules.pop(name, None)
        folder = os.path.dirname(getattr(module, "__file__", "") or "")
        while folder in sys.path:
            sys.path.remove(folder)


@pytest.fixture
def ssh_home(tmp_path, monkeypatch, sshd) -> Path:
    """A home for this test's user ($HOME) whose ~/.ssh holds the test key and already knows the
    loopback sshd's host key, as a user's home does after their first ``ssh`` there: saved BYO
    clusters name these files as ``~/.ssh/...``, each loader's own."""
    import shutil

    import rh_core as rh

    home = tmp_path / "user-home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    shutil.copy(sshd.client_key, home / ".ssh" / "id_ed25519")
    os.chmod(home / ".ssh" / "id_ed25519", 0o600)
    monkeypatch.setenv("HOME", str(home))
    first_contact = rh.cluster(name="first-contact", ips=[sshd.host],
                               ssh_creds={**byo_creds(sshd), "trust_new_host": True})
    try:
        first_contact.transport.run(["true"])
    finally:
        first_contact.transport.close()
    return home


def byo_creds(sshd: SSHServer, **extra) -> dict:
    """Credentials for the loopback sshd from the user's own ~/.ssh (see :func:`ssh_home`)."""
    return {"ssh_user": sshd.user, "ssh_private_key": "~/.ssh/id_ed25519", "ssh_port": sshd.port,
            "known_hosts": "~/.ssh/known_hosts", **extra}


def byo_cluster(sshd: SSHServer, tmp_path: Path, name: str = "byo-test", remote_dir: str | None = None,
                **extra_creds):
    """A BYO cluster on the loopback sshd whose remote state lives in ``tmp_path`` (or
    ``remote_dir``); its tests use the :func:`ssh_home` fixture."""
    import rh_core as rh

    cluster = rh.cluster(name=name, ips=[sshd.host], ssh_creds=byo_creds(sshd, **extra_creds),
                         executor_options={"num_workers": 1})
    cluster.remote_dir = remote_dir or str(tmp_path / "remote-rh")
    return cluster


@pytest.fixture
def remote_home_dir() -> Iterator[str]:
    """A ``remote_dir`` a shared record may hold (``~/...``: each loader's own) for the loopback
    sshd, whose sessions' home is this user's real one: a fresh folder there, removed afterwards."""
    import pwd
    import shutil

    name = f".rh-test-{uuid.uuid4().hex[:8]}"
    yield f"~/{name}"
    shutil.rmtree(os.path.join(pwd.getpwuid(os.getuid()).pw_dir, name), ignore_errors=True)


BUILTINS_PLUGIN = '''
import rh_core


@rh_core.hookimpl
def rh_register_builtins(register):
    register("test-local", {"kind": "cluster",
                            "cluster": {"kind": "local", "name": "test-local", "executor_options": {"num_workers": 1}}})
    register("test-byo", make_byo)
    register("test-double", "rhtest_builtins:make_double")


def make_byo():
    return rh_core.cluster(name="test-byo", ips=["127.0.0.1"],
                           ssh_creds={"ssh_user": "nobody", "ssh_private_key": "/nonexistent/key"})


def make_double():
    from rh_core.testing.functions import double

    return rh_core.function(double)
'''


@pytest.fixture
def builtins_plugin(tmp_path, monkeypatch) -> Iterator[Path]:
    """An installed plugin (dist-info with an entry point) that registers three builtins; yields the
    site folder to put on PYTHONPATH for subprocesses. The in-process default host is rebuilt."""
    from rh_core.plugin.host import default_host

    site = tmp_path / "site"
    site.mkdir()
    (site / "rhtest_builtins.py").write_text(BUILTINS_PLUGIN)
    info = site / "rh_test_builtins-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rh-test-builtins\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[rh_core.plugins]\ntest_builtins = rhtest_builtins\n")
    monkeypatch.syspath_prepend(str(site))
    default_host.cache_clear()
    yield site
    default_host.cache_clear()
    sys.modules.pop("rhtest_builtins", None)


def run_rh(*args: str, env: dict | None = None, input: str | None = None, cwd: str | None = None,
           timeout: float = 180) -> subprocess.CompletedProcess:
    """The real `rh` entry point in a new process, with this process's environment (and $RH_HOME)."""
    return subprocess.run([sys.executable, "-m", "rh_core.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, input=input, cwd=cwd, timeout=timeout,
                          stdin=None if input is not None else subprocess.DEVNULL, check=False)
