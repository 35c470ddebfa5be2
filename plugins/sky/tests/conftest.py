"""Fixtures for rh-sky: SkyPilot kept in a temp home, and a fake SkyPilot cloud (rh_sky.testing)
standing in for SkyPilot's SDK; the end-to-end tests give it real local sshds as machines."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sky_helpers import use_fake_sky

#: Enough of SkyPilot's AWS catalog for sky.Resources(instance_type=...) to be judged offline.
AWS_CATALOG = """InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone
g5.2xlarge,A10G,1.0,8.0,32.0,,1.212,0.4,us-east-1,us-east-1a
m6i.2xlarge,,,8.0,32.0,,0.384,0.1,us-east-1,us-east-1a
"""


@pytest.fixture(scope="session")
def sky_home(tmp_path_factory) -> Path:
    """The HOME SkyPilot sees in these tests: its ~/.sky (state, locks, catalogs) lives there."""
    return tmp_path_factory.mktemp("sky-home")


@pytest.fixture(scope="module", autouse=True)
def sky_environment(sky_home) -> Iterator[Path]:
    """Each test module runs with HOME at ``sky_home`` and SkyPilot's usage reports off; SkyPilot
    reads HOME when imported, so it is set before the first import and kept the same for all."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(sky_home))
        patch.setenv("SKYPILOT_DISABLE_USAGE_COLLECTION", "1")
        from sky.catalog import common

        catalog = Path(common.get_catalog_path("aws/vms.csv"))
        if not catalog.exists():
            catalog.parent.mkdir(parents=True, exist_ok=True)
            catalog.write_text(AWS_CATALOG)  # fresh: SkyPilot does not try to download it again
        yield sky_home


@pytest.fixture
def fake_sky(tmp_path, monkeypatch):
    """A fake cloud for tests that never reach the machines (its address answers nothing)."""
    key = tmp_path / "key"
    key.write_text("not a key: these tests never log in\n")
    return use_fake_sky(monkeypatch, tmp_path / "cloud", addresses=["127.0.0.1", "127.0.0.2"], ssh_port=1,
                        ssh_user="ubuntu", private_key=key, runtime_dir=tmp_path / "skylet")


def pytest_configure(config):
    # SkyPilot 0.14's own imports warn about SQLAlchemy 2.0 and passlib; nothing of ours.
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:sky.*")
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:passlib.*")
