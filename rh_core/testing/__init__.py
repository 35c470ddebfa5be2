"""Contract tests that every plugin of a kind must pass; import the class for your kind and subclass it.

    from rh_core.testing import ExecutorContract

    class TestMyExecutor(ExecutorContract):
        @pytest.fixture(scope="class")
        @classmethod
        def cluster(cls, tmp_path_factory):
            ...  # a cluster whose server runs your executor

The contract classes need pytest; ``rh_core.testing.functions`` (what they send to clusters) does
not, so clusters can import it without pytest installed.
"""

__all__ = ["ExecutorContract", "InstallerContract", "ProvisionerContract", "TransportContract"]


def __getattr__(name: str):
    if name == "ExecutorContract":
        from rh_core.testing.executor import ExecutorContract

        return ExecutorContract
    if name == "InstallerContract":
        from rh_core.testing.installer import InstallerContract

        return InstallerContract
    if name == "ProvisionerContract":
        from rh_core.testing.provisioner import ProvisionerContract

        return ProvisionerContract
    if name == "TransportContract":
        from rh_core.testing.transport import TransportContract

        return TransportContract
    raise AttributeError(f"module 'rh_core.testing' has no attribute {name!r}")
