"""The floor of an HTTP endpoint: ``add`` of ``workload.py`` as a raw ASGI app, JSON in and JSON out.

``python bench/http_floor.py PORT`` serves it with bare uvicorn on loopback, with uvicorn's default
loop and HTTP parser (uvloop, and httptools when installed), as ``rh.asgi`` apps run;
``bench/endpoint.py`` also runs the same ``app`` with ``rh.asgi``, behind a cluster's HTTP door.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from workload import add  # noqa: E402

from rh_core.testing.asgi_app import read_body  # noqa: E402


async def app(scope, receive, send):
    if scope["type"] != "http":  # no lifespan work
        return
    body = await read_body(receive)
    result = json.dumps(add(**json.loads(body))).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": result})


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False, lifespan="off")
