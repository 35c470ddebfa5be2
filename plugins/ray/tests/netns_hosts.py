"""Test "hosts" in network namespaces (TEST-INFRA 2a): each has its own address on a bridge, hostname,
PID namespace with ``sshd -D`` as PID 1, and a private /tmp; everything is torn down by PID.

A module with a unique name (not conftest) so tests import it whatever else is collected. By hand:
``python netns_hosts.py hold 2 /var/tmp/hosts`` keeps two hosts up until it gets SIGTERM.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from rh_core.testing.sshd import SSHD, sshd_config

STATE_FILE = "hosts.json"


@dataclasses.dataclass
class NetnsHost:
    name: str  # its hostname: h1, h2, ...
    address: str
    netns: str
    veth: str  # the root namespace's end of its link to the bridge
    directory: Path  # its sshd config and logs; <directory>/tmp is its /tmp


@dataclasses.dataclass
class NetnsHosts:
    """Hosts reachable over SSH as root with ``client_key``, all sharing one host key."""

    directory: Path
    bridge: str
    subnet: str  # the first three octets, e.g. "10.200.0"
    hosts: list[NetnsHost]
    client_key: Path
    private_dirs: tuple[str, ...] = ()  # paths each host sees its own copy of
    # The `ip netns exec ... unshare` processes by PID, kept to reap them (PID 1 here reaps no orphans).
    processes: dict[int, subprocess.Popen] = dataclasses.field(default_factory=dict)

    @property
    def addresses(self) -> list[str]:
        return [host.address for host in self.hosts]

    def ssh_creds(self, known_hosts: str) -> dict[str, object]:
        return {"ssh_user": "root", "ssh_private_key": str(self.client_key), "known_hosts": known_hosts,
                "trust_new_host": True}

    def host_path(self, host: NetnsHost, path: str) -> Path:
        """Where, seen from the root namespace, ``host`` keeps ``path`` (a private dir or under /tmp)."""
        for index, private in enumerate(self.private_dirs):
            if path == private or path.startswith(private.rstrip("/") + "/"):
                return host.directory / f"private{index}" / os.path.relpath(path, private)
        if path.startswith("/tmp/"):
            return host.directory / "tmp" / os.path.relpath(path, "/tmp")
        return Path(path)


def skip_reason() -> str | None:
    """Why these hosts cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network-namespace test hosts need root (ip netns, unshare, mounts)"
    if not os.path.exists(SSHD):
        return f"{SSHD} is missing: install openssh-server (apt-get install -y openssh-server rsync)"
    for tool in ("ip", "unshare", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"`{tool}` is missing: install iproute2, util-linux and openssh-client"
    probe = f"rh-probe-{os.getpid()}"
    added = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if added.returncode != 0:
        return f"`ip netns add` is not permitted here: {added.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done


def _free_bridge() -> str:
    # Another run (or another engineer) may hold rhbr0: take the first free name.
    for index in range(10):
        name = f"rhbr{index}"
        if _ip("link", "show", name, check=False).returncode != 0:
            return name
    raise RuntimeError("bridges rhbr0..rhbr9 all exist; delete stale ones with `ip link del rhbrN`")


def _free_subnet() -> str:
    used = _ip("-o", "-4", "addr").stdout + _ip("-4", "route").stdout
    for third in range(200, 250):
        subnet = f"10.{third}.0"
        if f"{subnet}." not in used:
            return subnet
    raise RuntimeError("10.200.0.0/24 .. 10.249.0.0/24 are all in use on this machine")


def _sshd_config(host: NetnsHost, state: Path) -> str:
    return sshd_config(port=22, listen=host.address, host_key=state / "host_key",
                       pid_file=host.directory / "sshd.pid", authorized_keys=state / "authorized_keys")


def _start_host(host: NetnsHost, state: Path, bridge: str, private_dirs: Sequence[str],
                shared_dirs: Sequence[str]) -> subprocess.Popen:
    (host.directory / "tmp").mkdir(parents=True, exist_ok=True)
    (host.directory / "tmp").chmod(0o1777)
    config = host.directory / "sshd_config"
    config.write_text(_sshd_config(host, state))
    _ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
    _ip("link", "set", host.veth, "master", bridge)
    _ip("link", "set", host.veth, "up")
    _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
    _ip("-n", host.netns, "link", "set", "eth0", "up")
    _ip("-n", host.netns, "link", "set", "lo", "up")
    q = shlex.quote
    steps = [f"hostname {host.name}", f"mount --bind {q(str(state / 'etc_hosts'))} /etc/hosts"]
    for index, path in enumerate(private_dirs):
        mine = host.directory / f"private{index}"
        mine.mkdir(parents=True, exist_ok=True)
        steps.append(f"mkdir -p {q(path)} && mount --bind {q(str(mine))} {q(path)}")
    for index, path in enumerate(shared_dirs):  # after the private ones, so they may lie inside them
        steps.append(f"mkdir -p {q(path)} && mount --bind {q(str(state / f'shared{index}'))} {q(path)}")
    # /tmp last: sshd re-reads its config for every connection, so the config stays outside /tmp.
    steps += [f"mount --rbind {q(str(host.directory / 'tmp'))} /tmp",
              f"exec {SSHD} -D -f {q(str(config))} -E {q(str(host.directory / 'sshd.log'))}"]
    log = open(host.directory / "unshare.log", "ab")
    # --fork makes sshd PID 1 of the new PID namespace: killing it kills everything in the host.
    process = subprocess.Popen(
        ["ip", "netns", "exec", host.netns, "unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child",
         "--mount-proc", "--propagation", "private", "sh", "-c", " && ".join(steps)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    log.close()
    (host.directory / "unshare.pid").write_text(str(process.pid))
    return process


def _state(state: Path) -> dict:
    return json.loads((state / STATE_FILE).read_text())


def _wait_for_sshd(host: NetnsHost, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.address, 22), timeout=1.0) as conn:
                if conn.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            logs = "".join(_read(host.directory / name) for name in ("unshare.log", "sshd.log"))
            raise RuntimeError(f"{host.name} ({host.address}): sshd did not answer within {timeout:.0f} s:\n{logs}")
        time.sleep(0.1)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def up(count: int, directory: Path, private_dirs: Sequence[str] = (), shared_dirs: Sequence[str] = ()) -> NetnsHosts:
    """Start ``count`` hosts h1..hN; their state (keys, configs, logs, each /tmp) lives in ``directory``,
    which must be outside /tmp. Each host sees its own empty copy of every path in ``private_dirs``
    and one copy shared by all of every path in ``shared_dirs`` (all outside /tmp). On failure, what
    was started is torn down before the error propagates."""
    directory = directory.resolve()
    if str(directory) == "/tmp" or str(directory).startswith("/tmp/"):
        raise ValueError(f"{directory} is under /tmp, which each host replaces with its own; use e.g. /var/tmp")
    directory.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid() % 100000}"
    bridge, subnet = _free_bridge(), _free_subnet()
    hosts = [NetnsHost(name=f"h{i}", address=f"{subnet}.{i}", netns=f"rh{tag}-h{i}", veth=f"rv{tag}x{i}",
                      directory=directory / f"h{i}") for i in range(1, count + 1)]
    state = {"bridge": bridge, "bridge_ours": False, "subnet": subnet, "private_dirs": list(private_dirs),
             "hosts": [dict(dataclasses.asdict(h), directory=str(h.directory)) for h in hosts]}
    (directory / STATE_FILE).write_text(json.dumps(state))
    processes: dict[int, subprocess.Popen] = {}
    try:
        for name in ("host_key", "client_key"):
            if not (directory / name).exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f",
                                str(directory / name)], check=True)
        (directory / "authorized_keys").write_text((directory / "client_key.pub").read_text())
        (directory / "authorized_keys").chmod(0o600)
        names = "".join(f"{h.address} {h.name}\n" for h in hosts)
        (directory / "etc_hosts").write_text(f"127.0.0.1 localhost\n{names}")
        for index in range(len(shared_dirs)):
            (directory / f"shared{index}").mkdir(exist_ok=True)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        _ip("link", "add", bridge, "type", "bridge")
        # Only a bridge this call made is deleted at down(): the name was free a moment ago, not now.
        (directory / STATE_FILE).write_text(json.dumps({**state, "bridge_ours": True}))
        _ip("addr", "add", f"{subnet}.254/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for host in hosts:
            _ip("netns", "add", host.netns)
            host.directory.mkdir(parents=True, exist_ok=True)
            process = _start_host(host, directory, bridge, private_dirs, shared_dirs)
            processes[process.pid] = process
        for host in hosts:
            _wait_for_sshd(host)
    except BaseException:
        down(directory, processes)
        raise
    return NetnsHosts(directory=directory, bridge=bridge, subnet=subnet, hosts=hosts,
                      client_key=directory / "client_key", private_dirs=tuple(private_dirs), processes=processes)


def _namespace_init(unshare_pid: int) -> int | None:
    """The PID (seen from here) of sshd, PID 1 of the host's PID namespace: the unshare's child."""
    try:
        children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def down(directory: Path, processes: dict[int, subprocess.Popen] | None = None) -> None:
    """Tear down the hosts recorded in ``directory``: kill each namespace's PID 1 (the kernel then
    kills everything inside it), delete the namespaces and the bridge, and remove ``directory``."""
    directory = directory.resolve()
    try:
        state = _state(directory)
    except (OSError, ValueError):
        return
    for host in state["hosts"]:
        pid_file = Path(host["directory"]) / "unshare.pid"
        with contextlib.suppress(OSError, ValueError):
            unshare_pid = int(pid_file.read_text())
            # unshare --fork ignores SIGTERM; its child, the namespace's PID 1, does not survive SIGKILL.
            init = _namespace_init(unshare_pid)
            if init is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(init, signal.SIGKILL)
            process = (processes or {}).get(unshare_pid)
            if process is not None:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(unshare_pid, signal.SIGKILL)
        _ip("netns", "del", host["netns"], check=False)
        _ip("link", "del", host["veth"], check=False)  # gone with the namespace; this is for a half-made host
    if state.get("bridge_ours"):
        _ip("link", "del", state["bridge"], check=False)
    shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def netns_hosts(count: int, directory: Path, private_dirs: Sequence[str] = (),
                shared_dirs: Sequence[str] = ()) -> Iterator[NetnsHosts]:
    """:func:`up`, then :func:`down` whatever happens."""
    hosts = up(count, directory, private_dirs, shared_dirs)
    try:
        yield hosts
    finally:
        down(directory, hosts.processes)


def _hold(count: int, directory: Path, private_dirs: Sequence[str]) -> None:
    """Keep hosts up until SIGTERM or SIGINT, reaping them here (PID 1 on test machines reaps nothing)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with netns_hosts(count, directory, private_dirs) as hosts:
        print(json.dumps({"addresses": hosts.addresses, "client_key": str(hosts.client_key),
                          "bridge": hosts.bridge}), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "hold":
        _hold(int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:])
    elif len(sys.argv) == 3 and sys.argv[1] == "down":
        down(Path(sys.argv[2]))
    else:
        sys.exit("usage: netns_hosts.py hold N DIR [PRIVATE_DIR...]  (until SIGTERM) | down DIR")
