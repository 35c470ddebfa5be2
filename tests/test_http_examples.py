"""The examples of endpoints and ASGI apps run as a user would run them, on rh.here (a local
cluster of their own here), and print what the README says they do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import rh_core as rh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytest.importorskip("aiohttp", reason="the HTTP door runs aiohttp in the cluster's server")


@pytest.fixture
def rh_home(tmp_path):
    """An RH_HOME of the test's own, whose local cluster's server is stopped afterwards."""
    yield str(tmp_path)
    rh.LocalCluster(state_dir=str(tmp_path / "local")).stop_server()


def run_example(name: str, rh_home: str) -> str:
    done = subprocess.run([sys.executable, os.path.join("examples", name)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "RH_HOME": rh_home}, timeout=240)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_served_function_example(rh_home):
    out = run_example("served_function.py", rh_home)
    assert "urllib: {'words': 8, 'top': ['the', 'and']}" in out
    assert "curl: curl -sS -H 'Authorization: Bearer " in out and "/word_count" in out
    if shutil.which("curl"):  # the example runs it then
        assert '{"words":6,"top":["be","to","not"]}' in out


def test_fastapi_app_example(rh_home):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    out = run_example("fastapi_app.py", rh_home)
    assert "urllib: {'greeting': 'hello ada!'}" in out
    assert "/greeter/docs" in out
