"""``rh sky status|stop|down|autostop`` through the real ``rh`` entry point, against the fake SDK."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest


def rh_command(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    rh = shutil.which("rh") or pytest.fail("the `rh` entry point is not installed (pip install -e .)")
    return subprocess.run([rh, *args], capture_output=True, text=True, input=input, env=dict(os.environ), timeout=120)


@pytest.fixture
def two_clusters(fake_sky):
    """Clusters 'alpha' (up, autostop 30) and 'beta' (stopped) in the fake cloud."""
    for name in ("alpha", "beta"):
        task = fake_sky.Task(name=name)
        task.set_resources(fake_sky.Resources(infra="aws", cpus="2"))
        fake_sky.get(fake_sky.launch(task, cluster_name=name, idle_minutes_to_autostop=30))
    fake_sky.set_status("beta", "STOPPED")
    return fake_sky


def test_status_lists_skypilots_clusters(two_clusters):
    for _ in range(2):  # asking does not change what is there
        shown = rh_command("sky", "status")
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert lines[0].split()[:4] == ["NAME", "STATUS", "AUTOSTOP", "NODES"]
        alpha = next(line for line in lines if line.startswith("alpha"))
        assert "UP" in alpha and "30 min" in alpha and "127.0.0.1" in alpha and "AWS(cpus=2)" in alpha
        assert "STOPPED" in next(line for line in lines if line.startswith("beta"))


def test_status_json_and_a_missing_name_exits_1(two_clusters):
    shown = rh_command("sky", "status", "alpha", "gamma", "--json", "--refresh")
    assert shown.returncode == 1
    rows = {row["name"]: row for row in json.loads(shown.stdout)}
    assert rows["alpha"]["status"] == "UP" and rows["alpha"]["autostop_mins"] == 30
    assert rows["gamma"]["status"] is None
    assert two_clusters.calls("status")[-1]["refresh"] == "FORCE"


def test_autostop_sets_and_cancels(two_clusters):
    done = rh_command("sky", "autostop", "alpha", "-i", "15")
    assert done.returncode == 0 and "stops after 15 idle minutes" in done.stdout, done.stderr
    assert two_clusters.cluster("alpha")["autostop"] == 15
    done = rh_command("sky", "autostop", "alpha", "-i", "-1")
    assert done.returncode == 0 and "autostop cancelled" in done.stdout, done.stderr
    assert two_clusters.cluster("alpha")["autostop"] == -1


def test_autostop_of_a_stopped_cluster_says_to_bring_it_up(two_clusters):
    done = rh_command("sky", "autostop", "beta", "-i", "10")
    assert done.returncode == 1 and "is not up" in done.stderr and "cluster.up()" in done.stderr


def test_stop_then_down_with_confirmation(two_clusters):
    assert rh_command("sky", "stop", "alpha").returncode == 0
    assert two_clusters.cluster("alpha")["status"] == "STOPPED"
    refused = rh_command("sky", "down", "alpha", input="n\n")
    assert refused.returncode == 1 and two_clusters.cluster("alpha") is not None
    done = rh_command("sky", "down", "alpha", "beta", "--yes")
    assert done.returncode == 0, done.stderr
    assert two_clusters.cluster("alpha") is None and two_clusters.cluster("beta") is None


def test_down_all_tears_down_every_cluster_skypilot_lists(two_clusters):
    assert rh_command("sky", "down", "--yes").returncode == 2  # neither names nor --all
    assert rh_command("sky", "down", "alpha", "--all", "--yes").returncode == 2  # both
    done = rh_command("sky", "down", "--all", "--yes")
    assert done.returncode == 0 and "alpha: down" in done.stdout and "beta: down" in done.stdout, done.stderr
    assert two_clusters.cluster("alpha") is None and two_clusters.cluster("beta") is None
    assert rh_command("sky", "down", "--all", "--yes").stdout.strip() == "SkyPilot has no clusters"


def test_down_of_an_unknown_cluster_is_not_an_error(fake_sky):
    done = rh_command("sky", "down", "never-launched", "--yes")
    assert done.returncode == 0 and "never-launched: down" in done.stdout, done.stderr


def test_rh_help_and_import_never_import_skypilot():
    code = ("import sys, rh_core\n"
            "from rh_core.cli import cli\n"
            "from rh_core.plugin.host import PluginHost\n"
            "PluginHost().add_commands(cli)\n"
            "assert 'sky' in cli.commands, sorted(cli.commands)\n"
            "print(sorted(m for m in sys.modules if m == 'sky' or m.startswith('sky.')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
    help_text = rh_command("sky", "--help")
    assert help_text.returncode == 0 and "autostop" in help_text.stdout
