"""The server's request decoder under random input: every message gets an answer (or, when it is
not even a request, nothing), no message stops the server, and it serves real calls afterwards.
Seeded, so a failure replays."""

from __future__ import annotations

import json
import os
import random

import pytest

import rh_core as rh
from rh_core.client.connection import read_secret
from rh_core.testing import functions as fns

OPS = ["ping", "call", "get", "status", "release", "runs", "logs", "cancel", "install", "shutdown", "nope", ""]
MODES = ["call", "remote", "enqueue", "map", "other", None]


class LinkSocket:
    """The server's link socket with the three calls these tests make of a ZeroMQ socket."""

    def __init__(self, path: str):
        import socket

        from rh_core.wire.link import ClientLink

        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        self.link = ClientLink(sock)

    def send_multipart(self, frames: list) -> None:
        self.link.send_envelope(frames[0], frames[1:])

    def poll(self, timeout_ms: int) -> bool:
        return self.link.ready(timeout_ms / 1000)

    def recv_multipart(self) -> list:
        envelope, frames = self.link.receive_envelope()
        return [envelope, *frames]

    def close(self, linger: int = 0) -> None:
        self.link.close()


@pytest.fixture(params=["zeromq", "link"])
def raw_socket(request, running_cluster):
    """A raw connection to the server: through ZeroMQ (as a client on another machine) or over its
    link socket (as one on its machine)."""
    if request.param == "link":
        socket = LinkSocket(running_cluster.read_state()["link"])
    else:
        import zmq

        from rh_core.wire.frames import authenticate_zmq

        socket = zmq.Context.instance().socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        authenticate_zmq(socket, read_secret(running_cluster.state_dir))  # the connection proves it; requests may not
        socket.connect(f"tcp://127.0.0.1:{running_cluster.read_state()['port']}")
    yield socket
    socket.close(linger=0)


def random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(8 if depth < 2 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.randint(-5, 10**6)
    if kind == 2:
        return "".join(rng.choice("ab/-_.~@^\0é") for _ in range(rng.randrange(12)))
    if kind == 3:
        return rng.random() * 100
    if kind == 4:
        return rng.choice([True, False])
    if kind in (5, 6):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["key", "keys", "mode", "n_fn", "refs", "env", "steps", "chunks", "timeout", "follow"]):
            random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def random_envelope(rng: random.Random, secret: str) -> dict:
    envelope = {"id": f"fuzz-{rng.randrange(10**9)}", "op": rng.choice(OPS), "auth": secret}
    fields = {"mode": rng.choice(MODES), "key": f"fuzz-{rng.randrange(100)}", "fn_id": "x",
              "n_fn": rng.choice([0, 1, 2, -1, "1"]), "refs": rng.choice([[], ["missing"], "x", None]),
              "options": rng.choice([{}, {"timeout": 0.5}, [], None]), "keys": rng.choice([["a"], [], "a", None]),
              "chunks": rng.choice([[1], [0, 2], [], None, "x"]), "steps": rng.choice([[], [{}], None]),
              "timeout": rng.choice([0.1, -1, None, "soon"]), "env": rng.choice([None, "fuzzenv", "../x", 3])}
    for name in rng.sample(sorted(fields), rng.randrange(len(fields) + 1)):
        envelope[name] = fields[name] if rng.random() < 0.8 else random_value(rng)
    if envelope["op"] == "shutdown":
        envelope["op"] = "nope"  # a real shutdown would end the test early; it is authenticated
    if envelope.get("op") == "install":
        envelope["steps"] = []  # a well-formed install of random packages would reach pip
    return envelope


def answer(socket, timeout_ms: int = 10_000):
    """The final reply to the last request (log replies skipped), or None."""
    while socket.poll(timeout_ms):
        reply = json.loads(socket.recv_multipart()[0])
        if reply.get("kind") != "log":
            return reply
    return None


def test_random_bytes_never_stop_the_server(running_cluster, raw_socket):
    rng = random.Random(1)
    for _ in range(2000):
        frames = [os.urandom(rng.randrange(0, 200)) for _ in range(rng.randrange(1, 5))]
        if rng.random() < 0.3:
            frames[0] = json.dumps(random_value(rng)).encode()
        raw_socket.send_multipart(frames)
        reply = answer(raw_socket, 5000)
        assert reply is not None, f"no answer to {frames!r}"
        assert reply["kind"] == "fail" and reply["type"] in ("ProtocolError", "AuthenticationError"), reply
    assert rh.function(fns.add).to(running_cluster)(2, 3) == 5


def test_authenticated_random_requests_are_answered_and_the_server_keeps_serving(running_cluster, raw_socket):
    rng = random.Random(2)
    secret = read_secret(running_cluster.state_dir)
    kinds = set()
    for _ in range(400):
        envelope = random_envelope(rng, secret)
        frames = [os.urandom(rng.randrange(0, 64)) for _ in range(rng.randrange(0, 3))]
        raw_socket.send_multipart([json.dumps(envelope).encode(), *frames])
        reply = answer(raw_socket)
        assert reply is not None, f"no answer to {envelope} within 10 s"
        assert reply["id"] == envelope["id"] and reply["kind"] in ("fail", "info", "result", "ack"), reply
        kinds.add(reply["kind"])
        if reply["kind"] == "fail":
            assert reply["message"]  # every failure says something
    assert {"fail", "info"} <= kinds  # the corpus reached both the handlers and their error paths
    assert running_cluster.status()["pid"] == running_cluster.read_state()["pid"]
    assert rh.function(fns.add).to(running_cluster)(2, 3) == 5
