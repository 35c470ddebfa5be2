"""The contract every installer plugin passes. Subclass and provide the fixtures:

    class TestMyInstaller(InstallerContract):
        @pytest.fixture(scope="class")
        @classmethod
        def cluster(cls, tmp_path_factory): ...         # where to install (rh.LocalCluster(state_dir=...))
        @pytest.fixture
        def requirement(self): ...                      # installs a module with a VERSION attribute
        @pytest.fixture
        def installed_module(self): ...                 # (module name, VERSION it has)
        @pytest.fixture
        def failing_requirement(self): ...              # well-formed, but the install fails on the cluster

Installs go into a fresh named environment per test, so the cluster's own is never touched.
"""

from __future__ import annotations

import json
import uuid

import pytest

import rh_core as rh
from rh_core.testing.functions import module_version


class InstallerContract:
    @pytest.fixture
    def env_name(self) -> str:
        return f"contract-{uuid.uuid4().hex[:8]}"

    def test_prepare_gives_a_json_safe_step_naming_the_requirement(self, cluster, requirement):
        host = rh.default_host()
        from rh_core.packages import claim
        from rh_core.plugin.interfaces import InstallStep

        claimed = claim(requirement, host)
        step = host.installer(claimed.method)().prepare(cluster, claimed)
        assert isinstance(step, InstallStep) and step.method == claimed.method and step.requirement
        assert InstallStep.from_json(json.loads(json.dumps(step.to_json()))) == step

    def test_installs_into_an_env_whose_functions_import_it(self, cluster, requirement, installed_module, env_name):
        module, version = installed_module
        done = cluster.install_packages([requirement], env=env_name)
        assert len(done["installed"]) == 1 and done["skipped"] == []
        f = rh.function(module_version).to(cluster, env=env_name)
        assert f(module)[0] == version

    def test_installing_again_is_skipped(self, cluster, requirement, env_name):
        cluster.install_packages([requirement], env=env_name)
        again = cluster.install_packages([requirement], env=env_name)
        assert again["installed"] == [] and len(again["skipped"]) == 1

    def test_a_failed_install_names_the_requirement_and_records_nothing(self, cluster, failing_requirement, env_name):
        with pytest.raises(rh.InstallError) as failure:
            cluster.install_packages([failing_requirement], env=env_name)
        label = failing_requirement if isinstance(failing_requirement, str) else failing_requirement.spec
        assert label.split(":", 1)[-1] in str(failure.value)
        assert cluster.install_packages([], env=env_name)["environment"]["installed"] == {}
