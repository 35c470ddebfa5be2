"""Results of .remote() calls outlive a server restart: kept on the cluster's disk within a size
limit and an expiry, released explicitly, never handed out twice differently."""

import asyncio
import os
import time

import pytest

import rh_core as rh
from rh_core import config
from rh_core.server.results import KeptResults, SpilledResults
from rh_core.plugin.interfaces import Outcome
from rh_core.testing import functions as fns


def test_a_finished_result_is_fetched_by_key_after_a_restart(own_cluster):
    f = rh.function(fns.echo).to(own_cluster)
    payload = os.urandom(3 * 2**20)
    ref = f.remote(payload)
    assert rh.get(ref) == payload
    failing = rh.function(fns.fail).to(own_cluster).remote("kept too")
    with pytest.raises(ValueError, match="kept too"):
        rh.get(failing)
    old_pid = own_cluster.status()["pid"]
    own_cluster.restart_server()
    assert own_cluster.status()["pid"] != old_pid
    assert rh.get(ref) == payload  # the new server read it from disk
    with pytest.raises(ValueError, match="kept too"):
        rh.get(failing)
    key = ref.key
    code = ("import rh_core as rh, sys; c = rh.LocalCluster(state_dir=sys.argv[1]); "
            "print(len(c.get(sys.argv[2])))")
    import subprocess
    import sys

    other = subprocess.run([sys.executable, "-c", code, own_cluster.state_dir, key], capture_output=True, text=True,
                           timeout=60)
    assert other.stdout.strip() == str(len(payload)), other.stderr
    assert key in own_cluster.runs()["finished"]
    ref.release()
    with pytest.raises(rh.ProtocolError, match="it was released"):
        rh.get(ref)
    assert not os.path.exists(os.path.join(own_cluster.state_dir, "results", f"{key}.out"))


def test_results_over_the_size_limit_stay_in_memory_only(own_cluster, monkeypatch, tmp_path):
    monkeypatch.setenv("RH_HOME", str(tmp_path / "home"))
    config.reload()
    config.set_value("results_max_mb", 1)
    config.reload()
    try:
        f = rh.function(fns.echo).to(own_cluster)
        small, large = f.remote(b"x" * 1000), f.remote(os.urandom(2 * 2**20))
        assert rh.get(small) == b"x" * 1000 and len(rh.get(large)) == 2 * 2**20  # both served while it runs
        assert own_cluster.status()["results_max_mb"] == 1
        kept = os.listdir(os.path.join(own_cluster.state_dir, "results"))
        assert kept == [f"{small.key}.out"]
        own_cluster.restart_server()
        assert rh.get(small) == b"x" * 1000
        with pytest.raises(rh.ProtocolError):
            rh.get(large)
    finally:
        monkeypatch.undo()
        config.reload()


def test_expired_results_are_deleted(tmp_path):
    store = SpilledResults(str(tmp_path / "results"), max_bytes=2**20, max_age_seconds=3600)
    assert store.save("old", Outcome(status="ok", frames=[b"a", b"bc"])) is None
    assert store.save("new", Outcome(status="ok", frames=[b"d"])) is None
    old_path = tmp_path / "results" / "old.out"
    os.utime(old_path, (time.time() - 7200, time.time() - 7200))
    assert store.expire() == ["old"]
    assert store.keys() == ["new"] and store.load("old") is None
    assert store.load("new").frames == [b"d"]
    assert store.used_bytes() == os.path.getsize(tmp_path / "results" / "new.out")


def test_a_result_kept_again_under_its_key_is_not_evicted_for_the_size_of_the_one_it_replaced(tmp_path):
    """The memory budget evicts only results that are on disk; a replaced result's entry must
    leave its books, or evicting it would drop the new result and serve the old file instead."""
    store = SpilledResults(str(tmp_path / "results"), max_bytes=2**20, max_age_seconds=3600)

    async def scenario() -> Outcome:
        kept = KeptResults(store, memory_budget=150, loop=asyncio.get_running_loop(), running_call=lambda key: None)

        async def saves_done() -> None:  # the disk thread runs in order: a release queued after waits for them
            await kept.release("no-such-key")
            await asyncio.sleep(0)

        kept.keep("run", Outcome(status="ok", frames=[b"o" * 100]))
        await saves_done()
        store.max_bytes = 0  # the disk is full: the next result stays in memory only
        kept.keep("run", Outcome(status="ok", frames=[b"n" * 100]))
        await saves_done()
        store.max_bytes = 2**20
        kept.keep("other", Outcome(status="ok", frames=[b"x" * 100]))  # on disk: the budget is counted
        await saves_done()
        outcome = await kept.outcome("run")
        await kept.close()
        return outcome

    assert asyncio.run(scenario()).frames == [b"n" * 100]
    assert store.load("run").frames == [b"o" * 100]  # the old copy is still the one on disk


def test_unfetched_results_beyond_the_memory_budget_live_on_disk_not_in_the_servers_memory(tmp_path):
    from rh_core.testing.fixtures import server_process

    with server_process(tmp_path, "--results-memory-mb", "16", "-o", "num_workers=1") as (server, cluster):
        filled = rh.function(fns.filled).to(cluster)
        keys = [filled.remote(4 * 2**20, i % 251).key for i in range(200)]  # 800 MiB, never fetched
        deadline = time.monotonic() + 120
        while len(cluster.runs()["finished"]) < len(keys) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)  # the last saves reach the disk
        status = cluster.status()
        assert status["results_in_memory_bytes"] <= 16 * 2**20 + 4 * 2**20, status["results_in_memory_bytes"]
        with open(f"/proc/{server.pid}/status") as f:
            rss_mib = int(next(line for line in f if line.startswith("VmRSS:")).split()[1]) / 1024
        # Held all in memory, 800 MiB; the server keeps up to 256 MiB of freed heap for its next large
        # buffers (rh_core.wire.heap), so its RSS stays below the sum of that and the budget, with room.
        assert rss_mib < 600, f"the server holds {rss_mib:.0f} MiB for 800 MiB of results kept on disk"
        assert cluster.get(keys[0]) == bytes([0]) * (4 * 2**20)  # read back from disk
        assert cluster.get(keys[-1]) == bytes([199 % 251]) * (4 * 2**20)


def test_a_ref_passed_to_a_function_on_another_cluster_names_both_clusters(own_cluster, process_cluster):
    made_here = rh.function(fns.add).to(process_cluster).remote(1, 2)
    elsewhere = rh.function(fns.add).to(own_cluster)
    with pytest.raises(rh.RhError, match=r"on cluster 'test-process'.*runs on cluster 'here'.*ref\.result\(\)"):
        elsewhere(made_here, 1)
    with pytest.raises(rh.RhError, match="resolved only by the cluster that made it"):
        rh.function(fns.double).to(own_cluster).map([made_here])
    assert elsewhere(made_here.result(), 1) == 4  # its value travels
    assert rh.function(fns.add).to(process_cluster)(made_here, 1) == 4  # and on its own cluster the ref does
