"""A server exposed beyond loopback only through TLS: calls through a pinned tunnel work, a wrong
fingerprint or a missing secret is refused, and listening elsewhere without TLS is refused."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

import rh_core as rh
from rh_core.testing import functions as fns


def test_calls_through_the_tls_front_door_with_the_pinned_certificate(exposed_server):
    state, secret = exposed_server
    assert state["tls"]["fingerprint"].startswith("sha256:")
    cluster = rh.cluster(name="exposed", address=state["tls"]["address"], tls_fingerprint=state["tls"]["fingerprint"],
                         secret=secret)
    try:
        f = rh.function(fns.add).to(cluster)
        assert f(1, 2) == 3
        assert f.map([1, 2, 3], [4, 5, 6]) == [5, 7, 9]
        payload = os.urandom(4 * 2**20)
        assert rh.function(fns.echo).to(cluster)(payload) == payload
        assert "secret" not in json.dumps(cluster.config())
        with pytest.raises(rh.RhError, match="has no shell"):
            cluster.run(["true"])
    finally:
        cluster.close()


def test_a_wrong_fingerprint_is_refused_before_any_request(exposed_server):
    state, secret = exposed_server
    cluster = rh.cluster(name="impostor", address=state["tls"]["address"], tls_fingerprint="sha256:" + "0" * 64,
                         secret=secret)
    with pytest.raises(rh.RhError, match=r"presented a certificate with fingerprint sha256:\w+, not the pinned"):
        cluster.connection()


def test_the_tls_port_needs_the_secret_too(exposed_server):
    state, _ = exposed_server
    cluster = rh.cluster(name="nosecret", address=state["tls"]["address"], tls_fingerprint=state["tls"]["fingerprint"],
                         secret="wrong")
    try:
        with pytest.raises(rh.AuthenticationError):
            cluster.connection()
    finally:
        cluster.close()


def test_plain_tcp_to_the_tls_port_gets_nothing(exposed_server):
    state, _ = exposed_server
    host, _, port = state["tls"]["address"].rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(b"\xff" + b"\0" * 8 + b"\x7f")  # the start of a ZeroMQ greeting, not a TLS hello
        raw.settimeout(5)
        try:
            answer = raw.recv(64)
        except (ConnectionResetError, TimeoutError):
            answer = b""
    assert b"\x7f" not in answer[:11]  # no ZeroMQ greeting came back


def test_listening_beyond_loopback_without_tls_is_refused(tmp_path):
    done = subprocess.run([sys.executable, "-m", "rh_core.server", "--state-dir", str(tmp_path / "s"), "--host", "0.0.0.0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "refusing to listen on 0.0.0.0" in done.stderr and "--expose" in done.stderr
