"""Real OpenSSH servers for tests of transports and provider plugins: key-only, own config, absolute
paths, started in the foreground and stopped by PID (``start_sshd``); ``sshd_config`` for test
hosts that start sshd some other way (in a network namespace, say).
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from rh_core.support.processes import stop_process

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"


@dataclasses.dataclass
class SSHServer:
    host: str
    port: int
    user: str
    dir: Path
    client_key: Path
    other_key: Path
    authorized_keys: Path
    host_key: Path
    log: Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)
    return path


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not listen on {port} within {timeout}s:\n{log.read_text()}") from exc
            time.sleep(0.05)


def wait_for_http(url: str, process: subprocess.Popen, what: str, timeout: float = 15.0) -> None:
    """Wait until ``url`` answers a GET; raise RuntimeError naming ``what`` (the server ``process``
    runs) if the process exits or ``timeout`` seconds pass first."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError as exc:
            if process.poll() is not None:
                raise RuntimeError(f"{what} exited with {process.returncode} before answering {url}") from exc
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not answer {url} within {timeout} s: {exc}") from exc
            time.sleep(0.05)


def sshd_config(*, port: int, listen: str, host_key: Path | str, pid_file: Path | str,
                authorized_keys: Path | str, password_auth: bool = False) -> str:
    """An sshd_config for tests: keys (and passwords when asked), root by key only, forwarding, sftp, no PAM."""
    return f"""Port {port}
ListenAddress {listen}
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys} .ssh/authorized_keys
PasswordAuthentication {"yes" if password_auth else "no"}
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
AllowTcpForwarding yes
Subsystem sftp {SFTP_SERVER}
"""


def start_sshd(directory: Path, *, password_auth: bool = False,
               bind_mounts: Sequence[tuple[str, str]] = ()) -> tuple[SSHServer, subprocess.Popen]:
    """Keys, a config with absolute paths, and ``sshd -D`` in the foreground (we own and reap it).

    ``bind_mounts`` (``(source, target)`` pairs, root only) are mounted in a mount namespace of the
    sshd's own, so its sessions see them and nothing else on the machine does: a machine whose
    ``python3`` is another version, say (see :func:`python_only_mounts`)."""
    directory = directory.resolve()
    host_key = keygen(directory / "host_key")
    client_key = keygen(directory / "client_key")
    other_key = keygen(directory / "other_key")
    authorized_keys = directory / "authorized_keys"
    authorized_keys.write_text((directory / "client_key.pub").read_text())
    authorized_keys.chmod(0o600)
    port = free_port()
    config = directory / "sshd_config"
    log = directory / "sshd.log"
    config.write_text(sshd_config(port=port, listen="127.0.0.1", host_key=host_key, pid_file=directory / "sshd.pid",
                                  authorized_keys=authorized_keys, password_auth=password_auth))
    os.makedirs("/run/sshd", exist_ok=True)  # sshd refuses to start without its privilege-separation dir
    command = [SSHD, "-D", "-f", str(config), "-E", str(log)]
    if bind_mounts:
        # No --fork: sh execs sshd, so the process we hold (and stop) is sshd itself.
        mounts = [f"mount --bind {shlex.quote(source)} {shlex.quote(target)}" for source, target in bind_mounts]
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   " && ".join([*mounts, "exec " + shlex.join(command)])]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port, process, log)
    except BaseException:
        stop(process)
        raise
    server = SSHServer("127.0.0.1", port, getpass.getuser(), directory, client_key, other_key, authorized_keys,
                       host_key, log)
    return server, process


def python_only_mounts(python: str, directory: Path) -> list[tuple[str, str]]:
    """Bind mounts (for :func:`start_sshd`) after which ``python3`` on the usual PATHs, pyenv's
    shims included, runs the interpreter ``python``, and this process's ``python3.X`` (its own
    minor version) is not there at all."""
    wrapper = Path(directory) / "python3"
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(python)} \"$@\"\n")
    wrapper.chmod(0o755)
    ours = "python%d.%d" % sys.version_info[:2]
    folders = ["/usr/local/bin", "/usr/bin", "/bin"]
    pyenv = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    folders.append(os.path.join(pyenv, "shims"))
    mounts = []
    for folder in folders:
        if os.path.realpath(folder) != folder:  # /bin is /usr/bin on merged-/usr systems
            continue
        if os.path.exists(os.path.join(folder, ours)):
            mounts.append(("/dev/null", os.path.join(folder, ours)))  # not executable: not found on the PATH
        # A mount lands on a link's target: a python3 that links to the hidden python3.X stays hidden.
        if os.path.exists(os.path.join(folder, "python3")) and not os.path.islink(os.path.join(folder, "python3")):
            mounts.append((str(wrapper), os.path.join(folder, "python3")))
    return mounts


def stop(process: subprocess.Popen) -> None:
    """Stop an sshd :func:`start_sshd` started: SIGTERM, then SIGKILL after 10 s."""
    stop_process(process, grace=10.0)


def ssh_creds(server: SSHServer, tmp: Path, **extra) -> dict:
    """``ssh_creds`` for ``rh.cluster`` that log in to ``server`` with its client key, trusting its
    host key into a test-owned known_hosts file under ``tmp``."""
    return {"ssh_user": server.user, "ssh_private_key": str(server.client_key), "ssh_port": server.port,
            "known_hosts": str(Path(tmp) / "known_hosts"), "trust_new_host": True, **extra}


def loopback_cluster(server: SSHServer, tmp: Path, name: str = "loopback", **options):
    """A BYO cluster on ``server`` whose remote state (``remote_dir``) lives under ``tmp``, so tests
    never touch the real ``~/.rh``. Call ``.down()`` when done."""
    import rh_core as rh

    cluster = rh.cluster(name=name, ips=[server.host], ssh_creds=ssh_creds(server, tmp), **options)
    cluster.remote_dir = str(Path(tmp) / "remote-rh")
    return cluster


@contextlib.contextmanager
def local_account(prefix: str = "rhtest") -> Iterator[tuple[str, Path]]:
    """A new local user account (root only) with a home of its own; yields ``(name, home)`` and
    removes the user and home afterwards, also when the test fails."""
    import pwd
    import shutil
    import uuid

    if os.geteuid() != 0 or shutil.which("useradd") is None:
        raise RuntimeError("creating a local user needs root and useradd")
    name = f"{prefix}{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True, capture_output=True)
    try:
        yield name, Path(pwd.getpwnam(name).pw_dir)
    finally:
        # userdel refuses while the user's sshd session is still winding down; give it a moment.
        for _ in range(50):
            done = subprocess.run(["userdel", "-r", name], capture_output=True, text=True)
            if done.returncode in (0, 6) or "mail spool" in done.stderr:  # 6: no such user
                break
            time.sleep(0.2)


@contextlib.contextmanager
def local_user(server: SSHServer, prefix: str = "rhtest") -> Iterator[tuple[str, Path]]:
    """A new local user (root only) who logs in to ``server`` with its client key; yields
    ``(name, home)`` and removes the user and home afterwards."""
    with local_account(prefix) as (name, home):
        # useradd leaves the account locked ('!'), and with UsePAM no sshd then refuses the login.
        subprocess.run(["usermod", "-p", "*", name], check=True)
        subprocess.run(["install", "-d", "-m700", "-o", name, "-g", name, str(home / ".ssh")], check=True)
        subprocess.run(["install", "-m600", "-o", name, "-g", name, f"{server.client_key}.pub",
                        str(home / ".ssh" / "authorized_keys")], check=True)
        yield name, home
