"""ASGI apps: a user's FastAPI (or plain ASGI) app run under uvicorn in a process the cluster's
server starts, starts again when it exits and when the server restarts, and serves behind its
HTTP token, reached with a real HTTP client directly, through the SSH tunnel and the TLS door."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

import rh_core as rh
from http_helpers import http, ok

pytest.importorskip("aiohttp", reason="the HTTP door runs aiohttp in the cluster's server")
pytest.importorskip("uvicorn", reason="apps run under uvicorn")


def wait_until_serving(url: str, token: str | None, seconds: float = 30.0) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        status, _, body = http(url, token=token)
        if status == 200:
            return json.loads(body)
        assert time.monotonic() < deadline, (status, body)
        time.sleep(0.2)


def test_a_fastapi_app_runs_under_uvicorn_behind_the_token(running_cluster):
    pytest.importorskip("fastapi")
    import asgi_apps

    key = rh.secret(name="asgi-key", values={"ASGI_TEST_KEY": os.urandom(8).hex()})
    app = rh.asgi(asgi_apps.api).to(running_cluster, secrets=[key])
    url = app.http_url()
    token = running_cluster.http_token()
    assert url.endswith("/api/") and repr(app) == f"<AsgiApp api on {running_cluster.name}>"
    hello = ok(url + "hello/world", token=token)
    assert hello["hello"] == "world" and hello["pid"] != os.getpid()
    assert ok(url + "items", {"name": "pen"}, token=token) == {"added": "pen", "secret_seen": True}
    status, _, body = http(url + "items", {"no": "name"}, token=token)
    assert status == 422 and json.loads(body)["detail"] == "an item needs a name"  # the app's own answer
    assert http(url + "hello/world")[0] == 401 and http(url + "hello/world", token="wrong")[0] == 401
    assert ok(url + "openapi.json", token=token)["paths"]  # FastAPI's own routes, under the app's prefix
    status, _, body = http(url + "fail", token=token)  # unhandled: FastAPI's plain 500 becomes an endpoint's
    error = json.loads(body)
    assert status == 500 and error["error"] == "KeyError" and "no such item in the test app" in error["traceback"]
    assert [a["name"] for a in running_cluster.apps()] == ["api"]
    assert "Uvicorn running" in app.logs() or "Application startup complete" in app.logs()
    assert app.remove() and not app.remove()
    assert http(url + "hello/world", token=token)[0] == 404


def test_an_app_starts_again_when_it_exits_and_with_the_server(running_cluster):
    app = rh.asgi("rh_core.testing.asgi_app:app", name="plain").to(running_cluster, public=True)
    url = app.http_url()
    seen = ok(url + "some/path?x=1", b"body text", content_type="text/plain")  # public: no token
    assert (seen["method"], seen["query"], seen["body"]) == ("POST", "x=1", "body text")
    assert seen["path"].endswith("/some/path") and seen["root_path"] == "/plain"
    token = running_cluster.http_token()
    assert ok(url, token=token)["authorization"] == ""  # the cluster's token never reaches the app
    assert ok(url, token="its-own")["authorization"] == "Bearer its-own"  # a public app's own scheme does
    encoded = ok(url + "a%2Fb%20c?q=%26x")
    assert encoded["raw_path"].endswith("/a%2Fb%20c") and encoded["query"] == "q=%26x"  # as the caller sent them
    status, _, body = http(url + "raise", b"private input", content_type="text/plain",
                           headers={"X-Rh-Authenticated": "1"})  # a caller cannot claim the token
    assert status == 500 and json.loads(body) == {"error": "ValueError"}
    status, _, body = http(url + "raise", b"input", content_type="text/plain", token=token)
    error = json.loads(body)
    assert status == 500 and error["message"] == "the app failed on 'input'" and "ValueError" in error["traceback"]
    first = seen["pid"]
    assert http(url + "exit")[0] in (502, 503)  # the process died while answering
    again = wait_until_serving(url, None)
    assert again["pid"] != first
    running_cluster.restart_server()
    after_restart = wait_until_serving(app.http_url(), None)
    assert after_restart["pid"] not in (first, again["pid"])
    assert app.http_url() == url  # the same port after the restart


def process_gone(pid: int) -> bool:
    """Whether ``pid`` ended: gone, or a zombie nobody reaps (this machine's PID 1 reaps none)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_an_app_ends_with_a_killed_server_and_starts_with_the_next(running_cluster):
    from rh_core.testing.fixtures import wait_for

    app = rh.asgi("rh_core.testing.asgi_app:app", name="orphan").to(running_cluster, public=True)
    first = ok(app.http_url())["pid"]
    server = running_cluster.status()["pid"]
    os.kill(server, signal.SIGKILL)  # no shutdown: the app must not outlive it all the same
    wait_for(lambda: process_gone(first), 10, f"app process {first} outlived its killed server")
    again = wait_until_serving(app.http_url(), None)  # this request starts a new server, which starts the app
    assert running_cluster.status()["pid"] != server and again["pid"] != first


def test_an_app_that_cannot_start_is_reported_with_its_log(running_cluster):
    with pytest.raises(rh.RhError, match=r"(?s)app 'broken' did not start .*ModuleNotFoundError: No module named 'no_such_module_here'"):
        rh.asgi("no_such_module_here:app", name="broken").to(running_cluster)
    assert running_cluster.apps() == []
    with pytest.raises(rh.RhError, match="module-level name"):
        rh.asgi(lambda scope, receive, send: None)


@pytest.mark.slow
def test_an_app_through_the_ssh_tunnel(ssh_cluster):
    pytest.importorskip("rh_pip", reason="the cluster gets uvicorn and aiohttp through the rh-pip installer")
    app = rh.asgi("rh_core.testing.asgi_app:app", name="tunnelled").to(ssh_cluster)
    url = app.http_url()
    token = ssh_cluster.http_token()
    assert url.startswith("http://127.0.0.1:")
    assert ok(url + "through", {"a": 1}, token=token)["body"] == '{"a": 1}'
    assert http(url + "through")[0] == 401
    assert app.remove()


def test_an_app_through_the_tls_front_door(exposed_server):
    import http.client as http_client
    import ssl

    state, secret = exposed_server
    cluster = rh.cluster(name="exposed", address=state["tls"]["address"], tls_fingerprint=state["tls"]["fingerprint"],
                         secret=secret)
    try:
        app = rh.asgi("rh_core.testing.asgi_app:app", name="behind-tls").to(cluster)  # installed: no files needed
        token = cluster.http_token()
        assert ok(app.http_url() + "x", token=token)["path"].endswith("/x")  # through the pinned tunnel
        assert http(app.http_url() + "x")[0] == 401
        unverified = ssl.create_default_context()
        unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
        direct = f"https://{state['tls']['address']}/behind-tls/y"  # no proof of the cluster's secret
        with pytest.raises((OSError, http_client.HTTPException)):
            http(direct, token=token, context=unverified)
    finally:
        cluster.close()
