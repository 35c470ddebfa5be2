"""`rh ls|status|up|down|ssh|run` through the real entry point: human output, --json, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.register_assert_rewrite("names_helpers")
from names_helpers import byo_cluster, run_rh, write_config

import rh_core as rh
from rh_core import names

pytest_plugins = ["names_helpers"]

ALL_COMMANDS = ("ls", "status", "up", "down", "ssh", "run", "config", "server", "plugins")


def saved_local(tmp_path, name="cli-local"):
    cluster = rh.LocalCluster(name=name, state_dir=str(tmp_path / f"{name}-state"), executor_options={"num_workers": 1})
    cluster.save()
    return cluster


def test_help_lists_every_command_and_the_exit_codes():
    script = os.path.join(os.path.dirname(sys.executable), "rh")
    done = subprocess.run([script if os.access(script, os.X_OK) else "rh", "--help"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    listed = done.stdout.split("Commands:")[1]
    for command in ALL_COMMANDS:
        assert f"\n  {command} " in listed
    assert "Exit codes:" in done.stdout and "no resource has that name" in done.stdout


def test_the_cli_and_the_package_import_nothing_heavy():
    """What keeps `rh --help` fast: commands import their dependencies when they run."""
    probe = ("import sys, rh_core.cli; heavy = ('zmq', 'yaml', 'boto3', 'cloudpickle', 'asyncio', 'rh_core.clusters.base'); "
             "print(','.join(m for m in heavy if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == ""
    probe = "import sys, rh_core; print(','.join(m for m in ('attrs', 'pluggy', 'zmq') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == ""


# -------------------------------------------------------------------------------------------------
# rh ls


def test_ls_lists_the_local_store(home, tmp_path):
    empty = run_rh("ls")
    assert empty.returncode == 0 and empty.stdout == "" and "nothing is saved in ~/" in empty.stderr
    assert json.loads(run_rh("ls", "--json").stdout) == []
    saved_local(tmp_path)
    rh.LocalCluster(name="b").save("~/team/b")
    done = run_rh("ls")
    assert done.returncode == 0 and done.stdout.split() == ["~/cli-local", "~/team/"]
    assert json.loads(run_rh("ls", "~/team", "--json").stdout) == [{"name": "~/team/b", "kind": "cluster"}]
    long = run_rh("ls", "-l", "--json")
    assert json.loads(long.stdout) == [{"name": "~/cli-local", "kind": "cluster"}, {"name": "~/team/", "kind": "folder"}]
    assert "cluster" in run_rh("ls", "-l").stdout


def test_ls_of_the_shared_store_and_of_builtins(home, dir_store, builtins_plugin):
    write_config(dir_store)
    rh.LocalCluster(name="s").save("@/team/s")
    assert run_rh("ls", "@/").stdout.split() == ["@/team/"]
    assert run_rh("ls", "@/team").stdout.split() == ["@/team/s"]
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(builtins_plugin), os.environ.get("PYTHONPATH")]))}
    builtins = run_rh("ls", "^", "--json", env=env)
    assert {"name": "^test-local", "kind": "cluster"} in json.loads(builtins.stdout)


def test_ls_exit_codes(home, tmp_path):
    saved_local(tmp_path)
    rh.LocalCluster(name="b").save("~/team/b")
    missing = run_rh("ls", "~/tema", "--json")
    assert missing.returncode == 3
    assert json.loads(missing.stdout) | {"error": ""} == {"error": "", "type": "ResourceNotFoundError",
                                                         "exit_code": 3, "near": ["~/team/"]}
    no_store = run_rh("ls", "@/")
    assert no_store.returncode == 4 and "no shared store is configured" in no_store.stderr
    malformed = run_rh("ls", "~/bad name")
    assert malformed.returncode == 2 and "not a valid resource name" in malformed.stderr


# -------------------------------------------------------------------------------------------------
# rh status, up, down, run, ssh on a saved local cluster


def test_status_of_the_local_cluster_explains_a_stopped_server(home):
    done = run_rh("status")
    assert done.returncode == 5
    assert "server       not running" in done.stdout and "No server runs" in done.stdout
    assert "rh server start" in done.stdout
    info = json.loads(run_rh("status", "--json").stdout)
    assert info["running"] is False and info["machines"] == "up" and info["kind"] == "local"


def test_up_status_run_ssh_down_on_a_saved_local_cluster(home, tmp_path):
    saved_local(tmp_path)
    try:
        down = run_rh("status", "~/cli-local")
        assert down.returncode == 5 and "rh up ~/cli-local" in down.stdout

        up = run_rh("up", "~/cli-local")
        assert up.returncode == 0, up.stderr
        assert "server       running" in up.stdout and "bringing ~/cli-local up" in up.stderr and "done in" in up.stderr
        status = run_rh("status", "cli-local", "--json")  # a bare name means ~/
        info = json.loads(status.stdout)
        assert status.returncode == 0 and info["running"] is True
        assert info["server"]["state_dir"] == str(tmp_path / "cli-local-state") and info["server"]["parallelism"] == 1

        ran = run_rh("run", "~/cli-local", "--", "echo", "hello from $HOME")
        assert ran.returncode == 0 and ran.stdout.strip() == "hello from $HOME"  # several words: quoted one by one
        piped = run_rh("run", "~/cli-local", "--", "echo one two | wc -w")
        assert piped.stdout.strip() == "2"  # one word: a shell line
        failed = run_rh("run", "~/cli-local", "--json", "--", "echo oops >&2; exit 7")
        assert failed.returncode == 7
        assert json.loads(failed.stdout) | {"name": ""} == {"name": "", "command": "echo oops >&2; exit 7",
                                                            "returncode": 7, "stdout": "", "stderr": "oops\n"}

        shell = run_rh("ssh", "~/cli-local", input="echo inside-the-shell\nexit 3\n", env={"SHELL": "/bin/sh"})
        assert shell.returncode == 3 and "inside-the-shell" in shell.stdout

        stopped = run_rh("down", "~/cli-local", "--json")
        assert stopped.returncode == 0 and json.loads(stopped.stdout) == {"name": "~/cli-local", "down": True}
        assert run_rh("status", "~/cli-local").returncode == 5
    finally:
        rh.cluster(name="~/cli-local", dryrun=True).down()


def test_cluster_commands_report_bad_names(home, tmp_path):
    saved_local(tmp_path)
    for command in (["status"], ["up"], ["down"], ["ssh"], ["run"]):
        args = [*command, "~/cli-locl"] + (["--", "true"] if command == ["run"] else [])
        done = run_rh(*args)
        assert done.returncode == 3, (command, done.stderr)
        assert "did you mean ~/cli-local" in done.stderr
    as_json = json.loads(run_rh("status", "~/cli-locl", "--json").stdout)
    assert as_json["near"] == ["~/cli-local"] and as_json["exit_code"] == 3


def test_cluster_commands_report_unusable_records(home, tmp_path):
    saved_local(tmp_path, "newer")
    path = home / "names" / "newer.yaml"
    path.write_text(path.read_text().replace("format: 1", "format: 2"))
    newer = run_rh("status", "~/newer")
    assert newer.returncode == 4 and "resource format 2" in newer.stderr
    path.write_text("{{{")
    corrupt = run_rh("up", "~/newer", "--json")
    assert corrupt.returncode == 4 and str(path) in json.loads(corrupt.stdout)["error"]
    assert path.read_text() == "{{{"


def test_a_function_name_is_not_a_cluster(home):
    rh.function(json.dumps).save("~/dumps")
    done = run_rh("status", "~/dumps")
    assert done.returncode == 1 and "is a function, not a cluster" in done.stderr


def test_a_failing_shared_store_exits_4_naming_it(home, tmp_path):
    write_config({"backend": "dir", "path": str(tmp_path / "not-mounted")})
    done = run_rh("status", "@/gpu")
    assert done.returncode == 4 and str(tmp_path / "not-mounted") in done.stderr


# -------------------------------------------------------------------------------------------------
# A BYO cluster over SSH, end to end


@pytest.mark.slow
def test_byo_cluster_from_the_shared_store_end_to_end(home, tmp_path, sshd, ssh_home, remote_home_dir, dir_store,
                                                     code_dir):
    write_config(dir_store)
    byo_cluster(sshd, tmp_path, name="loopback", remote_dir=remote_home_dir).save("@/machines/loopback")
    try:
        before = run_rh("status", "@/machines/loopback", "--json")
        info = json.loads(before.stdout)
        assert before.returncode == 5 and info["machines"] == "up" and info["kind"] == "byo", before.stderr
        assert "no server runs" in info["explanation"]

        ran = run_rh("run", "@/machines/loopback", "--", "echo $((6 * 7))")  # needs SSH only, no server
        assert ran.returncode == 0 and ran.stdout.strip() == "42", ran.stderr

        up = run_rh("up", "@/machines/loopback", timeout=600)
        assert up.returncode == 0, up.stderr
        after = json.loads(run_rh("status", "@/machines/loopback", "--json").stdout)
        assert after["running"] is True and after["server"]["executor"] == "process"

        # A function saved with the cluster's shared name runs there when loaded by name.
        embed = code_dir.embed
        rh.function(embed).save("@/team/embed-on-byo")
        assert names.describe("@/team/embed-on-byo")["cluster"] is None  # not sent anywhere yet
        cluster = rh.cluster(name="@/machines/loopback", dryrun=True)
        rh.function(embed).to(cluster).save("@/team/embed-on-byo", overwrite=True)
        assert names.describe("@/team/embed-on-byo")["cluster"] == {"name": "@/machines/loopback"}
        loaded = rh.function(name="@/team/embed-on-byo")
        assert loaded(["abcd", "e"]) == [4, 1]
        loaded.system.down()

        shell = run_rh("ssh", "@/machines/loopback", input="echo on-the-head\nexit 4\n")
        assert shell.returncode == 4 and "on-the-head" in shell.stdout, shell.stderr
    finally:
        down = run_rh("down", "@/machines/loopback", timeout=300)
    assert down.returncode == 0, down.stderr
    assert run_rh("status", "@/machines/loopback").returncode == 5


def test_log_level_from_the_config_file_applies_to_commands(home, tmp_path):
    saved_local(tmp_path)
    run_rh("config", "set", "log_level", "DEBUG")
    probe = textwrap.dedent("""
        import logging, sys
        from rh_core.cli import configure_logging
        configure_logging()
        logging.getLogger("rh_core.clusters.remote").debug("from the core")
        logging.getLogger("paramiko.transport").info("from paramiko")
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    # The core's level, not paramiko's (nor any other library's).
    assert done.stderr.splitlines() == ["DEBUG rh_core.clusters.remote: from the core"]
