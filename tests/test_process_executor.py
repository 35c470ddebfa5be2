"""The Function API against a real server running the built-in process executor."""

import pytest

from rh_core.testing import ExecutorContract


class TestProcessExecutor(ExecutorContract):
    @pytest.fixture(scope="class")
    @classmethod
    def cluster(cls, process_cluster):
        return process_cluster
