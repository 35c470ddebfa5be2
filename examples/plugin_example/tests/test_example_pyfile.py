"""The example plugin passes the installer contract: the whole test a new installer plugin needs."""

from __future__ import annotations

import pytest

import rh_core as rh
from rh_core.testing import InstallerContract


@pytest.fixture(scope="module")
def helper_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pyfiles")
    (folder / "rhexample_helpers.py").write_text('VERSION = "1.0"\n\ndef greet(name):\n    return f"hi {name}"\n')
    (folder / "rhexample_broken.py").write_text("def broken(:\n")
    return folder


class TestPyFileInstaller(InstallerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def cluster(cls, tmp_path_factory):
        cluster = rh.LocalCluster(state_dir=str(tmp_path_factory.mktemp("pyfile-local") / "state"),
                                  executor_options={"num_workers": 1})
        yield cluster
        cluster.stop_server()

    @pytest.fixture
    def requirement(self, helper_files):
        return f"pyfile:{helper_files / 'rhexample_helpers.py'}"

    @pytest.fixture
    def installed_module(self):
        return "rhexample_helpers", "1.0"

    @pytest.fixture
    def failing_requirement(self, helper_files):
        return f"pyfile:{helper_files / 'rhexample_broken.py'}"


def test_a_requirement_that_is_not_a_python_file_is_refused_before_anything_is_installed(tmp_path):
    from rh_core.packages import claim

    from rh_example_pyfile.installer import PyFileInstaller

    claimed = claim("pyfile:notes.txt", rh.default_host())  # rh_core routes METHOD:SPEC by itself
    assert (claimed.method, claimed.spec) == ("pyfile", "notes.txt")
    with pytest.raises(rh.InstallError, match="names a .py file"):
        PyFileInstaller().prepare(None, claimed)
    with pytest.raises(rh.InstallError, match="cannot read"):
        PyFileInstaller().prepare(None, claim(f"pyfile:{tmp_path / 'missing.py'}", rh.default_host()))
