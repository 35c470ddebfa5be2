"""What a function on a cluster receives when it is handed a Function, a remote instance or a
cluster: a handle that calls the same thing where it lives, from inside the worker. What every
executor must do is in the ExecutorContract (rh_core/testing/executor.py)."""

import pickle

import pytest

import rh_core as rh
from rh_core.testing import functions as fns


def test_a_function_on_another_cluster_is_called_on_that_cluster(process_cluster, running_cluster):
    whoami_there = rh.function(fns.whoami).to(running_cluster)
    call_it = rh.function(fns.call_it).to(process_cluster)
    assert call_it(whoami_there)["pid"] in running_cluster.status()["executor_workers"]  # it ran over there


def test_a_function_not_sent_anywhere_travels_as_itself():
    unplaced = pickle.loads(pickle.dumps(rh.function(fns.add, name="plus")))
    assert (unplaced.name, unplaced(1, 2)) == ("plus", 3)  # runs where it is


def test_the_handle_refuses_to_run_the_code_it_does_not_have(process_cluster):
    handle = pickle.loads(pickle.dumps(rh.function(fns.add).to(process_cluster)))
    assert handle(1, 2) == 3  # through the cluster's server
    with pytest.raises(rh.RhError, match="handle to a function on cluster 'test-process'"):
        handle.fn(1, 2)
