"""Run with the cluster venv's python, where rh_core is installed:
``python -m rh_core.bootstrap.scripts.start_server STATE_DIR BUILD NODE_ADDRESS OLD_PID [SERVER ARGS]``.

Stops the old server if there is one, starts the new one detached (it outlives the SSH session) and
waits for its state file; prints the state and the secret as JSON, or the log's tail when the
server dies first.
"""

from __future__ import annotations

import json
import os
import sys

from rh_core.errors import UntrustedPathError
from rh_core.support.files import private_directory
from rh_core.support.processes import LaunchError, launch, stop_process, wait_ready

START_TIMEOUT = 120.0


def main(state_dir: str, build: str, node_address: str, old_pid: str, *server_args: str) -> dict:
    if int(old_pid):
        stop_process(int(old_pid), grace=5.0)
    try:  # the server checks its folder too, but the log is opened here first
        private_directory(state_dir)
    except UntrustedPathError as exc:
        return {"ok": False, "code": None, "log": str(exc)}
    log_path = os.path.join(state_dir, "server.log")
    child = launch([sys.executable, "-m", "rh_core.server", "--state-dir", state_dir, *server_args], log_path,
                   private_log=True, env={**os.environ, "RH_BUILD_ID": build, "RH_NODE_ADDRESS": node_address},
                   cwd=os.path.expanduser("~"))

    def started(child):  # its state file names it, and its secret is there
        try:
            with open(os.path.join(state_dir, "server.json")) as f:
                state = json.load(f)
            if state.get("pid") == child.pid:
                with open(os.path.join(state_dir, "secret")) as f:
                    return {"ok": True, "state": state, "secret": f.read().strip()}
        except (OSError, ValueError):
            pass
        return None

    try:
        return wait_ready(child, started, timeout=START_TIMEOUT, log_path=log_path)
    except LaunchError as exc:
        return {"ok": False, "code": child.poll(), "log": exc.log_tail(30)}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
