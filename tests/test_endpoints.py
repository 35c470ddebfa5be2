"""HTTP endpoints: a function served by the cluster server's HTTP door, called with a real HTTP
client (urllib) directly, through an SSH tunnel and through the TLS front door; JSON and raw bytes
in and out, the bearer token (never the cluster's secret), public endpoints, errors as statuses."""

from __future__ import annotations

import http.client as http_client
import json
import os
import ssl
import stat
import time

import pytest

import rh_core as rh
from http_helpers import http, ok
from rh_core.client.connection import read_secret
from rh_core.testing import functions as fns

pytest.importorskip("aiohttp", reason="the HTTP door runs aiohttp in the cluster's server")


def test_a_served_function_takes_json_or_bytes_and_answers_the_same(running_cluster):
    add = rh.function(fns.add).to(running_cluster)
    url = add.endpoint()
    token = running_cluster.http_token()
    assert url == add.http_url() and url.endswith("/add")
    assert ok(url, {"a": 1, "b": 2}, token=token) == 3  # an object: keyword arguments
    assert ok(url, [10, 20], token=token) == 30  # an array: positional ones
    assert ok(url + "?a=2&b=5", token=token) == 7  # GET, query parameters read as JSON
    assert ok(url, {"a": "x", "b": "y"}, token=token) == "xy"

    echo = rh.function(fns.echo).to(running_cluster)
    payload = os.urandom(3 * 2**20)
    status, content_type, data = http(echo.endpoint(), payload, token=token, content_type="application/octet-stream")
    assert (status, content_type, data) == (200, "application/octet-stream", payload)
    assert ok(echo.http_url(), {"data": {"nested": [1, 2]}}, token=token) == {"nested": [1, 2]}
    names = {endpoint["name"]: endpoint["public"] for endpoint in running_cluster.endpoints()}
    assert names == {"add": False, "echo": False}
    assert running_cluster.remove_endpoint("echo") and not running_cluster.remove_endpoint("echo")
    with pytest.raises(rh.RhError, match=r"no endpoint 'echo' is served .*served: add"):
        echo.http_url()


def test_callers_need_the_http_token_which_is_not_the_clusters_secret(running_cluster):
    url = rh.function(fns.add).to(running_cluster).endpoint()
    token = running_cluster.http_token()
    secret = read_secret(running_cluster.state_dir)
    assert token != secret and token not in secret and secret not in token
    token_file = os.path.join(running_cluster.state_dir, "http-token")
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    for wrong in (None, "wrong", secret):
        status, _, body = http(url, [1, 2], token=wrong)
        assert status == 401, body
        assert json.loads(body)["error"] == "Unauthorized" and b"3" not in body
    # Without the token nobody learns which endpoints exist; with it, an unknown one is a 404.
    assert http(url.rsplit("/", 1)[0] + "/nothing", [1], token=None)[0] == 401
    status, _, body = http(url.rsplit("/", 1)[0] + "/nothing", [1], token=token)
    assert status == 404 and "served: add" in json.loads(body)["message"]
    assert http(url, [1, 2], token=token, method="PUT")[0] == 405

    rotated = running_cluster.http_token(rotate=True)
    assert rotated != token
    assert http(url, [1, 2], token=token)[0] == 401
    assert ok(url, [1, 2], token=rotated) == 3


def test_errors_map_to_statuses_with_the_traceback_only_for_token_holders(running_cluster):
    token = running_cluster.http_token()
    fail = rh.function(fns.fail).to(running_cluster)
    url = fail.endpoint(public=True)
    status, _, body = http(url, {"message": "broken here"}, token=token)
    error = json.loads(body)
    assert status == 500 and error["error"] == "ValueError" and error["message"] == "broken here"
    assert "Traceback" in error["traceback"] and "fns" not in error and error["run"].startswith("fail-")
    status, _, body = http(url, {"message": "broken here"})  # public: no token needed, but nothing inside shown
    assert (status, json.loads(body)) == (500, {"error": "ValueError"})

    status, _, body = http(url, {"wrong": 1})
    assert status == 400 and "the arguments do not fit fail(message)" in json.loads(body)["message"]
    status, _, body = http(url, b"{not json", content_type="application/json")
    assert status == 400 and "not JSON" in json.loads(body)["message"]
    status, _, body = http(url, 42)
    assert status == 400 and "JSON int" in json.loads(body)["message"]

    teapot = rh.function(fns.fail_with_status).to(running_cluster)
    status, _, body = http(teapot.endpoint(), [418, "short and stout"], token=token)
    assert status == 418 and json.loads(body)["message"] == "short and stout"
    lock = rh.function(fns.unpicklable_result).to(running_cluster)
    status, _, body = http(lock.endpoint(), [], token=token)
    assert status == 500 and json.loads(body)["error"] == "SerializationError"

    slow = rh.function(fns.sleep_then).to(running_cluster).options(timeout=1)
    started = time.monotonic()
    status, _, body = http(slow.endpoint(), [30], token=token)
    assert status == 504 and json.loads(body)["error"] == "CallTimeoutError"
    assert time.monotonic() - started < 15
    assert ok(slow.http_url(), [0, "after"], token=token) == "after"


def test_a_served_function_gets_its_secrets_and_stays_served_across_restarts(running_cluster):
    secret = rh.secret(name="served", values={"SERVED_KEY": "v-" + os.urandom(4).hex()})
    getenv = rh.function(fns.environment_variable).to(running_cluster, secrets=[secret])
    url = getenv.endpoint(name="getenv")
    token = running_cluster.http_token()
    assert ok(url, ["SERVED_KEY"], token=token) == secret.values["SERVED_KEY"]
    port = running_cluster.status()["http_port"]
    running_cluster.restart_server()
    assert running_cluster.status()["http_port"] == port  # the same port: curl commands keep working
    assert running_cluster.http_token() == token
    assert ok(url, ["SERVED_KEY"], token=token) == secret.values["SERVED_KEY"]


@pytest.mark.slow
def test_endpoints_through_the_ssh_tunnel(ssh_cluster):
    pytest.importorskip("rh_pip", reason="the cluster's server gets aiohttp through the rh-pip installer")
    f = rh.function(fns.add).to(ssh_cluster)
    url = f.endpoint()  # installs aiohttp into the cluster's environment when it lacks it
    assert url.startswith("http://127.0.0.1:")  # the tunnel's end here; the door listens on the head's loopback
    token = ssh_cluster.http_token()
    assert ok(url, {"a": 20, "b": 22}, token=token) == 42
    assert http(url, [1, 2])[0] == 401


def test_endpoints_through_the_tls_front_door(exposed_server):
    state, secret = exposed_server
    cluster = rh.cluster(name="exposed", address=state["tls"]["address"], tls_fingerprint=state["tls"]["fingerprint"],
                         secret=secret)
    try:
        offset = 100
        f = rh.function(lambda x: x + offset, name="shift").to(cluster)  # by value: this cluster takes no files
        url = f.endpoint()
        token = cluster.http_token()
        assert url.startswith("http://127.0.0.1:")  # the pinned TLS tunnel, which checks the certificate
        assert ok(url, [1], token=token) == 101
        assert f(2) == 102  # calls share the door: ZeroMQ and HTTP told apart by their first byte
        direct = f"https://{state['tls']['address']}/shift"  # curl -k without the tunnel: no proof of the secret
        unverified = ssl.create_default_context()
        unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
        with pytest.raises((OSError, http_client.HTTPException)):  # the door reads a proof, never HTTP, first
            http(direct, [5], token=token, context=unverified)
    finally:
        cluster.close()


def test_a_remote_instances_method_is_served_with_its_state_until_the_instance_ends(running_cluster):
    counter = rh.module(fns.Counter).to(running_cluster, name="served-counter")(10)
    token = running_cluster.http_token()
    url = counter.incr.endpoint("counter-incr")
    assert url.endswith("/counter-incr")
    assert ok(url, {"by": 5}, token=token) == 15
    assert ok(url, [2], token=token) == 17  # the same instance: its state lives between calls
    assert counter.count == 17  # and the Python handle sees what HTTP callers did
    counter.release()
    status, _, body = http(url, {"by": 1}, token=token)
    assert status == 410, body  # gone, with the reason
    assert json.loads(body)["error"] in ("InstanceNotFoundError", "InstanceDiedError")
