"""The server serves only its cluster's user: every request must carry the secret that lives
owner-only in the server's state directory. Another local user reaches the TCP port (any local
user can reach 127.0.0.1) but cannot call, list runs or read results, and nothing of their
request is unpickled."""

from __future__ import annotations

import encodings.idna  # noqa: F401  imported here: the forked other user cannot read this interpreter's packages
import json
import os
import pickle
import stat
import time

import pytest
import zmq
import zmq.utils.monitor  # noqa: F401

import rh_core as rh
from rh_core.testing import functions as fns


class WouldRunCode:
    """Unpickling this creates the marker file: proof that a payload was (or was not) unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def forged_requests(port: int, marker: str, finished_key: str) -> dict:
    """What another user can try against the server's TCP port without the secret: a ZeroMQ
    client guessing it. Returns the replies (None: no reply) and the handshake events seen."""
    from zmq.utils.monitor import recv_monitor_message

    context = zmq.Context()  # a new one: the parent's does not survive fork
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SNDTIMEO, 1000)  # once its handshake is refused there is nowhere to send to
    socket.plain_username, socket.plain_password = b"rh", b"guess"
    monitor = socket.get_monitor_socket()
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
        try:
            socket.send_multipart([json.dumps(envelope).encode(), *frames])
        except zmq.Again:
            replies[name] = None
            continue
        replies[name] = json.loads(socket.recv_multipart()[0]) if socket.poll(2000) else None
    events = set()  # the client retries its handshake every 0.1 s: one second of events is plenty
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline and monitor.poll(100):
        events.add(recv_monitor_message(monitor)["event"])
    socket.disable_monitor()
    monitor.close(linger=0)
    context.destroy(linger=0)
    return {"replies": replies, "auth_failed": zmq.EVENT_HANDSHAKE_FAILED_AUTH in events}


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
                "zeromq": forged_requests(port, marker, finished.key)}

    result = other_user.fork(attack)
    assert "crashed" not in result, result
    assert result["read_secret"] is False
    assert result["reached_link"] is False  # the link socket lives in the owner-only state directory
    # Through ZeroMQ the connection itself is refused (its handshake must carry the secret), so
    # nothing of these requests reaches the server: no reply at all.
    assert result["zeromq"]["replies"] == dict.fromkeys(["call", "runs", "get", "logs", "shutdown"]), result
    assert result["zeromq"]["auth_failed"], result
    assert not os.path.exists(marker)
    # The server is unharmed and still serves its own user, result included.
    assert rh.get(finished) == 3 and rh.function(fns.add).to(running_cluster)(2, 2) == 4


def peak_rss(pid: int) -> int:
    """The most memory ``pid`` has held since it started (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def zmtp_flood(port: int, mechanism: bytes, frame_bytes: int, frames: int) -> int:
    """A raw ZeroMQ peer (ZMTP 3.0, written by hand as an attacker would): greet with ``mechanism``,
    then announce ``frames`` frames of ``frame_bytes`` each and send their bytes, as fast as the
    server takes them. Returns how many bytes it managed to send before the server hung up."""
    import socket
    import struct

    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sent = 0
    try:
        sock.sendall(b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + mechanism.ljust(20, b"\0") + b"\0" * 32)
        sock.recv(64)  # the server's greeting
        if mechanism == b"NULL":  # READY, then the messages
            ready = b"\x05READY" + b"\x0bSocket-Type" + struct.pack("!I", 6) + b"DEALER"
            sock.sendall(b"\x04" + bytes([len(ready)]) + ready)
            envelope = json.dumps({"id": "x", "op": "ping", "auth": "guess"}).encode()
            sock.sendall(b"\x01" + bytes([len(envelope)]) + envelope)  # more frames follow
            header = lambda last: (b"\x02" if last else b"\x03") + struct.pack("!Q", frame_bytes)  # noqa: E731
        else:  # PLAIN: a HELLO command announced as huge
            header = lambda last: b"\x06" + struct.pack("!Q", frame_bytes)  # noqa: E731
        chunk = b"\0" * 2**20
        for index in range(frames):
            sock.sendall(header(index == frames - 1))
            for _ in range(frame_bytes // len(chunk)):
                sock.sendall(chunk)
                sent += len(chunk)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):  # whatever the server answers, until it hangs up
            pass
    except OSError:  # the server hung up
        pass
    finally:
        sock.close()
    return sent


@pytest.mark.parametrize("attack", ["zeromq-client", "zeromq-client-guessing", "raw-null", "raw-plain"])
def test_large_messages_from_another_user_are_refused_before_they_are_read(running_cluster, other_user, attack):
    state = running_cluster.read_state()
    pid, port = state["pid"], state["port"]
    frame_bytes, frames = 128 * 2**20, 4
    before = peak_rss(pid)

    def flood():
        if attack.startswith("raw"):
            return {"sent": zmtp_flood(port, b"NULL" if attack == "raw-null" else b"PLAIN", frame_bytes, frames)}
        context = zmq.Context()
        socket = context.socket(zmq.DEALER)
        if attack == "zeromq-client-guessing":
            socket.plain_username, socket.plain_password = b"rh", b"guess"
        # A refused handshake leaves the socket no peer, and a send with no peer waits for one:
        # give up after a while (the server has refused what it could read by then).
        socket.setsockopt(zmq.SNDTIMEO, 10_000)
        socket.connect(f"tcp://127.0.0.1:{port}")
        envelope = json.dumps({"id": "x", "op": "ping", "auth": "guess"}).encode()
        payload = bytes(frame_bytes)
        try:
            for _ in range(frames):
                socket.send_multipart([envelope, payload], copy=False)
        except zmq.Again:
            pass
        time.sleep(3)  # as long as the server wants to read
        context.destroy(linger=0)
        return {"sent": None}

    result = other_user.fork(flood)
    assert "crashed" not in result, result
    time.sleep(0.5)
    grew = peak_rss(pid) - before
    assert grew < 32 * 2**20, f"the server's memory grew by {grew / 2**20:.0f} MiB reading another user's messages"
    if result["sent"] is not None:  # the raw peer was cut off long before it had sent its 512 MiB
        assert result["sent"] < 64 * 2**20, result
    assert rh.function(fns.add).to(running_cluster)(2, 2) == 4


@pytest.mark.parametrize("way_in", ["zeromq", "link"])
def test_a_client_with_a_wrong_secret_gets_an_authentication_error(running_cluster, way_in):
    from rh_core.client.connection import LINK_SCHEME, Connection

    state = running_cluster.read_state()
    address = state["local_endpoint"] if way_in == "zeromq" else LINK_SCHEME + state["link"]
    wrong = Connection(address, lambda: None, secret="not-the-secret")
    # ZeroMQ refuses the connection itself; the link refuses each request.
    refused = "refused this client's secret when it connected" if way_in == "zeromq" else "does not carry this cluster's secret"
    with pytest.raises(rh.AuthenticationError, match=refused):
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
