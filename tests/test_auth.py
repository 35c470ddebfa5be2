"""The server serves only its cluster's user: every request must carry the secret that lives
owner-only in the server's state directory. Another local user reaches the TCP port (any local
user can reach 127.0.0.1) but cannot call, list runs or read results, and nothing of their
request is unpickled."""

from __future__ import annotations

import json
import os
import pickle
import stat

import pytest
import zmq  # imported here: the forked other user cannot read this interpreter's packages

import rh_core as rh
from rh_core.testing import functions as fns


class WouldRunCode:
    """Unpickling this creates the marker file: proof that a payload was (or was not) unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def forged_requests(port: int, marker: str, finished_key: str) -> dict:
    """What another user can try against the server's TCP port without the secret."""
    context = zmq.Context()  # a new one: the parent's does not survive fork
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(f"tcp://127.0.0.1:{port}")
    payload = pickle.dumps(WouldRunCode(marker))
    attempts = {
        "call": ({"id": "1", "op": "call", "mode": "call", "key": "forged", "fn_id": "x", "n_fn": 1, "refs": [],
                  "options": {}, "auth": "guess"}, [payload, payload]),
        "runs": ({"id": "2", "op": "runs"}, []),
        "get": ({"id": "3", "op": "get", "keys": [finished_key]}, []),
        "logs": ({"id": "4", "op": "logs", "key": finished_key}, []),
        "shutdown": ({"id": "5", "op": "shutdown"}, []),
    }
    replies = {}
    for name, (envelope, frames) in attempts.items():
        socket.send_multipart([json.dumps(envelope).encode(), *frames])
        if not socket.poll(5000):
            replies[name] = None
            continue
        replies[name] = json.loads(socket.recv_multipart()[0])
    context.destroy(linger=0)
    return replies


def test_another_local_user_cannot_call_list_or_read(running_cluster, other_user):
    state_dir = running_cluster.state_dir
    secret_file = os.path.join(state_dir, "secret")
    assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700
    finished = rh.function(fns.add).to(running_cluster).remote(1, 2)
    assert rh.get(finished) == 3
    marker = str(other_user.home / "unpickled")  # the other user could create it, were the payload ever unpickled
    state = running_cluster.read_state()
    port, link = state["port"], state["link"]

    def attack():
        import socket

        try:
            open(secret_file).read()
            read_secret = True
        except PermissionError:
            read_secret = False
        try:
            socket.socket(socket.AF_UNIX).connect(link)
            reached_link = True
        except PermissionError:
            reached_link = False
        return {"read_secret": read_secret, "reached_link": reached_link,
                "replies": forged_requests(port, marker, finished.key)}

    result = other_user.fork(attack)
    assert "crashed" not in result, result
    assert result["read_secret"] is False
    assert result["reached_link"] is False  # the link socket lives in the owner-only state directory
    for name, reply in result["replies"].items():
        assert reply is not None, f"{name}: no reply"
        assert reply["kind"] == "fail" and reply["type"] == "AuthenticationError", (name, reply)
        assert "does not carry this cluster's secret" in reply["message"]
    assert not os.path.exists(marker)
    # The server is unharmed and still serves its own user, result included.
    assert rh.get(finished) == 3 and rh.function(fns.add).to(running_cluster)(2, 2) == 4


@pytest.mark.parametrize("way_in", ["zeromq", "link"])
def test_a_client_with_a_wrong_secret_gets_an_authentication_error(running_cluster, way_in):
    from rh_core.client import LINK_SCHEME, Connection

    state = running_cluster.read_state()
    address = state["local_endpoint"] if way_in == "zeromq" else LINK_SCHEME + state["link"]
    wrong = Connection(address, lambda: None, secret="not-the-secret")
    with pytest.raises(rh.AuthenticationError, match="does not carry this cluster's secret"):
        wrong.request("ping", {}, timeout=10)
    wrong.close()


def test_the_secret_survives_a_restart_and_never_appears_in_state_or_status(running_cluster):
    secret_file = os.path.join(running_cluster.state_dir, "secret")
    with open(secret_file) as f:
        secret = f.read().strip()
    running_cluster.restart_server()
    with open(secret_file) as f:
        assert f.read().strip() == secret
    assert rh.function(fns.add).to(running_cluster)(1, 1) == 2
    with open(running_cluster.state_file) as f:
        assert secret not in f.read()
    assert secret not in json.dumps(running_cluster.status())
