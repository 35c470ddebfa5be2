from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def process_cluster(tmp_path_factory):
    """One local server with the process executor (2 workers), shared by the whole session."""
    import rh_core as rh

    cluster = rh.LocalCluster(
        name="test-process", state_dir=str(tmp_path_factory.mktemp("process")), executor="process",
        executor_options={"num_workers": 2},
    )
    yield cluster
    cluster.stop_server()


@pytest.fixture
def own_cluster(tmp_path):
    """A local cluster with a server of its own (one worker), for tests that kill, restart or
    attack it; its server starts on first use and is stopped afterwards."""
    import rh_core as rh

    cluster = rh.LocalCluster(state_dir=str(tmp_path / "state"), executor_options={"num_workers": 1})
    yield cluster
    cluster.stop_server()


@pytest.fixture
def running_cluster(own_cluster):
    """:func:`own_cluster` with its server already started."""
    own_cluster.connection()
    return own_cluster


# -------------------------------------------------------------------------------------------------
# A second local user: the attacker of the threat tests (RELIABILITY.md, "Threats")


@dataclasses.dataclass
class OtherUser:
    """A local account made for one test and removed after it, even when the test fails.

    It cannot use this interpreter (root's home is 0700), so what it runs is either plain
    ``/usr/bin/python3`` (:meth:`python`, :meth:`start_python`) or a fork of this process that has
    dropped to its uid (:meth:`fork`), which keeps the modules imported before the fork.
    """

    name: str
    uid: int
    gid: int
    home: Path
    _started: list[subprocess.Popen] = dataclasses.field(default_factory=list)

    def _command(self, source: str, args: tuple[str, ...]) -> list[str]:
        return [shutil.which("runuser") or "/usr/sbin/runuser", "-u", self.name, "--", "/usr/bin/python3", "-c",
                source, *args]

    @property
    def _env(self) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "HOME": str(self.home), "LANG": "C.UTF-8"}

    def python(self, source: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run ``source`` with the system Python as this user; its output, checked."""
        done = subprocess.run(self._command(source, args), capture_output=True, text=True, timeout=timeout,
                              env=self._env, cwd=self.home)
        assert done.returncode == 0, f"the other user's script failed:\n{done.stdout}\n{done.stderr}"
        return done

    def start_python(self, source: str, *args: str) -> subprocess.Popen:
        """Start ``source`` as this user in the background; it is killed when the test ends."""
        process = subprocess.Popen(self._command(source, args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=self._env, cwd=self.home,
                                   start_new_session=True)
        self._started.append(process)
        return process

    def kill(self, process: subprocess.Popen) -> None:
        """Kill a process :meth:`start_python` started: its session (runuser and the script under it)."""
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def fork(self, action: Callable[[], Any], timeout: int = 120) -> Any:
        """``action()`` run in a forked child that has become this user; its JSON-able result.
        An exception in the child comes back as ``{"crashed": repr}``; a child still running after
        ``timeout`` seconds is killed (it holds what this process holds open, the CPU lock too)."""
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                signal.signal(signal.SIGALRM, signal.SIG_DFL)  # (pytest-timeout's handler is inherited)
                signal.alarm(timeout)  # never outlive the test, whatever the action does
                os.close(read_end)
                os.setgroups([])
                os.setgid(self.gid)
                os.setuid(self.uid)
                os.chdir(self.home)
                result = action()
            except BaseException as exc:  # reported to the parent, which fails the test with it
                result = {"crashed": repr(exc)}
            os.write(write_end, json.dumps(result).encode())
            os._exit(0)
        os.close(write_end)
        chunks = []
        try:
            while chunk := os.read(read_end, 65536):
                chunks.append(chunk)
        finally:
            os.close(read_end)
            with contextlib.suppress(ProcessLookupError):
                if os.waitpid(pid, os.WNOHANG) == (0, 0):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        if not chunks:
            pytest.fail(f"the other user's action did not finish within {timeout} s")
        return json.loads(b"".join(chunks))

    def stop(self) -> None:
        for process in self._started:
            self.kill(process)


@pytest.fixture
def other_user() -> Iterator[OtherUser]:
    """A second local user, made for this test and removed after it."""
    from rh_core.testing.sshd import local_account

    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("playing a second local user needs root and useradd")
    with local_account("rhother") as (name, home):
        user = OtherUser(name=name, uid=pwd.getpwnam(name).pw_uid, gid=pwd.getpwnam(name).pw_gid, home=home)
        try:
            yield user
        finally:
            user.stop()


@pytest.fixture
def reachable_tmp() -> Iterator[Path]:
    """A folder of this user's that a second local user can reach (pytest's tmp_path sits under a
    0700 folder): ``/tmp/rh-reach-XXXX``, mode 0755, removed after the test."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="rh-reach-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -------------------------------------------------------------------------------------------------
# A server exposed beyond loopback through TLS (tests/test_tls.py, and the HTTP tests through its door)


@pytest.fixture
def exposed_server(tmp_path):
    from tls_helpers import exposed

    with exposed(tmp_path) as server:
        yield server
