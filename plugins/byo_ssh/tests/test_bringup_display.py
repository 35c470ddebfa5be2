"""What a person sees while a cluster comes up: log lines per step, a live status line on a
terminal, and never a question."""

from __future__ import annotations

import json
import logging
import os
import pty
import select
import sys
import time

import pytest

import rh_core as rh
from rh_core.testing import functions as fns
from rh_core.testing.sshd import loopback_cluster, ssh_creds

BRINGUP_STEPS = ("connect", "probe", "wheels", "ship wheels", "install", "start server", "tunnel")

# Run on a pseudo-terminal (stdin, stdout and stderr all a tty, as in a shell): one bring-up and one call.
CHILD = r"""
import json, os
import rh_core as rh
from rh_core.testing import functions as fns
spec = json.loads(os.environ["RH_TEST_CLUSTER"])
cluster = rh.cluster(name=spec["name"], ips=[spec["host"]], ssh_creds=spec["creds"])
cluster.remote_dir = spec["remote_dir"]
try:
    print("result", rh.function(fns.quiet_add).to(cluster)(2, 3), flush=True)
finally:
    cluster.down()
"""


def _run_on_a_terminal(code: str, env: dict[str, str], timeout: float) -> str:
    pid, terminal = pty.fork()
    if pid == 0:  # the child: its stdin, stdout and stderr are the terminal
        os.execve(sys.executable, [sys.executable, "-c", code], env)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([terminal], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(terminal, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                output.extend(chunk)
        else:
            os.kill(pid, 9)
            pytest.fail(f"the child still ran after {timeout} s (waiting for an answer?); it printed:\n{output.decode()}")
    finally:
        os.waitpid(pid, 0)
        os.close(terminal)
    return output.decode("utf-8", "replace")


@pytest.mark.slow
def test_a_bring_up_on_a_terminal_shows_its_steps_and_asks_nothing(sshd, tmp_path):
    user_config = tmp_path / "ssh_config"
    spec = {"name": f"display-{os.getpid()}", "host": sshd.host, "creds": ssh_creds(sshd, tmp_path),
            "remote_dir": str(tmp_path / "remote-rh")}
    env = {**os.environ, "RH_TEST_CLUSTER": json.dumps(spec), "RH_USER_SSH_CONFIG": str(user_config),
           "RH_HOME": str(tmp_path / "rh-home"), "TERM": "xterm", "COLUMNS": "200"}
    env.pop("RH_NO_STATUS", None)
    seen = _run_on_a_terminal(CHILD, env, timeout=240)
    assert "result 5" in seen, seen
    assert "rh install: rh_core into" in seen or "rh wheels: for Linux" in seen, seen  # the live status line
    assert "rh ssh-config --include" in seen  # a one-line hint ...
    assert "[y/N]" not in seen and not user_config.exists()  # ... and no question, nothing written


@pytest.mark.slow
def test_each_bring_up_step_logs_one_info_line_with_its_duration_and_paramiko_stays_quiet(sshd, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    cluster = loopback_cluster(sshd, tmp_path, name=f"logged-{os.getpid()}", executor_options={"num_workers": 1})
    try:
        assert rh.function(fns.quiet_add).to(cluster)(1, 2) == 3
    finally:
        cluster.down()
    lines = [record.getMessage() for record in caplog.records if record.name == "rh_core.clusters.remote"]
    for step in BRINGUP_STEPS:
        assert any(line.startswith(step) and line.endswith(" s)") for line in lines), (step, lines)
    assert not [record for record in caplog.records if record.name.startswith("paramiko")]
