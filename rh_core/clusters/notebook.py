"""JupyterLab on a cluster's head machine, reached through a tunnel: ``cluster.notebook()``.

JupyterLab is installed into the chosen environment on first use (an ordinary, recorded install),
started detached on the head bound to 127.0.0.1 with a token made there, and reached through the
cluster's transport. The token never appears on a command line.
"""

from __future__ import annotations

import json
import shlex
from typing import TYPE_CHECKING, Any

import attrs

from rh_core.errors import RhError

if TYPE_CHECKING:
    from rh_core.clusters.base import Cluster, Tunnel

START_TIMEOUT = 120.0


@attrs.define(eq=False)
class Notebook:
    """A running JupyterLab: open :attr:`url`; :meth:`close` (or leaving ``with``) stops it."""

    cluster: Cluster = attrs.field(repr=False)
    tunnel: Tunnel = attrs.field(repr=False)
    pid: int
    token: str = attrs.field(repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.tunnel.host}:{self.tunnel.local_port}/lab?token={self.token}"

    def close(self) -> None:
        self.tunnel.close()
        self.cluster.run([f"kill {self.pid} 2>/dev/null || true"])

    def __enter__(self) -> Notebook:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def start_notebook(cluster: Cluster, port: int = 8888, *, env: Any = None, local_port: int | None = None,
                   quiet: bool = False) -> Notebook:
    from rh_core.packages import install_packages

    environment = install_packages(cluster, ["jupyterlab"], env)["environment"]
    log_path = f"{cluster._setup_dir()}/notebook-{port}.log"  # the cluster's own state folder on the head
    command = (f"{shlex.quote(environment['python'])} -m rh_core.bootstrap.scripts.start_notebook {port} "
               f"{shlex.quote(log_path)} {START_TIMEOUT}")
    ((code, out, err),) = cluster.run([command])
    try:
        started = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RhError(f"could not start JupyterLab on the cluster (exit code {code}): {err or out}") from None
    if not started["ok"]:
        raise RhError(
            f"JupyterLab did not start on port {port} of the cluster (exit code {started['code']}); if the port "
            f"is taken, pass another with notebook(port=...). Its log ({log_path}) ends with:\n{started['log']}"
        )
    notebook = Notebook(cluster=cluster, tunnel=cluster.ssh_tunnel(port, local_port=local_port),
                        pid=started["pid"], token=started["token"])
    if not quiet:
        print(f"JupyterLab on {cluster.name}: {notebook.url}", flush=True)
    return notebook
