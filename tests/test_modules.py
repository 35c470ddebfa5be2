"""Remote classes on the process executor: what only this executor can show (its processes).
Everything executor-independent is in the ExecutorContract (rh_core/testing/executor.py)."""

import os
import re
import signal

import pytest

import rh_core as rh
from rh_core.support.processes import pid_alive
from rh_core.testing import functions as fns
from rh_core.testing.fixtures import wait_for


def test_an_instance_runs_in_a_process_of_its_own_that_ends_with_the_server(running_cluster):
    m = rh.module(fns.Counter).to(running_cluster, name="own")()
    pid = m.pid()
    status = running_cluster.status()
    assert pid not in status["executor_workers"]  # not one of the pool's workers
    assert status["executor_instances"] == ["own"]
    assert rh.function(fns.quiet_add).to(running_cluster)(1, 2) == 3  # the pool serves calls beside it
    running_cluster.stop_server()
    wait_for(lambda: not pid_alive(pid), 10, f"the instance's process {pid} outlived its server")


def test_an_instance_killed_between_calls_says_how_on_the_next_call(running_cluster):
    Counter = rh.module(fns.Counter).to(running_cluster, name="victim")
    m = Counter(1)
    pid = m.pid()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: running_cluster.instances()["victim"]["ended"], 10,
             "the server did not notice the instance's process died")
    with pytest.raises(rh.InstanceDiedError, match=f"pid {pid}.*SIGKILL.*state is gone"):
        m.incr()
    assert Counter(5).incr() == 6  # created anew when asked, with a fresh state


def test_a_method_call_on_an_instance_that_is_not_there_is_refused_naming_it(running_cluster):
    m = rh.module(fns.Counter).to(running_cluster, name="gone")()
    m.release()
    with pytest.raises(rh.InstanceNotFoundError, match="no instance 'gone'.*released"):
        m.count_up(3).__next__()  # a streaming call is refused the same way


def test_a_name_taken_by_an_instance_of_another_class_is_refused(running_cluster):
    m = rh.module(fns.Counter).to(running_cluster, name="taken")()
    with pytest.raises(rh.RhError, match="'taken' on this cluster is a rh_core.testing.functions.Counter, not a "
                                         "rh_core.testing.functions.CustomError; give this one another name"):
        rh.module(fns.CustomError).to(running_cluster, name="taken")()
    assert running_cluster.instances()["taken"]["class"] == "rh_core.testing.functions.Counter"
    assert m.incr() == 1


def test_module_options_reach_the_constructor_and_the_methods(running_cluster, capfd):
    with pytest.raises(rh.RhError, match="not on a cluster yet: call .to"):
        rh.module(fns.Counter).options(stream_logs=True)
    Loud = rh.module(fns.Counter).to(running_cluster, name="loud").options(stream_logs=True)
    m = Loud(3)
    assert m.incr(2) == 5
    out = capfd.readouterr().out
    assert "counter starts at 3" in out and "adding 2" in out
    with pytest.raises(TypeError, match="unknown call option"):
        Loud.options(colour="red")


def test_instance_names_are_checked_before_anything_is_sent():
    with pytest.raises(ValueError, match="instance name 'a/b' is not usable"):
        rh.module(fns.Counter, name="a/b")
    with pytest.raises(ValueError, match="max_concurrency must be a positive integer"):
        rh.module(fns.Counter, max_concurrency=0)
    with pytest.raises(TypeError, match="rh.module takes a class"):
        rh.module(fns.add)


def test_the_counter_example_runs_on_rh_here(tmp_path):
    import subprocess
    import sys

    home = tmp_path / "home"
    example = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "counter.py")
    try:
        out = subprocess.run([sys.executable, example], env={**os.environ, "RH_HOME": str(home)},
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        for line in ("c.incr() = 11", "quiet: 16", "acall: 22", "reached by name: True count 22",
                     "a method handed to a function on the cluster: 25", "released: True",
                     "a call after release says so: no instance 'counter'"):
            assert line in out.stdout, out.stdout
        constructed = re.findall(r"^\(here counter-[0-9a-f]{16}\) the constructor runs once", out.stdout, re.M)
        assert len(constructed) == 1, out.stdout  # shown, marked as the cluster's, and run once
        assert "(here counter.incr-" in out.stdout and "adding 1\n" in out.stdout
        assert "adding 5" not in out.stdout  # the quiet call's
    finally:
        rh.LocalCluster(state_dir=str(home / "local")).stop_server()


def test_an_executor_without_instances_refuses_them_saying_so():
    import asyncio

    from rh_core.plugin.interfaces import CoroutineExecutor, InstanceSpec

    class Plain(CoroutineExecutor):
        name = "plain"

    async def start():
        return await Plain().start_instance(None, InstanceSpec(name="a", id="b"))

    with pytest.raises(rh.RhError, match="'plain' executor runs no remote instances"):
        asyncio.run(start())
