"""The conda installer without a cluster server: parsing on the client, then resolve and install
into a real environment directory, through py-rattler and through a fake conda CLI on PATH."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import pytest
from rh_conda.installer import CondaInstaller
from rh_conda.request import parse

import rh_core as rh
from rh_core.server.envs import ClusterEnvironment, install
from rh_core.errors import InstallError
from rh_core.packages import claim
from rh_core.plugin.interfaces import InstallStep


def step_for(requirement, **options) -> InstallStep:
    """What the client sends for ``requirement`` (a ``conda:...`` string, or a name with options)."""
    host = rh.default_host()
    if options or not requirement.startswith("conda:"):
        requirement = rh.package(name=requirement, install_method="conda", **options)
    return host.installer("conda")().prepare(None, claim(requirement, host))


def install_into(env, *steps):
    return install(env, list(steps), rh.default_host().installer)


@pytest.fixture
def env(tmp_path) -> ClusterEnvironment:
    """The default environment of a server whose state dir is ``tmp_path`` (conda needs no venv)."""
    return ClusterEnvironment.open(str(tmp_path / "state"), None)


def run_in(env, *argv) -> str:
    return subprocess.run(list(argv), env={**os.environ, **env.variables}, capture_output=True, text=True,
                          check=True).stdout


# --- the client side ------------------------------------------------------------------------------


def test_channel_in_the_requirement_comes_first_then_the_defaults():
    request = parse("mychannel::pkg=1.0", {}, environ={})
    assert (request.spec, request.channel, request.channels) == ("pkg=1.0", "mychannel", ("mychannel", "conda-forge"))
    assert request.channel_spec == "mychannel::pkg=1.0"


def test_defaults_come_from_the_environment_variable_and_paths_become_file_urls():
    request = parse("pkg", {}, environ={"RH_CONDA_CHANNELS": "extra, /srv/channel/"})
    assert request.channels == ("extra", "file:///srv/channel")
    assert request.channel is None


def test_channels_option_replaces_the_defaults():
    request = parse("http://127.0.0.1:9/ch::pkg >=2", {"channels": ["a", "http://127.0.0.1:9/ch/"]},
                    environ={"RH_CONDA_CHANNELS": "not-used"})
    assert request.channels == ("http://127.0.0.1:9/ch", "a")
    assert request.spec == "pkg >=2"


def test_defaults_come_from_the_config_file_when_the_variable_is_unset(tmp_path, monkeypatch):
    from rh_core import config

    monkeypatch.setenv("RH_HOME", str(tmp_path))
    (tmp_path / "config.yaml").write_text("conda_channels: [mirror, /srv/channel]\n")
    config.reload()
    try:
        with warnings.catch_warnings():  # an rh_core that does not document the key yet warns about it
            warnings.simplefilter("ignore")
            assert parse("pkg", {}, environ={}).channels == ("mirror", "file:///srv/channel")
            assert parse("pkg", {}, environ={"RH_CONDA_CHANNELS": "first"}).channels == ("first",)
            (tmp_path / "config.yaml").write_text("conda_channels: 'a, b'\n")
            config.reload()
            assert parse("pkg", {}, environ={}).channels == ("a", "b")
    finally:
        config.reload()


def test_conda_prefix_and_package_reach_the_conda_installer(channel_url):
    step = step_for(f"conda:{channel_url}::rhtest-hello=1.0")
    assert (step.method, step.spec, step.requirement) == ("conda", "rhtest-hello=1.0",
                                                          f"conda:{channel_url}::rhtest-hello=1.0")
    assert step.options["channels"] == [channel_url]  # RH_CONDA_CHANNELS is the same channel: listed once
    packaged = step_for("rhtest-hello", channels=["/srv/ch"])
    assert packaged.options["channels"] == ["file:///srv/ch"] and packaged.requirement == "conda:rhtest-hello"


@pytest.mark.parametrize("requirement, options, message", [
    ("conda:", {}, "not a valid match spec"),
    ("conda:numpy*", {}, "not a valid match spec"),
    ("rhtest-hello", {"chanels": ["x"]}, "unknown options ['chanels']"),
    ("rhtest-hello", {"channels": "conda-forge"}, "must be a list"),
])
def test_bad_requirements_are_refused_on_the_client(requirement, options, message):
    with pytest.raises(InstallError, match=message.replace("[", r"\[").replace("]", r"\]").replace("*", r"\*")):
        step_for(requirement, **options)


# --- py-rattler on the cluster --------------------------------------------------------------------


def test_identity_is_the_resolved_package_records(env, channel_url):
    installer = CondaInstaller()
    assert installer.resolve(step_for("conda:rhtest-hello=1.0"), env) == "conda:rhtest-hello-1.0-0"
    assert installer.resolve(step_for("conda:rhtest-greeter"), env) == "conda:rhtest-greeter-1.0-0 rhtest-hello-2.0-0"
    assert not os.path.exists(env.conda_prefix), "resolving installs nothing"


def test_install_puts_the_binary_on_the_environment_path_and_a_repeat_does_nothing(env, tmp_path, monkeypatch):
    # Caches must go below the environment, never to ~/.cache.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home" / ".cache"))
    step = step_for("conda:rhtest-hello=1.0")
    assert install_into(env, step) == {"installed": ["conda:rhtest-hello=1.0"], "skipped": []}
    assert env.variables["CONDA_PREFIX"] == env.conda_prefix
    assert run_in(env, "rhtest-hello") == "rhtest-hello 1.0\n"
    with open(os.path.join(env.conda_prefix, "share", "rhtest-hello", "hello.txt")) as f:
        assert f.read() == "hello 1.0\n"
    assert os.listdir(os.path.join(env.root, "conda-cache", "pkgs"))
    assert not os.path.exists(tmp_path / "home" / ".cache")

    meta = os.listdir(os.path.join(env.conda_prefix, "conda-meta"))
    repeat = install_into(env, step_for("conda:rhtest-hello=1.0"))
    assert repeat == {"installed": [], "skipped": ["conda:rhtest-hello=1.0"]}
    assert os.listdir(os.path.join(env.conda_prefix, "conda-meta")) == meta


def test_a_later_package_keeps_the_earlier_ones_and_a_new_pin_replaces_the_old(env):
    install_into(env, step_for("conda:rhtest-hello=1.0"))
    install_into(env, step_for("conda:rhtest-other"))
    assert os.path.isfile(os.path.join(env.conda_prefix, "share", "rhtest-other", "other.txt"))
    assert run_in(env, "rhtest-hello") == "rhtest-hello 1.0\n"
    install_into(env, step_for("conda:rhtest-hello=2.0"))
    install_into(env, step_for("conda:rhtest-greeter"))  # needs rhtest-hello >=2, which the last pin allows
    assert run_in(env, "rhtest-greeter") == "greeter: rhtest-hello 2.0\n"
    assert os.path.isfile(os.path.join(env.conda_prefix, "share", "rhtest-other", "other.txt"))


def test_a_package_missing_from_the_channels_fails_before_anything_is_installed(env, channel_url):
    with pytest.raises(InstallError) as caught:
        install_into(env, step_for("conda:rhtest-hello=1.0"), step_for("conda:rhtest-nothere>=3"))
    message = str(caught.value)
    assert "'conda:rhtest-nothere>=3'" in message and channel_url in message and "rhtest-nothere" in message
    assert not os.path.exists(env.conda_prefix) and env.installed() == {}


def test_a_conflict_with_an_earlier_request_is_reported_and_leaves_the_prefix(env):
    install_into(env, step_for("conda:rhtest-hello=1.0"))
    before = sorted(os.listdir(os.path.join(env.conda_prefix, "conda-meta")))
    # Alone, rhtest-greeter resolves (with rhtest-hello 2.0); with the earlier pin hello=1.0 it cannot.
    with pytest.raises(InstallError) as caught:
        install_into(env, step_for("conda:rhtest-greeter"))
    assert "'conda:rhtest-greeter'" in str(caught.value) and "rhtest-hello=1.0" in str(caught.value)
    assert sorted(os.listdir(os.path.join(env.conda_prefix, "conda-meta"))) == before
    assert run_in(env, "rhtest-hello") == "rhtest-hello 1.0\n"
    assert list(env.installed()) == ["conda:rhtest-hello-1.0-0"]


def test_a_local_channel_missing_on_the_cluster_is_named(env, tmp_path):
    step = step_for("rhtest-hello", channels=[str(tmp_path / "nowhere")])
    with pytest.raises(InstallError, match="is not a folder on the cluster"):
        install_into(env, step)


def test_http_channel(env, http_channel):
    install_into(env, step_for("rhtest-hello=2.0", channels=[http_channel]))
    assert run_in(env, "rhtest-hello") == "rhtest-hello 2.0\n"


# --- a conda CLI on the cluster's PATH -----------------------------------------------------------

def test_a_conda_cli_on_path_is_used_with_channels_in_order(env, fake_cli, channel_url):
    step = step_for("conda:mine::rhtest-hello=1.0")
    assert CondaInstaller().resolve(step, env) == "conda:rhtest-hello-1.0-fake_0"
    install_into(env, step)
    install_into(env, step_for("rhtest-other", channels=["b", "c"]))
    dry_run = os.path.join(env.root, "conda-dry-run")
    assert fake_cli() == [
        ["create", "--dry-run", "--json", "--yes", "--prefix", dry_run,
         "--override-channels", "--channel", "mine", "--channel", channel_url, "mine::rhtest-hello=1.0"],
        ["create", "--dry-run", "--json", "--yes", "--prefix", dry_run,
         "--override-channels", "--channel", "mine", "--channel", channel_url, "mine::rhtest-hello=1.0"],
        ["create", "--yes", "--prefix", env.conda_prefix,
         "--override-channels", "--channel", "mine", "--channel", channel_url, "mine::rhtest-hello=1.0"],
        ["create", "--dry-run", "--json", "--yes", "--prefix", dry_run,
         "--override-channels", "--channel", "b", "--channel", "c", "rhtest-other"],
        ["install", "--yes", "--prefix", env.conda_prefix,  # the prefix exists now
         "--override-channels", "--channel", "b", "--channel", "c", "rhtest-other"],
    ]
    assert run_in(env, "rhtest-hello") == "installed by the fake cli\n"


def test_a_failing_cli_solve_names_the_requirement_channels_and_output(env, fake_cli, channel_url):
    with pytest.raises(InstallError) as caught:
        install_into(env, step_for("conda:rhtest-nothere"))
    message = str(caught.value)
    assert "'conda:rhtest-nothere'" in message and channel_url in message and "PackagesNotFoundError" in message
    assert "micromamba" in message and not os.path.exists(env.conda_prefix)


def test_tool_option_chooses_rattler_even_with_a_cli_on_path(env, fake_cli):
    install_into(env, step_for("rhtest-hello=2.0", tool="rattler"))
    assert fake_cli() == [] and run_in(env, "rhtest-hello") == "rhtest-hello 2.0\n"


def test_a_tool_missing_on_the_cluster_is_named(env):
    with pytest.raises(InstallError, match="tool='mamba', which is not on the cluster's PATH"):
        install_into(env, step_for("rhtest-hello", tool="mamba"))


def test_plugin_module_loads_without_rattler():
    code = textwrap.dedent("""
        import sys
        sys.modules["rattler"] = None  # any import of it now fails
        import rh_conda.plugin, rh_conda.installer
        import rh_core as rh
        assert "conda" in rh.PluginHost().registry("installer").names()
    """)
    subprocess.run([sys.executable, "-c", code], check=True)
