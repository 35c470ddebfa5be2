"""ASGI apps on the cluster (``rh.asgi(app).to(cluster)``): each in a process of its own under
uvicorn, started by the server, started again with it, and reached through its HTTP door.

An app is kept as ``<state dir>/apps/<name>.json`` (how to import it, its environment, secrets and
whether it is public) and runs as :mod:`rh_core.server.app_process` with the environment's interpreter.
It listens on a Unix socket in a private temporary directory (0700): nobody reaches it but the
server, whose door forwards ``/<name>/...`` to it for callers with the cluster's HTTP token (see
:mod:`rh_core.server.http_door`). An app that exits is started again after a pause that doubles, up to
a minute, while it keeps failing; its output goes to ``<state dir>/apps/<name>.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rh_core.server.app_process import AUTHENTICATED_HEADER
from rh_core.errors import ProtocolError, RhError
from rh_core.server.http_door import check_endpoint_name
from rh_core.support.processes import stop_process

if TYPE_CHECKING:
    from aiohttp import web

    from rh_core.plugin.interfaces import Environment

#: What ``.to()`` installs into an app's environment when its interpreter cannot import uvicorn.
REQUIREMENT = "uvicorn>=0.30"
APPS_DIR = "apps"
START_TIMEOUT = 60.0  # how long an app may take to listen (imports on a busy machine)
RESTART_PAUSE_MAX = 60.0
LOG_TAIL_BYTES = 8192
#: Hop-by-hop headers (RFC 9110 7.6.1) stay on their own leg of the proxy.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                         "transfer-encoding", "upgrade", "content-length"})
APP_FIELDS = ("module", "attr", "paths", "cwd", "env", "secrets")


class _App:
    def __init__(self, record: dict[str, Any]):
        self.record = record
        self.process: asyncio.subprocess.Process | None = None
        self.directory: str | None = None  # the private directory of its socket
        self.session: Any = None  # aiohttp.ClientSession over the socket
        self.watcher: asyncio.Task | None = None
        self.stopping = False

    @property
    def name(self) -> str:
        return self.record["name"]

    @property
    def public(self) -> bool:
        return self.record["public"]


class AppHost:
    """The apps of one server.

    :param state_dir: the server's state directory.
    :param environment: the server's environments by name (``None``: the default one).
    :param variables: the variables of secrets by name (raises for one not on the cluster).
    """

    def __init__(self, state_dir: str, environment: Callable[[str | None], Environment],
                 variables: Callable[[list[str]], dict[str, str]]):
        self._directory = os.path.join(state_dir, APPS_DIR)
        self._environment, self._variables = environment, variables
        self._apps: dict[str, _App] = {}
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self._directory):
                if entry.name.endswith(".json"):
                    with contextlib.suppress(OSError, ValueError, KeyError):
                        with open(entry.path) as f:
                            record = json.load(f)
                        self._apps[record["name"]] = _App(record)

    def __contains__(self, name: str) -> bool:
        return name in self._apps

    def public(self, name: str) -> bool:
        return self._apps[name].public

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": name, "public": app.public, "app": f"{app.record['module']}:{app.record['attr']}",
                 "pid": app.process.pid if app.process is not None and app.process.returncode is None else None}
                for name, app in sorted(self._apps.items())]

    def log_tail(self, name: str) -> str:
        if name not in self._apps:
            raise ProtocolError(f"no app {name!r} on this cluster")
        return _tail(self._log_path(name))

    def _log_path(self, name: str) -> str:
        return os.path.join(self._directory, f"{name}.log")

    # --- life cycle ----------------------------------------------------------------------------

    async def start_all(self) -> None:
        """At server start: start every app kept from before (each retries on its own if it fails)."""
        for app in self._apps.values():
            app.watcher = asyncio.ensure_future(self._keep_running(app, first_start=None))

    async def run(self, record: dict[str, Any]) -> None:
        """Run the app ``record`` describes (replacing one of the same name) and wait until it
        listens; raise :class:`RhError` with the end of its log when it cannot start."""
        name = check_endpoint_name(record.get("name"))
        if (set(record) - {*APP_FIELDS, "name", "public"} or not isinstance(record.get("paths"), list)
                or not all(isinstance(record.get(field), str) for field in ("module", "attr", "cwd"))):
            raise ProtocolError(f"malformed app request: it holds {', '.join(APP_FIELDS)}, name and public")
        self._variables(record.get("secrets") or [])  # a missing secret is named now, not at each restart
        await self.remove(name)
        os.makedirs(self._directory, mode=0o700, exist_ok=True)
        app = self._apps[name] = _App({**record, "public": bool(record.get("public"))})
        with open(os.path.join(self._directory, f"{name}.json"), "w") as f:
            json.dump(app.record, f)
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        app.watcher = asyncio.ensure_future(self._keep_running(app, first_start=started))
        await started

    async def remove(self, name: str) -> bool:
        app = self._apps.pop(name, None)
        if app is None:
            return False
        await self._stop(app)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self._directory, f"{name}.json"))
        return True

    async def stop_all(self) -> None:
        await asyncio.gather(*(self._stop(app) for app in self._apps.values()))

    async def _stop(self, app: _App) -> None:
        app.stopping = True
        if app.watcher is not None:
            app.watcher.cancel()
        await self._end_process(app)

    async def _keep_running(self, app: _App, first_start: asyncio.Future[None] | None) -> None:
        """Start the app, and start it again whenever it exits, pausing longer while it keeps failing.
        ``first_start`` learns whether the first start worked."""
        pause = 1.0
        while not app.stopping:
            try:
                process = await self._start(app)
            except Exception as exc:  # RhError with the app's log, or the environment's python cannot run
                if not isinstance(exc, RhError):
                    exc = RhError(f"app {app.name!r} could not be started: {type(exc).__name__}: {exc}")
                if first_start is not None:  # it never ran: nothing to keep
                    await self._end_process(app)
                    if self._apps.get(app.name) is app:
                        del self._apps[app.name]
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(os.path.join(self._directory, f"{app.name}.json"))
                    first_start.set_exception(exc)
                    return
                sys.stderr.write(f"rh server: app {app.name!r} did not start again ({exc}); next try in {pause:g} s\n")
            else:
                if first_start is not None:
                    first_start.set_result(None)
                    first_start = None
                started_at = time.monotonic()
                code = await process.wait()
                if app.stopping:
                    return
                if time.monotonic() - started_at > RESTART_PAUSE_MAX:
                    pause = 1.0  # it ran a good while: a crash now is not a crash loop
                sys.stderr.write(f"rh server: app {app.name!r} exited with code {code}; starting it again in "
                                 f"{pause:g} s (its log: {self._log_path(app.name)})\n")
            await self._end_process(app)
            await asyncio.sleep(pause)
            pause = min(pause * 2, RESTART_PAUSE_MAX)

    async def _start(self, app: _App) -> asyncio.subprocess.Process:
        import aiohttp

        record = app.record
        env = await asyncio.to_thread(self._environment, record.get("env"))
        variables = self._variables(record.get("secrets") or [])
        app.directory = tempfile.mkdtemp(prefix="rh-app-")  # 0700; short enough for a socket's path
        socket_path = os.path.join(app.directory, "app.sock")
        spec = {"module": record["module"], "attr": record["attr"], "paths": record["paths"], "cwd": record["cwd"],
                "socket": socket_path, "root_path": f"/{app.name}"}
        with open(self._log_path(app.name), "ab") as log:
            app.process = await asyncio.create_subprocess_exec(
                env.python, "-m", "rh_core.server.app_process", json.dumps(spec), stdin=asyncio.subprocess.DEVNULL,
                stdout=log, stderr=log, env={**os.environ, **env.variables, **variables}, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while not os.path.exists(socket_path):
            if app.process.returncode is not None or time.monotonic() > deadline:
                await self._end_process(app)
                raise RhError(f"app {app.name!r} did not start ({'it exited' if app.process.returncode is not None else 'not listening after %g s' % START_TIMEOUT}); "
                              f"its log ({self._log_path(app.name)}) ends with:\n{_tail(self._log_path(app.name))}")
            await asyncio.sleep(0.05)
        app.session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=socket_path),
                                            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None))
        return app.process

    async def _end_process(self, app: _App) -> None:
        if app.session is not None:
            await app.session.close()
            app.session = None
        process = app.process
        if process is not None and process.returncode is None:
            # uvicorn shuts down gracefully on SIGTERM; what is left of its group after 5 s is killed.
            # In a thread: the wait must not hold up the event loop, whose child watcher reaps it.
            await asyncio.to_thread(stop_process, process.pid, grace=5.0, group=True)
            await process.wait()
        if app.directory is not None:
            shutil.rmtree(app.directory, ignore_errors=True)
            app.directory = None

    # --- requests ------------------------------------------------------------------------------

    async def forward(self, name: str, target: str, request: web.BaseRequest, authenticated: bool
                      ) -> web.StreamResponse:
        """Forward an HTTP request for ``/<name>/<target>`` (still %-encoded, query included) to the app,
        streaming both bodies. The cluster's token stays here: a caller who sent it reaches the app
        with :data:`AUTHENTICATED_HEADER` instead (an ``Authorization`` of its own reaches a public
        app as sent)."""
        from aiohttp import ClientError, web
        from yarl import URL

        app = self._apps[name]
        if app.session is None:
            return web.json_response({"error": "AppNotRunning", "message": f"app {name!r} is (re)starting; its log: "
                                      f"{self._log_path(name)}"}, status=503)
        headers = [(key, value) for key, value in request.headers.items()
                   if key.lower() not in _HOP_BY_HOP and key.lower() != AUTHENTICATED_HEADER
                   and not (authenticated and key.lower() == "authorization")]
        if authenticated:
            headers.append((AUTHENTICATED_HEADER, "1"))
        # The Host header is the caller's, so that the app's redirects point back to the door.
        url = URL(f"http://localhost/{target}", encoded=True)
        try:
            answer = await app.session.request(request.method, url, headers=headers, allow_redirects=False,
                                               data=request.content if request.body_exists else None)
        except ClientError as exc:
            return web.json_response({"error": "BadGateway", "message": f"app {name!r} did not answer: {exc}"},
                                     status=502)
        async with answer:  # a failure from here on cuts the response short, as the app's own would
            response = web.StreamResponse(status=answer.status, reason=answer.reason, headers=[
                (key, value) for key, value in answer.headers.items() if key.lower() not in _HOP_BY_HOP])
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        return response


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - LOG_TAIL_BYTES))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
