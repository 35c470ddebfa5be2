"""An ASGI app's process on the cluster: ``python -m rh_core.server.app_process SPEC`` (JSON).

Started, and restarted, by the cluster server (:mod:`rh_core.server.app_host`) with the interpreter of the
app's environment and its secrets' variables. It imports the app as the client named it
(``module`` and ``attr``, with the client's code directory on ``sys.path``) and serves it with
uvicorn on a Unix socket in a directory only the cluster's user can enter: the server's HTTP door
is the only way in, and it checks the caller's token.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import sys
import traceback
from typing import Any

from rh_core.support.processes import die_with_parent

#: What the server's door adds to the request of a caller with the cluster's token (after taking out
#: a caller's own header of that name); the app itself never sees it.
AUTHENTICATED_HEADER = "x-rh-authenticated"


def load_app(module: str, attr: str) -> Any:
    return functools.reduce(getattr, attr.split("."), importlib.import_module(module))


def report_errors(app: Any) -> Any:
    """``app`` whose unhandled exceptions answer as an endpoint's do: a 500 with a JSON body that
    names the error's type, and its message and traceback for callers with the cluster's token.

    Starlette (FastAPI) answers an unhandled exception with a plain 500 of its own and then raises
    it again: such a 500 is held back until the app returns, and replaced when it raised instead.
    An app that raises after its response started is cut short, as uvicorn alone would do.
    """
    async def with_errors_reported(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        marker = AUTHENTICATED_HEADER.encode()
        authenticated = (marker, b"1") in scope["headers"]
        scope = {**scope, "headers": [header for header in scope["headers"] if header[0] != marker]}
        held: list[dict] = []
        started = False

        async def send_or_hold(message: dict) -> None:
            nonlocal started
            if held or (message["type"] == "http.response.start" and message["status"] == 500):
                held.append(message)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await app(scope, receive, send_or_hold)
        except Exception as exc:
            if started:
                raise
            logging.getLogger("uvicorn.error").exception("Exception in ASGI application")  # into the app's log
            body = {"error": type(exc).__name__}
            if authenticated:
                body.update(message=str(exc), traceback=traceback.format_exc())
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": json.dumps(body).encode()})
            return
        for message in held:  # a 500 the app meant to send
            await send(message)

    return with_errors_reported


def main(spec_json: str) -> None:
    die_with_parent()
    spec = json.loads(spec_json)
    for path in reversed(spec["paths"]):
        if path not in sys.path:
            sys.path.insert(0, path)
    os.chdir(spec["cwd"])  # relative paths mean what they mean where the client runs
    import uvicorn

    app = report_errors(load_app(spec["module"], spec["attr"]))
    # root_path: the door serves the app under /<name>/, so links the app makes (FastAPI's docs) carry it.
    uvicorn.run(app, uds=spec["socket"], root_path=spec["root_path"], proxy_headers=False, server_header=False,
                log_level="info")


if __name__ == "__main__":
    main(sys.argv[1])
