"""Processes on this machine: whether one runs, whether it is still the one a record names, and the
one way rh starts a process that must outlive its starter (:func:`launch`) and stops one
(:func:`stop_process`)."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rh_core.errors import RhError


def pid_alive(pid: int | None) -> bool:
    """True if ``pid`` runs and is not a zombie."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True  # no /proc (macOS): kill(0) is all we have


def process_start_time(pid: int) -> str | None:
    """When process ``pid`` started, in the kernel's clock ticks since boot (``/proc/PID/stat``);
    with the pid, it names one process for good. None where there is no ``/proc`` (macOS)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def is_live_server(state: dict[str, Any]) -> bool:
    """Whether the process a ``server.json`` names still runs and is that server, not another
    process that got its pid after it died: only then may it be signalled."""
    pid = state.get("pid")
    if not isinstance(pid, int) or not pid_alive(pid):
        return False
    recorded = state.get("process_start")
    return recorded is None or recorded == process_start_time(pid)  # None: a record from before this check


def die_with_parent() -> None:
    """Ask Linux to kill this process when the server that spawned it dies (even by SIGKILL): a
    worker or an app process must not outlive it."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: workers still end once they notice their parent is gone


def tail(path: str, lines: int = 30) -> str:
    """The last ``lines`` lines of the log at ``path``, or ``(no log)``."""
    try:
        with open(path, errors="replace") as file:
            return "".join(file.readlines()[-lines:])
    except OSError:
        return "(no log)"


class LaunchError(RhError):
    """A process :func:`launch` started exited before it was ready (``reason == "exited"``), or was
    not ready in time (``"timeout"``; it is left running: whether to stop it is the caller's call).
    Callers usually turn it into an error of their own, with :meth:`log_tail`."""

    def __init__(self, process: subprocess.Popen, reason: str, log_path: str, timeout: float):
        self.process, self.reason, self.log_path = process, reason, log_path
        name = os.path.basename(str(process.args[0] if isinstance(process.args, (list, tuple)) else process.args))
        what = (f"{name} exited with code {process.returncode} before it was ready" if reason == "exited"
                else f"{name} was not ready within {timeout:g} s")
        super().__init__(f"{what}; its log ({log_path}) ends with:\n{self.log_tail()}")

    @property
    def exited(self) -> bool:
        return self.reason == "exited"

    def log_tail(self, lines: int = 30) -> str:
        return tail(self.log_path, lines)


def launch(command: Sequence[str], log_path: str, *, env: Mapping[str, str] | None = None, cwd: str | None = None,
           private_log: bool = False, truncate_log: bool = False, pass_fds: Sequence[int] = (),
           ready: Callable[[subprocess.Popen], object] | None = None, timeout: float = 60.0,
           interval: float = 0.05) -> subprocess.Popen:
    """Start ``command`` detached: in a session of its own (it outlives the SSH command, server or
    terminal that started it, and a signal to the starter's group does not reach it), stdin from
    /dev/null, stdout and stderr appended to ``log_path`` (``truncate_log``: written afresh;
    ``private_log``: opened as a state file, see :func:`rh_core.support.files.open_private`).

    With ``ready``, wait as :func:`wait_ready` does before returning; without, return at once (a
    caller that must record the pid before it waits calls :func:`wait_ready` itself)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate_log else os.O_APPEND)
    if private_log:
        from rh_core.support.files import open_private

        log = open_private(log_path, flags)
    else:
        log = os.open(log_path, flags | os.O_CLOEXEC, 0o666)
    try:
        process = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   env=None if env is None else dict(env), cwd=cwd, pass_fds=tuple(pass_fds),
                                   start_new_session=True)
    finally:
        os.close(log)
    if ready is not None:
        wait_ready(process, ready, timeout=timeout, log_path=log_path, interval=interval)
    return process


def wait_ready(process: subprocess.Popen, ready: Callable[[subprocess.Popen], object], *, timeout: float,
               log_path: str, interval: float = 0.05) -> Any:
    """Ask ``ready(process)`` every ``interval`` seconds until it answers something true, and return
    that answer. Raises :class:`LaunchError` when the process exits first (it is reaped) or
    ``timeout`` seconds pass (it is left running)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = ready(process)
        if answer:
            return answer
        if process.poll() is not None:
            raise LaunchError(process, "exited", log_path, timeout)
        if time.monotonic() >= deadline:
            raise LaunchError(process, "timeout", log_path, timeout)
        time.sleep(interval)


def stop_process(process: int | subprocess.Popen, *, grace: float = 10.0, group: bool = False,
                 interval: float = 0.02) -> bool:
    """Stop a process: SIGTERM, up to ``grace`` seconds for it to end, then SIGKILL (``grace=0``:
    SIGKILL at once, without waiting: for callers on an event loop). Returns True when it had to be
    killed; with a grace, it is gone by then.

    ``process`` is a pid, or a Popen this process started, which is then reaped (no zombie left)
    and never signalled once reaped (its pid may be another process's by then). A process already
    gone is no error. With ``group=True`` the signals go to its process group (it leads one when
    :func:`launch` started it), and once the process has ended or the grace is over the whole group
    gets SIGKILL, so that nothing it started outlives it."""
    child = process if isinstance(process, subprocess.Popen) else None
    pid = child.pid if child is not None else int(process)
    if child is not None and child.poll() is not None:
        return False
    send = os.killpg if group else os.kill

    def running() -> bool:
        return child.poll() is None if child is not None else pid_alive(pid)

    if grace > 0:
        try:
            send(pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        deadline = time.monotonic() + grace
        while running() and time.monotonic() < deadline:
            time.sleep(interval)
    killed = running()
    if killed or group:
        try:
            send(pid, signal.SIGKILL)
        except ProcessLookupError:
            killed = False
    if child is not None:
        child.wait()
    elif killed and grace > 0:  # SIGKILL lands at once, but not before kill() returns
        deadline = time.monotonic() + 1.0
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(interval)
    return killed


def raise_open_files_limit() -> None:
    """Allow this process (and the processes it starts) as many open files as the system lets it:
    a server holds a connection per thread of each local client."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):  # a hard limit the system will not grant as soft
        pass


class StartedEarly:
    """A worker process forked during a server's start-up, with the server's end of the socket pair
    it shares with it: see :func:`start_early`. Shaped as :class:`asyncio.subprocess.Process` where
    an executor uses one (``pid``, ``returncode``, ``await wait()``)."""

    def __init__(self, pid: int, ours: socket.socket, command: list[str], env: dict[str, str], child_fd: int):
        self.pid, self.ours, self.command, self.env, self.child_fd = pid, ours, command, env, child_fd
        self.returncode: int | None = None  # set once it has ended and been reaped

    def _reap(self, flags: int = 0) -> bool:
        pid, status = os.waitpid(self.pid, flags)
        if pid == 0:
            return False
        self.returncode = os.waitstatus_to_exitcode(status)
        return True

    async def wait(self) -> int:
        """Wait, without blocking the running event loop, until the process ends; reap it."""
        import asyncio

        if self.returncode is not None:
            return self.returncode
        try:
            exit_fd = os.pidfd_open(self.pid)  # readable once the process has ended (Linux 5.3+)
        except (AttributeError, OSError):
            while not self._reap(os.WNOHANG):
                await asyncio.sleep(0.1)
            return self.returncode
        loop = asyncio.get_running_loop()
        ended = loop.create_future()
        loop.add_reader(exit_fd, lambda: ended.done() or ended.set_result(None))
        try:
            await ended
        finally:
            loop.remove_reader(exit_fd)
            os.close(exit_fd)
        self._reap()
        return self.returncode


_started_early: list[StartedEarly] = []


def start_early(command: Callable[[int], list[str]], run: Callable[[], object], *, env: Mapping[str, str],
                cwd: str) -> None:
    """Fork a process that becomes what ``command(fd)`` would start, ``fd`` being its end of a new
    socket pair, without paying for a new interpreter and its imports: it calls ``run()`` with
    ``sys.argv`` set from the command, in a session of its own, in ``cwd``, with ``env`` as its
    environment and stdin from /dev/null, then exits. For a server's start-up, before it has
    threads or an event loop (which a fork does not take along): an executor takes these over
    later (:func:`take_started_early`), if they are what it would have started itself."""
    import sys
    import traceback

    ours, theirs = socket.socketpair()
    child_fd = theirs.fileno()
    argv = command(child_fd)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # or the child would write what is buffered again
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setsid()
            for early in _started_early:
                early.ours.close()
            ours.close()
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.close(devnull)
            if argv[1:2] == ["-m"] and sys.path[:1] == [os.getcwd()]:
                sys.path[0] = cwd  # what ``python -m`` puts first: the directory it starts in
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(env)
            sys.argv = [argv[0], *argv[3:]] if argv[1:2] == ["-m"] else list(argv)
            run()
            code = 0
        except SystemExit as exc:
            code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
        except Exception:  # whatever stops the worker is reported in the server log, and the fork ends
            traceback.print_exc()
        finally:
            try:
                for stream in (sys.stdout, sys.stderr):
                    stream.flush()
            finally:
                os._exit(code)  # never back into the code that forked it: that would be a second server
    theirs.close()
    _started_early.append(StartedEarly(pid, ours, argv, dict(env), child_fd))


def take_started_early(wanted: Callable[[StartedEarly], bool]) -> StartedEarly | None:
    """One process :func:`start_early` started for which ``wanted`` is true; it is the caller's from then on."""
    for early in _started_early:
        if wanted(early):
            _started_early.remove(early)
            return early
    return None


def stop_started_early() -> None:
    """Kill (and reap) what :func:`start_early` started and nobody took: it was not what was needed."""
    while _started_early:
        early = _started_early.pop()
        early.ours.close()
        os.kill(early.pid, signal.SIGKILL)  # it, even before it has made its own process group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(early.pid, signal.SIGKILL)  # and whatever it started
        early._reap()
