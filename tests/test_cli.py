"""`rh server` through the real entry point."""

import json
import os
import subprocess

import pytest


@pytest.fixture
def rh_cli(tmp_path):
    env = {**os.environ, "RH_HOME": str(tmp_path / "home")}

    def run(*args):
        return subprocess.run(["rh", *args], capture_output=True, text=True, env=env, timeout=120)

    yield run
    run("server", "stop")


def test_server_start_status_stop(rh_cli):
    stopped = rh_cli("server", "status")
    assert stopped.returncode == 1 and "no server running" in stopped.stdout
    started = rh_cli("server", "start", "--workers", "1")
    assert started.returncode == 0 and "executor process" in started.stdout, started.stderr
    status = rh_cli("server", "status", "--json")
    info = json.loads(status.stdout)
    assert info["running"] is True and info["parallelism"] == 1
    again = rh_cli("server", "start")
    assert f"pid {info['pid']}" in again.stdout  # reused, not a second server
    restarted = rh_cli("server", "restart")
    assert restarted.returncode == 0 and f"pid {info['pid']}" not in restarted.stdout
    assert rh_cli("server", "stop").stdout.strip() == "server stopped"
    assert rh_cli("server", "status").returncode == 1


def test_help_lists_the_commands(rh_cli):
    out = rh_cli("--help")
    assert out.returncode == 0
    for command in ("server", "plugins"):
        assert command in out.stdout
