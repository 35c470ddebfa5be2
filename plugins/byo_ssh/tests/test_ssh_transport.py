"""Tests of rh-byo-ssh against a real OpenSSH server on 127.0.0.1 (see rh_core.testing.sshd).

Both paths are covered: system ssh/rsync (the default where they exist) and paramiko only
(``use_system_ssh=False``: SFTP syncs and paramiko tunnels).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from rh_core.testing import TransportContract

from rh_core.testing.sshd import SSHD, free_port

pytestmark = pytest.mark.skipif(
    not os.path.exists(SSHD) or shutil.which("ssh-keygen") is None,
    reason=f"needs OpenSSH's {SSHD} and ssh-keygen: apt-get install -y openssh-server rsync",
)

paramiko = pytest.importorskip("paramiko")

from rh_byo_ssh.transport import (  # noqa: E402
    SSHAuthError,
    SSHConnectError,
    SSHConnectionLostError,
    SSHHostKeyError,
    SSHTransport,
)

HAVE_RSYNC = shutil.which("rsync") is not None and shutil.which("ssh") is not None
METHODS = [
    pytest.param("rsync", marks=pytest.mark.skipif(not HAVE_RSYNC, reason="needs rsync and ssh")),
    "sftp",
]

# A remote echo server that answers every message on one connection, for round trips; it gives up
# after a minute without a connection so a failed test leaves nothing running.
ECHO_LOOP = (
    "import socket,sys;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
    "s.bind(('127.0.0.1',int(sys.argv[1])));s.listen();s.settimeout(60);c,_=s.accept();c.settimeout(None)\n"
    "while True:\n d=c.recv(65536)\n if not d: break\n c.sendall(d)"
)


class RecordingTransport(SSHTransport):
    """Remembers the remote directories it synced, so the test can remove them from the machine."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.synced: list[str] = []

    def sync_directory(self, local_path: str) -> str:
        remote = super().sync_directory(local_path)
        self.synced.append(remote)
        return remote


@pytest.fixture(scope="session")
def empty_ssh_config(tmp_path_factory) -> Path:
    # Tests never read the developer's ~/.ssh/config.
    path = tmp_path_factory.mktemp("sshcfg") / "config"
    path.write_text("")
    return path


@pytest.fixture(scope="session")
def session_known_hosts(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("known") / "known_hosts"


@pytest.fixture
def make_transport(sshd, session_known_hosts, empty_ssh_config):
    """Build transports to the test sshd; closes them and removes what they synced afterwards."""
    made: list[RecordingTransport] = []

    def make(**overrides) -> RecordingTransport:
        host = overrides.pop("host", sshd.host)
        options = dict(
            user=sshd.user,
            port=sshd.port,
            private_key=sshd.client_key,
            known_hosts=session_known_hosts,
            trust_new_host=True,
            use_agent=False,
            connect_timeout=5.0,
            ssh_config=empty_ssh_config,
        )
        options.update(overrides)
        transport = RecordingTransport(host, **options)
        made.append(transport)
        return transport

    yield make
    for transport in made:
        if transport.synced:
            paths = " ".join(transport.synced)
            try:
                transport.run([f"rm -rf {paths}; rmdir ~/.rh/sync 2>/dev/null; true"])
            except Exception:
                pass
        transport.close()


def echo_round_trip(host: str, port: int, payload: bytes = b"ping", tries: float = 10.0) -> bytes:
    """One message through a tunnel, retrying while the remote server is not listening yet (a
    tunnel then closes the connection: a reset, or with ssh -L sometimes a plain EOF)."""
    deadline = time.monotonic() + tries
    while True:
        try:
            with socket.create_connection((host, port), timeout=5) as conn:
                conn.sendall(payload)
                reply = conn.recv(100)
                if reply:
                    return reply
        except OSError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"no answer through {host}:{port}")
        time.sleep(0.1)


def start_remote_echo(transport: SSHTransport) -> int:
    port = free_port()
    transport.run([f"nohup python3 -c \"{ECHO_LOOP}\" {port} >/dev/null 2>&1 &"])
    return port


def connect_retrying(host: str, port: int, timeout: float = 10.0) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        conn = None
        try:
            # The forward's listener may accept and then reset while the echo behind it starts.
            conn = socket.create_connection((host, port), timeout=5)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sendall(b"x")
            if conn.recv(1) == b"x":
                return conn
        except OSError:
            pass
        if conn is not None:
            conn.close()
        if time.monotonic() > deadline:
            raise TimeoutError(f"no echo through {host}:{port}")
        time.sleep(0.1)


def remote_files(transport: SSHTransport, root: str) -> set[str]:
    (code, out, err), = transport.run([f"cd {root} && find . -mindepth 1 | sort"])
    assert code == 0, err
    return {line[2:] for line in out.splitlines()}


# -------------------------------------------------------------------------------------------------
# The contract, on both paths


class TestSSHTransport(TransportContract):
    @pytest.fixture
    def transport(self, make_transport):
        return make_transport()


class TestSSHTransportParamikoOnly(TransportContract):
    @pytest.fixture
    def transport(self, make_transport):
        return make_transport(use_system_ssh=False)


def test_plugin_registers_ssh_without_importing_paramiko():
    code = (
        "import sys, rh_core as rh\n"
        "host = rh.PluginHost(allow=['byo_ssh'])\n"
        "assert 'ssh' in host.registry('transport').names()\n"
        "assert 'paramiko' not in sys.modules, 'registering imported paramiko'\n"
        "cls = host.transport('ssh')\n"
        "assert cls.__name__ == 'SSHTransport' and 'paramiko' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -------------------------------------------------------------------------------------------------
# Commands


def test_stream_logs_echoes_both_streams_and_still_returns_them(make_transport, capfd):
    transport = make_transport()
    (code, out, err), = transport.run(["echo one; echo two >&2; printf 'no newline'"], stream_logs=True)
    assert (code, out, err) == (0, "one\nno newline", "two\n")
    captured = capfd.readouterr()
    assert "one\nno newline" in captured.out and "two" in captured.err


def test_commands_run_in_order_and_see_eof_on_stdin(make_transport, tmp_path):
    transport = make_transport()
    marker = f"/tmp/rh-order-{uuid.uuid4().hex}"
    results = transport.run([f"echo a > {marker}", "cat", f"echo b >> {marker}; cat {marker}; rm {marker}"])
    assert results[1] == (0, "", "")  # `cat` gets EOF at once instead of waiting forever
    assert results[2][1] == "a\nb\n"


# -------------------------------------------------------------------------------------------------
# Sync


def make_tree(root: Path) -> None:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text("VALUE = 1\n")
    (root / "pkg" / "sub" / "deep.txt").write_text("deep\n")
    (root / "run.sh").write_text("#!/bin/sh\necho run\n")
    (root / "run.sh").chmod(0o755)
    (root / "gone" / "x").mkdir(parents=True)
    (root / "gone" / "x" / "old.txt").write_text("old\n")


@pytest.mark.parametrize("method", METHODS)
def test_second_sync_of_an_unchanged_tree_sends_nothing(make_transport, tmp_path, method):
    transport = make_transport(use_system_ssh=method == "rsync")
    make_tree(tmp_path)
    remote = transport.sync_directory(str(tmp_path))
    first = transport.last_sync
    assert first.method == method and first.uploaded == first.files == 4
    assert remote.startswith(os.path.expanduser("~/.rh/sync/"))  # the default root (the machine is this one)
    assert os.path.basename(remote).startswith(os.path.basename(str(tmp_path)) + "-")
    assert transport.sync_directory(str(tmp_path)) == remote
    assert (transport.last_sync.uploaded, transport.last_sync.deleted) == (0, 0)
    (code, out, _), = transport.run([f"test -x {remote}/run.sh && {remote}/run.sh"])
    assert (code, out) == (0, "run\n")


@pytest.mark.parametrize("method", METHODS)
def test_a_plain_directory_honours_its_rhignore_in_the_sync_and_the_fingerprint(make_transport, tmp_path, method):
    from rh_core.support.workdir import fingerprint

    transport = make_transport(use_system_ssh=method == "rsync", remote_root=str(tmp_path / "remote-rh"))
    source = tmp_path / "project"  # not a git work tree
    (source / "data").mkdir(parents=True)
    (source / "sub").mkdir()
    (source / ".rhignore").write_text("data/\n*.bin\n!keep.bin\n")
    for name in ("main.py", "data/big.csv", "model.bin", "keep.bin", "sub/weights.bin", "sub/notes.txt"):
        (source / name).write_text(name)
    remote = transport.sync_directory(str(source))
    assert transport.last_sync.method == method
    assert remote_files(transport, remote) == {".rhignore", "main.py", "keep.bin", "sub", "sub/notes.txt"}
    before = fingerprint(str(source))
    (source / "data" / "big.csv").write_text("changed, but ignored")
    assert fingerprint(str(source)) == before  # an ignored change does not make the cluster sync again
    (source / "main.py").write_text("changed")
    assert fingerprint(str(source)) != before


def test_syncing_more_than_sync_warn_mb_warns_with_the_largest_files_and_the_fix(tmp_path, caplog, monkeypatch):
    from rh_core import config

    monkeypatch.setenv("RH_HOME", str(tmp_path / "home"))
    config.reload()
    config.set_value("sync_warn_mb", 1)
    config.reload()
    source = tmp_path / "data-heavy"
    source.mkdir()
    (source / "weights.pt").write_bytes(b"\0" * (3 * 2**20))
    (source / "main.py").write_text("print('hi')\n")
    import rh_core as rh

    cluster = rh.LocalCluster(name="warned", state_dir=str(tmp_path / "state"))
    try:
        with caplog.at_level("WARNING", logger="rh_core.support.workdir"):
            cluster.sync_directory(str(source))
    finally:
        config.reload()
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "rh_core.support.workdir"]
    assert "syncing 3 MB in 2 files" in warning and "weights.pt" in warning and ".rhignore" in warning


@pytest.mark.parametrize("method", METHODS)
def test_changed_files_are_sent_and_deleted_files_deleted(make_transport, tmp_path, method):
    transport = make_transport(use_system_ssh=method == "rsync", remote_root=str(tmp_path / "remote-rh"))
    make_tree(tmp_path / "src")
    tmp_path = tmp_path / "src"
    remote = transport.sync_directory(str(tmp_path))
    assert remote.startswith(str(tmp_path.parent / "remote-rh" / "sync") + "/")
    mod = tmp_path / "pkg" / "mod.py"
    mod.write_text("VALUE = 2\n")
    later = time.time() + 10
    os.utime(mod, (later, later))  # SFTP mtimes have whole seconds: make the change visible
    (tmp_path / "pkg" / "sub" / "deep.txt").unlink()
    shutil.rmtree(tmp_path / "gone")
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "file.txt").write_text("new\n")
    transport.sync_directory(str(tmp_path))
    stats = transport.last_sync
    assert (stats.uploaded, stats.deleted) == (2, 2)
    # pkg/sub stays: it is still a (now empty) directory here.
    assert remote_files(transport, remote) == {"pkg", "pkg/mod.py", "pkg/sub", "run.sh", "new", "new/file.txt"}
    (_, out, _), = transport.run([f"cat {remote}/pkg/mod.py"])
    assert out == "VALUE = 2\n"


@pytest.mark.parametrize("method", METHODS)
def test_symlinks_travel_as_symlinks(make_transport, tmp_path, method):
    transport = make_transport(use_system_ssh=method == "rsync")
    make_tree(tmp_path)
    (tmp_path / "link.py").symlink_to("pkg/mod.py")
    (tmp_path / "linkdir").symlink_to("pkg")
    remote = transport.sync_directory(str(tmp_path))
    (code, out, err), = transport.run([f"cd {remote} && readlink link.py linkdir && cat linkdir/mod.py"])
    assert (code, out) == (0, "pkg/mod.py\npkg\nVALUE = 1\n"), err
    (tmp_path / "link.py").unlink()
    (tmp_path / "link.py").symlink_to("run.sh")
    transport.sync_directory(str(tmp_path))
    assert transport.run([f"readlink {remote}/link.py"])[0][1] == "run.sh\n"
    transport.sync_directory(str(tmp_path))
    assert transport.last_sync.uploaded == 0


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize("method", METHODS)
def test_gitignore_is_respected_in_a_git_work_tree(make_transport, tmp_path, method):
    transport = make_transport(use_system_ssh=method == "rsync")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("*.log\nbuild/\n")
    (tmp_path / "tracked.py").write_text("print('tracked')\n")
    (tmp_path / "notes.txt").write_text("untracked but not ignored\n")
    (tmp_path / "debug.log").write_text("ignored\n")
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "out.bin").write_text("ignored\n")
    (tmp_path / "weird *[name]?.txt").write_text("wildcards in a name\n")
    subprocess.run(git + ["add", ".gitignore", "tracked.py"], cwd=tmp_path, check=True)
    subprocess.run(git + ["commit", "-qm", "init"], cwd=tmp_path, check=True)

    remote = transport.sync_directory(str(tmp_path))
    assert remote_files(transport, remote) == {".gitignore", "tracked.py", "notes.txt", "weird *[name]?.txt"}

    # A file that becomes ignored disappears from the machine on the next sync.
    (tmp_path / ".gitignore").write_text("*.log\nbuild/\nnotes.txt\n")
    transport.sync_directory(str(tmp_path))
    assert remote_files(transport, remote) == {".gitignore", "tracked.py", "weird *[name]?.txt"}
    assert transport.last_sync.deleted == 1


def test_a_failing_system_ssh_falls_back_to_sftp_and_paramiko(make_transport, tmp_path, monkeypatch, caplog):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "ssh").write_text("#!/bin/sh\necho 'fake ssh: no route' >&2\nexit 255\n")
    (fake_bin / "ssh").chmod(0o755)
    if shutil.which("rsync"):
        (fake_bin / "rsync").symlink_to(shutil.which("rsync"))
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    transport = make_transport()
    src = tmp_path / "src"
    make_tree(src)
    remote = transport.sync_directory(str(src))
    assert transport.last_sync.method == "sftp"
    assert "fake ssh" in caplog.text
    (code, out, _), = transport.run([f"cat {remote}/pkg/mod.py"])
    assert out == "VALUE = 1\n"
    port = start_remote_echo(transport)
    host, local = transport.forward(port)
    assert transport.forward_kinds == {port: "paramiko"}
    connect_retrying(host, local).close()


# -------------------------------------------------------------------------------------------------
# Forwards


def measure_round_trips(host: str, port: int, count: int = 300) -> float:
    conn = connect_retrying(host, port)
    with conn:
        started = time.perf_counter()
        for _ in range(count):
            conn.sendall(b"0123456789")
            got = b""
            while len(got) < 10:
                got += conn.recv(100)
        return (time.perf_counter() - started) / count * 1000


def test_paramiko_forward_reuses_its_port_and_pumps_both_ways(make_transport):
    transport = make_transport(use_system_ssh=False)
    port = start_remote_echo(transport)
    address = transport.forward(port)
    assert transport.forward(port) == address
    assert transport.forward_kinds == {port: "paramiko"}
    rtt = measure_round_trips(*address)
    print(f"\nparamiko tunnel: {rtt:.3f} ms per 10-byte round trip")
    assert rtt < 50  # Nagle plus delayed ACKs would show as ~40 ms


def test_forward_to_a_closed_remote_port_resets_the_local_connection(make_transport):
    transport = make_transport(use_system_ssh=False)
    host, port = transport.forward(free_port())
    with socket.create_connection((host, port), timeout=5) as conn:
        conn.settimeout(10)
        with pytest.raises(ConnectionResetError):  # an error, never an empty answer
            conn.recv(10)
    assert transport.forward_kinds  # the forward itself stays up


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the ssh client")
def test_system_forward_is_reused_and_recreated_when_its_process_dies(make_transport):
    transport = make_transport()
    port = start_remote_echo(transport)
    address = transport.forward(port)
    assert transport.forward_kinds == {port: "ssh"}
    assert transport.forward(port) == address
    rtt = measure_round_trips(*address)
    print(f"\nssh -L tunnel: {rtt:.3f} ms per 10-byte round trip")
    transport._forwards[port].process.kill()
    transport._forwards[port].process.wait()
    assert transport.forward_kinds == {}
    again = transport.forward(port)
    assert again == address  # the old local port was free again, so it is reused
    assert transport.forward_kinds == {port: "ssh"}
    port2 = start_remote_echo(transport)
    assert echo_round_trip(*transport.forward(port2)) == b"ping"
    process = transport._forwards[port].process
    transport.close()
    assert process.poll() is not None and transport.forward_kinds == {}


# -------------------------------------------------------------------------------------------------
# Errors


def test_wrong_key_names_host_user_and_the_key_tried(make_transport, sshd):
    transport = make_transport(private_key=sshd.other_key)
    with pytest.raises(SSHAuthError) as caught:
        transport.run(["true"])
    message = str(caught.value)
    assert f"{sshd.user}@127.0.0.1" in message and str(sshd.other_key) in message
    assert "authorized_keys" in message


def test_missing_key_file_is_reported_before_connecting(make_transport, tmp_path):
    with pytest.raises(SSHAuthError, match="does not exist"):
        make_transport(private_key=tmp_path / "nope")


def test_encrypted_key_needs_its_passphrase(make_transport, sshd, tmp_path):
    key = tmp_path / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "s3cret", "-f", str(key)], check=True)
    original = sshd.authorized_keys.read_text()
    sshd.authorized_keys.write_text(original + key.with_suffix(".pub").read_text())
    try:
        with pytest.raises(SSHAuthError, match="passphrase"):
            make_transport(private_key=key).run(["true"])
        transport = make_transport(private_key=key, passphrase="s3cret")
        assert transport.run(["echo ok"])[0][1] == "ok\n"
        transport.sync_directory(str(tmp_path))
        assert transport.last_sync.method == "sftp"  # a batch-mode ssh could not unlock the key
    finally:
        sshd.authorized_keys.write_text(original)


def test_closed_port_fails_at_once_naming_the_port(make_transport):
    port = free_port()
    started = time.monotonic()
    with pytest.raises(SSHConnectError) as caught:
        make_transport(port=port).run(["true"])
    assert time.monotonic() - started < 3
    assert f"127.0.0.1:{port}" in str(caught.value) and "refused" in str(caught.value)


def test_silent_port_fails_within_connect_timeout(make_transport):
    with socket.socket() as silent:  # accepts TCP, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        with pytest.raises(SSHConnectError) as caught:
            make_transport(port=silent.getsockname()[1], connect_timeout=1.0).run(["true"])
        elapsed = time.monotonic() - started
    assert elapsed < 4, elapsed
    assert "within 1s" in str(caught.value) and "connect_timeout" in str(caught.value)


def test_unknown_host_key_is_rejected_with_a_hint_then_trusted(make_transport, tmp_path):
    known = tmp_path / "ssh" / "known_hosts"
    with pytest.raises(SSHHostKeyError) as caught:
        make_transport(known_hosts=known, trust_new_host=False).run(["true"])
    message = str(caught.value)
    assert "trust_new_host=True" in message and "SHA256:" in message and str(known) in message
    assert not known.exists()

    assert make_transport(known_hosts=known, trust_new_host=True).run(["echo ok"])[0][1] == "ok\n"
    assert "ssh-ed25519" in known.read_text()
    assert make_transport(known_hosts=known, trust_new_host=False).run(["echo ok"])[0][1] == "ok\n"


def test_changed_host_key_is_rejected_even_when_trusting_new_hosts(make_transport, sshd, tmp_path):
    known = tmp_path / "known_hosts"
    impostor = (sshd.dir / "other_key.pub").read_text().split()
    known.write_text(f"[127.0.0.1]:{sshd.port} {impostor[0]} {impostor[1]}\n")
    with pytest.raises(SSHHostKeyError, match="CHANGED.*ssh-keygen"):
        make_transport(known_hosts=known, trust_new_host=True).run(["true"])


# -------------------------------------------------------------------------------------------------
# Reconnecting


def test_reconnects_after_the_paramiko_transport_is_closed(make_transport, tmp_path):
    transport = make_transport(use_system_ssh=False)
    assert transport.run(["echo one"])[0][1] == "one\n"
    old = transport.paramiko_transport
    old.close()
    assert transport.run(["echo two"])[0][1] == "two\n"
    assert transport.paramiko_transport is not old
    make_tree(tmp_path)
    transport.paramiko_transport.close()
    transport.sync_directory(str(tmp_path))
    assert transport.last_sync.uploaded == 4


def test_a_drop_on_use_is_retried_once_for_a_command_that_never_started(make_transport, monkeypatch):
    transport = make_transport()
    transport.run(["true"])
    stale = transport.paramiko_transport

    def broken(*args, **kwargs):
        raise EOFError("simulated dead connection")

    monkeypatch.setattr(stale, "open_session", broken)  # still "active", but every use fails
    assert transport.run(["echo fine"])[0][1] == "fine\n"
    assert transport.paramiko_transport is not stale


def test_server_dropping_the_connection_mid_command_is_reported_and_recovered(make_transport):
    transport = make_transport()
    with pytest.raises(SSHConnectionLostError, match="may have run"):
        transport.run(["kill -9 $PPID; sleep 5"])  # kills this connection's sshd session process
    assert transport.run(["echo back"])[0][1] == "back\n"


# -------------------------------------------------------------------------------------------------
# ssh config: aliases and ProxyJump


def test_ssh_config_alias_with_proxyjump(make_transport, sshd, tmp_path):
    config = tmp_path / "config"
    config.write_text(
        f"""Host rh-jump
    HostName 127.0.0.1
    Port {sshd.port}
    User {sshd.user}
    IdentityFile {sshd.client_key}

Host rh-target
    HostName 127.0.0.1
    Port {sshd.port}
    User {sshd.user}
    IdentityFile {sshd.client_key}
    ProxyJump rh-jump
"""
    )
    accepted_before = sshd.log.read_text().count("Accepted publickey")
    transport = make_transport(host="rh-target", user=None, port=22, private_key=None, ssh_config=config)
    assert transport.run(["echo via jump"])[0][1] == "via jump\n"
    where = f"(127.0.0.1:{sshd.port})"
    assert transport.route == [f"{sshd.user}@rh-jump {where}", f"{sshd.user}@rh-target {where}"]
    assert sshd.log.read_text().count("Accepted publickey") - accepted_before == 2  # the jump, then the target

    if HAVE_RSYNC:  # the system tools go through the same jump, as an ssh -W ProxyCommand
        make_tree(tmp_path / "src")
        remote = transport.sync_directory(str(tmp_path / "src"))
        assert transport.last_sync.method == "rsync"
        assert transport.run([f"cat {remote}/pkg/mod.py"])[0][1] == "VALUE = 1\n"
        port = start_remote_echo(transport)
        host, local = transport.forward(port)
        assert transport.forward_kinds == {port: "ssh"}
        connect_retrying(host, local).close()


# -------------------------------------------------------------------------------------------------
# A non-root user


def test_non_root_user(unix_user, make_transport, tmp_path):  # unix_user first: it is removed last
    transport = make_transport(user=unix_user)
    assert transport.run(["id -un"])[0][1] == f"{unix_user}\n"
    make_tree(tmp_path)
    remote = transport.sync_directory(str(tmp_path))
    assert remote.startswith(f"/home/{unix_user}/.rh/sync/")
    (code, out, _), = transport.run([f"stat -c %U {remote}/pkg/mod.py"])
    assert out.strip() == unix_user
    port = start_remote_echo(transport)
    assert echo_round_trip(*transport.forward(port)) == b"ping"
    transport.close()


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the ssh client")
def test_a_forgotten_transport_stops_its_ssh_process(sshd, session_known_hosts, empty_ssh_config):
    import gc

    transport = SSHTransport(
        sshd.host, user=sshd.user, port=sshd.port, private_key=sshd.client_key, known_hosts=session_known_hosts,
        trust_new_host=True, use_agent=False, ssh_config=empty_ssh_config,
    )
    transport.forward(free_port())
    process = transport._forwards[next(iter(transport._forwards))].process
    del transport
    gc.collect()
    assert process.wait(timeout=10) is not None


@pytest.fixture
def agent_with_key(sshd, tmp_path, monkeypatch):
    """A real ssh-agent holding the test key, and SSH_AUTH_SOCK pointing at it."""
    sock = str(tmp_path / "agent.sock")
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": sock}
        subprocess.run(["ssh-add", "-q", str(sshd.client_key)], env=env, check=True, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", sock)
        yield sock
    finally:
        agent.terminate()
        agent.wait()


def test_ssh_agent_login_for_commands_and_tunnels(agent_with_key, make_transport, tmp_path):
    transport = make_transport(private_key=None, use_agent=True)
    assert transport.run(["echo via-agent"])[0][1] == "via-agent\n"
    port = free_port()
    transport.run([f"nohup python3 -m http.server {port} --bind 127.0.0.1 --directory {tmp_path} "
                   ">/dev/null 2>&1 &"])
    (tmp_path / "index.html").write_text("agent tunnel")
    host, local_port = transport.forward(port)
    import urllib.request

    deadline = time.monotonic() + 10
    while True:
        try:
            body = urllib.request.urlopen(f"http://{host}:{local_port}/index.html", timeout=5).read()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert body == b"agent tunnel"
    assert transport.forward_kinds[port] == "ssh"  # the system client used the agent too
    transport.run([f"pkill -f 'http.server {port}'"])
