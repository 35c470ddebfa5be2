"""Ray across machines: a BYO cluster of two network-namespace hosts (netns_hosts.py), where the head's
server starts a Ray head and the other host joins it as a Ray worker node; plus the worker-node
plumbing (joining, stopping only our processes, copying code and environments to the other nodes)
without Ray or namespaces.

The slow tests share one module-scoped cluster: wheels, a venv with Ray, a Ray head and a worker node
take 1-2 minutes on 2 cores. Each host has its own remote dir (state, synced code, Ray node) except
the venv, which they share: installing Ray a second time would add ~35 s and runs the same bootstrap
code as the head's install.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import functools
import importlib
import json
import logging
import os
import re
import pathlib
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import multinode_functions
import netns_hosts
import rh_core as rh
from rh_ray import executor, plugin, worker_node

logger = logging.getLogger(__name__)


# -------------------------------------------------------------------------------------------------
# Without Ray: the hooks and worker_node against fakes and plain processes


class FakeTransport:
    def __init__(self, address: str, answers: dict[str, dict[str, Any]], log: list[tuple[str, str]]):
        self.address, self.answers, self.log = address, answers, log

    def run(self, commands: list[str], *, stream_logs: bool = False) -> list[tuple[int, str, str]]:
        (command,) = commands
        self.log.append((self.address, command))
        answer = self.answers.get(self.address, {"ok": True, "status": "started"})
        return [(0 if answer.get("ok") else 1, json.dumps(answer) + "\n", "")]

    def close(self) -> None:
        pass


class FakeCluster:
    """What the hooks use of a RemoteCluster: cluster_info, remote_dir, install_runtime, transport_to."""

    def __init__(self, workers: tuple[str, ...], answers: dict[str, dict[str, Any]] | None = None,
                 install_error: Exception | None = None, executor: str = "ray"):
        self.cluster_info = type("Info", (), {"head": "head-node", "workers": workers})()
        self.remote_dir = "~/.rh"
        self.executor = executor
        self.answers = answers or {}
        self.install_error = install_error
        self.commands: list[tuple[str, str]] = []

    def install_runtime(self, address: str, *, prefer_python: str | None = None) -> str:
        if self.install_error is not None:
            raise self.install_error
        return "/home/u/.rh/venv/bin/python"

    def transport_to(self, address: str) -> FakeTransport:
        return FakeTransport(address, self.answers, self.commands)

    @property
    def transport(self) -> FakeTransport:
        return self.transport_to(self.cluster_info.head)


READY = {"executor": "ray", "executor_ray_address": "10.9.9.1:41000", "executor_node_ips": ["10.9.9.1"]}


def test_the_client_side_modules_do_not_import_ray():
    code = "import sys, rh_ray.plugin, rh_ray.workers, rh_ray.worker_node; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_ready_hook_ignores_other_executors_and_single_machine_clusters():
    with_workers = FakeCluster(("worker-a",))
    plugin.rh_cluster_ready(cluster=with_workers, info={**READY, "executor": "process"})
    alone = FakeCluster(())
    plugin.rh_cluster_ready(cluster=alone, info=READY)
    plugin.rh_cluster_ready(cluster=object(), info=READY)  # a LocalCluster has no cluster_info
    assert with_workers.commands == [] and alone.commands == []


def test_ready_hook_joins_only_workers_the_head_does_not_list():
    cluster = FakeCluster(("10.9.9.2", "10.9.9.3"))
    plugin.rh_cluster_ready(cluster=cluster, info={**READY, "executor_node_ips": ["10.9.9.1", "10.9.9.2"]})
    ((address, command),) = cluster.commands
    assert address == "10.9.9.3"
    assert "-m rh_ray.worker_node join" in command and "--gcs-address 10.9.9.1:41000" in command
    assert "--node 10.9.9.3" in command and command.startswith("/home/u/.rh/venv/bin/python ")


def test_a_worker_that_cannot_join_is_named_with_the_cause():
    failure = {"ok": False, "status": "failed", "error": "`ray start` exited with code 1",
               "log": "ConnectionError: GCS at 10.9.9.1:41000 unreachable"}
    cluster = FakeCluster(("worker-a", "worker-b"), answers={"worker-b": failure})
    with pytest.raises(rh.RhError) as info:
        plugin.rh_cluster_ready(cluster=cluster, info=READY)
    message = str(info.value)
    assert "Ray worker worker-b could not join the Ray head at 10.9.9.1:41000" in message
    assert "exited with code 1" in message and "GCS at 10.9.9.1:41000 unreachable" in message
    assert "worker-a" not in message


def test_a_worker_that_cannot_be_prepared_is_named():
    cluster = FakeCluster(("worker-a",), install_error=RuntimeError("no python3 on the PATH"))
    with pytest.raises(rh.RhError, match="Ray worker worker-a: could not install rh_core and Ray there: no python3"):
        plugin.rh_cluster_ready(cluster=cluster, info=READY)


def test_missing_ray_address_says_how_to_fix_it():
    cluster = FakeCluster(("worker-a",))
    with pytest.raises(rh.RhError, match="reports no Ray address.*restart_server"):
        plugin.rh_cluster_ready(cluster=cluster, info={"executor": "ray"})


def test_teardown_hook_stops_the_head_then_runs_leave_on_every_worker_with_the_remote_home_expanded():
    cluster = FakeCluster(("worker-a", "worker-b"))
    plugin.rh_cluster_teardown(cluster=cluster)
    (head, stop_head), *leaves = cluster.commands
    assert head == "head-node"
    assert '"$HOME"/.rh/venv/bin/python -m rh_ray.worker_node stop-head --state-dir "$HOME"/.rh/server' in stop_head
    assert sorted(address for address, _ in leaves) == ["worker-a", "worker-b"]
    assert '"$HOME"/.rh/venv/bin/python -m rh_ray.worker_node leave' in leaves[0][1]
    not_ours = FakeCluster(("worker-a",), executor="process")
    plugin.rh_cluster_teardown(cluster=not_ours)
    assert not_ours.commands == []


def test_teardown_hook_leaves_head_and_workers_alone_when_the_server_keeps_ray():
    # restart_server(keep=("ray",)) left a keep-ray marker in the server's state dir on the head.
    cluster = FakeCluster(("worker-a", "worker-b"), answers={"head-node": {"ok": True, "status": "kept"}})
    plugin.rh_cluster_teardown(cluster=cluster)
    assert [address for address, _ in cluster.commands] == ["head-node"]


def test_stop_head_keeps_a_head_marked_for_the_next_server_and_stops_an_unmarked_one(tmp_path):
    from rh_core.plugin.interfaces import keep_marker

    marker = pathlib.Path(keep_marker(str(tmp_path), "ray"))
    head_dir = tmp_path / "ray-head"
    head_dir.mkdir()
    token = secrets.token_hex(8)
    process = _marked(token)
    (head_dir / worker_node.RECORD).write_text(json.dumps({"token": token, "pid": process.pid}))
    marker.touch()
    assert worker_node.stop_head(str(tmp_path))["status"] == "kept"
    assert process.poll() is None
    marker.unlink()
    assert worker_node.stop_head(str(tmp_path))["status"] == "stopped"
    assert process.wait(timeout=10) is not None
    assert worker_node.stop_head(str(tmp_path))["status"] == "absent"


def _marked(token: str, *python: str) -> subprocess.Popen:
    env = {**os.environ, worker_node.MARKER: token}
    return subprocess.Popen([sys.executable, "-c", ";".join(python) or "import time; time.sleep(300)"],
                            env=env, start_new_session=True)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="worker_node finds its processes through /proc")
def test_leave_stops_only_the_processes_of_its_own_node(tmp_path):
    token, other = secrets.token_hex(8), secrets.token_hex(8)
    ready = tmp_path / "ignoring-sigterm"
    ours = [_marked(token), _marked(token, "import signal, time", "signal.signal(signal.SIGTERM, signal.SIG_IGN)",
                                    f"open({str(ready)!r}, 'w').close()", "time.sleep(300)")]
    theirs = _marked(other)
    try:
        deadline = time.monotonic() + 10
        while not ready.exists() and time.monotonic() < deadline:  # SIGTERM before SIG_IGN would kill it
            time.sleep(0.05)
        assert sorted(worker_node.our_pids(token)) == sorted(p.pid for p in ours)
        (tmp_path / worker_node.RECORD).write_text(json.dumps({"token": token, "pid": ours[0].pid, "temp_dir": ""}))
        result = worker_node.stop(str(tmp_path), grace=1.0)
        assert result == {"ok": True, "status": "stopped", "stopped": 2, "killed": 1}  # one ignored SIGTERM
        for process in ours:
            assert process.wait(timeout=10) is not None
        assert theirs.poll() is None, "a process of another node was stopped"
        assert not (tmp_path / worker_node.RECORD).exists()
        assert worker_node.stop(str(tmp_path))["status"] == "absent"
    finally:
        for process in [*ours, theirs]:
            if process.poll() is None:
                process.kill()
            process.wait()


# Runs as PID 1 of a new PID namespace: the fake `ray start` processes it leaves behind die with it
# instead of lingering as zombies (PID 1 of a test machine may reap nothing).
_JOIN_SCENARIO = r"""
import json, os, sys
tmp = sys.argv[1]
def fake_ray(name, script):
    directory = os.path.join(tmp, name)
    os.makedirs(directory)
    with open(os.path.join(directory, "ray"), "w") as file:
        file.write("#!/bin/sh\n" + script + "\n")
    os.chmod(os.path.join(directory, "ray"), 0o755)
    return os.path.join(directory, "python")  # join() runs the `ray` beside its Python
import socket
from rh_ray import worker_node as w
# Two "heads" that accept connections (join checks that the GCS is reachable) and a closed port.
heads = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
old_head, new_head = (f"127.0.0.1:{head.getsockname()[1]}" for head in heads)
with socket.socket() as closed:
    closed.bind(("127.0.0.1", 0))
    nobody = f"127.0.0.1:{closed.getsockname()[1]}"
root, node, out = os.path.join(tmp, "root"), "10.9.9.2", {}
sys.executable = fake_ray("good", "echo 'Ray runtime started.'; exec sleep 300")
out["first"] = w.join(root, old_head, node)
out["again"] = w.join(root, old_head, node)
out["new_head"] = w.join(root, new_head, node)
out["status"] = w.status(root, node)
out["leave"] = w.stop(w.node_dir(root, node))
out["unreachable"] = w.join(root, nobody, node)
sys.executable = fake_ray("bad", "echo 'ConnectionError: the GCS said no'; exit 1")
out["failed"] = w.join(root, new_head, node)
out["heads"] = [old_head, new_head]
print(json.dumps(out))
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare for a PID namespace")
def test_join_is_idempotent_replaces_a_node_of_an_old_head_and_reports_failures(tmp_path):
    # A fake `ray` (prints what `ray start` prints, then sleeps) stands in for Ray.
    done = subprocess.run(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", sys.executable, "-c",
                           _JOIN_SCENARIO, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["first"]["status"] == "started"
    assert out["again"]["status"] == "running" and out["again"]["pid"] == out["first"]["pid"]
    assert out["new_head"]["status"] == "started" and out["new_head"]["pid"] != out["first"]["pid"]
    assert out["status"]["pids"] == [out["new_head"]["pid"]], "the node of the old head is still running"
    assert out["status"]["gcs_address"] == out["heads"][1]
    assert out["leave"] == {"ok": True, "status": "stopped", "stopped": 1, "killed": 0}
    assert out["unreachable"]["status"] == "unreachable"
    assert "cannot reach the Ray head's GCS at 127.0.0.1:" in out["unreachable"]["error"]
    assert "refused" in out["unreachable"]["error"]
    assert out["failed"]["ok"] is False and "exited with code 1" in out["failed"]["error"]
    assert "ConnectionError: the GCS said no" in out["failed"]["log"]


def test_node_dirs_are_per_address_so_a_shared_home_keeps_nodes_apart():
    assert worker_node.node_dir("/r", "10.0.0.2") != worker_node.node_dir("/r", "10.0.0.3")
    assert worker_node.node_dir("/r", "a/../b") == "/r/ray-nodes/a_.._b"
    assert worker_node.node_dir("/r", "..") == "/r/ray-nodes/__"


class FakeRay:
    """What NodeCopies uses of Ray. Each node is a directory standing for that machine's file system
    (``/`` for one that shares the head's); its tasks run in this process, in a thread."""

    class exceptions:
        class RayError(Exception):
            pass

        class RayTaskError(RayError):
            def __init__(self, cause: BaseException):
                super().__init__(f"task failed: {cause}")
                self.cause = cause

    util = types.SimpleNamespace(scheduling_strategies=types.SimpleNamespace(
        NodeAffinitySchedulingStrategy=lambda node, soft: node))

    def __init__(self, roots: dict[str, Path], dead: tuple[str, ...] = ()):
        self.roots, self.dead = roots, dead
        self.unpacked: list[tuple[str, str]] = []  # (node, what unpack_copy did there, or "failed")

    def put(self, value: Any) -> Any:
        return value

    def remote(self, **_options: Any):
        return lambda function: types.SimpleNamespace(options=lambda scheduling_strategy: types.SimpleNamespace(
            remote=lambda path, *rest: self._run(scheduling_strategy, function, path, *rest)))

    async def _run(self, node: str, function, path: str, *rest: Any) -> Any:
        if node in self.dead:
            raise self.exceptions.RayError(f"node {node} is dead")
        try:
            done = await asyncio.to_thread(function, os.path.join(self.roots[node], path.lstrip("/")), *rest)
        except Exception as exc:
            self.unpacked.append((node, "failed"))
            raise self.exceptions.RayTaskError(exc) from exc
        self.unpacked.append((node, done))
        return done


def fake_environment(root: Path, installed: dict[str, Any]) -> Path:
    """An environment's root as rh_core.server.envs lays it out, with a venv whose python links to this one."""
    (root / "venv" / "bin").mkdir(parents=True)
    (root / "venv" / "bin" / "python").symlink_to(sys.executable)
    (root / "installed.json").write_text(json.dumps(installed))
    return root


def copy_environment(copies: executor.NodeCopies, root: Path, nodes: list[str], check=None) -> None:
    asyncio.run(copies.copy_to(str(root), nodes, {node: f"10.0.0.{i}" for i, node in enumerate(nodes, 2)}, check))


def test_an_environment_goes_to_each_other_node_once_per_install_with_its_links(tmp_path):
    root = fake_environment(tmp_path / "head" / "envs" / "x", {"pkg==1": {}})
    ray = FakeRay({"n2": tmp_path / "n2", "n3": tmp_path / "n3"})
    copies = executor.NodeCopies(ray, "environment", executor.environment_fingerprint)
    copy_environment(copies, root, ["n2", "n3"])
    assert ray.unpacked == [("n2", "copied"), ("n3", "copied")]
    for node in ("n2", "n3"):
        copy = tmp_path / node / str(root).lstrip("/")
        assert os.readlink(copy / "venv" / "bin" / "python") == sys.executable, "the venv's link was not kept"
        assert json.loads((copy / "installed.json").read_text()) == {"pkg==1": {}}
    copy_environment(copies, root, ["n2", "n3"])
    assert len(ray.unpacked) == 2, "an unchanged environment was copied again"
    (root / "installed.json").write_text(json.dumps({"pkg==2": {}}))  # what an install does
    copy_environment(copies, root, ["n2", "n3"])
    assert ray.unpacked[2:] == [("n2", "copied"), ("n3", "copied")]
    assert json.loads((tmp_path / "n3" / str(root).lstrip("/") / "installed.json").read_text()) == {"pkg==2": {}}


def test_a_node_sharing_the_heads_files_is_left_alone(tmp_path):
    root = fake_environment(tmp_path / "envs" / "x", {"pkg==1": {}})
    before = os.stat(root).st_ino, sorted(os.listdir(tmp_path / "envs"))
    ray = FakeRay({"shared": Path("/")})
    copy_environment(executor.NodeCopies(ray, "environment", executor.environment_fingerprint), root, ["shared"])
    assert ray.unpacked == [("shared", "present")]
    assert (os.stat(root).st_ino, sorted(os.listdir(tmp_path / "envs"))) == before


def test_the_items_of_one_map_make_one_copy(tmp_path):
    root = fake_environment(tmp_path / "head" / "envs" / "x", {})
    ray = FakeRay({"n2": tmp_path / "n2"})
    copies = executor.NodeCopies(ray, "environment", executor.environment_fingerprint)

    async def many_calls() -> None:
        await asyncio.gather(*(copies.copy_to(str(root), ["n2"], {}) for _ in range(8)))

    asyncio.run(many_calls())
    assert ray.unpacked == [("n2", "copied")]


def test_a_forgotten_copy_is_sent_again_even_where_it_looks_current(tmp_path):
    from rh_core.support.workdir import fingerprint

    root = tmp_path / "head" / "code"
    root.mkdir(parents=True)
    (root / "module.py").write_text("VALUE = 'one'\n")
    ray = FakeRay({"n2": tmp_path / "n2"})
    copies = executor.NodeCopies(ray, "code", fingerprint)
    copy_environment(copies, root, ["n2"])
    copy = tmp_path / "n2" / str(root).lstrip("/") / "module.py"
    # Another copy behind the same fingerprint: same names, sizes and times, other contents.
    before = os.stat(copy)
    copy.write_text("VALUE = 'two'\n")
    os.utime(copy, ns=(before.st_atime_ns, before.st_mtime_ns))
    copy_environment(copies, root, ["n2"])
    assert ray.unpacked == [("n2", "copied")], "nothing looked out of date, so nothing was sent"
    copies.forget(str(root))  # what the executor does when a runner there refused the call as stale
    copy_environment(copies, root, ["n2"])
    assert ray.unpacked == [("n2", "copied"), ("n2", "copied")]
    assert copy.read_text() == "VALUE = 'one'\n"


def test_a_copy_waits_for_an_install_under_way_and_ships_it_whole(tmp_path):
    import contextlib
    import threading
    import time

    root = fake_environment(tmp_path / "head" / "envs" / "x", {"pkg==1": {}})
    ray = FakeRay({"n2": tmp_path / "n2"})
    copies = executor.NodeCopies(ray, "environment", executor.environment_fingerprint)
    installing = threading.Lock()

    @contextlib.contextmanager
    def install_lock():
        with installing:
            yield

    installing.acquire()  # an install is under way: half its files are there, its record not yet
    (root / "venv" / "first_half.py").write_text("")
    copier = threading.Thread(target=lambda: asyncio.run(copies.copy_to(str(root), ["n2"], {}, hold=install_lock)))
    copier.start()
    time.sleep(0.5)
    assert ray.unpacked == [], "the environment was copied while an install held its lock"
    (root / "venv" / "second_half.py").write_text("")
    (root / "installed.json").write_text(json.dumps({"pkg==2": {}}))  # the install ends
    installing.release()
    copier.join(timeout=30)
    copy = tmp_path / "n2" / str(root).lstrip("/")
    assert (copy / "venv" / "second_half.py").exists()
    assert json.loads((copy / "installed.json").read_text()) == {"pkg==2": {}}
    copy_environment(copies, root, ["n2"])
    assert ray.unpacked == [("n2", "copied")], "the copy was labelled with the version before the install"


def _refuse(python: str) -> None:
    raise rh.RhError(f"{python} cannot run rh here")


def test_a_node_that_cannot_use_a_copy_fails_the_calls_until_it_changes_and_a_dead_one_is_skipped(tmp_path, caplog):
    root = fake_environment(tmp_path / "head" / "envs" / "x", {"pkg==1": {}})
    ray = FakeRay({"n2": tmp_path / "n2", "n3": tmp_path / "n3"}, dead=("n3",))
    copies = executor.NodeCopies(ray, "environment", executor.environment_fingerprint)
    check = functools.partial(_refuse, "/env/python")
    with caplog.at_level(logging.WARNING, logger="rh_ray.executor"):
        with pytest.raises(rh.RhError) as info:
            copy_environment(copies, root, ["n2", "n3"], check)
    assert f"could not put the environment {root} on Ray node 10.0.0.2" in str(info.value)
    assert "/env/python cannot run rh here" in str(info.value)
    assert "could not copy" in caplog.text and "10.0.0.3" in caplog.text and "node n3 is dead" in caplog.text
    with pytest.raises(rh.RhError, match="cannot run rh here"):
        copy_environment(copies, root, ["n2"], check)
    assert ray.unpacked == [("n2", "failed")], "a failed node was sent the same version again"
    (root / "installed.json").write_text(json.dumps({"pkg==2": {}}))
    copy_environment(copies, root, ["n2"])
    assert ray.unpacked[1:] == [("n2", "copied")]


def test_the_interpreter_check_names_what_the_node_lacks(tmp_path):
    executor.check_interpreter_runs_rh(sys.executable)  # this Python imports rh_core
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").symlink_to("/nonexistent/base/python3")
    with pytest.raises(rh.RhError) as info:
        executor.check_interpreter_runs_rh(str(tmp_path / "bin" / "python"))
    message = str(info.value)
    assert "cannot run rh here" in message and "the head's base Python (/nonexistent/base/python3)" in message
    assert "same remote_dir" in message


# -------------------------------------------------------------------------------------------------
# Two hosts, one Ray


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[netns_hosts.NetnsHosts, str]]:
    """Hosts h1 and h2, and the cluster's remote dir: private to each host but for the shared venv."""
    reason = netns_hosts.skip_reason()
    if reason:
        pytest.skip(reason)
    # Outside /tmp: each host gets its own /tmp, and the hosts' state must stay visible to them.
    directory = Path(tempfile.mkdtemp(prefix="rh-multinode-", dir="/var/tmp"))
    remote_dir = str(directory / "remote")
    try:
        with netns_hosts.netns_hosts(2, directory / "hosts", private_dirs=[remote_dir],
                                     shared_dirs=[f"{remote_dir}/venv"]) as made:
            yield made, remote_dir
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(hosts) -> Iterator[rh.RemoteCluster]:
    made, remote_dir = hosts
    cluster = rh.cluster(name=f"multinode-{os.getpid()}", ips=made.addresses,
                         ssh_creds=made.ssh_creds(str(made.directory / "known_hosts")), executor="ray")
    cluster.remote_dir = remote_dir
    started = time.monotonic()
    try:
        cluster.connection()  # bootstrap, the Ray head, and (the ready hook) the worker joining it
        logger.info("cluster up with its worker joined in %.1f s", time.monotonic() - started)
        log_head_start(cluster, made, remote_dir)
        yield cluster
    finally:
        cluster.down()


def log_head_start(cluster: rh.RemoteCluster, made: netns_hosts.NetnsHosts, remote_dir: str) -> None:
    """Log how long the server took to start its Ray head (server start to Ray's "Started" line)."""
    log = made.host_path(made.hosts[0], f"{remote_dir}/server/server.log").read_text(errors="replace")
    line = next((line for line in log.splitlines() if "Started a local Ray instance" in line), None)
    if line is not None:
        stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        logger.info("the Ray head started in %.1f s", stamp - cluster.status()["started_at"])


def hostname_after(seconds: float):
    # Nested, so it travels by value: the code synced for by-reference functions exists on the head only.
    def hostname(_: int) -> str:
        import socket
        import time

        time.sleep(seconds)
        return socket.gethostname()

    return hostname


def ray_processes(made: netns_hosts.NetnsHosts) -> dict[str, list[str]]:
    """``pid comm args`` of every process in each host's namespace that is not its sshd, from ps."""
    found = {}
    for host in made.hosts:
        pids = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True, text=True).stdout.split()
        if not pids:
            found[host.name] = []
            continue
        ps = subprocess.run(["ps", "-o", "pid=,comm=,args=", "-p", ",".join(pids)], capture_output=True, text=True)
        # The host's sshd (its PID 1 and sessions) and the `unshare` that started it are the host itself.
        found[host.name] = [line.strip()[:200] for line in ps.stdout.splitlines()
                            if line.split()[1] not in ("sshd", "unshare")]
    return found


@pytest.mark.slow
def test_map_spreads_over_both_hosts(cluster):
    started = time.monotonic()
    names = rh.function(hostname_after(0.5)).to(cluster).map(range(16))
    logger.info("map of 16 items took %.1f s: %s", time.monotonic() - started, names)
    assert set(names) == {"h1", "h2"}


def loud_hostname_after(seconds: float):
    def loud_hostname(_: int) -> str:
        import socket
        import time

        print("sleeping on", socket.gethostname())
        time.sleep(seconds)
        return socket.gethostname()

    return loud_hostname


@pytest.mark.slow
def test_calls_that_print_on_the_worker_node_are_not_held_back(cluster):
    # The server's log endpoint is a unix socket on the head; a call on h2 that printed used to make
    # the server wait 2 s for log lines that could never arrive.
    quiet, loud = (rh.function(make(0.3)).to(cluster) for make in (hostname_after, loud_hostname_after))
    quiet.map(range(16))  # warm both hosts' Ray workers
    started = time.monotonic()
    quiet.map(range(16))
    quiet_seconds = time.monotonic() - started
    started = time.monotonic()
    names = loud.map(range(16))
    loud_seconds = time.monotonic() - started
    logger.info("map of 16 items: %.1f s quiet, %.1f s printing", quiet_seconds, loud_seconds)
    assert set(names) == {"h1", "h2"}
    assert loud_seconds < quiet_seconds + 1.5


@pytest.mark.slow
def test_status_reports_two_ray_nodes(cluster, hosts):
    made, _ = hosts
    deadline = time.monotonic() + 20  # the server re-reads Ray's node list every few seconds
    while (status := cluster.status())["executor_nodes"] != 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert status["executor_nodes"] == 2
    assert status["executor_node_ips"] == sorted(made.addresses)
    assert status["executor_ray_address"].startswith(f"{made.addresses[0]}:")
    assert status["node_address"] == made.addresses[0]


@pytest.mark.slow
def test_a_plain_call_works(cluster):
    def add(a, b):
        return a + b

    assert rh.function(add).to(cluster)(2, 3) == 5


@pytest.mark.slow
def test_a_function_sent_by_reference_runs_on_the_worker_node_too(cluster, hosts):
    made, remote_dir = hosts
    f = rh.function(multinode_functions.hostname_and_module_file).to(cluster)
    results = f.map([0.5] * 16)
    assert {host for host, _ in results} == {"h1", "h2"}
    # Both hosts imported the same path: the synced working directory on h1, its copy on h2.
    (path,) = {file for _, file in results}
    assert path.startswith(f"{remote_dir}/sync/") and path.endswith("/plugins/ray/tests/multinode_functions.py")
    for host in made.hosts:
        assert made.host_path(host, path).is_file(), f"{path} is missing on {host.name}"


@pytest.mark.slow
def test_a_node_holding_another_copy_of_the_code_refuses_it_and_gets_the_callers(cluster, hosts):
    made, remote_dir = hosts
    _, worker = made.hosts
    name = f"stale_probe_{os.getpid()}"
    module_file = Path(__file__).parent / f"{name}.py"
    module_file.write_text("import socket\nimport time\n\nVALUE = 'one'\n\n\n"
                           "def value(seconds):\n    time.sleep(seconds)\n    return socket.gethostname(), VALUE\n")
    try:
        probe = importlib.import_module(name)
        value = rh.function(probe.value).to(cluster)  # syncs the working directory, the new module with it
        # Another function of the same tree: the tree goes to h2, where nothing has imported the new module.
        other = rh.function(multinode_functions.hostname_and_module_file).to(cluster)
        assert {host for host, _ in other.map([0.3] * 16)} == {"h1", "h2"}
        (copy,) = [path for path in made.host_path(worker, f"{remote_dir}/sync").rglob(f"{name}.py")]
        # h2 now holds another module behind the same fingerprint (names, sizes, times): an old copy.
        before = os.stat(copy)
        copy.write_text(copy.read_text().replace("'one'", "'two'"))
        os.utime(copy, ns=(before.st_atime_ns, before.st_mtime_ns))
        results = value.map([0.3] * 16)  # long enough items that Ray spreads them over both hosts
        assert {host for host, _ in results} == {"h1", "h2"}
        assert {found for _, found in results} == {"one"}, results
    finally:
        module_file.unlink()
        sys.modules.pop(name, None)


@pytest.mark.slow
def test_a_named_env_is_copied_to_the_worker_node_and_kept_up_to_date(cluster, hosts, tmp_path):
    pytest.importorskip("rh_pip", reason="installing into an environment needs the rh-pip plugin")
    from rh_core.testing.packages import build_wheel

    made, remote_dir = hosts
    head, worker = made.hosts
    env_root = f"{remote_dir}/server/envs/multinode-env"
    python = f"{env_root}/venv/bin/python"
    for version in ("1.5", "1.6"):  # the second install must reach the worker node too
        build_wheel(str(tmp_path / version), "rhtest-multinode-env", version)
        requirement = rh.package(name=f"rhtest-multinode-env=={version}", install_method="pip",
                                 find_links=str(tmp_path / version), no_index=True)
        f = rh.function(multinode_functions.where_and_version).to(
            cluster, env=rh.env("multinode-env", [requirement]))
        results = f.map(["rhtest-multinode-env"] * 16, [0.5] * 16)
        assert {host for host, _, _ in results} == {"h1", "h2"}
        assert {(interpreter, found) for _, interpreter, found in results} == {(python, version)}
    # Each host has a remote dir of its own: h2 ran the env from its own copy, links and all.
    copy = made.host_path(worker, env_root)
    assert copy != made.host_path(head, env_root)
    assert (copy / "installed.json").read_text() == (made.host_path(head, env_root) / "installed.json").read_text()
    assert (copy / "venv" / "bin" / "python").is_symlink()


@pytest.mark.slow
def test_output_of_calls_on_the_worker_node_reaches_the_caller(cluster, capsys):
    loud = rh.function(loud_hostname_after(0.3)).to(cluster)
    capsys.readouterr()
    names = loud.map(range(16))  # shown by default, each line marked with its item
    assert set(names) == {"h1", "h2"}
    printed = capsys.readouterr().out.splitlines()
    marked = [re.fullmatch(rf"\({cluster.name} \S+ item (\d+)\) (sleeping on h\d)", line) for line in printed]
    assert all(marked), printed
    assert sorted((int(m[1]), m[2]) for m in marked) == [(i, f"sleeping on {name}") for i, name in enumerate(names)]


@pytest.mark.slow
def test_restart_server_without_restarting_ray_keeps_its_nodes_and_actors(cluster, hosts):
    made, remote_dir = hosts
    worker = made.hosts[1]
    record_path = made.host_path(worker, worker_node.node_dir(remote_dir, worker.address)) / worker_node.RECORD
    counter = rh.function(multinode_functions.count_in_actor).to(cluster)
    nodes = rh.function(multinode_functions.ray_node_ids).to(cluster)
    count, node_ids, worker_record = counter(), nodes(), json.loads(record_path.read_text())
    before = cluster.status()
    assert len(node_ids) == 2
    started = time.monotonic()
    cluster.restart_server(keep=("ray",))
    logger.info("restart keeping Ray took %.1f s", time.monotonic() - started)
    after = cluster.status()
    assert after["pid"] != before["pid"], "the server was not restarted"
    assert after["executor_ray_address"] == before["executor_ray_address"]
    assert nodes() == node_ids
    assert counter() == count + 1, "the detached actor did not survive the restart"
    assert json.loads(record_path.read_text()) == worker_record, "the worker node was restarted"
    assert set(rh.function(hostname_after(0.5)).to(cluster).map(range(16))) == {"h1", "h2"}


@pytest.mark.slow
def test_a_second_client_leaves_the_running_worker_node_alone(cluster, hosts):
    made, remote_dir = hosts
    worker = made.hosts[1]
    record_path = made.host_path(worker, worker_node.node_dir(remote_dir, worker.address)) / worker_node.RECORD
    before = json.loads(record_path.read_text())
    again = rh.cluster(name=cluster.name, ips=made.addresses, ssh_creds=cluster.spec["ssh_creds"], executor="ray")
    again.remote_dir = remote_dir
    try:
        assert again.status()["pid"] == cluster.status()["pid"]
    finally:
        again.transport.close()
    assert json.loads(record_path.read_text()) == before
    raylets = [line for line in ray_processes(made)[worker.name] if line.split()[1] == "raylet"]
    assert len(raylets) == 1, raylets


@pytest.mark.slow
def test_restart_server_stops_the_worker_node_and_joins_the_new_head(cluster, hosts):
    made, remote_dir = hosts
    worker = made.hosts[1]
    record_path = made.host_path(worker, worker_node.node_dir(remote_dir, worker.address)) / worker_node.RECORD
    before = json.loads(record_path.read_text())
    counter, nodes = (rh.function(fn).to(cluster)
                     for fn in (multinode_functions.count_in_actor, multinode_functions.ray_node_ids))
    assert counter() >= 1
    node_ids = nodes()
    started = time.monotonic()
    cluster.restart_server()  # Ray restarts too
    logger.info("restart with the worker rejoined took %.1f s", time.monotonic() - started)
    after = json.loads(record_path.read_text())
    assert after["gcs_address"] == cluster.status()["executor_ray_address"] != before["gcs_address"]
    assert after["pid"] != before["pid"]
    new_node_ids = nodes()
    assert len(new_node_ids) == 2 and not set(new_node_ids) & set(node_ids)
    assert counter() == 1, "an actor of the old Ray survived"
    names = rh.function(hostname_after(0.5)).to(cluster).map(range(16))
    assert set(names) == {"h1", "h2"}


@pytest.mark.slow
def test_a_network_cut_to_the_worker_ends_the_map_with_an_error_naming_it(cluster, hosts):
    made, _ = hosts
    worker = made.hosts[1]
    f = rh.function(hostname_after(3.0)).to(cluster)
    assert set(f.map(range(8))) == {"h1", "h2"}  # both hosts warm and in use
    with concurrent.futures.ThreadPoolExecutor(1) as pool, link_down_after(worker, 1.0):
        started = time.monotonic()
        running = pool.submit(f.map, range(8))
        with pytest.raises(rh.WorkerDiedError) as info:
            running.result(timeout=120)
        seconds = time.monotonic() - started
    logger.info("the map ended %.1f s after it started (link cut after 1 s): %s", seconds, info.value)
    # Ray's health checks declare the silent node dead after node_timeout_s (30 s by default).
    assert seconds < 60
    message = str(info.value)
    assert f"Ray lost the node running this call: {worker.address} stopped answering" in message
    # Link restored: the next calls work, on the head (the lost node's Ray exited when it heard it was
    # declared dead).
    assert set(f.map(range(4))) <= {"h1", "h2"}
    # A new connection (here: a server restart that keeps Ray) joins the worker again.
    cluster.restart_server(keep=("ray",))
    assert set(rh.function(hostname_after(0.5)).to(cluster).map(range(16))) == {"h1", "h2"}


@contextlib.contextmanager
def link_down_after(host: netns_hosts.NetnsHost, seconds: float) -> Iterator[None]:
    """Cut ``host`` off ``seconds`` after entering (in a thread, so the body runs meanwhile); restore
    its link at exit."""
    timer = threading.Timer(seconds, subprocess.run, (["ip", "link", "set", host.veth, "down"],), {"check": True})
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()
        subprocess.run(["ip", "link", "set", host.veth, "up"], check=True)


@pytest.mark.slow
def test_down_leaves_no_ray_process_of_ours(cluster, hosts):
    made, remote_dir = hosts
    assert any(line.split()[1] == "raylet" for line in ray_processes(made)["h2"])
    started = time.monotonic()
    cluster.down()
    # down() signals the head's server and returns; its Ray shutdown takes a few seconds more.
    deadline = time.monotonic() + 60
    while (left := {name: lines for name, lines in ray_processes(made).items() if lines}) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"still running {time.monotonic() - started:.0f} s after down(): {left}"
    logger.info("down: nothing of ours left after %.1f s", time.monotonic() - started)
    worker = made.hosts[1]
    assert not (made.host_path(worker, worker_node.node_dir(remote_dir, worker.address)) / worker_node.RECORD).exists()
