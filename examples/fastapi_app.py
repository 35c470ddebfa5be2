"""A FastAPI app run under uvicorn on the embedded local cluster, rh.here, and called over HTTP.

Run it with `python examples/fastapi_app.py` (FastAPI installed): the app below runs in a process
of its own that the cluster's server starts (and starts again if it exits), at `/greeter/` on the
server's HTTP door, behind the cluster's token. The server keeps it running afterwards, until
`rh.asgi(app, name="greeter").to(rh.here).remove()` or `rh server stop`.
"""

import json
import shlex
import urllib.request

from fastapi import FastAPI

import rh_core as rh

app = FastAPI()


@app.get("/greet/{name}")
def greet(name: str, excited: bool = False) -> dict:
    return {"greeting": f"hello {name}" + ("!" if excited else "")}


def main() -> None:
    served = rh.asgi(app, name="greeter").to(rh.here)  # imported there from this file, as module fastapi_app
    url = served.http_url() + "greet/ada?excited=true"
    token = rh.here.http_token()
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request) as response:
        print("urllib:", json.load(response))
    print("curl:", shlex.join(["curl", "-sS", "-H", f"Authorization: Bearer {token}", url]))
    print("docs:", served.http_url() + "docs")


if __name__ == "__main__":
    main()
