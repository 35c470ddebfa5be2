"""The executor contract: the whole Function API, run against a real server using the executor.

Subclass :class:`ExecutorContract` and provide a ``cluster`` fixture returning a cluster whose
server runs the executor under test (class scope or wider: starting a server costs seconds).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import rh_core as rh
from rh_core.testing import functions as fns


class ExecutorContract:
    """Behaviour every executor must show through the Function API."""

    @pytest.fixture(scope="class")
    @classmethod
    def cluster(cls):  # pragma: no cover - provided by subclasses
        raise NotImplementedError("subclasses provide a `cluster` fixture")

    @pytest.fixture(scope="class")
    @classmethod
    def add(cls, cluster):
        return rh.function(fns.add).to(cluster)

    # --- calling -------------------------------------------------------------------------------

    def test_call_runs_in_a_worker_process(self, cluster):
        import os

        where = rh.function(fns.whoami).to(cluster)()
        assert where["pid"] != os.getpid()
        assert rh.function(fns.quiet_add).to(cluster)(1, 2) == 3

    def test_function_from_a_module_goes_by_reference_and_a_lambda_by_value(self, cluster):
        by_reference = rh.function(fns.double).to(cluster)
        by_value = rh.function(lambda x: x * 3).to(cluster)
        assert by_reference._shipped.function_ref is not None
        assert by_value._shipped.function_ref is None
        assert (by_reference(4), by_value(4)) == (8, 12)

    def test_stream_logs_shows_stdout_and_logging_live(self, cluster, capfd):
        shout = rh.function(fns.shout).to(cluster)
        assert shout("hello", stream_logs=True) == "HELLO"
        out, err = capfd.readouterr()
        assert "out: hello" in out
        assert "log: hello" in err

    def test_output_is_shown_by_default_marked_as_the_clusters_and_stream_logs_false_silences_it(
            self, cluster, add, capfd):
        assert add(1, 2) == 3
        out, _ = capfd.readouterr()
        assert f"({cluster.name} add-" in out and ") adding 1 2\n" in out
        assert add(1, 2, stream_logs=False) == 3
        out, _ = capfd.readouterr()
        assert "adding" not in out

    # --- refs ----------------------------------------------------------------------------------

    def test_remote_returns_a_ref_at_once(self, cluster):
        slow = rh.function(fns.sleep_then).to(cluster)
        started = time.monotonic()
        ref = slow.remote(1.0, "late")
        assert isinstance(ref, rh.Ref)
        assert time.monotonic() - started < 0.8
        with pytest.raises(TimeoutError):
            ref.result(timeout=0.05)
        assert ref.result(timeout=30) == "late"

    def test_get_one_and_many(self, add):
        first = add.remote(1, 2)
        assert rh.get(first) == 3
        assert rh.get([first, add.remote(3, 4)]) == [3, 7]

    def test_ref_argument_is_resolved_on_the_cluster(self, cluster, add):
        double = rh.function(fns.double).to(cluster)
        ref = add.remote(1, 2)
        assert double(ref) == 6
        assert double([ref]) == [ref.result()] * 2  # inside containers too

    def test_failed_ref_raises_its_error_where_it_is_used(self, cluster):
        failing = rh.function(fns.fail).to(cluster).remote("upstream broke")
        with pytest.raises(ValueError, match="upstream broke"):
            rh.function(fns.double).to(cluster)(failing)

    def test_key_works_from_another_process(self, cluster, add):
        ref = add.remote(20, 22)
        ref.result()
        script = textwrap.dedent(f"""
            import json, sys
            from rh_core.clusters import from_config
            cluster = from_config(json.loads(sys.argv[1]))
            print(cluster.get({ref.key!r}))
        """)
        out = subprocess.run([sys.executable, "-c", script, json.dumps(cluster.config())],
                             capture_output=True, text=True, timeout=120)
        assert out.stdout.strip() == "42", out.stderr
        assert cluster.get(ref.key) == 42

    def test_unknown_key_names_the_problem(self, cluster):
        with pytest.raises(rh.ProtocolError, match="no result with key 'nope'"):
            cluster.get("nope")

    # --- enqueue, map, starmap -----------------------------------------------------------------

    def test_enqueue_runs_calls_one_at_a_time_in_arrival_order(self, cluster):
        record = rh.function(fns.record_interval).to(cluster)
        results = {}

        def call(tag):
            results[tag] = record.enqueue(0.3, tag)

        threads = []
        for tag in range(4):
            thread = threading.Thread(target=call, args=(tag,))
            thread.start()
            threads.append(thread)
            time.sleep(0.05)  # arrival order 0, 1, 2, 3
        for thread in threads:
            thread.join(60)
        intervals = [results[tag] for tag in range(4)]
        starts = [start for _, start, _ in intervals]
        assert starts == sorted(starts)
        for (_, _, end), (_, start, _) in zip(intervals, intervals[1:]):
            assert start >= end - 0.01  # no overlap

    def test_an_enqueued_call_never_runs_beside_any_other_call_of_its_function(self, cluster):
        record = rh.function(fns.record_interval).to(cluster)
        results = {}

        def call(tag):
            how = record.enqueue if tag.startswith("q") else record
            results[tag] = how(0.4, tag)

        threads = []
        for tag in ("p0", "p1", "q0", "p2", "q1", "p3"):  # plain calls before, between and after
            thread = threading.Thread(target=call, args=(tag,))
            thread.start()
            threads.append(thread)
            time.sleep(0.05)
        for thread in threads:
            thread.join(60)
        assert sorted(results) == ["p0", "p1", "p2", "p3", "q0", "q1"]
        for tag in ("q0", "q1"):
            _, start, end = results[tag]
            overlapping = [other for other, (_, s, e) in results.items() if other != tag and s < end - 0.01 and e > start + 0.01]
            assert overlapping == [], f"{tag} ran beside {overlapping}: {results}"
        assert results["q0"][1] < results["q1"][1]  # in arrival order

    def test_map_zips_and_keeps_input_order(self, cluster):
        add = rh.function(fns.quiet_add).to(cluster)
        assert add.map([1, 2, 3], [4, 5, 6]) == [5, 7, 9]
        assert add.map([1, 2, 3], [10, 20]) == [11, 22]  # zip stops at the shortest
        assert add.map(range(200), range(200)) == [2 * i for i in range(200)]
        assert add.map([]) == []

    def test_map_keywords_per_item_broadcast_and_wrapped(self, cluster):
        gen = rh.function(fns.generate).to(cluster)
        assert gen.map(["A dog.", "A cat."], num_images=[1, 2], steps=50) == [("A dog.", 1, 50), ("A cat.", 2, 50)]
        assert gen.map(["A dog.", "A cat."], num_images=rh.broadcast([1, 2])) == [
            ("A dog.", [1, 2], 10), ("A cat.", [1, 2], 10)]

    def test_starmap(self, cluster):
        gen = rh.function(fns.generate).to(cluster)
        assert gen.starmap([("A dog.", 1), ("A cat.", 2)], steps=50) == [("A dog.", 1, 50), ("A cat.", 2, 50)]

    def test_map_with_a_failing_item_names_its_index(self, cluster):
        picky = rh.function(fns.fail_on).to(cluster)
        with pytest.raises(KeyError, match="item 3 is bad") as info:
            picky.map(range(6), bad=3)
        assert any("map item 3 of 6" in note for note in info.value.__notes__)
        results = picky.map(range(6), bad=3, return_exceptions=True)
        assert results[:3] == [0, 1, 2] and results[4:] == [4, 5]
        assert isinstance(results[3], KeyError)

    # --- asyncio -------------------------------------------------------------------------------

    def test_acall_and_await_ref_do_not_block_the_loop(self, cluster):
        slow = rh.function(fns.sleep_then).to(cluster)

        async def main():
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.02)
                    ticks += 1

            ticking = asyncio.create_task(ticker())
            value = await slow.acall(0.5, "called")
            awaited = await slow.remote(0.3, "awaited")
            ticking.cancel()
            return value, awaited, ticks

        value, awaited, ticks = asyncio.run(main())
        assert (value, awaited) == ("called", "awaited")
        assert ticks >= 10

    # --- every kind of function ----------------------------------------------------------------

    def test_an_async_function_is_awaited_on_the_cluster(self, cluster):
        add = rh.function(fns.async_add).to(cluster)
        assert add(1, 2) == 3
        assert asyncio.run(add.acall(2, 3)) == 5
        assert rh.get(add.remote(3, 4)) == 7
        assert add.map([1, 2, 3], [10, 20, 30]) == [11, 22, 33]
        with pytest.raises(rh.RemoteExitError) as info:
            rh.function(fns.async_exit).to(cluster)(4)
        assert info.value.code == 4

    def test_a_generators_items_arrive_as_they_are_made_with_its_logs(self, cluster, capfd):
        count = rh.function(fns.count_up).to(cluster)
        started = time.monotonic()
        items, arrived, printed = [], [], []
        iterator = count(4, 0.5, stream_logs=True)
        while True:
            try:
                item = next(iterator)
            except StopIteration as end:
                returned = end.value
                break
            arrived.append(time.monotonic() - started)
            printed.append(capfd.readouterr().out)
            items.append(item)
        assert items == [0, 1, 2, 3] and returned == "counted 4"
        # Live: the first item came while the generator still had 1.5 s of work to do.
        assert arrived[-1] - arrived[0] > 1.0, arrived
        # In order with the function's output: "making i" was printed here before item i arrived.
        assert all(f"making {i}" in printed[i] for i in range(4)), printed

    def test_a_generators_items_stream_to_async_for_and_an_async_generators_too(self, cluster):
        count = rh.function(fns.count_up).to(cluster)
        acount = rh.function(fns.async_count_up).to(cluster)

        async def main():
            return [x async for x in count.acall(3)], [x async for x in acount.acall(3, 0.01)]

        assert asyncio.run(main()) == ([0, 1, 2], [0, 1, 2])
        assert list(acount(3)) == [0, 1, 2]

    def test_a_generator_that_fails_raises_after_the_items_it_made(self, cluster):
        items = []
        with pytest.raises(ValueError, match="failed after 2 items"):
            for item in rh.function(fns.count_then_fail).to(cluster)(2):
                items.append(item)
        assert items == [0, 1]

    def test_a_generators_items_come_back_as_a_list_where_nobody_streams_them(self, cluster):
        count = rh.function(fns.count_up).to(cluster)
        assert rh.get(count.remote(3)) == [0, 1, 2]
        assert count.map([2, 3]) == [[0, 1], [0, 1, 2]]
        assert rh.function(fns.async_count_up).to(cluster).map([2]) == [[0, 1]]

    def test_leaving_a_generator_early_cancels_its_run(self, cluster):
        from rh_core.testing.fixtures import wait_for

        for item in rh.function(fns.count_up).to(cluster)(1000, 0.05):
            if item == 2:
                break
        wait_for(lambda: not cluster.runs()["running"], 15, "the abandoned generator's run still runs",
                 lambda: str(cluster.runs()))
        assert rh.function(fns.quiet_add).to(cluster)(1, 1) == 2

    # --- remote classes ------------------------------------------------------------------------

    @staticmethod
    def _name(label: str) -> str:
        return f"{label}-{os.getpid()}-{os.urandom(3).hex()}"  # instances outlive tests: one name each

    def test_a_remote_instance_keeps_its_state_between_calls(self, cluster):
        Counter = rh.module(fns.Counter).to(cluster, name=self._name("state"))
        m = Counter(5)
        assert Counter._constructor._shipped.function_ref is not None  # from a module: by reference
        try:
            assert (m.incr(), m.incr(2)) == (6, 8)
            assert (m.count, m.config, m.doubled) == (8, {"start": 5}, 16)  # attributes are read there
            assert rh.get(m.incr.remote(1)) == 9
            assert m.incr.map([1, 1]) == [10, 11]
            assert asyncio.run(m.incr.acall()) == 12
            assert m.pid() == m.pid() != os.getpid()  # one process of its own
        finally:
            assert m.release() is True
        with pytest.raises(rh.InstanceNotFoundError, match="was released"):
            m.incr()
        assert m.release() is False

    def test_another_process_reaches_the_instance_by_name_without_running_the_constructor_again(self, cluster, capfd):
        name = self._name("shared")
        m = rh.module(fns.Counter).to(cluster, name=name)(10, stream_logs=True)
        assert "counter starts at 10" in capfd.readouterr().out
        try:
            m.incr()
            script = textwrap.dedent(f"""
                import json, sys
                import rh_core as rh
                from rh_core.clusters import from_config
                from rh_core.testing.functions import Counter
                cluster = from_config(json.loads(sys.argv[1]))
                other = rh.module(Counter).to(cluster, name={name!r})(999, stream_logs=True)
                print(other.instance_id, other.incr(5))
            """)
            out = subprocess.run([sys.executable, "-c", script, json.dumps(cluster.config())],
                                 capture_output=True, text=True, timeout=120)
            assert out.stdout.split()[-2:] == [m.instance_id, "16"], out.stderr + out.stdout
            assert "counter starts" not in out.stdout  # the constructor did not run again
            assert m.count == 16
        finally:
            m.release()

    def test_methods_run_one_at_a_time_unless_max_concurrency_says_more(self, cluster):
        def overlaps(instance):
            with concurrent.futures.ThreadPoolExecutor(3) as pool:
                spans = list(pool.map(lambda tag: instance.record(0.5, tag), range(3), timeout=60))
            return [(a, b) for a in spans for b in spans if a[0] < b[0] and a[1] < b[2] - 0.05 and b[1] < a[2] - 0.05]

        one = rh.module(fns.Counter).to(cluster, name=self._name("one"))()
        three = rh.module(fns.Counter, max_concurrency=3).to(cluster, name=self._name("three"))()
        try:
            assert overlaps(one) == []
            assert len(overlaps(three)) == 3  # all three ran at once
        finally:
            one.release()
            three.release()

    def test_async_methods_share_the_instances_event_loop(self, cluster):
        m = rh.module(fns.Counter, max_concurrency=4).to(cluster, name=self._name("async"))()
        try:
            assert m.loop_id() == m.loop_id()
            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                counts = sorted(pool.map(lambda _: m.incr_later(1.0), range(4), timeout=60))
            assert counts == [1, 2, 3, 4]
            assert time.monotonic() - started < 3.5  # side by side on the loop, not one after another
        finally:
            m.release()

    def test_a_methods_output_streams_and_a_generator_method_streams_its_items(self, cluster, capfd):
        m = rh.module(fns.Counter).to(cluster, name=self._name("stream"))(3)
        try:
            assert m.incr(4, stream_logs=True) == 7
            assert "adding 4" in capfd.readouterr().out
            assert list(m.count_up(3)) == [7, 8, 9]
            for item in m.count_up(1000, 0.02):  # left early: it stops between items, the instance lives
                if item == 9:
                    break
            assert m.incr() == 8
        finally:
            m.release()

    def test_a_method_that_raises_keeps_its_type_and_the_instance_goes_on(self, cluster):
        m = rh.module(fns.Counter).to(cluster, name=self._name("raises"))()
        try:
            with pytest.raises(fns.CustomError, match="no thanks"):
                m.fail("no thanks")
            assert m.incr() == 1
        finally:
            m.release()

    def test_a_constructor_that_raises_raises_here_and_keeps_nothing(self, cluster):
        Counter = rh.module(fns.Counter).to(cluster, name=self._name("broken"))
        with pytest.raises(TypeError):
            Counter(1, 2, 3)
        assert Counter.name not in cluster.instances()
        assert Counter(1).incr() == 2
        Counter().release()

    def test_an_instance_whose_process_dies_says_so_and_is_made_again_only_when_asked(self, cluster):
        Counter = rh.module(fns.Counter).to(cluster, name=self._name("dies"))
        m = Counter(7)
        m.incr()
        with pytest.raises(rh.InstanceDiedError, match="state is gone"):
            m.die()
        with pytest.raises(rh.InstanceDiedError, match="ended"):
            m.incr()  # never silently a fresh instance
        again = Counter(7)
        try:
            assert again.instance_id != m.instance_id and again.incr() == 8
            with pytest.raises(rh.InstanceNotFoundError, match="created anew"):
                m.incr()  # the old handle does not reach the new state
        finally:
            again.release()

    def test_a_timed_out_coroutine_is_stopped_in_place_a_plain_method_takes_the_instance(self, cluster):
        m = rh.module(fns.Counter, max_concurrency=2).to(cluster, name=self._name("timeout"))(1)
        try:
            with pytest.raises(rh.CallTimeoutError):
                m.incr_later.options(timeout=1)(60)
            assert m.incr() == 2  # the coroutine was cancelled on the instance's loop; the state lives
            with pytest.raises(rh.CallTimeoutError):
                m.record.options(timeout=1)(60, "stuck")
            from rh_core.testing.fixtures import wait_for

            def ended():
                try:
                    m.incr()
                except rh.InstanceDiedError as exc:
                    return "timed out" in str(exc)
                return False

            wait_for(ended, 30, "an instance whose plain method timed out was not ended")
        finally:
            m.release()

    def test_a_class_from_main_or_a_closure_travels_by_value(self, cluster):
        class Greeter:  # defined here: not importable, so it is pickled with its code
            def __init__(self, greeting):
                self.greeting = greeting

            def greet(self, name):
                return f"{self.greeting}, {name}"

        Remote = rh.module(Greeter).to(cluster, name=self._name("by-value"))
        assert Remote._constructor._shipped.function_ref is None
        g = Remote("hello")
        try:
            assert g.greet("you") == "hello, you"
        finally:
            g.release()

    def test_a_function_or_an_instance_handed_to_a_function_is_called_where_it_lives(self, cluster):
        add = rh.function(fns.add).to(cluster)
        call_it = rh.function(fns.call_it).to(cluster)
        assert call_it(add, 2, 3) == 5  # a handle: no lock, no connection travels
        assert rh.get(call_it.remote(add, 4, 5)) == 9
        m = rh.module(fns.Counter).to(cluster, name=self._name("handed"))(10)
        try:
            assert call_it(m.incr, 5) == 15
            assert rh.function(fns.call_method).to(cluster)(m, "incr", 1) == 16
            assert m.count == 16  # the same state, reached from the cluster
        finally:
            m.release()

    # --- options -------------------------------------------------------------------------------

    def test_options_do_not_steal_the_functions_keywords(self, cluster):
        f = rh.function(fns.takes_timeout).to(cluster)
        assert f(1, timeout=7, stream_logs="mine") == (1, 7, "mine")
        assert f.options(timeout=30)(1, timeout=7) == (1, 7, None)

    def test_unknown_option_lists_valid_ones(self, add):
        with pytest.raises(TypeError, match="valid options: timeout"):
            add.options(tiemout=3)

    def test_timeout_stops_the_call_and_the_next_call_works(self, cluster):
        slow = rh.function(fns.sleep_then).to(cluster)
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="timeout of 0.5 s"):
            slow.options(timeout=0.5)(30)
        assert time.monotonic() - started < 10
        assert slow(0, "after") == "after"

    # --- errors --------------------------------------------------------------------------------

    def test_exception_keeps_its_type_and_remote_traceback(self, cluster):
        with pytest.raises(fns.CustomError, match="custom failure 7") as info:
            rh.function(fns.fail_custom).to(cluster)(7)
        cause = info.value.__cause__
        assert isinstance(cause, rh.RemoteTraceback)
        assert "fail_custom" in cause.tb and "functions.py" in cause.tb

    def test_unpicklable_argument_is_named_before_sending(self, cluster, add):
        calls_before = cluster.status()["calls"]
        with pytest.raises(rh.SerializationError, match="keyword argument 'b' of type lock"):
            add(1, b=threading.Lock())
        assert cluster.status()["calls"] == calls_before

    def test_unpicklable_result_is_explained(self, cluster):
        with pytest.raises(rh.SerializationError, match="cannot be sent back"):
            rh.function(fns.unpicklable_result).to(cluster)()

    def test_worker_exit_fails_the_call_and_the_worker_is_replaced(self, cluster):
        with pytest.raises(rh.WorkerDiedError):
            rh.function(fns.exit_hard).to(cluster)(3)
        assert rh.function(fns.quiet_add).to(cluster)(2, 2) == 4

    def test_worker_segfault_fails_the_call_and_the_worker_is_replaced(self, cluster):
        with pytest.raises(rh.WorkerDiedError):
            rh.function(fns.segfault).to(cluster)()
        assert rh.function(fns.quiet_add).to(cluster)(2, 3) == 5

    def test_sys_exit_in_the_function_raises_in_the_caller_and_the_worker_goes_on(self, cluster):
        leave = rh.function(fns.exit_with).to(cluster)
        with pytest.raises(rh.RemoteExitError, match=r"sys.exit\(3\)") as info:
            leave(3)
        assert info.value.code == 3
        results = leave.map([0, 5], return_exceptions=True)
        assert [type(r) for r in results] == [rh.RemoteExitError] * 2 and results[1].code == 5
        assert rh.function(fns.quiet_add).to(cluster)(2, 5) == 7

    def test_a_forked_child_that_comes_back_never_answers_for_the_worker(self, cluster):
        come_back = rh.function(fns.fork_and_come_back).to(cluster)
        # The parent's result is its child's exit code: the child ended where it came back.
        assert [come_back(how) for how in ("return", "exit", "raise")] == [0, 0, 1]
        add = rh.function(fns.quiet_add).to(cluster)
        with concurrent.futures.ThreadPoolExecutor(40) as pool:
            results = list(pool.map(lambda i: add(i, 1000), range(40), timeout=60))
        assert results == [i + 1000 for i in range(40)]

    # --- data ----------------------------------------------------------------------------------

    def test_large_bytes_round_trip(self, cluster):
        data = bytes(range(256)) * (32 * 1024 * 4)  # 32 MiB
        assert rh.function(fns.echo).to(cluster)(data) == data
        assert rh.function(fns.length).to(cluster)(bytearray(data)) == len(data)
