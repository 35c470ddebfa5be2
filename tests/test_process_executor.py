"""The Function API against a real server running the built-in process executor."""

import pytest

from rh_core.testing import ExecutorContract


class TestProcessExecutor(ExecutorContract):
    @pytest.fixture(scope="class")
    @classmethod
    def cluster(cls, process_cluster):
        return process_cluster


def test_large_buffers_go_through_shared_memory_and_leave_nothing_behind(process_cluster):
    import os

    import rh_core as rh
    from rh_core.testing import functions as fns

    assert process_cluster.status()["shm"] is True
    prefix = process_cluster.shm_prefix
    data = os.urandom(3 * 1024 * 1024)
    echo = rh.function(fns.echo).to(process_cluster)
    assert echo(data) == data
    assert echo.map([data, b"small"]) == [data, b"small"]
    assert rh.get(echo.remote(data)) == data  # kept results travel inline: they may be fetched again
    assert not [name for name in os.listdir("/dev/shm") if name.startswith(prefix)]


def test_a_forged_descriptor_cannot_name_a_path():
    import pytest

    from rh_core import shm

    with pytest.raises(ValueError, match="malformed"):
        shm.attach(shm._MAGIC + b"../../etc/passwd:10")
