"""The Function API against a real server running the built-in process executor."""

import pytest

from rh_core.testing import ExecutorContract


class TestProcessExecutor(ExecutorContract):
    @pytest.fixture(scope="class")
    @classmethod
    def cluster(cls, process_cluster):
        return process_cluster


def test_large_buffers_go_through_one_reused_segment_removed_when_the_server_stops(own_cluster):
    import os

    import rh_core as rh
    from rh_core.testing import functions as fns

    assert own_cluster.status()["shm"] is True
    prefix = own_cluster.shm_prefix
    data = os.urandom(3 * 1024 * 1024)
    echo = rh.function(fns.echo).to(own_cluster)
    assert echo(data) == data
    assert echo(data[::-1]) == data[::-1]
    assert echo.map([data, b"small"]) == [data, b"small"]
    assert rh.get(echo.remote(data)) == data  # kept results travel inline: they may be fetched again
    segments = [name for name in os.listdir("/dev/shm") if name.startswith(prefix)]
    assert len(segments) == 1, segments  # passed back and forth between this process and the worker
    own_cluster.stop_server()
    assert not [name for name in os.listdir("/dev/shm") if name.startswith(prefix)]


def test_the_worker_link_carries_small_and_large_buffers_and_refuses_anything_but_data():
    import pickle
    import socket
    import threading

    from rh_core.wire.link import Link
    from rh_core.wire.serialize import OUT_OF_BAND_MIN

    ours, theirs = socket.socketpair()
    sender, receiver = Link(ours.detach()), Link(theirs.detach())
    large = bytes(range(256)) * (OUT_OF_BAND_MIN // 128)  # out of band: sent after the pickle
    message = ("done", "ok", True, [b"small", pickle.PickleBuffer(large), {"key": [1, 2.5, None]}])
    writer = threading.Thread(target=sender.send, args=(message,))  # 128 KiB: more than a socket buffer
    writer.start()
    assert receiver.receive() == ("done", "ok", True, [b"small", large, {"key": [1, 2.5, None]}])
    writer.join()

    class Exploit:  # what a hostile worker could send: unpickling it would call os.system
        def __reduce__(self):
            import os

            return os.system, ("touch /tmp/rh-should-not-exist",)

    sender._connection.send_bytes(pickle.dumps(("done", Exploit())))
    with pytest.raises(pickle.UnpicklingError, match="plain data only, not posix.system"):
        receiver.receive()
    sender.close()
    with pytest.raises(EOFError):
        receiver.receive()


def test_a_worker_that_writes_garbage_to_its_link_is_replaced_and_the_server_stays_up(process_cluster):
    import rh_core as rh
    from rh_core.errors import WorkerDiedError
    from rh_core.testing import functions as fns

    garble = rh.function(fns.write_to_link).to(process_cluster)
    with pytest.raises(WorkerDiedError, match="killed by signal SIGKILL"):
        garble(b"\x00\x00\x00\x05hello")  # a length-prefixed message that is no pickle
    add = rh.function(fns.add).to(process_cluster)
    assert add(1, 2) == 3


def test_a_worker_whose_message_stops_half_way_is_replaced_within_seconds(process_cluster):
    import time

    import rh_core as rh
    from rh_core.errors import WorkerDiedError
    from rh_core.wire.link import STALL_SECONDS
    from rh_core.testing import functions as fns

    garble = rh.function(fns.write_to_link).to(process_cluster)
    started = time.monotonic()
    with pytest.raises(WorkerDiedError):
        garble(b"\x00\x00\x03\xe8" + b"x" * 10)  # promises 1,000 bytes, sends 10, then hangs
    assert time.monotonic() - started < STALL_SECONDS + 5
    assert rh.function(fns.add).to(process_cluster)(1, 2) == 3


def test_large_arguments_with_small_results_reuse_one_segment(own_cluster):
    import os

    import rh_core as rh
    from rh_core.testing import functions as fns

    length = rh.function(fns.length).to(own_cluster)
    for i in range(4):
        assert length(os.urandom(3 * 1024 * 1024 - i)) == 3 * 1024 * 1024 - i
    for i in range(2):  # a kept result hands it back when fetched
        assert rh.get(length.remote(os.urandom(3 * 1024 * 1024 - i))) == 3 * 1024 * 1024 - i
    # each result handed the argument's segment back: the next argument went into it
    assert len([name for name in os.listdir("/dev/shm") if name.startswith(own_cluster.shm_prefix)]) == 1


def test_small_arguments_with_large_results_reuse_one_segment(own_cluster):
    import os

    import rh_core as rh
    from rh_core.testing import functions as fns

    filled = rh.function(fns.filled).to(own_cluster)
    for i in range(4):
        assert filled(3 * 1024 * 1024 - i, i) == bytes([i]) * (3 * 1024 * 1024 - i)
    assert filled.map([3 * 1024 * 1024], [9]) == [bytes([9]) * 3 * 1024 * 1024]  # a map's results too
    assert filled(3 * 1024 * 1024, 5) == bytes([5]) * 3 * 1024 * 1024
    # each call handed the last result's segment back: the worker's next result went into it
    assert len([name for name in os.listdir("/dev/shm") if name.startswith(own_cluster.shm_prefix)]) == 1


def test_large_buffers_from_many_threads_each_come_back_intact(process_cluster):
    import os
    from concurrent.futures import ThreadPoolExecutor

    import rh_core as rh
    from rh_core.testing import functions as fns

    echo = rh.function(fns.echo).to(process_cluster)
    buffers = [os.urandom(1024 * 1024 + 4096 * i) for i in range(8)]  # sizes differ: segments are shared out

    def echo_repeatedly(data: bytes) -> bool:
        return all(echo(data) == data for _ in range(10))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(echo_repeatedly, buffers))
    assert echo.map(buffers) == buffers


@pytest.fixture
def quick_start_cluster(tmp_path):
    """Its own server, two workers, each given 2 s to report ready: a call longer than that on
    the fresh pool shows that starting is not judged by how long calls run."""
    import rh_core as rh

    cluster = rh.LocalCluster(state_dir=str(tmp_path / "state"),
                              executor_options={"num_workers": 2, "start_timeout": 2})
    yield cluster
    cluster.stop_server()


def test_a_first_call_longer_than_the_start_timeout_lives(quick_start_cluster):
    import rh_core as rh
    from rh_core.testing import functions as fns

    slow = rh.function(fns.sleep_then).to(quick_start_cluster)
    assert slow.map([5, 5], ["a", "b"]) == ["a", "b"]  # both workers busy past the start timeout
    assert slow(0, "after") == "after"


def test_on_a_cold_pool_one_callers_timeout_does_not_kill_another_callers_call(quick_start_cluster):
    import concurrent.futures

    import rh_core as rh
    from rh_core.testing import functions as fns

    slow = rh.function(fns.sleep_then).to(quick_start_cluster)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        patient = pool.submit(slow, 4, "patient")
        hasty = pool.submit(slow.options(timeout=1), 30, "hasty")
        with pytest.raises(rh.CallTimeoutError):
            hasty.result(timeout=60)
        assert patient.result(timeout=60) == "patient"


def test_workers_that_cannot_start_fail_the_calls_waiting_for_them_naming_the_timeout(tmp_path, monkeypatch):
    import rh_core as rh
    from rh_core.testing import functions as fns

    # The server's environment reaches the workers it starts: a sitecustomize that stalls worker
    # processes (and only them) keeps each from ever reporting ready. The first worker, forked from
    # the server as it starts, runs no sitecustomize of its own: once it has gone, none starts.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import time\nif b'rh_core.worker' in open('/proc/self/cmdline', 'rb').read():\n    time.sleep(60)\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    cluster = rh.LocalCluster(state_dir=str(tmp_path / "state"),
                              executor_options={"num_workers": 1, "start_timeout": 1})
    try:
        with pytest.raises(rh.WorkerDiedError, match="exit code 3"):
            rh.function(fns.exit_hard).to(cluster)(3)
        with pytest.raises(rh.WorkerDiedError, match=r"did not report ready within 1 s.*start_timeout"):
            rh.function(fns.quiet_add).to(cluster)(1, 2)
    finally:
        cluster.stop_server()


def test_the_first_workers_are_forks_of_the_server_that_look_started_afresh(tmp_path):
    # The default workers are forked as the server starts (no interpreter and imports of their
    # own to wait for on a cold start); a worker started later, to replace one, is a new process
    # running `python -m rh_core.worker`. A function cannot tell the two apart.
    import rh_core as rh
    from rh_core.testing import functions as fns

    cluster = rh.LocalCluster(state_dir=str(tmp_path / "state"), executor_options={"num_workers": 1})
    try:
        how_started = rh.function(fns.how_started).to(cluster)
        forked = how_started()
        server_pid = cluster.status()["pid"]
        with open(f"/proc/{forked['pid']}/cmdline", "rb") as file:
            assert b"rh_core.server" in file.read()  # a fork: the server's command line, not its own
        with pytest.raises(rh.WorkerDiedError):
            rh.function(fns.exit_hard).to(cluster)(3)
        fresh = how_started()
        with open(f"/proc/{fresh['pid']}/cmdline", "rb") as file:
            assert b"rh_core.worker" in file.read()
        assert fresh["pid"] != forked["pid"]
        same = {"pid": None, "argv": None}  # argv[0] is the number of each worker's link descriptor
        assert {**forked, **same} == {**fresh, **same}
        assert forked["argv"][1:] == [f"ipc://{tmp_path / 'state'}/logs.sock"]
        assert forked["main"] == "rh_core.worker.__main__" and forked["session_leader"]
        assert forked["stdin"] == "/dev/null"
        assert server_pid not in (forked["pid"], fresh["pid"])
    finally:
        cluster.stop_server()


def test_a_timed_out_call_takes_the_processes_it_started_with_it(own_cluster, tmp_path):
    import os
    import time

    import rh_core as rh
    from rh_core.support.processes import pid_alive
    from rh_core.testing import functions as fns

    pid_file = tmp_path / "child.pid"
    spawner = rh.function(fns.start_child_then_sleep).to(own_cluster)
    with pytest.raises(rh.CallTimeoutError):
        spawner.options(timeout=2)(str(pid_file), 60)
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(child), f"the call's child process {child} outlived the call's timeout"
    assert os.getpid() != child


@pytest.mark.slow
def test_a_first_call_longer_than_a_minute_on_a_fresh_server_lives(own_cluster):
    import rh_core as rh
    from rh_core.testing import functions as fns

    # 60 s was the old limit for a pool to start, judged by its workers going idle.
    assert rh.function(fns.sleep_then).to(own_cluster)(65, "done") == "done"



def test_a_map_of_callers_over_every_worker_finishes_and_the_lent_workers_retire(tmp_path):
    """Each item calls another function on the same cluster and waits for it: without a worker lent
    for as long as a caller waits, both workers would hold callers whose callees never start."""
    import time

    import rh_core as rh
    from rh_core.testing import functions as fns

    cluster = rh.LocalCluster(state_dir=str(tmp_path / "state"), executor_options={"num_workers": 2})
    try:
        call_it = rh.function(fns.call_it).to(cluster)
        callee = rh.function(fns.sleep_then).to(cluster)
        items = list(range(6))
        assert call_it.options(timeout=60).map([callee] * len(items), [0.3] * len(items), items) == items
        assert call_it.options(timeout=60)(call_it, callee, 0.1, "two levels down") == "two levels down"
        deadline = time.monotonic() + 10
        while len(cluster.status()["executor_workers"]) != 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(cluster.status()["executor_workers"]) == 2  # the lent workers retired
        assert rh.function(fns.add).to(cluster)(2, 3) == 5
    finally:
        cluster.stop_server()


def test_a_map_asked_for_progress_advances_a_bar_as_chunks_finish(process_cluster, capfd, monkeypatch):
    import rich.progress

    import rh_core as rh
    from rh_core.testing import functions as fns

    advanced = []
    real_advance = rich.progress.Progress.advance
    monkeypatch.setattr(rich.progress.Progress, "advance",
                        lambda self, task, by=1: (advanced.append(by), real_advance(self, task, by))[1])
    double = rh.function(fns.double).to(process_cluster)
    assert double.options(progress=True).map(range(50)) == [2 * x for x in range(50)]
    assert len(advanced) > 1 and sum(advanced) == 50  # one step per chunk, as each finished
    assert "50/50" in capfd.readouterr().err
    advanced.clear()
    assert double.map(range(10)) == [2 * x for x in range(10)]
    assert advanced == [] and "10/10" not in capfd.readouterr().err  # only when asked
