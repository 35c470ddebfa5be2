"""Contract tests that every plugin of a kind must pass; import the class for your kind and subclass it.

    from rh_core.testing import ExecutorContract

    class TestMyExecutor(ExecutorContract):
        @pytest.fixture(scope="class")
        @classmethod
        def cluster(cls, tmp_path_factory):
            ...  # a LocalCluster whose server runs your executor
"""

from rh_core.testing.executor import ExecutorContract
from rh_core.testing.transport import TransportContract

__all__ = ["ExecutorContract", "TransportContract"]
