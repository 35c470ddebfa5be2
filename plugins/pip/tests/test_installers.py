"""The pip, reqs and local installers, for real: wheels from folders the tests build, installed into
environments of a local cluster and of a cluster on a loopback sshd."""

from __future__ import annotations

import json
import os
import threading

import pytest

import rh_core as rh
from rh_core.testing import InstallerContract
from rh_core.testing.functions import module_version
from rh_core.testing.packages import write_project


def pinned(name: str, version: str, wheel_folder: str) -> rh.Package:
    """``name==version`` from a local wheel folder, without any index."""
    return rh.package(name=f"{name}=={version}", install_method="pip", find_links=wheel_folder, no_index=True)


def installed_record(cluster, env_name):
    path = os.path.join(cluster.state_dir, "envs", env_name, "installed.json")
    with open(path) as f:
        return json.load(f)


# --- named environments on a local cluster ---------------------------------------------------------


def test_two_envs_hold_conflicting_versions_and_are_callable_at_once(local_cluster, wheels):
    one = rh.function(module_version).to(local_cluster, env=rh.env("pip-one", [pinned("rhtest-a", "1.0", wheels["one"])]))
    two = rh.function(module_version).to(local_cluster, env=rh.env("pip-two", [pinned("rhtest-a", "2.0", wheels["two"])]))
    ref_one, ref_two = one.remote("rhtest_a"), two.remote("rhtest_a")
    (v1, python1), (v2, python2) = rh.get([ref_one, ref_two])
    assert (v1, v2) == ("1.0", "2.0")
    assert python1.endswith("envs/pip-one/venv/bin/python") and python2.endswith("envs/pip-two/venv/bin/python")
    assert one.map(["rhtest_a"] * 3) == [("1.0", python1)] * 3


def test_a_repeated_to_with_the_same_reqs_installs_nothing(local_cluster, wheels):
    env = rh.env("pip-repeat", [pinned("rhtest-a", "1.0", wheels["one"])])
    first = local_cluster.install_packages([], env=env)
    again = local_cluster.install_packages([], env=env)
    assert first["installed"] == ["rhtest-a==1.0 (find_links, no_index)"] and first["skipped"] == []
    assert again["installed"] == [] and again["skipped"] == first["installed"]
    (record,) = installed_record(local_cluster, "pip-repeat").values()
    assert record["method"] == "pip" and record["requirement"] == "rhtest-a==1.0 (find_links, no_index)"


def test_installing_a_new_version_replaces_the_envs_workers(local_cluster, wheels):
    f = rh.function(module_version).to(local_cluster, env=rh.env("pip-upgrade", [pinned("rhtest-a", "1.0", wheels["one"])]))
    assert f("rhtest_a")[0] == "1.0"  # the worker has now imported 1.0
    local_cluster.install_packages([pinned("rhtest-a", "2.0", wheels["two"])], env="pip-upgrade")
    assert f("rhtest_a")[0] == "2.0"


def test_a_failing_pip_raises_an_install_error_records_nothing_and_the_retry_works(local_cluster, wheels):
    missing = pinned("rhtest-a", "3.0", wheels["one"])
    with pytest.raises(rh.InstallError) as failure:
        local_cluster.install_packages([missing], env="pip-fails")
    message = str(failure.value)
    assert "'rhtest-a==3.0 (find_links, no_index)'" in message and "environment 'pip-fails'" in message
    assert "No matching distribution found for rhtest-a==3.0" in message  # the tool's own last lines
    assert installed_record_or_empty(local_cluster, "pip-fails") == {}
    done = local_cluster.install_packages([pinned("rhtest-a", "1.0", wheels["one"])], env="pip-fails")
    assert done["installed"] == ["rhtest-a==1.0 (find_links, no_index)"]


def installed_record_or_empty(cluster, env_name):
    try:
        return installed_record(cluster, env_name)
    except FileNotFoundError:
        return {}


def test_concurrent_installs_into_one_env_take_turns(local_cluster, wheels):
    requirement = pinned("rhtest-a", "1.0", wheels["one"])
    results, errors = [], []

    def install():
        try:
            results.append(local_cluster.install_packages([requirement], env="pip-concurrent"))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=install) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert sorted(len(r["installed"]) for r in results) == [0, 0, 1]  # one did the work, the others waited


def test_requirements_file_is_installed_and_reinstalled_only_when_it_changes(local_cluster, wheels, tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"--no-index\n--find-links {wheels['one']}\nrhtest-a==1.0\n")
    f = rh.function(module_version).to(local_cluster, reqs=[str(requirements)], env="pip-reqs")
    assert f("rhtest_a")[0] == "1.0"
    assert local_cluster.install_packages([str(requirements)], env="pip-reqs")["installed"] == []
    requirements.write_text(f"--no-index\n--find-links {wheels['two']}\nrhtest-a==2.0\n")
    assert local_cluster.install_packages([f"reqs:{requirements}"], env="pip-reqs")["installed"] == [str(requirements)]
    assert f("rhtest_a")[0] == "2.0"


def test_a_local_folder_goes_on_the_path_and_a_local_project_installs_editable(local_cluster, tmp_path):
    plain = tmp_path / "plainlib"
    plain.mkdir()
    (plain / "rhtest_plain.py").write_text('VERSION = "plain"\n')
    project = write_project(str(tmp_path / "projlib"), "rhtest-proj", "0.3")
    f = rh.function(module_version).to(local_cluster, env="pip-local",
                                       reqs=[f"local:{plain}", rh.package(path=project)])
    assert f("rhtest_plain")[0] == "plain"
    assert f("rhtest_proj")[0] == "0.3"
    # Editable: a change to the module is seen by the next worker, without reinstalling.
    (tmp_path / "projlib" / "rhtest_proj.py").write_text('VERSION = "0.3-edited"\n')
    again = local_cluster.install_packages([rh.package(path=project)], env="pip-local")
    assert again["installed"] == []


# --- bad input ---------------------------------------------------------------------------------


def test_an_unknown_install_method_lists_the_valid_ones(local_cluster):
    with pytest.raises(rh.UnknownNameError, match=r"unknown install method 'bogus'; valid install methods: .*local.*pip.*reqs"):
        local_cluster.install_packages(["bogus:thing"])
    with pytest.raises(rh.UnknownNameError, match="unknown install method 'nope'"):
        local_cluster.install_packages([rh.package(name="x", install_method="nope")])


def test_missing_paths_are_reported_before_anything_is_installed(local_cluster, wheels, tmp_path):
    good = pinned("rhtest-a", "1.0", wheels["one"])
    with pytest.raises(rh.InstallError, match=r"requirements file .*missing-requirements.txt.* does not exist"):
        local_cluster.install_packages([good, f"reqs:{tmp_path}/missing-requirements.txt"], env="pip-nothing")
    with pytest.raises(rh.InstallError, match="local folder .*nowhere.* does not exist"):
        local_cluster.install_packages([good, "local:./nowhere"], env="pip-nothing")
    assert installed_record_or_empty(local_cluster, "pip-nothing") == {}


def test_an_invalid_env_name_is_refused_with_the_rule():
    with pytest.raises(ValueError, match="invalid environment name '../x'"):
        rh.env("../x")


# --- a cluster reached over SSH ------------------------------------------------------------------


def test_install_packages_on_an_ssh_cluster_ships_the_wheel_folder(ssh_cluster, wheels):
    done = ssh_cluster.install_packages([pinned("rhtest-a", "1.0", wheels["one"])], env="ssh-one")
    assert done["installed"] == ["rhtest-a==1.0 (find_links, no_index)"]
    f = rh.function(module_version).to(ssh_cluster, env="ssh-one")
    version, python = f("rhtest_a")
    assert version == "1.0" and python.startswith(ssh_cluster.remote_dir)


def test_to_installs_the_working_dirs_requirements_txt_into_the_default_env(ssh_cluster, wheels, tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "requirements.txt").write_text(f"--no-index\n--find-links {wheels['two']}\nrhtest-a==2.0\n")
    monkeypatch.chdir(project)  # not a git repo: the working directory is the current one
    f = rh.function(module_version).to(ssh_cluster)
    version, python = f("rhtest_a")
    assert version == "2.0" and python.startswith(ssh_cluster.remote_dir)  # the cluster's own venv


# --- S3 ------------------------------------------------------------------------------------------


@pytest.fixture
def moto_s3(monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    from rh_core.testing.sshd import free_port

    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}"}.items():
        monkeypatch.setenv(name, value)
    import boto3

    boto3.client("s3").create_bucket(Bucket="rh-pkgs")
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_a_local_folder_copied_to_s3_installs_from_there_and_reuploads_only_changes(moto_s3, tmp_path):
    from rh_core.support import s3

    lib = tmp_path / "s3lib"
    (lib / "pkg").mkdir(parents=True)
    (lib / "rhtest_s3.py").write_text('VERSION = "s3-1"\n')
    (lib / "pkg" / "data.txt").write_text("unchanged\n")
    shared = rh.package(path=str(lib)).to("s3://rh-pkgs/pkgs/s3lib")
    assert shared.spec == "s3://rh-pkgs/pkgs/s3lib" and shared.options["source"] == "s3"
    # A cluster started now sees the S3 endpoint and credentials in its environment, as one on a
    # cloud machine sees its instance role.
    cluster = rh.LocalCluster(state_dir=str(tmp_path / "state"), executor_options={"num_workers": 1})
    try:
        f = rh.function(module_version).to(cluster, env="from-s3", reqs=[shared])
        assert f("rhtest_s3")[0] == "s3-1"
        (lib / "rhtest_s3.py").write_text('VERSION = "s3-2"\n')
        counts = s3.upload_directory(str(lib), "rh-pkgs", "pkgs/s3lib")
        assert counts == {"uploaded": 1, "unchanged": 1, "deleted": 0}
        done = cluster.install_packages([shared], env="from-s3")
        assert done["installed"] == ["s3://rh-pkgs/pkgs/s3lib"]
        assert f("rhtest_s3")[0] == "s3-2"
    finally:
        cluster.stop_server()


@pytest.mark.slow
def test_a_cluster_reached_over_ssh_installs_from_s3_with_its_own_credentials(moto_s3, sshd, tmp_path):
    """The cluster's user has S3 credentials of their own (~/.aws); only the endpoint travels."""
    import subprocess

    from rh_core.testing.sshd import local_user, ssh_creds

    lib = tmp_path / "s3lib"
    lib.mkdir()
    (lib / "rhtest_s3ssh.py").write_text('VERSION = "over-ssh"\n')
    shared = rh.package(path=str(lib)).to("s3://rh-pkgs/pkgs/s3ssh")
    with local_user(sshd) as (user, home):
        aws = home / ".aws"
        aws.mkdir()
        (aws / "credentials").write_text("[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
        (aws / "config").write_text("[default]\nregion = us-east-1\n")
        subprocess.run(["chown", "-R", f"{user}:{user}", str(aws)], check=True)
        cluster = rh.cluster(name="s3-over-ssh", ips=[sshd.host], ssh_creds=ssh_creds(sshd, tmp_path, ssh_user=user),
                             executor_options={"num_workers": 1})
        try:
            f = rh.function(module_version).to(cluster, env="from-s3", reqs=[shared])
            version, python = f("rhtest_s3ssh")
            assert version == "over-ssh" and python.startswith(str(home))
        finally:
            cluster.down()


def test_installing_from_an_empty_s3_location_says_to_upload_first(moto_s3, tmp_path):
    never = rh.Package(install_method="local", spec="s3://rh-pkgs/never", options={"source": "s3"})
    cluster = rh.LocalCluster(state_dir=str(tmp_path / "state"), executor_options={"num_workers": 1})
    try:
        with pytest.raises(rh.RhError, match=r"nothing was uploaded to s3://rh-pkgs/never: upload it with"):
            cluster.install_packages([never], env="s3-empty")
    finally:
        cluster.stop_server()



# --- the installer contract ----------------------------------------------------------------------


class TestPipInstallerContract(InstallerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def cluster(cls, local_cluster):
        return local_cluster

    @pytest.fixture
    def requirement(self, wheels):
        return pinned("rhtest-a", "2.0", wheels["two"])

    @pytest.fixture
    def installed_module(self):
        return "rhtest_a", "2.0"

    @pytest.fixture
    def failing_requirement(self, wheels):
        return pinned("rhtest-a", "9.9", wheels["two"])


def test_asking_again_for_an_earlier_version_installs_it_again(local_cluster, wheels):
    f = rh.function(module_version).to(local_cluster, env="pip-back", reqs=[pinned("rhtest-a", "1.0", wheels["one"])])
    local_cluster.install_packages([pinned("rhtest-a", "2.0", wheels["two"])], env="pip-back")
    assert f("rhtest_a")[0] == "2.0"
    again = local_cluster.install_packages([pinned("rhtest-a", "1.0", wheels["one"])], env="pip-back")
    assert again["installed"] == ["rhtest-a==1.0 (find_links, no_index)"]  # 2.0 replaced its record
    assert f("rhtest_a")[0] == "1.0"
    (entry,) = installed_record(local_cluster, "pip-back").values()
    assert entry["slot"] == "pip:rhtest-a"


def test_a_package_removed_outside_rh_is_installed_again_by_the_next_request(local_cluster, wheels):
    import subprocess
    import sys

    requirement = pinned("rhtest-a", "1.0", wheels["one"])
    f = rh.function(module_version).to(local_cluster, env=rh.env("pip-removed", [requirement]))
    assert f("rhtest_a")[0] == "1.0"
    python = os.path.join(local_cluster.state_dir, "envs", "pip-removed", "venv", "bin", "python")
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "uninstall", "-y", "rhtest-a"],
                   check=True, capture_output=True, timeout=120)  # what `pip uninstall` on the cluster does
    done = local_cluster.install_packages([requirement], env="pip-removed")
    assert done["installed"] == ["rhtest-a==1.0 (find_links, no_index)"], done
    local_cluster.restart_server()  # fresh workers: none has the module imported from before
    f = rh.function(module_version).to(local_cluster, env=rh.env("pip-removed", [requirement]))
    assert f("rhtest_a")[0] == "1.0"
