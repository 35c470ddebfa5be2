"""The plugin host: entry points, broken plugins, allow-lists, registries and `rh plugins`."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

import rh_core as rh
from rh_core.errors import PluginError, UnknownNameError
from rh_core.plugin.host import PluginHost


@pytest.fixture
def fake_plugins(tmp_path, monkeypatch):
    """Two installed plugin distributions on sys.path: one that works, one that fails to import."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "goodplug.py").write_text(textwrap.dedent("""
        import rh_core

        @rh_core.hookimpl
        def rh_register_executors(register):
            register("good", "goodplug:GoodExecutor", aliases=("fine",))

        @rh_core.hookimpl
        def rh_register_commands(cli):
            @cli.command(name="good-hello")
            def hello():
                print("hello from goodplug")

        class GoodExecutor:
            name = "good"
    """))
    (site / "brokenplug.py").write_text("raise ImportError('brokenplug needs libfoo')\n")
    (site / "newerplug.py").write_text(textwrap.dedent("""
        import rh_core

        @rh_core.hookimpl
        def rh_register_teleporters(register):
            pass
    """))
    for name, module in (("goodplug", "goodplug"), ("brokenplug", "brokenplug"), ("newerplug", "newerplug")):
        info = site / f"rh_{name}-1.2.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: rh-{name}\nVersion: 1.2.3\n")
        (info / "entry_points.txt").write_text(f"[rh_core.plugins]\n{name} = {module}\n")
    monkeypatch.syspath_prepend(str(site))
    return site


def test_broken_plugin_is_reported_and_the_others_load(fake_plugins):
    host = PluginHost()
    rows = {row.name: row for row in host.plugins()}
    assert rows["goodplug"].distribution == "rh-goodplug" and rows["goodplug"].version == "1.2.3"
    assert "rh_register_executors" in rows["goodplug"].hooks
    assert "brokenplug needs libfoo" in rows["brokenplug"].error
    # A plugin written against hooks this rh_core lacks is set aside, not fatal to the host.
    assert "implements hooks this rh_core does not have: rh_register_teleporters" in rows["newerplug"].error
    assert host.executor("good").name == "good"
    assert host.executor("fine") is host.executor("good")


def test_builtin_plugins_are_listed(fake_plugins):
    rows = {row.name: row for row in PluginHost().plugins()}
    assert rows["process_executor"].hooks == ("rh_register_executors",)
    assert rows["local_transport"].distribution == "rh-core (built in)"


def test_autoload_can_be_disabled_and_allow_listed(fake_plugins, monkeypatch):
    monkeypatch.setenv("RH_DISABLE_PLUGIN_AUTOLOAD", "1")
    names = {row.name for row in PluginHost().plugins()}
    assert "goodplug" not in names and "process_executor" in names
    monkeypatch.delenv("RH_DISABLE_PLUGIN_AUTOLOAD")
    monkeypatch.setenv("RH_PLUGINS", "goodplug")
    names = {row.name for row in PluginHost().plugins()}
    assert "goodplug" in names and "brokenplug" not in names


def test_unknown_names_list_the_valid_ones(fake_plugins):
    host = PluginHost()
    with pytest.raises(UnknownNameError, match="unknown executor 'nope'; .*brokenplug.* failed to load and may be "
                                               "what provides it.*; valid executors: fine, good, process"):
        host.executor("nope")
    with pytest.raises(UnknownNameError, match="valid plugin kinds: builtin, cluster_preset, executor, installer, provisioner, "
                                                   "secret_provider, store, transport"):
        host.registry("widget")


def test_a_name_a_known_plugin_provides_says_what_to_install_and_near_misses_are_suggested():
    host = PluginHost(autoload=False)
    with pytest.raises(UnknownNameError, match=r"unknown executor 'ray'; it comes with the rh-ray plugin: "
                                               r"`pip install rh-ray`; valid executors: process"):
        host.executor("ray")
    with pytest.raises(UnknownNameError, match=r"unknown provisioner 'aws'; .*`pip install rh-sky`"):
        host.provisioner("aws")
    with pytest.raises(UnknownNameError, match=r"unknown executor 'proces'; did you mean 'process'\?"):
        host.executor("proces")
    with pytest.raises(UnknownNameError, match=r"unknown install method 'conda'; .*`pip install rh-conda`"):
        from rh_core.packages import claim

        claim("conda:numpy", host)


def test_a_name_registered_twice_is_refused(fake_plugins):
    class Duplicate:
        @rh.hookimpl
        def rh_register_executors(self, register):
            register("process", object)

    host = PluginHost()
    host.register(Duplicate(), name="duplicate")
    with pytest.raises(PluginError, match="'process' is registered by both 'process_executor' and 'duplicate'"):
        host.registry("executor")


class ClaimsAddresses:
    """A provisioner plugin for machines given by address, as rh-byo-ssh registers its own."""

    def __init__(self, name: str) -> None:
        self.name = name

    @rh.hookimpl
    def rh_register_provisioners(self, register):
        register(self.name, "nowhere:Provisioner", claims_keywords=("ips",))


def test_the_provisioner_of_a_cluster_that_names_none_is_the_one_claiming_its_keywords():
    host = PluginHost(autoload=False)
    host.register(ClaimsAddresses("by-address"), name="by-address")
    assert host.provisioner_claiming(["ips", "ssh_creds"]) == "by-address"
    assert host.registry("provisioner").claiming(["instance_type"]) is None


def test_a_keyword_no_installed_provisioner_claims_says_what_to_install():
    with pytest.raises(PluginError, match=r"no installed provisioner takes rh.cluster\(ips=, ssh_creds=\) without a "
                                          r"provider: `pip install rh-byo-ssh`, which takes rh.cluster\(ips=...\); "
                                          r"the provisioners installed: none"):
        PluginHost(autoload=False).provisioner_claiming(["ips", "ssh_creds"])


def test_a_keyword_claimed_twice_is_refused_and_only_provisioners_claim():
    host = PluginHost(autoload=False)
    host.register(ClaimsAddresses("first"), name="first-plugin")
    host.register(ClaimsAddresses("second"), name="second-plugin")
    with pytest.raises(PluginError, match=r"rh.cluster's ips= is claimed by both '(first|second)' \('\1-plugin'\) "
                                          r"and '(first|second)'"):
        host.registry("provisioner")
    from rh_core.plugin.host import Registry

    with pytest.raises(PluginError, match="which only provisioners declare"):
        Registry("transport").register("ssh2", "x:Y", claims_keywords=("ips",), owner="plug")


def test_misspelled_hook_is_an_error():
    class Typo:
        @rh.hookimpl
        def rh_register_executor(self, register):  # missing the final s
            pass

    import pluggy

    with pytest.raises(pluggy.PluginValidationError):
        PluginHost(autoload=False).register(Typo())


def test_lazy_target_whose_module_is_missing_says_what_to_install():
    class Lazy:
        @rh.hookimpl
        def rh_register_executors(self, register):
            register("ghost", "rh_ghost_module_not_installed:Executor")

    host = PluginHost(autoload=False)
    host.register(Lazy(), name="lazy")
    with pytest.raises(PluginError, match="needs a module that is not installed"):
        host.executor("ghost")


def test_cli_lists_plugins_and_adds_plugin_commands(fake_plugins):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake_plugins), os.environ.get("PYTHONPATH", "")])}
    listed = subprocess.run(["rh", "plugins", "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert listed.returncode == 1, listed.stderr  # brokenplug failed to load: scripts and CI notice
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["goodplug"]["version"] == "1.2.3"
    assert "libfoo" in rows["brokenplug"]["error"]
    hello = subprocess.run(["rh", "good-hello"], capture_output=True, text=True, env=env, timeout=60)
    assert hello.stdout.strip() == "hello from goodplug"


def test_import_rh_core_imports_no_plugin_dependencies():
    script = "import sys, rh_core; print(sorted(m for m in ('ray', 'sky', 'paramiko', 'click') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_a_first_call_on_the_local_cluster_imports_no_plugin_dependencies(tmp_path):
    # Every installed plugin hears of the new connection (rh_cluster_ready); none may pay for its
    # own heavy imports (paramiko alone is about 0.2 s of the cold start) for a cluster not its own.
    script = textwrap.dedent(f"""
        import operator, sys
        import rh_core as rh
        cluster = rh.LocalCluster(state_dir={str(tmp_path / "state")!r}, executor_options={{"num_workers": 1}})
        try:
            assert rh.function(operator.add).to(cluster)(1, 2) == 3
            assert rh.default_host().distribution_of("byo_ssh") == "rh-byo-ssh"  # the plugins did load
        finally:
            cluster.stop_server()
        print(sorted(m for m in ("ray", "sky", "paramiko", "google", "click") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr


def test_patching_the_cluster_factory_replaces_it_and_undoing_restores_it():
    # Users' own tests patch the API this way; rh_core.cluster is also the old name of a module.
    import subprocess
    import sys

    code = (
        "import rh_core as rh\n"
        "from unittest import mock\n"
        "original = rh.cluster\n"
        "with mock.patch('rh_core.cluster') as fake:\n"
        "    assert rh.cluster is fake\n"
        "    import rh_core.clusters.base, rh_core.function\n"
        "    assert rh.cluster is fake\n"
        "assert rh.cluster is original and callable(rh.function)\n"
        "from rh_core.cluster import Cluster\n"  # the old name of the cluster classes' module still imports
        "assert Cluster.__module__ == 'rh_core.clusters.base' and rh.cluster is original\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning", "-c", code],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr


def test_every_hook_call_is_traced_with_rh_trace_hooks():
    # RH_TRACE_HOOKS shows each hook call, those made one plugin at a time among them.
    import subprocess
    import sys

    code = (
        "from rh_core.plugin.host import PluginHost\n"
        "host = PluginHost()\n"
        "host.executor('process')\n"
        "host.cluster_teardown(object())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "RH_TRACE_HOOKS": "1"})
    assert done.returncode == 0, done.stderr
    assert "rh_register_executors" in done.stdout
    assert "rh_cluster_teardown" in done.stdout


def test_the_old_flat_module_names_still_import_for_one_release_and_say_where_things_went():
    import subprocess
    import sys

    code = (
        "import warnings\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    from rh_core.plugin_types import Executor, Task\n"
        "    from rh_core.cluster import LocalCluster, from_config\n"
        "    import rh_core.remote\n"
        "    from rh_core.server import Server\n"  # a module that became a package of the same name
        "    from rh_core.client import read_secret\n"
        "import rh_core.plugin.interfaces, rh_core.clusters.local, rh_core.clusters, rh_core.clusters.remote\n"
        "assert Executor is rh_core.plugin.interfaces.Executor and Task is rh_core.plugin.interfaces.Task\n"
        "assert LocalCluster is rh_core.clusters.local.LocalCluster and from_config is rh_core.clusters.from_config\n"
        "assert rh_core.remote is rh_core.clusters.remote\n"
        "import rh_core.server.server, rh_core.client.connection\n"
        "assert Server is rh_core.server.server.Server and read_secret is rh_core.client.connection.read_secret\n"
        "said = [str(w.message) for w in seen if issubclass(w.category, DeprecationWarning)]\n"
        "assert any('rh_core.plugin_types is now rh_core.plugin.interfaces' in s for s in said), said\n"
        "assert any('rh_core.cluster.LocalCluster is now rh_core.clusters.local.LocalCluster' in s for s in said), said\n"
        "assert any('rh_core.client.read_secret is now rh_core.client.connection.read_secret' in s for s in said), said\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr
