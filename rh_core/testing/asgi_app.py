"""A small ASGI app without dependencies, for the tests of ``rh.asgi``: it answers every request
with what it saw (path, method, body, its pid, a variable, the authorization header it got);
``/exit`` ends its process, as a crash would, and ``/raise`` raises."""

from __future__ import annotations

import json
import os


async def read_body(receive) -> bytes:
    """The whole body of an HTTP request, as an ASGI app receives it in pieces."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = await read_body(receive)
    if scope["path"].endswith("/exit"):
        os._exit(3)
    if scope["path"].endswith("/raise"):
        raise ValueError(f"the app failed on {body.decode()!r}")
    answer = {"path": scope["path"], "raw_path": (scope.get("raw_path") or b"").decode(), "root_path": scope.get("root_path"), "method": scope["method"],
              "query": scope["query_string"].decode(), "body": body.decode(), "pid": os.getpid(),
              "variable": os.environ.get("ASGI_TEST_KEY"),
              "authorization": dict(scope["headers"]).get(b"authorization", b"").decode()}
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(answer).encode()})
