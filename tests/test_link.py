"""Clients on the server's machine reach it over its link socket (``DIR/link.sock``, see
rh_core.wire.link), everyone else through ZeroMQ. The link serves the same requests, and no client on it
can stop the server: not one that writes garbage, nor one that stops reading its replies."""

from __future__ import annotations

import os
import select
import socket
import threading
import time

import orjson
import pytest

import rh_core as rh
from rh_core.wire import serialize
from rh_core.client.connection import LINK_SCHEME, Connection, read_secret
from rh_core.wire.link import ENVELOPE_MAX_BYTES, FRAME_LENGTH, ClientLink
from rh_core.testing import functions as fns


def raw_link(cluster) -> ClientLink:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(cluster.read_state()["link"])
    return ClientLink(sock)


def closed_by_server(link: ClientLink, within: float = 10.0) -> bool:
    """Whether the server closed ``link`` (reads end) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if link.ready(0.1):
            try:
                link.receive_envelope()
            except (EOFError, OSError):
                return True
    return False


def hung_up(link: ClientLink) -> bool:
    """Whether the server has closed its end of ``link``, without reading what it sent."""
    poller = select.poll()
    poller.register(link.fileno(), 0)  # hang-ups are always reported
    return any(events & select.POLLHUP for _, events in poller.poll(0))


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def test_local_clients_use_the_link_and_both_ways_in_reach_one_server(running_cluster):
    state = running_cluster.read_state()
    assert state["link"] == os.path.join(running_cluster.state_dir, "link.sock")
    assert running_cluster.connection().address == LINK_SCHEME + state["link"]
    secret = read_secret(running_cluster.state_dir)
    through_zeromq = Connection(state["local_endpoint"], lambda: None, secret=secret)
    pids = {Connection(address, lambda: None, secret=secret).request("ping", {}, timeout=10).header["pid"]
            for address in (state["local_endpoint"], LINK_SCHEME + state["link"])}
    assert pids == {state["pid"]}
    through_zeromq.close()
    add = rh.function(fns.add).to(running_cluster)
    assert add(1, 2) == 3 and rh.get(add.remote(2, 3)) == 5
    assert add.map([1, 2, 3], [4, 5, 6]) == [5, 7, 9]


def test_the_link_socket_is_gone_after_the_server_stops(own_cluster):
    own_cluster.connection()
    path = own_cluster.read_state()["link"]
    assert os.path.exists(path)
    own_cluster.stop_server()
    assert not os.path.exists(path)


def test_a_frame_no_message_has_closes_that_connection_and_the_server_serves_on(running_cluster):
    for garbage in (FRAME_LENGTH.pack(-2) + b"x" * 8,  # a negative length
                    FRAME_LENGTH.pack(ENVELOPE_MAX_BYTES + 1)):  # an envelope larger than any request's
        garbled = raw_link(running_cluster)
        garbled._sock.sendall(garbage)
        assert closed_by_server(garbled)
    assert rh.function(fns.add).to(running_cluster)(2, 2) == 4


@pytest.mark.parametrize("envelope", [b"not json", b"[1, 2]", b'{"op": "ping"}', b'"a string"'])
def test_a_malformed_request_gets_a_protocol_error_on_a_connection_that_stays_open(running_cluster, envelope):
    link = raw_link(running_cluster)
    link.send_envelope(envelope, [b"a frame", b"another"])
    assert link.ready(10)
    reply = orjson.loads(link.receive_envelope()[0])
    assert (reply["kind"], reply["type"]) == ("fail", "ProtocolError")
    assert "malformed request envelope" in reply["message"]
    secret = read_secret(running_cluster.state_dir)
    link.send_envelope(orjson.dumps({"id": 7, "op": "ping", "auth": secret}), [])  # the same connection still serves
    assert link.ready(10)
    assert orjson.loads(link.receive_envelope()[0])["kind"] == "info"


def test_nothing_of_an_unauthenticated_request_is_kept_however_large(running_cluster):
    pid = running_cluster.status()["pid"]
    before = rss_mib(pid)
    attacker = raw_link(running_cluster)
    chunk = os.urandom(4 * 2**20)
    for _ in range(4):  # each 256 MiB, behind an envelope with a wrong secret
        attacker.send_envelope(orjson.dumps({"id": 1, "op": "call", "auth": "guess"}), [chunk * 64])
        assert attacker.ready(30)
        reply = orjson.loads(attacker.receive_envelope()[0])
        assert reply["type"] == "AuthenticationError"
    assert rss_mib(pid) - before < 64, f"the server grew from {before:.0f} to {rss_mib(pid):.0f} MiB"
    assert rh.function(fns.add).to(running_cluster)(2, 2) == 4


def test_a_client_that_stops_reading_is_dropped_its_result_kept_and_others_served_meanwhile(process_cluster):
    running_cluster = process_cluster  # two workers: the chatty call takes one, the other client's calls the other
    chatty = rh.function(fns.chatty).to(running_cluster)
    call, function_frames = chatty._call_request("call", [], {"stream_logs": True})
    arguments = serialize.dumps_arguments((40_000, 0), {}, [])  # ~4 MB of log replies: far beyond a socket buffer
    secret = read_secret(running_cluster.state_dir)
    deaf = raw_link(running_cluster)
    deaf.send_envelope(orjson.dumps({"id": 1, "op": "call", "auth": secret, **call.to_wire()}), [*function_frames, *arguments])
    add = rh.function(fns.quiet_add).to(running_cluster)
    waits = []
    deadline = time.monotonic() + 30
    while not hung_up(deaf) and time.monotonic() < deadline:  # another client calls meanwhile
        started = time.monotonic()
        assert add(1, 1) == 2
        waits.append(time.monotonic() - started)
    assert hung_up(deaf), "the server kept a client that reads nothing for 30 s"
    assert max(waits) < 0.5, max(waits)  # nobody waits for a client that does not read
    # The deaf client's call went on; its result is kept under its key.
    assert running_cluster.get(call.key, timeout=60) == 40_000


def test_a_client_that_reads_slowly_delays_nobody_else(process_cluster):
    chatty = rh.function(fns.chatty).to(process_cluster)
    call, function_frames = chatty._call_request("call", [], {"stream_logs": True})
    arguments = serialize.dumps_arguments((40_000, 0), {}, [])  # ~4 MB of log replies
    secret = read_secret(process_cluster.state_dir)
    slow = raw_link(process_cluster)
    slow.send_envelope(orjson.dumps({"id": 1, "op": "call", "auth": secret, **call.to_wire()}), [*function_frames, *arguments])
    add = rh.function(fns.quiet_add).to(process_cluster)
    waits, read = [], 0
    started = time.monotonic()
    while time.monotonic() - started < 4:  # 256 KiB every half second: progress, but slow
        read += len(slow._sock.recv(256 * 1024))
        lap = time.monotonic()
        while time.monotonic() - lap < 0.5:
            call_started = time.monotonic()
            assert add(1, 1) == 2
            waits.append(time.monotonic() - call_started)
    assert read > 64 * 1024 and not hung_up(slow)  # it was served, slowly, and kept
    assert max(waits) < 0.5, max(waits)
    slow.close()


def test_a_forked_child_opens_its_own_link(running_cluster):
    add = rh.function(fns.add).to(running_cluster)
    assert add(1, 2) == 3  # this thread's link is open before the fork
    pid = os.fork()
    if pid == 0:
        try:
            code = 0 if [add(i, 1) for i in range(20)] == [i + 1 for i in range(20)] else 1
        except BaseException:
            code = 2
        os._exit(code)
    results = [add(i, 2) for i in range(20)]  # the parent's link, used at the same time
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert results == [i + 2 for i in range(20)]


def test_threads_have_links_of_their_own(running_cluster):
    add = rh.function(fns.add).to(running_cluster)
    failures = []

    def calls(offset):
        try:
            if [add(i, offset) for i in range(50)] != [i + offset for i in range(50)]:
                failures.append(offset)
        except Exception as exc:
            failures.append(repr(exc))

    threads = [threading.Thread(target=calls, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_more_local_clients_than_the_server_has_descriptors_are_all_served(tmp_path):
    import resource

    from rh_core.testing.fixtures import server_process

    def at_most_200_descriptors():  # its workers' included
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))

    with server_process(tmp_path, "-o", "num_workers=2", preexec_fn=at_most_200_descriptors) as (server, cluster):
        add = rh.function(fns.quiet_add).to(cluster)
        results: dict[int, int] = {}
        start = threading.Barrier(300)

        def call(i):  # every thread connects at once and holds its link until it ends
            start.wait()
            results[i] = add(i, 1)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(300)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert results == {i: i + 1 for i in range(300)}
        assert add(2, 2) == 4 and server.poll() is None
        assert b"the most its descriptors allow" in (tmp_path / "server.log").read_bytes()  # it did reach them


def test_a_call_interrupted_while_it_waits_leaves_the_next_call_its_own_reply(running_cluster):
    import signal

    slow = rh.function(fns.sleep_then).to(running_cluster)
    add = rh.function(fns.quiet_add).to(running_cluster)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            # Kept running: its reply comes after the interrupt, to a link already closed.
            slow.options(cancel_on_interrupt=False)(1.0, "late")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert add(1, 2) == 3  # not "late": this call reads its own reply
    time.sleep(1.0)
    assert add(2, 3) == 5
    keys = running_cluster.runs()["finished"]
    assert any(key.startswith("sleep_then") for key in keys)  # the interrupted call's result is kept


def test_ctrl_c_on_a_waiting_call_cancels_its_run_on_the_cluster(running_cluster):
    import signal

    slow = rh.function(fns.sleep_then).to(running_cluster)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        for call in (lambda: slow(60, "never"), lambda: slow.map([60, 60], ["never", "never"])):
            signal.setitimer(signal.ITIMER_REAL, 0.5)
            started = time.monotonic()
            with pytest.raises(KeyboardInterrupt):
                call()
            assert time.monotonic() - started < 5
            assert running_cluster.runs()["running"] == {}  # cancelled there, not left running
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert slow(0, "next") == "next"
