"""Tunnels through the system ssh client: one ``ssh -N`` ControlMaster per transport, each tunnel a
``-L`` added to it through its control socket."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import IO

from rh_byo_ssh.errors import SystemSSHFailed, describe


class SSHMaster:
    """``ssh -N`` in control-master mode and its own session (a Ctrl-C aimed at the caller does
    not cut it): one SSH connection that carries every system tunnel of a transport. Forwards are
    added and cancelled through its control socket by short-lived ``ssh -O`` clients (~10-20 ms),
    so the connection (key exchange and authentication, 0.2-0.4 s) can come up before the remote
    port to forward is known."""

    def __init__(self, process: subprocess.Popen[bytes], directory: str, destination: str, errors: IO[bytes],
                 timeout: float):
        self.process = process
        self._directory = directory
        self.control_path = os.path.join(directory, "control")
        self._destination = destination
        self._errors = errors
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout
        self._ready = False

    @classmethod
    def start(cls, ssh: list[str], destination: str, *, timeout: float) -> SSHMaster:
        directory = _control_directory()
        errors = tempfile.TemporaryFile()  # a pipe nobody reads could fill and stall ssh
        try:
            process = subprocess.Popen(
                ssh + ["-N", "-o", "ControlMaster=yes", "-o", "ControlPersist=no",
                       "-S", os.path.join(directory, "control"), destination],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                start_new_session=True,
            )
        except OSError as exc:
            errors.close()
            shutil.rmtree(directory, ignore_errors=True)
            raise SystemSSHFailed(f"cannot run ssh: {describe(exc)}") from exc
        return cls(process, directory, destination, errors, timeout)

    def wait_ready(self) -> None:
        """Wait until the connection is authenticated (ssh then creates the control socket)."""
        while not self._ready:
            if self.process.poll() is not None:
                raise SystemSSHFailed(f"ssh exited {self.process.returncode}: {self._stderr()}")
            if os.path.exists(self.control_path):
                self._ready = True
                return
            if time.monotonic() > self._deadline:
                raise SystemSSHFailed(f"ssh did not connect within {self._timeout:g}s: {self._stderr()}")
            time.sleep(0.005)

    def alive(self) -> bool:
        return self.process.poll() is None

    def problem(self) -> str | None:
        """Why this connection carries nothing any more, or None while its ssh process runs."""
        code = self.process.poll()
        if code is None:
            return None
        said = self._stderr()
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        if code == 255 and not said:  # ssh's code for a failed or closed connection; it says no more at LogLevel=ERROR
            said = "its SSH connection failed or was closed by the machine"
        return f"the ssh client carrying it (pid {self.process.pid}) {how}" + (f": {said}" if said else "")

    def control(self, operation: str, spec: str) -> tuple[int, str]:
        """``ssh -O operation -L spec`` through the control socket: (exit code, what it said)."""
        try:
            done = subprocess.run(
                ["ssh", "-F", "none", "-o", "LogLevel=ERROR", "-S", self.control_path,
                 "-O", operation, "-L", spec, self._destination],
                stdin=subprocess.DEVNULL, capture_output=True, timeout=self._timeout, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            return 255, describe(exc)
        return done.returncode, done.stderr.decode("utf-8", "replace").strip()

    def close(self) -> None:
        _stop_process(self.process)
        with contextlib.suppress(Exception):
            self._errors.close()
        shutil.rmtree(self._directory, ignore_errors=True)

    def _stderr(self) -> str:
        try:
            self._errors.seek(0)
            text = self._errors.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return " / ".join(lines[-3:])[-500:]


class MuxForward:
    """One ``-L 127.0.0.1:port:127.0.0.1:remote_port`` on an :class:`SSHMaster`; dies with it."""

    kind = "ssh"

    def __init__(self, master: SSHMaster, port: int, spec: str):
        self.master = master
        self.address = ("127.0.0.1", port)
        self._spec = spec
        self._closed = False

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The ssh process carrying this forward (shared with the transport's other forwards)."""
        return self.master.process

    @classmethod
    def start(cls, master: SSHMaster, remote_port: int, *, prefer_port: int | None) -> MuxForward:
        said = ""
        for attempt in range(3):
            # The previous local port first, so a caller holding the old address keeps working.
            port = prefer_port if attempt == 0 and prefer_port and not _listening_inodes(prefer_port) else None
            port = port or _free_port()
            spec = f"127.0.0.1:{port}:127.0.0.1:{remote_port}"
            code, said = master.control("forward", spec)
            if code == 0:
                return cls(master, port, spec)
            if not master.alive():
                raise SystemSSHFailed(f"ssh -L: {master.problem()}")
            if "forwarding failed" not in said.lower():
                break  # not a port race: another port will not help
        raise SystemSSHFailed(f"ssh -O forward -L failed: {said[-2000:]}")

    def alive(self) -> bool:
        return not self._closed and self.master.alive()

    def problem(self) -> str | None:
        return "the tunnel was closed" if self._closed else self.master.problem()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.master.alive():
                self.master.control("cancel", self._spec)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _listening_inodes(port: int) -> set[str] | None:
    """Inodes of sockets listening on 127.0.0.1/0.0.0.0:``port``, or None without /proc."""
    try:
        with open("/proc/net/tcp") as table:
            lines = table.readlines()[1:]
    except OSError:
        return None
    inodes = set()
    for line in lines:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
            inodes.add(inode)
    return inodes


def _control_directory() -> str:
    """A fresh owner-only directory for a control socket: whoever can reach that socket can use the
    connection. Short, because a socket path must fit in ~100 bytes and ssh appends 17 more."""
    base = tempfile.gettempdir()
    if len(base) > 60 and os.path.isdir("/tmp"):
        base = "/tmp"
    return tempfile.mkdtemp(prefix="rh-ssh-", dir=base)


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
