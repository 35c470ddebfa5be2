"""A native asyncio client (issue 21): calls, maps and refs awaited on the caller's event loop,
without a thread per call, many at once on one connection; cancelling cancels the run."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

import rh_core as rh
from rh_core.errors import ConnectionLostError
from rh_core.testing import functions as fns


async def cancelled_after(call, seconds: float) -> None:
    """Await ``call`` in a task of its own and cancel that task after ``seconds``."""
    task = asyncio.ensure_future(call)
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_acall_amap_and_await_ref_give_what_their_blocking_forms_give(process_cluster, capfd):
    add = rh.function(fns.add).to(process_cluster)
    double = rh.function(fns.double).to(process_cluster)

    async def main():
        ref = add.remote(5, 6)
        return (await add.acall(1, 2), await double.amap(range(5)), await add.astarmap([(1, 1), (2, 2)]),
                await ref, await double.amap([]))

    assert asyncio.run(main()) == (3, [0, 2, 4, 6, 8], [2, 4], 11, [])
    assert f"({process_cluster.name} add-" in capfd.readouterr().out  # output shows, as for a plain call


def test_a_failing_call_raises_its_own_exception_with_the_remote_traceback(process_cluster):
    fail = rh.function(fns.fail_custom).to(process_cluster)
    with pytest.raises(fns.CustomError, match="custom failure 7") as raised:
        asyncio.run(fail.acall(7))
    assert "fail_custom" in str(raised.value.__cause__)
    flaky = rh.function(fns.fail_on).to(process_cluster)
    results = asyncio.run(flaky.amap([1, 2, 3], bad=2, return_exceptions=True))
    assert results[0] == 1 and results[2] == 3 and isinstance(results[1], KeyError)


def test_many_concurrent_acalls_share_the_loop_without_a_thread_each(process_cluster):
    nap = rh.function(fns.sleep_then).to(process_cluster)
    counts = []

    async def main():
        await nap.acall(0, 0)  # the loop's connection is open before counting
        before = threading.active_count()
        calls = asyncio.gather(*[nap.acall(0.05, i) for i in range(200)])
        while not calls.done():
            counts.append(threading.active_count() - before)
            await asyncio.sleep(0.02)
        return await calls

    assert asyncio.run(main()) == list(range(200))
    assert max(counts) <= 1, counts  # at most the watchdog's liveness check, not one per call


def test_thirty_two_one_second_calls_on_thirty_two_workers_take_about_a_second(tmp_path):
    cluster = rh.LocalCluster(state_dir=str(tmp_path / "state"), executor_options={"num_workers": 32})
    try:
        nap = rh.function(fns.sleep_then).to(cluster)

        async def main():
            await asyncio.gather(*[nap.acall(0.2) for _ in range(32)])  # every worker started
            started = time.monotonic()
            await asyncio.gather(*[nap.acall(1, i) for i in range(32)])
            return time.monotonic() - started

        elapsed = asyncio.run(main())
        assert elapsed < 1.5, f"32 concurrent 1 s calls took {elapsed:.2f} s"
    finally:
        cluster.stop_server()


def test_cancelling_the_awaiting_task_cancels_the_run_on_the_cluster(process_cluster, tmp_path):
    touch = rh.function(fns.sleep_then_touch).to(process_cluster)
    marker = tmp_path / "ran"

    async def main():
        await cancelled_after(touch.acall(2, str(marker)), 0.5)
        await asyncio.sleep(0.3)  # the cancel request goes out as the task ends

    asyncio.run(main())
    deadline = time.monotonic() + 5
    while process_cluster.runs()["running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process_cluster.runs()["running"] == {}
    time.sleep(2)
    assert not marker.exists(), "the cancelled run went on to its end"


def test_a_call_that_says_so_goes_on_when_its_task_is_cancelled(process_cluster, tmp_path):
    touch = rh.function(fns.sleep_then_touch).to(process_cluster).options(cancel_on_interrupt=False)
    marker = tmp_path / "ran"

    asyncio.run(cancelled_after(touch.acall(1, str(marker)), 0.3))
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists()


def test_a_killed_server_fails_the_waiting_calls_at_once_and_the_next_call_starts_another(own_cluster):
    nap = rh.function(fns.sleep_then).to(own_cluster)

    async def main():
        calls = [asyncio.ensure_future(nap.acall(30)) for _ in range(3)]
        await asyncio.sleep(0.5)
        os.kill(own_cluster.status()["pid"], signal.SIGKILL)
        started = time.monotonic()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        took = time.monotonic() - started
        return outcomes, took, await nap.acall(0, "again")

    outcomes, took, again = asyncio.run(main())
    assert all(isinstance(outcome, ConnectionLostError) for outcome in outcomes), outcomes
    assert "exited with code -9" in str(outcomes[0]) or "is gone" in str(outcomes[0])
    assert took < 5
    assert again == "again"


def test_a_generators_items_come_to_async_for_and_leaving_early_cancels_the_run(process_cluster):
    count = rh.function(fns.count_up).to(process_cluster)
    failing = rh.function(fns.count_then_fail).to(process_cluster)

    async def main():
        items = [x async for x in count.acall(4)]
        got = []
        with pytest.raises(ValueError, match="failed after 2 items"):
            async for x in failing.acall(2):
                got.append(x)
        threads = threading.active_count()
        async for x in count.acall(1000, 0.1):
            if x == 2:
                break
        assert threading.active_count() <= threads + 1  # items were read on the loop, not in threads
        await asyncio.sleep(0.5)  # the abandoned generator is closed, which sends the cancel
        return items, got

    assert asyncio.run(main()) == ([0, 1, 2, 3], [0, 1])
    deadline = time.monotonic() + 5
    while process_cluster.runs()["running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process_cluster.runs()["running"] == {}
