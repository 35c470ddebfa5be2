"""ASGI apps sent to a cluster: ``rh.asgi(app).to(cluster)`` runs a FastAPI or Starlette app (any
ASGI app) there under uvicorn, served at ``/<name>/`` by the cluster server's HTTP door.

The app travels by reference, as uvicorn's ``module:attribute``: it must be a module-level name of
a file in the working directory (synced to the cluster), or of an installed package. An app
defined in the script being run (``__main__``) is imported on the cluster from that script's file,
as a module of its own name, so code under ``if __name__ == "__main__":`` does not run there.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from rh_core.errors import RhError
from rh_core.wire.messages import (
    AppLogsRequest,
    AppsRequest,
    RemoveAppRequest,
    RunAppRequest,
)

if TYPE_CHECKING:
    from rh_core.clusters.base import Cluster
    from rh_core.secrets import Secret


@attrs.frozen(kw_only=True)
class AsgiApp:
    """An ASGI app, placed on a cluster (``system``) or not yet; see :func:`asgi`."""

    app: Any = attrs.field(repr=False)
    name: str
    system: Cluster | None = None

    def to(self, system: Cluster, *, reqs: list[Any] | None = None, env: Any = None,
           secrets: Sequence[Secret | str] = (), public: bool = False) -> AsgiApp:
        """Run the app on ``system`` under uvicorn, in a process of its own that the cluster's server
        starts again when the app exits and when the server restarts; replaces an app of the same
        name. ``reqs`` and ``env`` as for functions (uvicorn is added when the environment lacks
        it), ``secrets`` become its environment variables. Callers send the cluster's HTTP token
        (:meth:`Cluster.http_token`) unless ``public=True``."""
        from rh_core.function import _code_on_cluster, _inside, _installed_roots
        from rh_core.packages import env_name, install_packages
        from rh_core.secrets import send_secrets
        from rh_core.support.workdir import working_directory

        system.connection()
        module, attr, module_file = _reference(self.app)
        workdir = os.path.realpath(working_directory())
        if reqs is None:
            default = os.path.join(workdir, "requirements.txt")
            reqs = [f"reqs:{default}"] if os.path.isfile(default) else []
        if reqs or env is not None:
            install_packages(system, reqs, env)
        installed = module_file is not None and any(_inside(module_file, root) for root in _installed_roots())
        if module_file is not None and not installed and not _inside(module_file, workdir):
            raise RhError(f"the app's module {module} ({module_file}) is outside the working directory {workdir}, "
                          "which is what travels to the cluster: run from the directory (or git repository) holding it")
        paths = [os.path.dirname(module_file)] if module_file and not installed else []
        code = _code_on_cluster(system, workdir, [*paths, *sys.path], os.getcwd())
        if code is None and paths:
            raise RhError(f"cluster {system.name!r} takes no files, so the app's module {module} cannot reach it; "
                          "run the app on a cluster reached by SSH or on this machine")
        record = {"name": self.name, "public": public, "module": module, "attr": attr, "env": env_name(env),
                  "secrets": list(send_secrets(system, secrets)) if secrets else [],
                  "paths": list(code.paths) if code else [], "cwd": code.cwd if code else "."}
        reply = system.send(RunAppRequest(app=record))
        for _ in range(2):  # aiohttp for the server's door, then uvicorn for the app: ordinary installs
            if "missing" not in reply.header:
                break
            install_packages(system, [reply.header["missing"]], reply.header.get("env"))
            reply = system.send(RunAppRequest(app=record))
        if "missing" in reply.header:
            raise RhError(f"{reply.header['missing']} was installed on cluster {system.name!r} but cannot be imported "
                          "there; see cluster.install_packages and the server's log")
        return attrs.evolve(self, system=system)

    def _placed(self) -> Cluster:
        if self.system is None:
            raise RhError(f"app {self.name!r} is not on a cluster yet: use rh.asgi(app).to(cluster) first")
        return self.system

    def http_url(self) -> str:
        """The app's root URL (ending in ``/``) reachable from here, as :meth:`Function.http_url`'s."""
        system = self._placed()
        reply = system.send(AppsRequest())
        if self.name not in {app["name"] for app in reply.header["apps"]}:
            raise RhError(f"no app {self.name!r} runs on cluster {system.name!r}; run it with rh.asgi(app).to(cluster)")
        return f"{system.http_address(reply.header['port'])}/{self.name}/"

    def logs(self) -> str:
        """The end of the app's output (uvicorn's log and the app's prints) on the cluster."""
        return self._placed().send(AppLogsRequest(name=self.name)).header["log"]

    def remove(self) -> bool:
        """Stop the app and stop serving it; False when it was not running."""
        return self._placed().send(RemoveAppRequest(name=self.name)).header["removed"]

    def __repr__(self) -> str:
        where = self.system.name if self.system is not None else "not sent"
        return f"<AsgiApp {self.name} on {where}>"


def asgi(app: Any, *, name: str | None = None) -> AsgiApp:
    """Wrap an ASGI app (a FastAPI or Starlette instance, or ``"module:attribute"``) to send with
    ``.to(cluster)``; ``name`` (default: the attribute's name) is its path on the cluster's HTTP door."""
    _, attr, _ = _reference(app)
    return AsgiApp(app=app, name=name or attr.rsplit(".", 1)[-1])


def _reference(app: Any) -> tuple[str, str, str | None]:
    """``(module, attribute, module file)`` by which uvicorn imports ``app`` on the cluster."""
    if isinstance(app, str):
        module, _, attr = app.partition(":")
        if not module or not attr:
            raise RhError(f"an app given by name is 'module:attribute' (as uvicorn takes it), not {app!r}")
        return module, attr, None
    if not callable(app):
        raise TypeError(f"rh.asgi takes an ASGI app (a callable such as a FastAPI instance), got {type(app).__name__}")
    # The script being run last: an app it imported from a module is that module's.
    modules = sorted(sys.modules.items(), key=lambda item: item[0] == "__main__")
    for module_name, candidate in modules:
        file = getattr(candidate, "__file__", None)
        # Aliases are skipped: multiprocessing files the script as __mp_main__ too.
        if not file or module_name.startswith("rh_core") or getattr(candidate, "__name__", None) != module_name:
            continue
        for attr, value in list(vars(candidate).items()):
            if value is app and not attr.startswith("__"):
                if module_name == "__main__":  # imported there from the script's own file, by its name
                    module_name = os.path.splitext(os.path.basename(file))[0]
                return module_name, attr, os.path.realpath(file)
    raise RhError("rh.asgi needs an app that is a module-level name of a file (as uvicorn imports 'module:app'); "
                  "define it at the top level of a module or script, not inside a function or a notebook cell")
