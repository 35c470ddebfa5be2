"""The cluster server's HTTP door: functions served as endpoints (``f.endpoint()``) and ASGI apps
(``rh.asgi(app).to(cluster)``, forwarded to their own processes under ``/<name>/``), in the server's
own event loop, on loopback.

An endpoint is a call the server makes on an HTTP caller's behalf: ``POST /<name>`` becomes a call
of the served function, through the executor like any other (timeouts, secrets, logs kept by run
key), except that the worker reads the body and writes the response (:mod:`rh_core.worker.http_calls`):
the server reads neither, and never unpickles anything. The door opens when the first endpoint is
served, and again when a server restarts with endpoints served (they are kept in
``<state dir>/endpoints/``), on the port it had before when that port is free.

Callers present the cluster's HTTP token (``Authorization: Bearer TOKEN``), a random value of its
own kept owner-only in ``<state dir>/http-token``: never the cluster's secret, which runs any code,
where the token only calls what was served. Clients fetch it over the authenticated protocol
(``cluster.http_token()``). An endpoint served with ``public=True`` takes callers without it. A
caller without the token learns neither which endpoints exist nor a failed call's message or
traceback beyond its status and error type (the message too when the fault is in its request).

aiohttp's low-level server runs the HTTP protocol: it is built to serve inside an existing asyncio
loop (here uvloop), where uvicorn owns a process and its signals. It is imported only once an
endpoint is served, and installed into the cluster's environment by ``f.endpoint()`` when missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib.util
import json
import os
import re
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import orjson

from rh_core.errors import ProtocolError, RhError
from rh_core.wire.messages import CallRequest

if TYPE_CHECKING:
    from aiohttp import web

    from rh_core.server.app_host import AppHost
    from rh_core.plugin.interfaces import Outcome

#: What ``f.endpoint()`` installs on a cluster whose server cannot import aiohttp.
REQUIREMENT = "aiohttp>=3.9"
TOKEN_FILE = "http-token"
ENDPOINTS_DIR = "endpoints"
MAX_BODY_BYTES = 256 * 2**20
ENDPOINT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: Statuses of the errors the server itself reports for a call (Outcome.error).
SERVER_ERROR_STATUS = {"CallTimeoutError": 504, "RunCancelledError": 503, "WorkerDiedError": 502,
                       "SecretError": 503, "StaleCodeError": 503,
                       "InstanceNotFoundError": 410, "InstanceDiedError": 410}  # a method's instance ended

StartCall = Callable[[CallRequest, list, dict], "asyncio.Future[Outcome]"]


def check_endpoint_name(name: Any) -> str:
    if not isinstance(name, str) or not ENDPOINT_NAME.match(name):
        raise ProtocolError(f"invalid endpoint name {name!r}: use letters, digits, '.', '_' or '-' (at most 64, not "
                            "starting with punctuation); it is the URL's path")
    return name


def http_available() -> bool:
    importlib.invalidate_caches()  # aiohttp may have been installed into this interpreter just now
    return importlib.util.find_spec("aiohttp") is not None


class HttpDoor:
    """The endpoints of one server and the HTTP listener that serves them.

    :param state_dir: the server's state directory (endpoints and the token are kept there).
    :param start_call: the server's way to start a call on a caller's behalf: ``(call request,
        frames, the HTTP request's details) -> future of its Outcome``; it raises :class:`RhError`
        for a call it refuses.
    :param apps: the server's ASGI apps, served under ``/<name>/`` (see :mod:`rh_core.server.app_host`).
    """

    def __init__(self, state_dir: str, start_call: StartCall, apps: AppHost):
        self._apps = apps
        self._directory = os.path.join(state_dir, ENDPOINTS_DIR)
        self._token_path = os.path.join(state_dir, TOKEN_FILE)
        self._start_call = start_call
        self._endpoints: dict[str, dict[str, Any]] = {}  # name -> {"public", "call", "request", "frames"}
        self._token: bytes | None = None
        self._listener: asyncio.base_events.Server | None = None
        self._server: Any = None  # aiohttp.web.Server
        self.port: int | None = None
        self._load()

    # --- endpoints -----------------------------------------------------------------------------

    def _load(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self._directory):
                if not entry.name.endswith(".json"):
                    continue
                with contextlib.suppress(OSError, ValueError, KeyError, ProtocolError):
                    with open(entry.path) as f:
                        record = json.load(f)
                    frames = []
                    if record["call"].get("n_fn"):
                        with open(os.path.join(self._directory, record["name"] + ".fn"), "rb") as f:
                            frames = [f.read()]
                    request = CallRequest.served(record["call"], record["name"], len(frames) + 1)
                    self._endpoints[record["name"]] = {**record, "request": request, "frames": frames}

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": name, "public": endpoint["public"], "function": endpoint["call"]["fn_id"]}
                for name, endpoint in sorted(self._endpoints.items())]

    async def serve(self, name: Any, public: bool, call: Any, frames: list) -> None:
        """Serve (or serve anew) the call ``call`` as endpoint ``name``; opens the door if need be."""
        check_endpoint_name(name)
        if name in self._apps:
            raise ProtocolError(f"an app is served as {name!r}; remove it first (app.remove()) or choose another name")
        request = CallRequest.served(call, name, len(frames) + 1)  # + 1: the body, sent with each call
        function = [bytes(frame) for frame in frames[:request.n_fn]]
        record = {"name": name, "public": bool(public), "call": request.served_wire()}
        await asyncio.to_thread(self._keep, record, function)
        self._endpoints[name] = {**record, "request": request, "frames": function}
        await self.open()

    def _keep(self, record: dict[str, Any], function: list[bytes]) -> None:
        os.makedirs(self._directory, mode=0o700, exist_ok=True)
        name = record["name"]
        if function:
            with open(os.path.join(self._directory, f"{name}.fn"), "wb") as f:
                f.write(function[0])
        with open(os.path.join(self._directory, f"{name}.json.tmp"), "w") as f:
            json.dump(record, f)
        os.replace(os.path.join(self._directory, f"{name}.json.tmp"), os.path.join(self._directory, f"{name}.json"))

    def __contains__(self, name: str) -> bool:
        return name in self._endpoints

    def remove(self, name: str) -> bool:
        if self._endpoints.pop(name, None) is None:
            return False
        for suffix in (".json", ".fn"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self._directory, check_endpoint_name(name) + suffix))
        return True

    # --- the token -----------------------------------------------------------------------------

    def token(self, rotate: bool = False) -> str:
        """The HTTP token, made on first use (and anew with ``rotate``); kept owner-only."""
        if self._token is None and not rotate:
            with contextlib.suppress(FileNotFoundError):
                with open(self._token_path) as f:
                    self._token = f.read().strip().encode() or None
        if self._token is None or rotate:
            token = secrets.token_urlsafe(32)
            temporary = f"{self._token_path}.tmp"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
            os.replace(temporary, self._token_path)
            self._token = token.encode()
        return self._token.decode()

    def _authenticated(self, header: str) -> bool:
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            return False
        self.token()
        return hmac.compare_digest(given.strip().encode(), self._token or b"")

    # --- the listener --------------------------------------------------------------------------

    async def open_if_serving(self) -> None:
        """At server start: open the door when endpoints or apps were served before the restart."""
        if self._endpoints or self._apps.describe():
            if not http_available():
                raise RhError("endpoints or apps are served, but this server's Python cannot import aiohttp; "
                              f"install {REQUIREMENT!r} into it")
            await self.open()

    async def open(self) -> None:
        if self._listener is not None:
            return
        from aiohttp import web

        self.token()
        self._server = web.Server(self._handle, access_log=None)  # no access log: URLs may carry arguments
        loop = asyncio.get_running_loop()
        port_file = os.path.join(self._directory, "port")
        try:
            with open(port_file) as f:
                wanted = int(f.read())
        except (OSError, ValueError):
            wanted = 0
        try:
            self._listener = await loop.create_server(self._server, "127.0.0.1", wanted)
        except OSError:  # taken meanwhile: another port, which clients ask for anyway
            self._listener = await loop.create_server(self._server, "127.0.0.1", 0)
        self.port = self._listener.sockets[0].getsockname()[1]
        os.makedirs(self._directory, mode=0o700, exist_ok=True)
        with open(port_file, "w") as f:
            f.write(str(self.port))

    async def close(self) -> None:
        if self._listener is None:
            return
        self._listener.close()
        await self._server.shutdown(2.0)
        self._listener = None

    # --- requests ------------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        authenticated = self._authenticated(request.headers.get("Authorization", ""))
        # The raw (still %-encoded) target, so that the app's part reaches it exactly as sent.
        path, question, query = request.raw_path.partition("?")
        app, _, rest = path[1:].partition("/")
        if app in self._apps and (authenticated or self._apps.public(app)):
            return await self._apps.forward(app, rest + question + query, request, authenticated)
        name = request.path[1:]
        endpoint = self._endpoints.get(name)
        if endpoint is None or not (endpoint["public"] or authenticated):
            if not authenticated:  # unknown or private: a stranger cannot tell which
                return _json(401, {"error": "Unauthorized", "message": (
                    "send the cluster's HTTP token as 'Authorization: Bearer TOKEN' (cluster.http_token())")},
                    {"WWW-Authenticate": 'Bearer realm="rh"'})
            served = sorted([*self._endpoints, *(f"{a['name']}/" for a in self._apps.describe())])
            return _json(404, {"error": "NotFound", "message": f"no endpoint {name!r} is served on this cluster; "
                                                               f"served: {', '.join(served) or 'none'}"})
        if request.method not in ("GET", "POST"):
            return _json(405, {"error": "MethodNotAllowed", "message": "call an endpoint with POST (or GET)"},
                         {"Allow": "GET, POST"})
        body = bytearray()
        while chunk := await request.content.readany():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return _json(413, {"error": "PayloadTooLarge", "message": f"bodies are limited to {MAX_BODY_BYTES} bytes"})
        key = f"{name}-{os.urandom(8).hex()}"
        call = attrs.evolve(endpoint["request"], key=key)
        # aiohttp reports application/octet-stream for a request that names no type: only a named one counts.
        content_type = request.content_type if "Content-Type" in request.headers else ""
        http = {"method": request.method, "content_type": content_type, "query": dict(request.query)}
        try:
            outcome = await self._start_call(call, [*endpoint["frames"], bytes(body)], http)
        except RhError as exc:  # refused before it ran: a secret it needs is gone, say
            return _error(SERVER_ERROR_STATUS.get(type(exc).__name__, 500), type(exc).__name__, str(exc), None,
                          key, authenticated)
        return _response(outcome, key, authenticated)


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    from aiohttp import web

    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def _error(status: int, error_type: str, message: str, traceback: str | None, key: str,
           authenticated: bool) -> web.Response:
    """An error as its caller may see it: everything with the token, the type (and the message
    when the request was at fault) without."""
    if authenticated:
        body = {"error": error_type, "message": message, "run": key}
        if traceback:
            body["traceback"] = traceback
    elif status < 500:
        body = {"error": error_type, "message": message}
    else:
        body = {"error": error_type}
    return _json(status, body)


def _response(outcome: Outcome, key: str, authenticated: bool) -> web.StreamResponse:
    from aiohttp import web

    if outcome.status != "ok":  # the server's own error (a timeout, a cancel, a dead worker) or stale code
        error_type, message = outcome.error or ("StaleCodeError", "the cluster's copy of the function's code is not "
                                                "the one it was served with: serve it again with f.endpoint()")
        return _error(SERVER_ERROR_STATUS.get(error_type, 500), error_type, message, None, key, authenticated)
    meta = orjson.loads(outcome.frames[0])  # written by rh_core.worker.http_calls in the worker: JSON, never a pickle
    error = meta.get("error")
    if error is not None:
        return _error(meta["status"], error["type"], error["message"], error.get("traceback"), key, authenticated)
    return web.Response(status=meta["status"], body=bytes(outcome.frames[1]), content_type=meta["content_type"])
