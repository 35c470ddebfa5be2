"""A BYO cluster on a real sshd: bootstrap over SSH, then the whole Function API through the tunnel."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import pytest

import rh_core as rh
from rh_core.bootstrap.wheels import WheelhouseError, uv_version
from rh_core.clusters import remote as remote_module
from rh_core.testing import ExecutorContract, ProvisionerContract
from rh_core.testing import functions as fns
from rh_core.testing.sshd import loopback_cluster


def ssh_creds(sshd, tmp_path, **extra):
    return {"ssh_user": sshd.user, "ssh_private_key": str(sshd.client_key), "ssh_port": sshd.port,
            "known_hosts": str(tmp_path / "known_hosts"), "trust_new_host": True, **extra}


@pytest.fixture(scope="session")
def byo_cluster(sshd, tmp_path_factory):
    """One BYO cluster on the loopback sshd for the session; its remote state lives in a temp dir."""
    tmp = tmp_path_factory.mktemp("byo")
    cluster = rh.cluster(name="byo-loopback", ips=[sshd.host], ssh_creds=ssh_creds(sshd, tmp),
                         executor_options={"num_workers": 2})
    cluster.remote_dir = str(tmp / "remote-rh")
    yield cluster
    cluster.down()


@pytest.mark.slow
class TestByoClusterContract(ExecutorContract):
    """Everything the local cluster does, through bootstrap, SSH and a tunnel."""

    @pytest.fixture(scope="class")
    @classmethod
    def cluster(cls, byo_cluster):
        return byo_cluster


@pytest.mark.slow
def test_bootstrap_installed_the_clients_build(byo_cluster):
    info = byo_cluster.status()
    assert info["version"] == rh.__version__ and info["build"]
    assert info["python_executable"].startswith(byo_cluster.remote_dir)


@pytest.mark.slow
def test_working_directory_is_synced_again_only_when_it_changed(byo_cluster):
    from tests_helpers import local_double

    rh.function(local_double).to(byo_cluster)
    first_sync = byo_cluster.transport.last_sync
    assert rh.function(local_double).to(byo_cluster)(21) == 42
    assert byo_cluster.transport.last_sync is first_sync  # unchanged tree: no sync at all
    marker = os.path.join(os.path.dirname(__file__), f"untracked-{os.getpid()}.txt")
    with open(marker, "w") as file:
        file.write("a change in the working tree")
    try:
        rh.function(local_double).to(byo_cluster)
        assert byo_cluster.transport.last_sync is not first_sync
    finally:
        os.unlink(marker)


@pytest.mark.slow
def test_run_and_run_python_on_the_head(byo_cluster):
    (code, out, _), = byo_cluster.run(["echo $((6 * 7))"])
    assert (code, out.strip()) == (0, "42")
    (code, out, _), = byo_cluster.run_python(["import sys", "print(sys.prefix)"])
    assert code == 0 and out.strip().startswith(byo_cluster.remote_dir)


@pytest.mark.slow
def test_killed_server_is_reported_and_restarted_on_next_call(byo_cluster):
    add = rh.function(fns.quiet_add).to(byo_cluster)
    pid = byo_cluster.status()["pid"]
    os.kill(pid, signal.SIGKILL)  # the "remote" server is on this machine
    started = time.monotonic()
    with pytest.raises(rh.ConnectionLostError, match="does not answer"):
        add(1, 2)
    assert time.monotonic() - started < 10
    assert add(1, 2) == 3
    assert byo_cluster.status()["pid"] != pid


def test_asyncio_calls_go_through_the_tunnel_on_the_callers_loop_and_a_killed_server_is_reported(byo_cluster):
    import asyncio

    add = rh.function(fns.add).to(byo_cluster)
    nap = rh.function(fns.sleep_then).to(byo_cluster)

    async def main():
        results = await asyncio.gather(*[add.acall(i, i) for i in range(50)])
        waiting = asyncio.ensure_future(nap.acall(60))
        await asyncio.sleep(0.5)
        os.kill(byo_cluster.status()["pid"], signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(rh.ConnectionLostError):
            await waiting
        return results, time.monotonic() - started, await add.acall(2, 2)

    results, took, again = asyncio.run(main())
    assert results == [2 * i for i in range(50)]
    assert took < 10  # the liveness check through the tunnel notices within seconds
    assert again == 4  # and the next call starts another server


@pytest.mark.slow
def test_reconnect_from_a_new_client_reuses_the_running_server(byo_cluster):
    pid = byo_cluster.status()["pid"]
    again = rh.cluster(**{k: v for k, v in byo_cluster.config().items() if k in ("name",)},
                       ips=byo_cluster.spec["ips"], ssh_creds=byo_cluster.spec["ssh_creds"],
                       executor_options=byo_cluster.executor_options)
    again.remote_dir = byo_cluster.remote_dir
    started = time.monotonic()
    assert again.status()["pid"] == pid
    assert time.monotonic() - started < 5


def test_wrong_key_names_host_and_user(sshd, tmp_path):
    cluster = rh.cluster(ips=[sshd.host], ssh_creds=ssh_creds(sshd, tmp_path, ssh_private_key=str(sshd.other_key)))
    with pytest.raises(Exception) as info:
        cluster.connection()
    message = str(info.value)
    assert sshd.host in message and sshd.user in message
    # The fix is given in the user's own words (ssh_creds keys), not the transport's option names.
    assert "ssh_creds['ssh_private_key']" in message and "private_key=" not in message


def test_a_wrong_key_passphrase_says_so(sshd, tmp_path):
    import subprocess

    key = tmp_path / "locked_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "the right one", "-f", str(key)], check=True)
    with open(sshd.authorized_keys, "a") as authorized:
        authorized.write((tmp_path / "locked_key.pub").read_text())
    creds = ssh_creds(sshd, tmp_path, ssh_private_key=str(key), passphrase="a wrong one", use_agent=False)
    cluster = rh.cluster(ips=[sshd.host], ssh_creds=creds)
    with pytest.raises(rh.RhError, match=r"the passphrase given \(ssh_creds\['passphrase'\]\) does not unlock the "
                                         rf"private key {key}"):
        cluster.connection()
    right = rh.cluster(ips=[sshd.host], ssh_creds={**creds, "passphrase": "the right one"})
    assert right.run(["echo unlocked"])[0][1].strip() == "unlocked"
    right.transport.close()


def test_a_keyword_rh_cluster_does_not_take_is_refused_not_ignored(sshd):
    with pytest.raises(TypeError, match=r"ssh_port= as its own keyword.*belong in ssh_creds: "
                                        r"rh.cluster\(ips=\[...\], ssh_creds=\{'ssh_port': 2222\}\)"):
        rh.cluster(ips=[sshd.host], ssh_port=2222)
    with pytest.raises(TypeError, match="unknown keyword.*gpus; for machines you bring it takes name, ips, ssh_creds"):
        rh.cluster(ips=[sshd.host], ssh_creds={}, gpus=1)


def test_machines_given_by_address_are_byos_because_it_claims_ips_and_old_records_still_load():
    from rh_core.clusters import from_config

    cluster = rh.cluster(ips=["192.0.2.7"], ssh_creds={"ssh_user": "nobody"})
    assert (cluster.name, cluster.provisioner) == ("byo-192.0.2.7", "byo")
    assert cluster.spec == {"ips": ["192.0.2.7"], "ssh_creds": {"ssh_user": "nobody"}}
    saved = cluster.config()
    del saved["provisioner"]  # as records were written when byo was the core's default
    loaded = from_config(saved)
    assert (loaded.provisioner, loaded.spec) == ("byo", cluster.spec)
    with pytest.raises(rh.ProvisionError, match="machines you bring"):  # byo's own check, as a ProvisionError too
        rh.cluster(ips=["192.0.2.7"], gpus=1)


def test_unknown_ssh_creds_key_lists_valid_ones(sshd, tmp_path):
    cluster = rh.cluster(ips=[sshd.host], ssh_creds={"ssh_usr": "root"})
    with pytest.raises(rh.RhError, match="unknown ssh_creds key.*ssh_usr.*valid keys: ssh_user"):
        cluster.connection()


def test_cluster_without_hosts_says_how_to_make_one():
    with pytest.raises(rh.ResourceNotFoundError, match="nothing is saved as '~/nothing'") as missing:
        rh.cluster(name="nothing")  # a name alone loads a saved cluster
    assert any("ips=" in note for note in missing.value.__notes__)
    with pytest.raises(TypeError, match="ips="):
        rh.cluster(ssh_creds={"ssh_user": "me"})


def _fetch(address: str) -> bytes:
    import urllib.request

    deadline = time.monotonic() + 10
    while True:
        try:
            return urllib.request.urlopen(f"http://{address}/index.html", timeout=5).read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.slow
def test_ssh_tunnel_reaches_a_port_on_the_head(byo_cluster, tmp_path):
    import socket
    import subprocess
    import sys

    from rh_core.testing.sshd import free_port

    remote_port, local_port = free_port(), free_port()
    (tmp_path / "index.html").write_text("served on the head")
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(remote_port), "--bind", "127.0.0.1"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with byo_cluster.ssh_tunnel(remote_port, local_port=local_port) as tunnel:
            assert tunnel.local_port == local_port
            assert _fetch(tunnel.address) == b"served on the head"
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", local_port), timeout=2).close()
        tunnel = byo_cluster.ssh_tunnel(remote_port)  # also usable without `with`
        assert _fetch(tunnel.address) == b"served on the head"
        tunnel.close()
    finally:
        server.kill()
        server.wait()


def test_shell_command_is_a_working_ssh(byo_cluster):
    byo_cluster.run(["true"])  # connects, recording the host key (trust_new_host) that plain ssh checks
    command = byo_cluster.transport.shell_command()
    assert command[0] == "ssh"
    import subprocess

    out = subprocess.run([*command, "echo from-the-head"], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "from-the-head", out.stderr


@pytest.mark.slow
def test_bootstrap_as_a_non_root_user(unix_user, sshd, tmp_path):  # unix_user first: it is removed last
    cluster = rh.cluster(name="byo-user", ips=[sshd.host],
                         ssh_creds=ssh_creds(sshd, tmp_path, ssh_user=unix_user), executor_options={"num_workers": 1})
    try:
        where = rh.function(fns.whoami).to(cluster)()
        assert rh.function(fns.quiet_add).to(cluster)(2, 3) == 5
        info = cluster.status()
        assert info["python_executable"].startswith(os.path.expanduser(f"~{unix_user}/.rh/venv"))
        import pwd

        assert pwd.getpwuid(os.stat(f"/proc/{where['pid']}").st_uid).pw_name == unix_user
    finally:
        cluster.down()


@pytest.mark.slow
def test_secrets_land_owner_only_in_the_cluster_users_home(unix_user, sshd, tmp_path):
    import pwd
    import stat

    token = os.urandom(12).hex()
    cluster = rh.cluster(name="byo-secrets", ips=[sshd.host], ssh_creds=ssh_creds(sshd, tmp_path, ssh_user=unix_user),
                         executor_options={"num_workers": 1})
    try:
        custom = rh.Secret(name="tool", values={"TOOL_TOKEN": token}, files={"~/.config/tool/token": token})
        assert cluster.sync_secrets([custom]) == ["tool"]  # over SSH, to a server running as that user
        home = os.path.expanduser(f"~{unix_user}")
        written = os.path.join(home, ".config", "tool", "token")
        with open(written) as f:
            assert f.read() == token
        assert stat.S_IMODE(os.stat(written).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(written)).st_mode) == 0o700
        assert pwd.getpwuid(os.stat(written).st_uid).pw_name == unix_user
        f = rh.function(fns.environment_variable).to(cluster, secrets=["tool"])
        assert f("TOOL_TOKEN") == token
        assert rh.function(fns.environment_variable).to(cluster)("TOOL_TOKEN") is None
        assert cluster.delete_secrets(["tool"]) == ["tool"] and not os.path.exists(written)
    finally:
        cluster.down()


def test_host_without_python3_is_named_with_the_cause(unix_user, sshd, tmp_path):
    home = os.path.expanduser(f"~{unix_user}")
    with open(os.path.join(home, ".bashrc"), "w") as rc:  # this user's SSH sessions find no python3
        rc.write("export PATH=/nonexistent\n")
    cluster = rh.cluster(name="no-python", ips=[sshd.host], ssh_creds=ssh_creds(sshd, tmp_path, ssh_user=unix_user))
    with pytest.raises(rh.ServerStartError, match=rf"{unix_user}@{sshd.host} has no working python3.*apt-get install"):
        cluster.connection()
    cluster.transport.close()


@pytest.mark.slow
def test_ssh_sessions_killed_mid_call_are_reported_and_recovered(byo_cluster, sshd):
    import subprocess
    import threading

    slow = rh.function(fns.sleep_then).to(byo_cluster)
    server_pid = byo_cluster.status()["pid"]
    listener = int((sshd.dir / "sshd.pid").read_text())

    def kill_sessions():
        children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(listener)], capture_output=True, text=True)
        for pid in children.stdout.split():
            os.kill(int(pid), signal.SIGKILL)  # every SSH session, tunnels included; sshd itself listens on

    threading.Timer(0.5, kill_sessions).start()
    started = time.monotonic()
    with pytest.raises(rh.ConnectionLostError):
        slow(30)
    assert time.monotonic() - started < 10
    assert slow(0, "recovered") == "recovered"  # same cluster object: reconnected, new tunnel
    assert byo_cluster.status()["pid"] == server_pid  # the server itself survived


def _established_tcp() -> dict[str, tuple[int, int]]:
    """Socket inode -> (local port, remote port) of this machine's established IPv4 TCP connections."""
    found = {}
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[3] == "01":  # ESTABLISHED
                found[fields[9]] = (int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16))
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    return inodes


def _client_port(client_pid: int, sshd_port: int) -> int:
    """The local port of the one connection that process ``client_pid`` has to ``sshd_port``."""
    tcp = _established_tcp()
    ports = {tcp[inode][0] for inode in _socket_inodes(client_pid) if tcp.get(inode, (0, 0))[1] == sshd_port}
    assert len(ports) == 1, f"the ssh client {client_pid} should have one connection to port {sshd_port}"
    return ports.pop()


def _sshd_processes_serving(client_port: int, sshd_port: int) -> list[int]:
    """The sshd processes holding the server end of the SSH connection from ``client_port``."""
    server_inodes = {inode for inode, ports in _established_tcp().items() if ports == (sshd_port, client_port)}
    holders = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if _socket_inodes(int(entry)) & server_inodes:
                    holders.append(int(entry))
            except OSError:
                continue
    assert holders, "no sshd process holds the tunnel's connection"
    return holders


def _bytes_read(pid: int) -> int:
    with open(f"/proc/{pid}/io") as io:
        return int(next(line for line in io if line.startswith("rchar:")).split()[1])


@pytest.fixture
def paramiko_tunnel_cluster(byo_cluster):
    """A second client of byo_cluster's server whose tunnel goes through paramiko, as with passwords."""
    cluster = rh.cluster(name=byo_cluster.name, ips=byo_cluster.spec["ips"], ssh_creds=byo_cluster.spec["ssh_creds"],
                         executor_options=byo_cluster.executor_options)
    cluster.remote_dir = byo_cluster.remote_dir
    cluster.transport._use_system_ssh = False
    yield cluster
    cluster.transport.close()


@pytest.mark.slow
@pytest.mark.parametrize("cut", ["ssh-client-killed", "sshd-session-killed", "paramiko-connection-cut"])
def test_ssh_connection_cut_mid_transfer_of_a_100_mib_argument_fails_fast_or_recovers_once(request, sshd, tmp_path,
                                                                                          cut):
    """The SSH connection carrying the tunnel is cut while a 100 MiB argument is in it: the call ends
    within 5 s, with an error naming the machine and the cause or with the right result, and
    nothing runs twice; the next call on the same cluster object works."""
    import hashlib
    import threading

    from tests_helpers import digest_and_log

    cluster = request.getfixturevalue("paramiko_tunnel_cluster" if cut.startswith("paramiko") else "byo_cluster")
    digest = rh.function(digest_and_log).to(cluster)
    log = tmp_path / "calls.log"  # written by the function on the "remote" machine, which is this one
    assert digest(b"warm", str(log))[0] == 4  # connection and tunnel are up
    log.unlink()
    forward = cluster.transport._forwards[cluster._server_state["port"]]
    if forward.kind != ("paramiko" if cut.startswith("paramiko") else "ssh"):
        pytest.skip(f"the tunnel goes through {forward.kind} here")
    if cut.startswith("paramiko"):  # the pump threads are in this process
        client_port = cluster.transport.paramiko_transport.sock.getsockname()[1]
    else:
        client_port = _client_port(forward.process.pid, sshd.port)
    serving = _sshd_processes_serving(client_port, sshd.port)
    victims = [forward.process.pid] if cut == "ssh-client-killed" else serving
    payload = os.urandom(100 * 2**20)
    expected = (len(payload), hashlib.sha256(payload).hexdigest())
    outcome = {}

    def call():
        try:
            outcome["result"] = digest(payload, str(log))
        except Exception as exc:
            outcome["error"] = exc
        outcome["ended"] = time.monotonic()

    def received() -> int:  # by sshd, from the client (sshd reads with read(), which /proc counts)
        return sum(_bytes_read(pid) for pid in serving)

    before = received()
    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 30
    while (moved := received() - before) < 8 * 2**20:  # the argument is on its way through the tunnel
        assert time.monotonic() < deadline and caller.is_alive(), "the argument never went into the tunnel"
        time.sleep(0.001)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    cut_at = time.monotonic()
    assert moved < len(payload) - 2**20, "the transfer had finished before the cut"
    caller.join(30)
    assert not caller.is_alive(), "the call still waits 30 s after the cut"
    print(f"\n{cut}: cut after {moved / 2**20:.0f} MiB, the call ended {outcome['ended'] - cut_at:.2f} s later with "
          f"{outcome.get('error') or 'its result'}")
    assert outcome["ended"] - cut_at < 5, f"the call took {outcome['ended'] - cut_at:.1f} s to end after the cut"
    if "error" in outcome:
        error = outcome["error"]
        assert isinstance(error, rh.ConnectionLostError), repr(error)
        message = str(error)
        assert f"{sshd.user}@{sshd.host}" in message and "SSH tunnel" in message and "broke" in message, message
        ran_before_retry = log.read_text().splitlines() if log.exists() else []
        assert ran_before_retry == [], "the cut call ran although the client was told it failed"
        assert digest(payload, str(log)) == expected  # the same cluster object: a new tunnel
    else:
        assert outcome["result"] == expected
    assert log.read_text().splitlines() == [f"{expected[0]} {expected[1]}"]  # ran exactly once
    assert digest(b"after", str(log))[0] == 5


class TestByoProvisionerContract(ProvisionerContract):
    @pytest.fixture
    def provisioner(self):
        return rh.default_host().provisioner("byo")()

    @pytest.fixture
    def cluster(self, sshd, tmp_path):
        # Two hosts, the second with credentials of its own, as a multi-node BYO cluster is written.
        creds = ssh_creds(sshd, tmp_path)
        return rh.cluster(name="contract", ips=[sshd.host, "127.0.0.2"],
                          ssh_creds={sshd.host: creds, "127.0.0.2": {**creds, "ssh_user": "nobody"}})


def test_per_host_credentials_reach_each_hosts_transport(sshd, tmp_path):
    creds = ssh_creds(sshd, tmp_path)
    cluster = rh.cluster(name="per-host", ips=[sshd.host, "127.0.0.2"],
                         ssh_creds={sshd.host: creds, "127.0.0.2": {**creds, "ssh_user": "nobody"}})
    info = cluster.cluster_info
    assert info.transport_options["user"] == sshd.user
    assert info.host_options["127.0.0.2"]["user"] == "nobody"
    assert cluster.run(["echo head"])[0][1] == "head\n"  # the head's own credentials work


@pytest.fixture
def password_sshd(tmp_path):
    from rh_core.testing.sshd import start_sshd, stop

    (tmp_path / "password-sshd").mkdir()
    server, process = start_sshd(tmp_path / "password-sshd", password_auth=True)
    yield server
    stop(process)


@pytest.mark.slow
def test_password_login_bootstraps_and_tunnels_through_paramiko(unix_user, password_sshd, tmp_path, caplog):
    import logging
    import pwd
    import subprocess

    caplog.set_level(logging.DEBUG)  # every logger: rh's, paramiko's
    subprocess.run(["chpasswd"], input=f"{unix_user}:correct horse battery", text=True, check=True)
    creds = {"ssh_user": unix_user, "password": "correct horse battery", "ssh_port": password_sshd.port,
             "use_agent": False, "known_hosts": str(tmp_path / "known_hosts"), "trust_new_host": True}
    cluster = rh.cluster(name="by-password", ips=[password_sshd.host], ssh_creds=creds,
                         executor_options={"num_workers": 1})
    try:
        assert rh.function(fns.quiet_add).to(cluster)(20, 22) == 42
        assert set(cluster.transport.forward_kinds.values()) == {"paramiko"}  # ssh -L needs a key
        wrong = rh.cluster(name="wrong-password", ips=[password_sshd.host],
                           ssh_creds={**creds, "password": "Tr0ub4dor&3"})
        with pytest.raises(rh.RhError, match=unix_user) as refused:
            wrong.connection()
        # Secrets never leak into text: not in what the user sees, nor in any log on either side.
        server_dir = os.path.join(pwd.getpwnam(unix_user).pw_dir, ".rh", "server")
        server_logs = [open(os.path.join(folder, name), errors="replace").read()
                       for folder, _, files in os.walk(server_dir) for name in files if name.endswith(".log")]
        assert server_logs, f"no server log under {server_dir} to look into"
        texts = {"repr": repr(cluster) + repr(wrong), "cluster_info": repr(cluster.cluster_info),
                 "transport": repr(cluster.transport), "error": str(refused.value), "client log": caplog.text,
                 "server logs": "".join(server_logs)}
        for where, text in texts.items():
            for password in ("correct horse battery", "Tr0ub4dor&3"):
                assert password not in text, f"the password shows in the {where}"
    finally:
        cluster.down()


@pytest.mark.slow
def test_notebook_runs_jupyterlab_on_the_head_reached_through_a_tunnel(byo_cluster, capsys):
    pytest.importorskip("rh_pip", reason="the notebook installs jupyterlab with the rh-pip plugin")
    import json
    import urllib.error
    import urllib.request

    from rh_core.testing.sshd import free_port

    remote_port, local_port = free_port(), free_port()
    with byo_cluster.notebook(port=remote_port, env="notebook", local_port=local_port) as notebook:
        assert notebook.url.startswith(f"http://127.0.0.1:{local_port}/lab?token=")
        assert notebook.url in capsys.readouterr().out  # printed for the user to open
        status = urllib.request.urlopen(f"http://127.0.0.1:{local_port}/api/status?token={notebook.token}", timeout=10)
        assert "kernels" in json.loads(status.read())
        with pytest.raises(urllib.error.HTTPError, match="403"):  # the token is required
            urllib.request.urlopen(f"http://127.0.0.1:{local_port}/api/status", timeout=10)
    for _ in range(50):  # close() sent SIGTERM; JupyterLab takes a moment to shut down
        ((_, out, _),) = byo_cluster.run([f"ps -o stat= -p {notebook.pid} | grep -v Z || true"])
        if not out.strip():
            break
        time.sleep(0.2)
    assert not out.strip(), "JupyterLab still runs after close()"


@pytest.mark.slow
def test_plain_ssh_reaches_the_cluster_by_name_once_the_include_is_added(byo_cluster, tmp_path, monkeypatch):
    import subprocess
    import sys

    byo_cluster.connection()
    user_config = tmp_path / "ssh_config"
    theirs = "Host mybox\n  HostName 192.0.2.7\n  User me\n"
    user_config.write_text(theirs)
    environment = {**os.environ, "RH_USER_SSH_CONFIG": str(user_config)}

    def rh_command(*args):
        return subprocess.run([sys.executable, "-m", "rh_core.cli", *args], env=environment,
                              capture_output=True, text=True, timeout=60)

    added = rh_command("ssh-config", "--include")
    assert added.returncode == 0 and "included in" in added.stdout, added.stderr
    text = user_config.read_text()
    assert text.endswith(theirs) and text.splitlines()[1].startswith("Include ")  # theirs kept, ours on top
    reached = subprocess.run(["ssh", "-F", str(user_config), "-o", "BatchMode=yes", byo_cluster.name, "echo", "hi-from-$USER"],
                             capture_output=True, text=True, timeout=60)
    assert reached.returncode == 0 and reached.stdout.strip() == f"hi-from-{byo_cluster.run(['echo $USER'])[0][1].strip()}", reached.stderr
    removed = rh_command("ssh-config", "--remove")
    assert removed.returncode == 0 and "not included" in removed.stdout
    assert user_config.read_text() == theirs  # exactly as it was


@pytest.mark.slow
def test_a_function_from_main_imports_the_users_modules_on_the_host_and_sees_their_edits(byo_cluster, tmp_path):
    import json
    import subprocess
    import sys
    import textwrap

    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "greeting.txt").write_text("hello from a relative path")
    script = textwrap.dedent("""
        import json, sys
        from rh_core.clusters import from_config
        import rh_core as rh

        def main_fn():
            import gen
            with open("data/greeting.txt") as f:
                return gen.VALUE, f.read()

        print(json.dumps(rh.function(main_fn).to(from_config(json.loads(sys.argv[1])))()))
    """)
    for value in ("first", "second"):
        (project / "gen.py").write_text(f"VALUE = {value!r}\n")
        done = subprocess.run([sys.executable, "-c", script, json.dumps(byo_cluster.config())], cwd=project,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout) == [value, "hello from a relative path"]


@pytest.mark.slow
def test_closing_a_users_tunnel_to_the_servers_port_keeps_the_clusters_own(byo_cluster):
    add = rh.function(fns.quiet_add).to(byo_cluster)
    assert add(1, 1) == 2
    server_port = byo_cluster.status()["port"]
    with byo_cluster.ssh_tunnel(server_port) as tunnel:  # the same port the cluster's calls go through
        assert tunnel.remote_port == server_port
    assert add(2, 2) == 4  # its close let go of the shared tunnel, and did not close it


@pytest.mark.slow
def test_pip_in_cluster_run_is_the_pip_of_the_environment_functions_run_in(byo_cluster):
    add = rh.function(fns.quiet_add).to(byo_cluster)
    assert add(1, 1) == 2
    (code, out, err), = byo_cluster.run(["pip --version && python -c 'import sys; print(sys.executable)'"])
    assert code == 0, err
    venv = f"{byo_cluster.remote_dir}/venv"
    assert f"{venv}/lib/" in out and f"{venv}/bin/python" in out


def _no_uv_wheel(platform, cache):
    raise WheelhouseError(f"no uv wheel for {platform.describe()} (this test says so)")


def _site_packages(remote_dir) -> Path:
    (site,) = Path(remote_dir, "venv", "lib").glob("python3.*/site-packages")
    return site


def _installer(site: Path, distribution: str) -> str:
    (record,) = site.glob(f"{distribution}-*.dist-info")
    return (record / "INSTALLER").read_text().strip()


@pytest.mark.slow
@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_a_fresh_host_installs_with_uv_else_pip_and_another_build_replaces_only_our_distributions(
        installer, sshd, tmp_path, monkeypatch, caplog):
    """uv when the machine can have it (its executable kept per version in remote_dir/bin), pip where
    no uv wheel fits, saying so. Either way the venv has pip, and a later build in the same venv
    reinstalls our distributions while the dependencies stay as they were."""
    caplog.set_level(logging.INFO, logger="rh_core.clusters.remote")
    if installer == "pip":
        monkeypatch.setattr(remote_module, "fetch_uv_wheel", _no_uv_wheel)
    cluster = loopback_cluster(sshd, tmp_path, name=f"installer-{installer}-{os.getpid()}",
                               executor_options={"num_workers": 1})
    try:
        add = rh.function(fns.quiet_add).to(cluster)
        assert add(1, 2) == 3
        site = _site_packages(cluster.remote_dir)
        assert _installer(site, "rh_core") == _installer(site, "pyzmq") == installer
        kept_uv = Path(cluster.remote_dir, "bin", f"uv-{uv_version()}")
        assert kept_uv.exists() == (installer == "uv")
        assert ("pip installs there" in caplog.text) == (installer == "pip")
        (code, out, err), = cluster.run(["pip --version"])
        assert code == 0 and f"{cluster.remote_dir}/venv/lib/" in out, (out, err)

        # Another build: the venv says it holds an older one, and a file of ours has gone from it.
        zmq_init = site / "zmq" / "__init__.py"
        zmq_before = zmq_init.stat()
        build = Path(cluster.remote_dir, "venv", "rh-build-id")
        current = build.read_text().strip()
        build.write_text("an-older-build\n")
        (site / "rh_core" / "errors.py").unlink()
        cluster.stop_server()
        assert add(2, 3) == 5
        assert build.read_text().strip() == current and (site / "rh_core" / "errors.py").exists()
        assert _installer(site, "rh_core") == installer
        zmq_after = zmq_init.stat()
        assert (zmq_after.st_ino, zmq_after.st_mtime_ns) == (zmq_before.st_ino, zmq_before.st_mtime_ns)
    finally:
        cluster.down()
