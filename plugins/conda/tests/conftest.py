"""Fixtures for rh-conda: a conda channel built on disk, the same channel over HTTP, a local
cluster, and a BYO cluster on a real sshd (helpers in rh_core.testing.sshd)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from conda_channel import build_test_channel

import rh_core as rh
from rh_core.testing.sshd import free_port, stop, wait_for_http


@pytest.fixture(scope="session")
def channel(tmp_path_factory) -> str:
    """A channel folder with rhtest-hello 1.0 and 2.0, rhtest-greeter and rhtest-other."""
    return build_test_channel(str(tmp_path_factory.mktemp("conda") / "channel"))


@pytest.fixture(scope="session")
def channel_url(channel) -> str:
    return f"file://{channel}"


@pytest.fixture(scope="session")
def http_channel(channel) -> Iterator[str]:
    """The channel served by ``python -m http.server`` on loopback; yields its URL."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", channel], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/noarch/repodata.json", server, "the test channel's HTTP server")
        yield url
    finally:
        stop(server)


@pytest.fixture(autouse=True)
def only_test_channels(monkeypatch, channel_url):
    """Default channels are the test channel: no test may reach for conda-forge (there is no internet)."""
    monkeypatch.setenv("RH_CONDA_CHANNELS", channel_url)


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory) -> Iterator[rh.LocalCluster]:
    cluster = rh.LocalCluster(state_dir=str(tmp_path_factory.mktemp("conda-local") / "state"))
    try:
        yield cluster
    finally:
        cluster.stop_server()


FAKE_CLI = '''\
#!{python}
"""A stand-in for micromamba: logs its argv, answers dry runs with JSON, and "installs" a script."""
import json, os, sys
argv = sys.argv[1:]
with open(os.environ["FAKE_CONDA_LOG"], "a") as log:
    log.write(json.dumps(argv) + "\\n")
spec = argv[-1].rpartition("::")[2]
name, _, version = spec.partition("=")
if name == "rhtest-nothere":
    print(json.dumps({{"success": False, "error": "PackagesNotFoundError: rhtest-nothere"}}))
    sys.exit(1)
if "--dry-run" in argv:
    print("warning  libmamba a note on stderr", file=sys.stderr)
    print(json.dumps({{"actions": {{"LINK": [{{"name": name, "version": version or "9.0", "build_string": "fake_0"}}]}},
                      "dry_run": True, "success": True}}))
    sys.exit(0)
prefix = argv[argv.index("--prefix") + 1]
os.makedirs(os.path.join(prefix, "conda-meta"), exist_ok=True)
os.makedirs(os.path.join(prefix, "bin"), exist_ok=True)
with open(os.path.join(prefix, "bin", name), "w") as script:
    script.write("#!/bin/sh\\necho installed by the fake cli\\n")
os.chmod(os.path.join(prefix, "bin", name), 0o755)
'''


@pytest.fixture
def fake_cli(tmp_path, monkeypatch):
    """``micromamba`` on PATH: a script recording each call's argv; yields a reader of those calls."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    script = bin_dir / "micromamba"
    script.write_text(FAKE_CLI.format(python=sys.executable))
    script.chmod(0o755)
    log = tmp_path / "fake-cli.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_CONDA_LOG", str(log))
    yield lambda: [json.loads(line) for line in log.read_text().splitlines()]
