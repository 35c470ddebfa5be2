"""Wheels for the cluster's platform, checked with pip's own resolver for that platform."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rh_core.errors import RhError
from rh_core.bootstrap import scripts
from rh_core.bootstrap.wheels import Platform, WheelhouseError, fetch_uv_wheel, resolve_wheelhouse, uv_version

GLIBC_2_31_X86 = Platform(system="Linux", machine="x86_64", libc="glibc", libc_version="2.31", python="3.10")
AARCH64 = Platform(system="Linux", machine="aarch64", libc="glibc", libc_version="2.35", python="3.12")


def test_a_glibc_machine_takes_every_older_manylinux_tag_and_none_newer():
    tags = GLIBC_2_31_X86.pip_platforms()
    assert tags[0] == "manylinux_2_31_x86_64" and "manylinux_2_32_x86_64" not in tags
    assert {"manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "manylinux_2_5_x86_64"} <= set(tags)
    arm = AARCH64.pip_platforms()
    assert arm[-2:] == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"]  # aarch64 wheels start at glibc 2.17
    musl = Platform(system="Linux", machine="x86_64", libc="musl", libc_version="1.2", python="3.11").pip_platforms()
    assert musl == ["musllinux_1_2_x86_64", "musllinux_1_1_x86_64"]


def test_a_machine_that_is_not_linux_or_whose_libc_is_unknown_is_refused_by_name():
    mac = Platform(system="Darwin", machine="arm64", libc="", libc_version="", python="3.11")
    with pytest.raises(WheelhouseError, match="Darwin arm64, CPython 3.11; .* Linux machines only"):
        mac.pip_platforms()
    unknown = Platform(system="Linux", machine="riscv64", libc="", libc_version="", python="3.11")
    with pytest.raises(RhError, match="cannot tell which C library .*riscv64"):
        unknown.pip_platforms()


def test_this_machine_describes_itself():
    here = Platform.here()
    assert here.python == "%d.%d" % sys.version_info[:2] and here.system == os.uname().sysname
    if here.system == "Linux":
        assert here.libc in ("glibc", "musl") and here.pip_platforms()


def _pip_installs(wheelhouse: str, platform: Platform, *requirements: str) -> subprocess.CompletedProcess[str]:
    """pip's own resolver, told it installs for ``platform``, given only the wheelhouse."""
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-index", "--find-links",
         wheelhouse, "--target", os.devnull + ".rh-never-written", *platform.pip_arguments(), *requirements],
        capture_output=True, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("platform", [GLIBC_2_31_X86, AARCH64], ids=lambda p: p.tag)
def test_the_wheelhouse_installs_on_the_clusters_platform_per_pips_resolver(platform, tmp_path_factory):
    """Ubuntu 20.04 (glibc 2.31) on x86_64 with Python 3.10, and an aarch64 machine with 3.12: each
    a Python minor other than this client's or another architecture. pip, resolving for exactly that
    platform with nothing but the wheelhouse, finds everything rh-core and rh-pip need."""
    cache = tmp_path_factory.getbasetemp() / "wheel-cache"  # one pool for the session's resolutions
    wheelhouse = resolve_wheelhouse(["rh-core", "rh-pip"], platform, str(cache))
    assert wheelhouse.platform == platform and wheelhouse.pip_wheel.startswith("pip-")
    done = _pip_installs(wheelhouse.path, platform, *wheelhouse.requirements)
    assert done.returncode == 0, done.stderr
    assert "Would install" in done.stdout and "rh-core-0.1.0" in done.stdout.replace("_", "-")
    names = os.listdir(wheelhouse.path)
    assert not any(name.endswith(("macosx", "win_amd64.whl")) for name in names)
    if platform is GLIBC_2_31_X86:  # nothing built for a newer glibc than the machine has
        assert not any("manylinux_2_3" in name and "manylinux_2_31" not in name and "_2_30" not in name
                       for name in names), names
    # The same wheelhouse is reused, not resolved again.
    assert resolve_wheelhouse(["rh-core", "rh-pip"], platform, str(cache)).path == wheelhouse.path


@pytest.mark.slow
def test_wheels_of_this_clients_platform_do_not_install_on_an_older_glibc(tmp_path):
    """What the bootstrap used to ship (wheels built for the client) fails pip's check for an older
    machine whenever a dependency's newest wheel needs a newer glibc: the reason for the above."""
    this = Platform.here()
    if this.libc != "glibc" or tuple(map(int, this.libc_version.split("."))) < (2, 34):
        pytest.skip("needs a client with glibc 2.34 or later")
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest",
                    str(tmp_path), "cryptography"], check=True)
    older = Platform(system="Linux", machine=this.machine, libc="glibc", libc_version="2.27", python=this.python)
    assert _pip_installs(str(tmp_path), older, "cryptography").returncode != 0


@pytest.mark.slow
def test_uvs_wheel_for_the_cluster_machine_is_fetched_once_and_its_executable_runs_once_unpacked(tmp_path):
    """The wheel fits the machine's architecture and C library; unpacked with the standard library
    (as the cluster machine does, by the script it is sent), the executable is the client's uv."""
    cache = tmp_path / "cache"
    here = Platform.here()
    if here.system != "Linux" or here.machine not in ("x86_64", "aarch64"):
        pytest.skip("uv's wheels are fetched for x86_64 and aarch64 Linux clusters; this test runs one here")
    wheel = fetch_uv_wheel(here, str(cache))
    assert wheel.version == uv_version() and wheel.file.startswith(f"uv-{wheel.version}-") and here.machine in wheel.file
    assert fetch_uv_wheel(here, str(cache)) == wheel  # kept: not downloaded again
    arm = fetch_uv_wheel(Platform(system="Linux", machine="aarch64", libc="musl", libc_version="1.2", python="3.12"),
                         str(cache))
    assert "aarch64" in arm.file and "musllinux" in arm.file and arm.path != wheel.path
    target = tmp_path / "remote" / "bin" / f"uv-{wheel.version}"
    done = subprocess.run([sys.executable, "-c", scripts.source("unpack_uv.py"), os.path.join(wheel.path, wheel.file),
                           wheel.member, str(target)], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert os.listdir(target.parent) == [target.name]  # no partial file left beside it
    said = subprocess.run([str(target), "--version"], check=True, capture_output=True, text=True)
    assert said.stdout.split()[:2] == ["uv", wheel.version]


def test_a_machine_without_a_uv_wheel_is_refused_with_the_reason_and_not_asked_again(tmp_path, monkeypatch):
    odd = Platform(system="Linux", machine="mips64", libc="glibc", libc_version="2.31", python="3.11")
    with pytest.raises(WheelhouseError, match=r"uv==.* for Linux mips64, glibc 2\.31"):
        fetch_uv_wheel(odd, str(tmp_path))
    monkeypatch.setattr(subprocess, "run", None)  # a second download attempt would fail differently
    with pytest.raises(WheelhouseError, match="mips64"):
        fetch_uv_wheel(odd, str(tmp_path))
