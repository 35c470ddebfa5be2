"""Shared-memory segments: reused between calls, read once, bounded, and removed by their owner."""

import os
import subprocess
import sys
import textwrap

import pytest

from rh_core.wire import shm

MIB = 2**20


@pytest.fixture
def prefix():
    """A prefix of a server pid that does not exist, and the check that its segments are gone."""
    prefix = shm.prefix_for(2**22 + os.getpid())
    yield prefix
    shm._segments.remove_owned()
    leftover = _segments_named(prefix)
    shm.sweep(2**22 + os.getpid())
    assert leftover == []


def _segments_named(prefix):
    return sorted(name for name in os.listdir(shm.SHM_DIR) if name.startswith(prefix))


def test_a_buffer_goes_through_a_segment_that_the_receiver_reuses_for_its_reply(prefix):
    data = os.urandom(3 * MIB)
    _, descriptor = shm.share([b"pickle", data], prefix)
    assert shm.is_descriptor(descriptor) and len(descriptor) < 256
    (name,) = _segments_named(prefix)
    assert shm.attach(descriptor) == data
    for _ in range(3):  # a reply and the next call, as an echo does: one segment, back and forth
        _, descriptor = shm.share([b"pickle", data[::-1]], prefix)
        assert shm.attach(descriptor) == data[::-1]
    assert _segments_named(prefix) == [name]
    assert list(shm._segments.owned) == [name]


def test_a_segment_the_receiver_did_not_reuse_goes_back_to_its_sender_once(prefix):
    # One process plays both sides: the sender lends, the "worker" takes over and hands back.
    data = os.urandom(3 * MIB)
    _, descriptor = shm.share([b"pickle", data], prefix)
    (name,) = _segments_named(prefix)
    received = []
    assert shm.attach(descriptor, received) == data
    assert received == [name]
    (handed_back,) = shm.returning(received)
    assert shm.is_return(handed_back) and not shm.is_descriptor(handed_back)
    assert name not in shm._segments.owned  # the receiver gave it up
    assert shm.returning(received) == []  # and cannot hand it back twice
    shm.take_back(handed_back)
    assert list(shm._segments.owned) == [name]
    _, again = shm.share([b"pickle", data[::-1]], prefix)  # the sender reuses it
    assert _segments_named(prefix) == [name]
    assert shm.attach(again) == data[::-1]
    owner = shm._segments.owned.pop(name)  # as if another process owned it now
    shm.take_back(handed_back)  # that token was used: nobody else may take the segment
    assert name not in shm._segments.owned
    shm._unlink(owner)


def test_a_handed_back_segment_is_taken_while_loading_a_value(prefix):
    from rh_core.wire import serialize

    _, descriptor = shm.share([b"pickle", b"a" * (2 * MIB)], prefix)
    received = []
    shm.attach(descriptor, received)
    stream, *buffers = serialize.dumps(b"small result", [])
    assert serialize.loads([stream, *buffers, *shm.returning(received)]) == b"small result"
    assert list(shm._segments.owned) == received


def test_small_buffers_and_frames_without_a_prefix_stay_inline(prefix):
    small, large = b"x" * (shm.SHARE_MIN - 1), b"y" * shm.SHARE_MIN
    assert shm.share([b"pickle", small], prefix) == [b"pickle", small]
    assert shm.share([b"pickle", large], None) == [b"pickle", large]
    assert _segments_named(prefix) == []


def test_a_descriptor_is_good_for_one_read(prefix):
    _, descriptor = shm.share([b"pickle", b"z" * (2 * MIB)], prefix)
    shm.attach(descriptor)
    with pytest.raises(ValueError, match="no longer holds this buffer: it was read before"):
        shm.attach(descriptor)


def test_a_forged_descriptor_cannot_name_a_path():
    with pytest.raises(ValueError, match="malformed"):
        shm.attach(shm._MAGIC + b"../../etc/passwd:10:00")
    with pytest.raises(ValueError, match="malformed"):
        shm.attach(shm._MAGIC + b"rh-1-2:10")


def test_a_descriptor_of_a_removed_segment_says_so(prefix):
    _, descriptor = shm.share([b"pickle", b"z" * (2 * MIB)], prefix)
    shm._segments.lent.clear()  # as a receiver in another process sees it
    shm.sweep(2**22 + os.getpid())
    with pytest.raises(FileNotFoundError, match="is gone"):
        shm.attach(descriptor)


def test_owned_segments_beyond_the_budget_are_removed(prefix, monkeypatch):
    monkeypatch.setattr(shm, "KEPT_BYTES", 5 * MIB)
    descriptors = [shm.share([b"p", bytes([i]) * (2 * MIB)], prefix)[1] for i in range(4)]
    assert len(_segments_named(prefix)) == 4  # in flight: nobody may remove them
    assert sum(s.capacity for s in shm._segments.lent.values()) <= 5 * MIB  # mappings of the rest closed
    for i, descriptor in enumerate(descriptors):
        assert shm.attach(descriptor) == bytes([i]) * (2 * MIB)
    assert len(_segments_named(prefix)) == 2  # 2 MiB each: two fit in 5 MiB
    assert len(shm._segments.owned) == 2


def test_a_forked_child_neither_reuses_nor_removes_its_parents_segments(prefix):
    _, descriptor = shm.share([b"p", b"a" * (2 * MIB)], prefix)
    shm.attach(descriptor)
    (name,) = shm._segments.owned
    pid = os.fork()
    if pid == 0:
        os._exit(0 if not shm._segments.owned else 1)  # and no atexit: os._exit skips it anyway
    assert os.waitpid(pid, 0)[1] == 0
    assert _segments_named(prefix) == [name]


def test_a_process_removes_the_segments_it_owns_when_it_exits_and_leaves_those_in_flight(prefix):
    script = textwrap.dedent(f"""
        from rh_core.wire import shm
        _, descriptor = shm.share([b"p", b"q" * (2 * 2**20)], {prefix!r})
        assert shm.attach(descriptor) == b"q" * (2 * 2**20)  # now owned: reused for the next buffer
        _, in_flight = shm.share([b"p", b"r" * (3 * 2**20)], {prefix!r})
        print(len(shm._segments.owned), in_flight.hex())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    owned_at_exit, in_flight = out.split()
    assert owned_at_exit == "1"  # 2 MiB: too small for the second buffer, which got a new segment
    assert len(_segments_named(prefix)) == 1  # the owned one is gone; the one in flight waits
    assert shm.attach(bytes.fromhex(in_flight)) == b"r" * (3 * MIB)


def test_large_received_bytes_are_copies_marked_for_huge_pages():
    import ctypes

    from rh_core.wire.heap import bytes_from

    data = os.urandom(3 * MIB)
    copy = bytes_from(memoryview(data)[1:])
    assert type(copy) is bytes and copy == data[1:]
    assert bytes_from(memoryview(b"small")) == b"small"
    address = ctypes.cast(ctypes.c_char_p(copy), ctypes.c_void_p).value
    flags = _memory_flags_at(address)
    if _huge_pages_on_request():
        assert "hg" in flags, f"the copy's memory is not marked for huge pages: {flags}"


def _memory_flags_at(address):
    """The VmFlags of the mapping of this process that holds ``address``."""
    inside = False
    with open(f"/proc/{os.getpid()}/smaps") as smaps:
        for line in smaps:
            first = line.split(" ", 1)[0]
            if "-" in first and not first.endswith(":"):
                start, end = (int(part, 16) for part in first.split("-"))
                inside = start <= address < end
            elif inside and line.startswith("VmFlags:"):
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


def _huge_pages_on_request():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def test_a_received_bytes_buffer_becomes_the_value_without_another_copy():
    from rh_core.wire import serialize

    stream, _ = serialize.dumps(os.urandom(3 * MIB), [])
    received = os.urandom(3 * MIB)  # what shm.attach returns: a bytes object of its own
    assert serialize.loads([stream, received]) is received
    assert serialize.loads([stream, memoryview(received)]) is received


def test_a_handed_back_segment_that_is_not_on_this_machine_is_ignored(prefix):
    _, descriptor = shm.share([b"pickle", b"b" * (2 * MIB)], prefix)
    received = []
    shm.attach(descriptor, received)
    (handed_back,) = shm.returning(received)
    shm._segments.lent.clear()  # another machine has no mapping, and no such file:
    shm.sweep(2**22 + os.getpid())
    shm.take_back(handed_back)
    assert not shm._segments.owned


def test_segments_of_a_result_go_back_with_the_next_call_unless_an_argument_reused_them(prefix):
    first = [shm.share([b"p", bytes([i]) * (2 * MIB)], prefix)[1] for i in range(2)]  # two results
    received = []
    for descriptor in first:
        shm.attach(descriptor, received)
    shm.hand_back_later(received)
    _, argument = shm.share([b"p", b"c" * (2 * MIB)], prefix)  # the next call's large argument reuses one
    handed_back = shm.due_returns()
    assert len(handed_back) == 1 and shm.due_returns() == []
    shm.take_back(handed_back[0])  # as the worker does (one process plays both sides)
    shm.attach(argument)
    assert len(shm._segments.owned) == 2 and len(_segments_named(prefix)) == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small /dev/shm in a private mount namespace needs root")
def test_a_64_mib_dev_shm_as_in_docker_carries_100_mib_arguments_and_results(tmp_path):
    # Docker gives containers a 64 MiB /dev/shm. In a private mount namespace of our own, a
    # 64 MiB tmpfs hides the real one from this client, its server and the server's workers.
    script = textwrap.dedent(f"""
        import os, sys
        import rh_core as rh
        from rh_core.testing import functions as fns
        assert os.statvfs("/dev/shm").f_blocks * os.statvfs("/dev/shm").f_frsize == 64 * 2**20
        cluster = rh.LocalCluster(state_dir={str(tmp_path / "state")!r}, executor_options={{"num_workers": 2}})
        try:
            big = os.urandom(100 * 2**20)
            assert rh.function(fns.echo).to(cluster)(big) == big            # argument and result
            assert rh.function(fns.length).to(cluster)(big) == len(big)     # argument only
            assert rh.function(fns.filled).to(cluster)(100 * 2**20, 7) == bytes([7]) * (100 * 2**20)
            # Two 40 MiB buffers at once: one fits in /dev/shm, the other goes through the socket.
            medium = [os.urandom(40 * 2**20), os.urandom(40 * 2**20)]
            assert rh.function(fns.echo).to(cluster).map(medium) == medium
            print("ok")
        finally:
            cluster.stop_server()
    """)
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs -o size=64m tmpfs /dev/shm && exec "$0" -c "$1"', sys.executable, script],
        capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stdout, done.stderr[-3000:])


def _orphaned(prefix):
    """Segments named ``prefix...`` whose owner no longer runs."""
    from rh_core.support.processes import pid_alive

    return [name for name in _segments_named(prefix) if not pid_alive(shm.owner_of(name))]


def test_the_segments_of_a_client_killed_mid_call_are_removed_once_the_server_notices(tmp_path):
    import time

    import rh_core as rh
    from rh_core.testing import functions as fns

    own_cluster = rh.LocalCluster(state_dir=str(tmp_path / "state"), executor_options={"num_workers": 2})
    rh.function(fns.echo).to(own_cluster)(b"x")  # the server runs
    prefix = own_cluster.shm_prefix
    script = textwrap.dedent(f"""
        import os, sys
        import rh_core as rh
        from rh_core.testing import functions as fns
        import threading, time
        cluster = rh.LocalCluster(state_dir={own_cluster.state_dir!r}, executor_options={{"num_workers": 2}})
        sleeper = rh.function(fns.sleep_then).to(cluster)
        threading.Thread(target=sleeper, args=(60, os.urandom(9 * 2**20)), daemon=True).start()
        time.sleep(1)  # the call above is under way: killed mid-call
        # A result this client takes over (to reuse, or hand back with its next call, which never comes).
        assert len(rh.function(fns.filled).to(cluster)(5 * 2**20)) == 5 * 2**20
        print("ready", flush=True)
        time.sleep(60)
    """)
    client = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert client.stdout.readline().strip() == "ready"
    time.sleep(1)
    owned_by_client = [name for name in _segments_named(prefix) if shm.owner_of(name) == client.pid]
    assert owned_by_client and _orphaned(prefix) == []
    client.kill()
    client.wait()
    try:
        deadline = time.monotonic() + 15
        while _orphaned(prefix) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _orphaned(prefix) == [], "segments of the killed client stayed in /dev/shm"
    finally:
        own_cluster.stop_server()
