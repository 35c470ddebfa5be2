"""Resource names: save and load local clusters, BYO clusters and functions through ~/ (local
store), @/ (S3 on a moto server, and a shared directory) and ^ (a plugin's builtins); two users
sharing a function; every bad input."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest

pytest.register_assert_rewrite("names_helpers")
from names_helpers import byo_cluster, forget_project, set_moto_auth, write_config

import rh_core as rh
from rh_core import names
from rh_core.errors import RhError
from rh_core.names import (
    ResourceExistsError,
    ResourceFormatError,
    ResourceNotFoundError,
    StoreError,
)

pytest_plugins = ["names_helpers"]


def local_cluster(tmp_path, name="loc"):
    return rh.LocalCluster(name=name, state_dir=str(tmp_path / f"{name}-state"), executor_options={"num_workers": 1})


# -------------------------------------------------------------------------------------------------
# Names


@pytest.mark.parametrize("text, scope, path", [
    ("~/gpu", "~", "gpu"), ("@/team/embed", "@", "team/embed"), ("^rh-cpu", "^", "rh-cpu"),
    ("gpu", "~", "gpu"), ("  ~/a.b_c-1  ", "~", "a.b_c-1"),
])
def test_names_parse_into_scope_and_path(text, scope, path):
    parsed = names.parse_name(text)
    assert (parsed.scope, parsed.path) == (scope, path)
    assert str(parsed) == (f"^{path}" if scope == "^" else f"{scope}/{path}")


@pytest.mark.parametrize("text", ["~/", "@/", "~/../etc/passwd", "@/team//x", "~/.hidden", "~/a b", ""])
def test_malformed_names_are_refused_with_an_example(text):
    with pytest.raises(ValueError, match="name"):
        names.parse_name(text)


@pytest.mark.parametrize("name", ["~/" + "a" * 201, "@/" + "/".join(["team"] * 120), "~/nul\0byte", "~/new\nline",
                                  "~/a/../b", "~/slash\\x"])
@pytest.mark.parametrize("use", ["save", "exists", "load", "delete", "function"])
def test_a_long_or_odd_name_gets_the_projects_own_error_everywhere(home, dir_store, name, use):
    act = {"save": lambda: rh.LocalCluster(name="x").save(name, store=dir_store),
           "exists": lambda: rh.exists(name, store=dir_store),
           "load": lambda: rh.cluster(name=name, store=dir_store, dryrun=True),
           "delete": lambda: rh.delete(name, store=dir_store),
           "function": lambda: rh.function(json.dumps).save(name, store=dir_store)}[use]
    with pytest.raises(rh.InvalidNameError, match="too long|not a valid resource name"):
        act()


def test_folders_may_be_empty_or_end_with_a_slash():
    assert names.parse_name("@/", folder=True).path == ""
    assert names.parse_name("~/team/", folder=True).path == "team"
    assert names.parse_name("^", folder=True).scope == "^"


# -------------------------------------------------------------------------------------------------
# Local clusters


def test_local_cluster_round_trip_through_the_local_store(home, tmp_path):
    cluster = local_cluster(tmp_path)
    assert cluster.save() is cluster and cluster.saved_name == "~/loc"
    path = home / "names" / "loc.yaml"
    text = path.read_text()
    assert "format: 1" in text and "kind: cluster" in text and "num_workers: 1" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "names").stat().st_mode) == 0o700

    loaded = rh.cluster(name="~/loc")
    assert isinstance(loaded, rh.LocalCluster) and loaded.config() == cluster.config()
    assert loaded.saved_name == "~/loc"
    status = loaded.last_status  # refreshed on load, and nothing was started
    assert status.machines == "up" and not status.running and "rh up ~/loc" in status.explanation
    assert loaded.read_state() is None

    assert rh.cluster(name="loc", dryrun=True).last_status is None  # bare name: ~/; dryrun: no refresh


def test_the_default_local_cluster_saves_without_this_users_paths(home):
    rh.LocalCluster(name="mine").save()
    record = names.describe("~/mine")
    assert record["cluster"]["state_dir"] is None  # whoever loads it gets their own $RH_HOME/local
    assert str(home) not in (home / "names" / "mine.yaml").read_text()


def test_a_loaded_local_cluster_runs_functions_and_reports_its_server(home, tmp_path):
    cluster = local_cluster(tmp_path, "runner")
    cluster.save()
    loaded = rh.cluster(name="~/runner", dryrun=True)
    try:
        assert rh.function(sorted).to(loaded)([3, 1, 2]) == [1, 2, 3]
        status = loaded.refresh_status()
        assert status.running and status.server["executor"] == "process" and status.server["pid"]
    finally:
        loaded.down()
    assert not loaded.refresh_status().running


@pytest.mark.parametrize("store_kind", ["s3", "dir"])
def test_local_cluster_round_trip_through_the_shared_store(home, tmp_path, request, store_kind):
    store = request.getfixturevalue(f"{store_kind}_store")
    write_config(store)  # bucket and prefix (or path) come from the config file
    cluster = local_cluster(tmp_path, "shared-loc")
    with pytest.warns(UserWarning, match="saved without state_dir"):  # a path of this user's: each loader has their own
        cluster.save("@/clusters/shared-loc")
    assert not (home / "names" / "clusters").exists()  # the shared store, not the local one
    loaded = rh.cluster(name="@/clusters/shared-loc", dryrun=True)
    assert loaded.config() == {**cluster.config(), "state_dir": str(home / "local")}
    assert loaded.saved_name == "@/clusters/shared-loc"
    assert rh.ls("@/") == ["@/clusters/"] and rh.ls("@/clusters") == ["@/clusters/shared-loc"]


def test_the_s3_store_keeps_resources_under_the_configured_prefix(home, s3_store):
    import boto3

    write_config(s3_store)
    rh.LocalCluster(name="x").save("@/x")
    listed = boto3.client("s3", endpoint_url=s3_store["endpoint_url"]).list_objects_v2(Bucket=s3_store["bucket"])
    assert [item["Key"] for item in listed["Contents"]] == ["teams/ml/x.yaml"]


def test_the_shared_store_can_be_given_per_call(home, dir_store):
    rh.LocalCluster(name="percall").save("@/percall", store=dir_store)
    assert rh.exists("@/percall", store=dir_store)
    assert rh.cluster(name="@/percall", store=dir_store, dryrun=True).name == "percall"


# -------------------------------------------------------------------------------------------------
# BYO clusters over SSH


@pytest.mark.parametrize("target", ["~/byo", "@/s3/byo", "@/dir/byo"])
def test_byo_cluster_round_trip(home, tmp_path, sshd, ssh_home, remote_home_dir, request, target):
    if target.startswith("@/"):
        write_config(request.getfixturevalue(f"{target.split('/')[1]}_store"))
    cluster = byo_cluster(sshd, tmp_path, remote_dir=remote_home_dir)
    cluster.save(target)
    loaded = rh.cluster(name=target, dryrun=True)
    assert isinstance(loaded, rh.RemoteCluster) and loaded.config() == cluster.config()
    assert loaded._connection is None and loaded._transport is None  # dryrun: no connection at all

    refreshed = rh.cluster(name=target)  # asks the machine over SSH, starts nothing
    status = refreshed.last_status
    assert status.kind == "byo" and status.machines == "up" and not status.running
    assert f"rh up {target}" in status.explanation


def test_credentials_never_enter_a_saved_cluster(home, tmp_path, sshd, ssh_home):
    cluster = byo_cluster(sshd, tmp_path, password="hunter2", passphrase="open sesame")
    with pytest.warns(UserWarning, match="saved without spec.ssh_creds.password, spec.ssh_creds.passphrase"):
        cluster.save("~/with-password")
    text = (home / "names" / "with-password.yaml").read_text()
    assert "hunter2" not in text and "open sesame" not in text
    assert "~/.ssh/id_ed25519" in text  # a key's path is fine
    assert names.describe("~/with-password")["not_saved"] == ["spec.ssh_creds.password", "spec.ssh_creds.passphrase"]

    key_contents = sshd.client_key.read_text()
    with pytest.raises(RhError, match="holds a private key's contents"):
        rh.cluster(name="inline-key", ips=["127.0.0.1"], ssh_creds={"ssh_private_key": key_contents}).save()
    assert not rh.exists("~/inline-key")


def test_an_unreachable_byo_cluster_loads_and_says_why(home, tmp_path):
    from rh_core.testing.sshd import free_port

    cluster = rh.cluster(name="gone", ips=["127.0.0.1"], ssh_creds={
        "ssh_port": free_port(), "ssh_private_key": str(tmp_path / "no-key"), "connect_timeout": 2})
    cluster.save()
    status = rh.cluster(name="~/gone").last_status
    assert status.machines == "unknown" and not status.running
    assert "cannot be reached" in status.explanation


# -------------------------------------------------------------------------------------------------
# Functions


def test_function_round_trip_with_its_working_directory(home, code_dir, process_cluster):
    embed = code_dir.embed
    process_cluster.save("~/proc")
    rh.function(embed).to(process_cluster).save("~/team/embed")
    record = names.describe("~/team/embed")
    assert record["function"]["module"] == code_dir.module and record["function"]["qualname"] == "embed"
    assert record["function"]["code"]["import_path"] == "." and record["cluster"] == {"name": "~/proc"}
    assert "!!" not in (home / "names" / "team" / "embed.yaml").read_text()  # plain YAML: no python/binary tags

    forget_project(code_dir)  # as if loaded by another process, from elsewhere
    os.chdir(home)
    loaded = rh.function(name="~/team/embed")
    assert loaded.fn.__code__.co_filename.startswith(str(home / "code"))
    assert loaded.system.saved_name == "~/proc"
    assert loaded(["a", "bb", "ccc"]) == [1, 2, 3]  # the helper module travelled too
    assert rh.get(loaded.remote(["dddd"])) == [4]

    loaded.save("~/team/embed-copy")  # a loaded function saves again, with the code it was loaded with
    assert names.describe("~/team/embed-copy")["function"]["code"]["sha256"] == record["function"]["code"]["sha256"]


def test_function_round_trip_through_the_shared_store(home, code_dir, process_cluster, shared_store):
    write_config(shared_store)
    embed = code_dir.embed
    process_cluster.save("~/proc")
    with pytest.warns(UserWarning, match="saved without state_dir"):
        rh.function(embed).to(process_cluster).save("@/team/embed")
    record = names.describe("@/team/embed")
    # A local name means nothing to other users: the shared record holds the cluster inline,
    # without this user's state folder: whoever loads it uses their own local cluster.
    assert record["cluster"]["config"]["kind"] == "local" and "name" not in record["cluster"]
    assert "state_dir" not in record["cluster"]["config"]
    assert rh.ls("@/team") == ["@/team/embed"]  # the code archive is not listed

    forget_project(code_dir)
    loaded = rh.function(name="@/team/embed")
    try:
        assert loaded.system.state_dir == str(home / "local")
        assert loaded(["xyz"]) == [3]
    finally:
        loaded.system.stop_server()
    assert rh.function(name="@/team/embed", dryrun=True).system is None


def test_a_function_of_an_installed_module_records_no_code(home):
    rh.function(json.dumps).save("~/dumps")
    record = names.describe("~/dumps")
    assert record["function"] == {"module": "json", "qualname": "dumps", "code": None, "call_options": {}}
    assert record["cluster"] is None
    assert rh.function(name="~/dumps")({"a": 1}) == '{"a": 1}'  # no cluster: runs here


def test_call_options_are_saved_with_the_function(home):
    rh.function(json.dumps).options(timeout=5).save("~/dumps-timeout")
    assert rh.function(name="~/dumps-timeout").call_options == {"timeout": 5}


@pytest.mark.parametrize("make", [lambda: (lambda x: x), lambda: _closure()], ids=["lambda", "closure"])
def test_functions_that_travel_only_by_value_cannot_be_saved(home, make):
    with pytest.raises(RhError, match="only functions defined at the top level of a module file"):
        rh.function(make()).save("~/by-value")
    assert not rh.exists("~/by-value")


def _closure():
    factor = 3

    def times(x):
        return x * factor

    return times


def test_two_users_share_a_function_through_s3(tmp_path, s3_store):
    """Two homes and two working directories stand in for two users on two machines."""
    alice_home, bob_home = tmp_path / "alice", tmp_path / "bob"
    project, elsewhere = tmp_path / "alice-project", tmp_path / "bob-cwd"
    project.mkdir()
    elsewhere.mkdir()
    (project / "textstats.py").write_text("def length(text):\n    return len(text)\n")
    (project / "shared_embed.py").write_text(textwrap.dedent("""
        import textstats

        def embed(texts):
            return [textstats.length(t) * 10 for t in texts]
    """))

    def run_as(user_home, cwd, code):
        env = {**os.environ, "RH_HOME": str(user_home), "PYTHONPATH": ""}
        for key, value in s3_store.items():
            subprocess.run([sys.executable, "-m", "rh_core.cli", "config", "set", f"store.{key}", value],
                           env=env, check=True, capture_output=True)
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=180, check=False)

    alice = run_as(alice_home, project, """
        import sys; sys.path.insert(0, '.')
        import rh_core as rh, shared_embed
        f = rh.function(shared_embed.embed).to(rh.here)
        assert f(['ab']) == [20]
        f.save(name='@/team/embed')
        rh.here.stop_server()
    """)
    assert alice.returncode == 0, alice.stderr
    bob = run_as(bob_home, elsewhere, """
        import os, rh_core as rh
        f = rh.function(name='@/team/embed')
        print(f(['a', 'bcd']))
        print(f.system.state_dir)
        print(os.path.dirname(f.fn.__code__.co_filename))
        f.system.stop_server()
    """)
    assert bob.returncode == 0, bob.stderr
    result, state_dir, code_from = bob.stdout.splitlines()
    assert result == "[10, 30]"
    assert state_dir == str(bob_home / "local")  # Bob's own local cluster, not Alice's
    assert code_from.startswith(str(bob_home / "code"))


# -------------------------------------------------------------------------------------------------
# Builtins (^)


def test_builtins_registered_by_a_plugin_load_by_caret_name(home, builtins_plugin, process_cluster):
    assert {"^test-byo", "^test-double", "^test-local"} <= set(rh.ls("^"))
    assert rh.exists("^test-local") and not rh.exists("^test-lokal")

    local = rh.cluster(name="^test-local")
    assert isinstance(local, rh.LocalCluster) and local.executor_options == {"num_workers": 1}
    assert local.saved_name == "^test-local" and not local.last_status.running

    byo = rh.cluster(name="^test-byo", dryrun=True)
    assert isinstance(byo, rh.RemoteCluster) and byo.spec["ips"] == ["127.0.0.1"]
    assert rh.cluster(name="^test-byo", dryrun=True) is not byo  # built fresh for every load

    double = rh.function(name="^test-double", system=process_cluster)
    assert double(21) == 42

    byo.save("~/copied-byo")  # a builtin can be saved under a name of one's own
    assert rh.cluster(name="~/copied-byo", dryrun=True).spec == byo.spec


def test_builtins_cannot_be_saved_over_or_deleted(home, builtins_plugin):
    with pytest.raises(ValueError, match="builtins are registered by plugins"):
        rh.LocalCluster(name="x").save("^test-local")
    with pytest.raises(RhError, match="cannot be deleted"):
        rh.delete("^test-local")


def test_an_unknown_builtin_lists_near_ones(home, builtins_plugin):
    with pytest.raises(ResourceNotFoundError, match="did you mean \\^test-local"):
        rh.cluster(name="^test-locl", dryrun=True)


# -------------------------------------------------------------------------------------------------
# exists, ls, delete


def test_exists_ls_and_delete(home, code_dir):
    rh.LocalCluster(name="a").save()
    rh.LocalCluster(name="b").save("~/team/b")
    rh.function(code_dir.embed).save("~/team/sub/embed")
    assert rh.ls() == ["~/a", "~/team/"] and rh.ls("~") == rh.ls()
    assert rh.ls("~/team") == ["~/team/b", "~/team/sub/"]
    assert rh.exists("~/team/sub/embed") and not rh.exists("~/team/sub/nope")
    archive = home / "names" / ".code" / "team" / "sub" / "embed.tar.gz"
    assert archive.exists()
    rh.delete("~/team/sub/embed")
    assert not rh.exists("~/team/sub/embed") and not archive.exists()
    with pytest.raises(ResourceNotFoundError, match="did you mean ~/team/b"):
        rh.delete("~/team/bb")
    with pytest.raises(ResourceNotFoundError, match="nothing is saved as '~/tema/'.*did you mean ~/team/"):
        rh.ls("~/tema")
    assert rh.ls("@/", store={"backend": "dir", "path": str(home / "names")}) == ["@/a", "@/team/"]


# -------------------------------------------------------------------------------------------------
# Bad input and faults


@pytest.mark.parametrize("store_kind", ["local", "s3", "dir"])
def test_a_missing_name_lists_near_matches_in_that_store(home, request, store_kind):
    scope = "~" if store_kind == "local" else "@"
    if store_kind != "local":
        write_config(request.getfixturevalue(f"{store_kind}_store"))
    for name in ("gpu-a100", "gpu-a10g", "cpu-big"):
        rh.LocalCluster(name=name).save(f"{scope}/{name}")
    with pytest.raises(ResourceNotFoundError) as caught:
        rh.cluster(name=f"{scope}/gpu-a100x")
    assert caught.value.near[:2] == [f"{scope}/gpu-a100", f"{scope}/gpu-a10g"]
    assert "cpu-big" not in str(caught.value)
    assert ("local store" if scope == "~" else "shared store") in str(caught.value)
    with pytest.raises(ResourceNotFoundError, match="nothing is saved as '~/zzz'"):
        rh.function(name="~/zzz")


def test_a_record_of_a_newer_format_is_refused_naming_the_version(home):
    rh.LocalCluster(name="future").save()
    path = home / "names" / "future.yaml"
    path.write_text(path.read_text().replace("format: 1", "format: 3").replace("rh_core 0.1.0", "rh_core 9.0"))
    with pytest.raises(ResourceFormatError, match="saved in resource format 3 \\(by rh_core 9.0\\).*reads format 1"):
        rh.cluster(name="~/future")


@pytest.mark.parametrize("text, message", [
    (": : not yaml [", "is not valid YAML"),
    ("- a list\n", "does not hold a saved resource"),
    ("kind: cluster\ncluster: {}\n", "no valid 'format'"),
    ("format: 1\nkind: spaceship\n", "kind 'spaceship'"),
    ("format: 1\nkind: cluster\ncluster: {kind: quantum}\n", "cannot build"),
])
def test_a_corrupt_record_is_reported_with_its_path_and_left_untouched(home, text, message):
    rh.LocalCluster(name="broken").save()
    path = home / "names" / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ResourceFormatError, match=message) as caught:
        rh.cluster(name="~/broken")
    assert str(path) in str(caught.value)
    assert path.read_text() == text
    with pytest.raises(ResourceExistsError):
        rh.LocalCluster(name="broken").save()
    assert path.read_text() == text


def test_a_corrupt_shared_record_names_its_s3_url(home, s3_store):
    import boto3

    write_config(s3_store)
    boto3.client("s3", endpoint_url=s3_store["endpoint_url"]).put_object(
        Bucket=s3_store["bucket"], Key="teams/ml/bad.yaml", Body=b"{unclosed")
    with pytest.raises(ResourceFormatError, match=f"s3://{s3_store['bucket']}/teams/ml/bad.yaml is not valid YAML"):
        rh.cluster(name="@/bad")


def test_tampered_function_code_is_refused(home, code_dir):
    rh.function(code_dir.embed).save("~/embed")
    (home / "names" / ".code" / "embed.tar.gz").write_bytes(b"not the archive")
    forget_project(code_dir)
    with pytest.raises(ResourceFormatError, match="not the archive that was saved"):
        rh.function(name="~/embed")


def test_saving_over_a_name_needs_overwrite(home, dir_store):
    rh.LocalCluster(name="one", executor="process").save("~/taken")
    rh.LocalCluster(name="one").save("@/taken", store=dir_store)
    for target in ("~/taken", "@/taken"):
        with pytest.raises(ResourceExistsError, match=f"{target} is already saved .*overwrite=True"):
            rh.LocalCluster(name="two").save(target, store=dir_store)
        rh.LocalCluster(name="two").save(target, overwrite=True, store=dir_store)
        assert rh.cluster(name=target, dryrun=True, store=dir_store).name == "two"


def test_a_cluster_name_is_not_a_function_and_back(home, code_dir):
    rh.LocalCluster(name="c").save()
    rh.function(code_dir.embed).save("~/f")
    with pytest.raises(RhError, match="~/c is a cluster, not a function"):
        rh.function(name="~/c")
    with pytest.raises(RhError, match="~/f is a function, not a cluster"):
        rh.cluster(name="~/f", dryrun=True)


def test_without_a_configured_shared_store_at_names_say_how_to_configure_one(home):
    with pytest.raises(StoreError, match="no shared store is configured .*rh config set store.backend"):
        rh.LocalCluster(name="x").save("@/x")
    with pytest.raises(Exception, match="unknown store 'ftp'; valid stores: dir, s3"):
        rh.ls("@/", store={"backend": "ftp"})


@pytest.mark.parametrize("fault", ["s3-unreachable", "s3-no-bucket", "s3-denied", "dir-missing"])
def test_a_failing_shared_store_is_an_error_naming_it_never_a_fallback(home, tmp_path, request, fault):
    from rh_core.testing.sshd import free_port

    if fault.startswith("s3"):
        store = dict(request.getfixturevalue("s3_store"))
        store.update({"s3-unreachable": {"endpoint_url": f"http://127.0.0.1:{free_port()}"},
                      "s3-no-bucket": {"bucket": "no-such-bucket"}}.get(fault, {}))
        expected = {"s3-unreachable": "cannot be reached", "s3-no-bucket": "bucket 'no-such-bucket' does not exist",
                    "s3-denied": "was denied"}[fault]
    else:
        store, expected = {"backend": "dir", "path": str(tmp_path / "unmounted")}, "does not exist \\(is the shared filesystem mounted"
    write_config(store)
    rh.LocalCluster(name="mine").save("~/mine")
    if fault == "s3-denied":
        set_moto_auth(store["endpoint_url"], enforced=True)
    attempts = [lambda: rh.LocalCluster(name="mine").save("@/mine"), lambda: rh.cluster(name="@/mine"),
                lambda: rh.ls("@/"), lambda: rh.exists("@/mine"), lambda: rh.delete("@/mine")]
    if fault == "s3-unreachable":
        attempts = attempts[:2]  # each waits out boto3's retries
    try:
        for attempt in attempts:
            with pytest.raises(StoreError, match=expected) as caught:
                attempt()
            where = store["path"] if fault == "dir-missing" else store.get("bucket")
            assert where in str(caught.value)
    finally:
        if fault == "s3-denied":
            set_moto_auth(store["endpoint_url"], enforced=False)
    assert rh.ls("~/") == ["~/mine"]  # nothing went to the local store instead
