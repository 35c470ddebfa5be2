"""A server exposed beyond loopback only through TLS: calls through a pinned tunnel work, a wrong
fingerprint or a missing secret is refused, and listening elsewhere without TLS is refused."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

import rh_core as rh
from rh_core.testing import functions as fns
from tls_helpers import exposed
from test_auth import peak_rss


def test_calls_through_the_tls_front_door_with_the_pinned_certificate(exposed_server):
    state, secret = exposed_server
    assert state["tls"]["fingerprint"].startswith("sha256:")
    cluster = rh.cluster(name="exposed", address=state["tls"]["address"], tls_fingerprint=state["tls"]["fingerprint"],
                         secret=secret)
    try:
        f = rh.function(fns.add).to(cluster)
        assert f(1, 2) == 3
        assert f.map([1, 2, 3], [4, 5, 6]) == [5, 7, 9]
        payload = os.urandom(4 * 2**20 + 3)  # sent in five pieces (rh_core.wire.frames.split_frames)
        assert rh.function(fns.echo).to(cluster)(payload) == payload
        assert "secret" not in json.dumps(cluster.config())
        with pytest.raises(rh.RhError, match="has no shell"):
            cluster.run(["true"])
    finally:
        cluster.close()


def test_a_saved_tls_cluster_loads_by_name_and_takes_its_secret_again(exposed_server, tmp_path, monkeypatch):
    monkeypatch.setenv("RH_HOME", str(tmp_path / "home"))
    state, secret = exposed_server
    cluster = rh.cluster(name="exposed", address=state["tls"]["address"], tls_fingerprint=state["tls"]["fingerprint"],
                         secret=secret)
    cluster.save()
    cluster.close()
    saved_files = [p.read_text() for p in (tmp_path / "home").rglob("*") if p.is_file()]
    assert saved_files and not any(secret in text for text in saved_files)  # the secret is never written

    loaded = rh.cluster("exposed", secret=secret)
    try:
        assert loaded.address == state["tls"]["address"]
        assert rh.function(fns.add).to(loaded)(2, 3) == 5
    finally:
        loaded.close()
    without = rh.cluster("exposed", dryrun=True)
    with pytest.raises(rh.AuthenticationError, match=r"rh.cluster\('~/exposed', secret=...\)"):
        without.connection()


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


# -------------------------------------------------------------------------------------------------
# The front door under attack: idle connections, bulk before the secret, replays


def tls_to(address: str) -> ssl.SSLSocket:
    """A TLS connection to the front door (the certificate is not checked: the attacker's view)."""
    host, _, port = address.rpartition(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context.wrap_socket(socket.create_connection((host, int(port)), timeout=10), server_hostname=host)


def read_all(sock: socket.socket, size: int) -> bytes:
    data = b""
    with contextlib.suppress(OSError):
        while len(data) < size and (chunk := sock.recv(size - len(data))):
            data += chunk
    return data


def server_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_idle_connections_cannot_exhaust_the_tls_port(tmp_path):
    with exposed(tmp_path, descriptors=256) as (state, secret):
        address = state["tls"]["address"]
        host, _, port = address.rpartition(":")
        idle = []  # more connections than the server may hold descriptors, none ever saying a word
        try:
            for _ in range(400):
                idle.append(socket.create_connection((host, int(port)), timeout=10))
            idle += [tls_to(address) for _ in range(20)]  # and some that finish TLS, then say nothing
            time.sleep(0.5)
            assert server_descriptors(state["pid"]) < 150
            cluster = rh.cluster(name="exposed", address=address, tls_fingerprint=state["tls"]["fingerprint"],
                                 secret=secret)
            try:
                started = time.monotonic()
                assert rh.function(fns.add).to(cluster)(1, 2) == 3
                assert time.monotonic() - started < 15
            finally:
                cluster.close()
        finally:
            for connection in idle:
                connection.close()


def test_nothing_is_read_in_bulk_before_the_secret_is_proven(exposed_server):
    state, _ = exposed_server
    before = peak_rss(state["pid"])
    with tls_to(state["tls"]["address"]) as door:
        greeting = read_all(door, 40)
        assert greeting.startswith(b"rh-tls-1") and len(greeting) == 40
        sent = 0
        with contextlib.suppress(OSError):
            for _ in range(256):
                door.sendall(b"\0" * 2**20)
                sent += 2**20
        assert read_all(door, 1) == b""  # not admitted: closed
    assert sent < 32 * 2**20, f"the front door took {sent >> 20} MiB from a peer that never proved the secret"
    assert peak_rss(state["pid"]) - before < 16 * 2**20


def test_an_answer_captured_from_one_connection_is_refused_on_the_next(exposed_server):
    from rh_core.wire.handshake import ADMITTED, proof_of_secret

    state, secret = exposed_server
    with tls_to(state["tls"]["address"]) as first:
        challenge = read_all(first, 40)[8:]
        answer = proof_of_secret(secret.encode(), challenge)
        first.sendall(answer)
        assert read_all(first, 1) == ADMITTED
        first.sendall(b"\xff")  # the start of a ZeroMQ greeting: the door routes by the first byte
        assert read_all(first, 1) == b"\xff"  # and then ZeroMQ's greeting comes through
    with tls_to(state["tls"]["address"]) as second:
        assert read_all(second, 40)[8:] != challenge  # a fresh challenge every time
        second.sendall(answer)
        assert read_all(second, 1) == b""  # the old answer does not open the door


def test_a_recorded_connection_replayed_later_runs_nothing(exposed_server, tmp_path):
    """Someone who recorded the encrypted bytes of a call (on the network) and sends them again on a
    new connection gets nothing run: every TLS connection has fresh keys."""
    state, secret = exposed_server
    recorder = Recorder(state["tls"]["address"])
    marker = tmp_path / "calls"
    cluster = rh.cluster(name="recorded", address=f"127.0.0.1:{recorder.port}",
                         tls_fingerprint=state["tls"]["fingerprint"], secret=secret)
    try:
        rh.function(lambda path: open(path, "a").write("called\n")).to(cluster)(str(marker))
    finally:
        cluster.close()
        recorder.close()
    assert marker.read_text() == "called\n" and recorder.recorded
    host, _, port = state["tls"]["address"].rpartition(":")
    for recorded in recorder.recorded:
        with socket.create_connection((host, int(port)), timeout=10) as replay:
            with contextlib.suppress(OSError):
                replay.sendall(recorded)
            answer = read_all(replay, 2**20)
        assert b"\xff" not in answer[:1]
    time.sleep(1)
    assert marker.read_text() == "called\n"  # ran once, by the real client


class Recorder:
    """A TCP relay in front of ``address`` that records what each client connection sends."""

    def __init__(self, address: str):
        host, _, port = address.rpartition(":")
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.recorded: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                server = socket.create_connection(self._target)
                sent = bytearray()
                self.recorded.append(sent)
                threading.Thread(target=self._copy, args=(client, server, sent), daemon=True).start()
                threading.Thread(target=self._copy, args=(server, client, None), daemon=True).start()

    @staticmethod
    def _copy(source: socket.socket, target: socket.socket, record: bytearray | None) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                if record is not None:
                    record += chunk
                target.sendall(chunk)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._listener.close()
