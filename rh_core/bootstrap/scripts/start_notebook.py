"""Run with an environment's python on a cluster's head machine (every environment there sees the
server's rh_core): ``python -m rh_core.bootstrap.scripts.start_notebook PORT LOG_PATH TIMEOUT``.

Starts JupyterLab detached on ``127.0.0.1:PORT`` with a fresh token, waits for its port, and prints
``{"ok": true, "pid", "token"}`` as JSON, or the log's tail when it did not come up.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys

from rh_core.support.processes import LaunchError, launch


def main(port: str, log_path: str, timeout: str) -> dict:
    port_number, log_path = int(port), os.path.expanduser(log_path)
    token = secrets.token_urlsafe(24)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)

    def listening(child) -> bool:
        try:
            socket.create_connection(("127.0.0.1", port_number), timeout=1).close()
            return True
        except OSError:
            return False

    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port_number}",
               "--ServerApp.port_retries=0"] + (["--allow-root"] if os.geteuid() == 0 else [])
    try:
        child = launch(command, log_path, env={**os.environ, "JUPYTER_TOKEN": token}, cwd=os.path.expanduser("~"),
                       ready=listening, timeout=float(timeout), interval=0.2)
    except LaunchError as exc:
        if not exc.exited:
            exc.process.kill()
        return {"ok": False, "code": exc.process.poll(), "log": exc.log_tail(20)}
    return {"ok": True, "pid": child.pid, "token": token}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
