"""Records in a shared (``@/``) store are another user's words: they carry settings, never paths or
secrets of that user's choosing, loading one with ``dryrun=True`` runs none of its code, and a
link planted in a shared folder is never followed. The attacker is a second local user who can
write to the shared folder, as every member of a team can."""

from __future__ import annotations

import contextlib
import os
import sys
import time

import pytest

pytest.register_assert_rewrite("names_helpers")
from names_helpers import forget_project, write_config
from test_state_files import FAKE_SERVER

import rh_core as rh
from rh_core.errors import ResourceFormatError, StoreError

pytest_plugins = ["names_helpers"]


@pytest.fixture
def team_store(reachable_tmp, home) -> dict:
    """A shared folder every local user may write (a team's shared filesystem), configured as the
    @/ store of this test's user."""
    shared = reachable_tmp / "team-store"
    shared.mkdir()
    os.chmod(shared, 0o777)
    store = {"backend": "dir", "path": str(shared)}
    write_config(store)
    return store


# -------------------------------------------------------------------------------------------------
# Writes into a shared folder


def test_a_temporary_name_planted_as_a_link_is_not_written_through(other_user, reachable_tmp, team_store):
    precious = reachable_tmp / "precious.txt"
    precious.write_text("the victim's data\n")
    shared = team_store["path"]
    # The old temporary name was predictable: <name>.<pid>.tmp. The attacker plants it as a link.
    other_user.python(f"import os; os.symlink({str(precious)!r}, {shared!r} + '/gpu.yaml.{os.getpid()}.tmp')")
    rh.LocalCluster(name="gpu").save("@/gpu")
    assert precious.read_text() == "the victim's data\n"
    assert rh.cluster(name="@/gpu", dryrun=True).name == "gpu"
    assert not os.path.islink(os.path.join(shared, "gpu.yaml"))


def test_a_folder_planted_as_a_link_is_refused(other_user, reachable_tmp, team_store):
    victims_folder = reachable_tmp / "victims-folder"
    victims_folder.mkdir()
    (victims_folder / "x.yaml").write_text("the victim's file\n")
    other_user.python(f"import os; os.symlink({str(victims_folder)!r}, {team_store['path']!r} + '/team')")
    with pytest.raises(StoreError, match="'team' in .* is a symbolic link or not a folder"):
        rh.LocalCluster(name="x").save("@/team/x", overwrite=True)
    with pytest.raises(StoreError, match="symbolic link"):
        rh.delete("@/team/x")
    assert sorted(os.listdir(victims_folder)) == ["x.yaml"]
    assert (victims_folder / "x.yaml").read_text() == "the victim's file\n"


def test_a_record_planted_as_a_link_to_a_file_of_yours_is_not_read(other_user, reachable_tmp, team_store):
    private = reachable_tmp / "private-key"
    private.write_text("-----BEGIN OPENSSH PRIVATE KEY----- the victim's key\n")
    other_user.python(f"import os; os.symlink({str(private)!r}, {team_store['path']!r} + '/gpu.yaml')")
    with pytest.raises(StoreError, match="symbolic link") as refused:
        rh.cluster(name="@/gpu", dryrun=True)
    assert "the victim's key" not in str(refused.value)


# -------------------------------------------------------------------------------------------------
# Paths and secrets in shared records


def write_record(other_user, store: dict, key: str, text: str) -> None:
    """The other user writes a record into the shared store, as any member of the team can."""
    path = os.path.join(store["path"], key)
    other_user.python(f"import os; os.makedirs(os.path.dirname({path!r}), exist_ok=True); "
                      f"open({path!r}, 'w').write({text!r})")


def test_a_shared_record_naming_another_users_state_folder_is_refused(other_user, team_store, code_dir):
    # The attacker runs a fake server in a folder of theirs and shares a cluster record pointing at it.
    fake_state = other_user.home / "state"
    other_user.python(f"import os; os.mkdir({str(fake_state)!r}, 0o755)")
    fake = other_user.start_python(FAKE_SERVER, str(fake_state), rh.__version__)
    assert fake.stdout.readline().strip() == "listening", fake.stderr.read()
    write_record(other_user, team_store, "gpu.yaml", f"format: 1\nkind: cluster\nname: gpu\ncluster:\n"
                 f"  kind: local\n  name: gpu\n  state_dir: {fake_state}\n")
    write_record(other_user, team_store, "team/embed.yaml",
                 f"format: 1\nkind: function\nname: team/embed\nfunction:\n  module: json\n  qualname: dumps\n"
                 f"  code: null\ncluster:\n  config:\n    kind: local\n    name: gpu\n    state_dir: {fake_state}\n")
    try:
        for load in (lambda: rh.cluster(name="@/gpu"), lambda: rh.cluster(name="@/gpu", dryrun=True),
                     lambda: rh.function(name="@/team/embed")({"a": 1})):
            with pytest.raises(ResourceFormatError, match=f"sets state_dir to '{fake_state}', a path on your machines "
                                                          "chosen by whoever saved it"):
                load()
    finally:
        other_user.kill(fake)
    assert fake.stdout.read() == "", "the fake server was sent something"


@pytest.mark.parametrize("key, value", [("ssh_private_key", "/home/someone/.ssh/id_ed25519"),
                                        ("known_hosts", "/tmp/theirs/known_hosts"),
                                        ("known_hosts", "~/../someone/known_hosts"),
                                        ("ssh_private_key", "relative/key")])
def test_a_shared_record_naming_a_key_or_known_hosts_outside_your_home_is_refused(team_store, key, value):
    store_file = os.path.join(team_store["path"], "box.yaml")
    with open(store_file, "w") as f:
        f.write(f"format: 1\nkind: cluster\nname: box\ncluster:\n  kind: remote\n  name: box\n  provisioner: byo\n"
                f"  spec:\n    ips: [127.0.0.1]\n    ssh_creds:\n      ssh_user: me\n      {key}: {value}\n")
    with pytest.raises(ResourceFormatError, match=f"sets spec.ssh_creds.{key} to"):
        rh.cluster(name="@/box", dryrun=True)
    with open(store_file, "w") as f:  # the same record naming the loader's own files loads
        f.write(f"format: 1\nkind: cluster\nname: box\ncluster:\n  kind: remote\n  name: box\n  provisioner: byo\n"
                f"  spec:\n    ips: [127.0.0.1]\n    ssh_creds:\n      ssh_user: me\n      {key}: ~/.ssh/mine\n")
    assert rh.cluster(name="@/box", dryrun=True).spec["ssh_creds"][key] == "~/.ssh/mine"


def test_a_shared_record_naming_a_remote_folder_outside_your_home_is_refused(team_store):
    # Bootstrap would run <remote_dir>/venv/bin/python there: the saver's "venv", as you.
    with open(os.path.join(team_store["path"], "box.yaml"), "w") as f:
        f.write("format: 1\nkind: cluster\nname: box\ncluster:\n  kind: remote\n  name: box\n  provisioner: byo\n"
                "  remote_dir: /home/someone/rh\n  spec:\n    ips: [127.0.0.1]\n")
    with pytest.raises(ResourceFormatError, match="sets remote_dir to '/home/someone/rh'"):
        rh.cluster(name="@/box", dryrun=True)


def test_saving_to_a_shared_store_leaves_out_paths_outside_your_home(team_store, tmp_path, monkeypatch):
    home = tmp_path / "user-home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    creds = {"ssh_user": "me", "ssh_private_key": str(home / ".ssh" / "id_ed25519"),
             "known_hosts": "/etc/ssh/theirs_known_hosts", "trust_new_host": True, "password": "hunter2"}
    cluster = rh.cluster(name="box", ips=["127.0.0.1"], ssh_creds=creds)
    with pytest.warns(UserWarning, match="saved without spec.ssh_creds.password, spec.ssh_creds.known_hosts"):
        cluster.save("@/box")
    with pytest.warns(UserWarning, match="saved without state_dir"):
        rh.LocalCluster(name="loc", state_dir=str(tmp_path / "mine")).save("@/loc")
    saved = rh.cluster(name="@/box", dryrun=True).spec["ssh_creds"]
    assert saved == {"ssh_user": "me", "ssh_private_key": "~/.ssh/id_ed25519"}  # each loader's own key
    assert rh.cluster(name="@/loc", dryrun=True).state_dir == os.path.join(os.environ["RH_HOME"], "local")
    text = open(os.path.join(team_store["path"], "box.yaml")).read()
    assert "trust_new_host" not in text and "hunter2" not in text


def test_trust_new_host_is_never_saved_nor_loaded(home):
    cluster = rh.cluster(name="box", ips=["127.0.0.1"], ssh_creds={"ssh_user": "me", "trust_new_host": True})
    cluster.save("~/box")
    assert "trust_new_host" not in (home / "names" / "box.yaml").read_text()
    # A record saved by an older rh_core still holds it: it is dropped when loaded.
    (home / "names" / "old.yaml").write_text("format: 1\nkind: cluster\nname: old\ncluster:\n  kind: remote\n"
                                             "  name: old\n  provisioner: byo\n  spec:\n    ips: [127.0.0.1]\n"
                                             "    ssh_creds: {ssh_user: me, trust_new_host: true}\n")
    assert rh.cluster(name="~/old", dryrun=True).spec["ssh_creds"] == {"ssh_user": "me"}


def test_secrets_never_show_in_a_clusters_repr():
    cluster = rh.cluster(name="box", ips=["127.0.0.1"],
                         ssh_creds={"ssh_user": "me", "password": "hunter2", "passphrase": "open sesame"})
    shown = repr(cluster) + str(cluster)
    assert "hunter2" not in shown and "open sesame" not in shown and "'password': '<hidden>'" in shown
    from rh_core.clusters import from_config
    from rh_core.plugin.interfaces import ClusterInfo, InstallStep

    with pytest.raises(ValueError, match="unknown cluster kind") as refused:
        from_config({**cluster.config(), "kind": "nope"})
    assert "hunter2" not in str(refused.value) and "open sesame" not in str(refused.value)
    assert "hunter2" not in repr(ClusterInfo(head="h", transport_options={"password": "hunter2"}))
    assert "ghp_x" not in repr(InstallStep(method="git", spec="s", requirement="r", options={"token": "ghp_x"}))


# -------------------------------------------------------------------------------------------------
# Loading a shared function with dryrun=True


def test_dryrun_imports_nothing_from_a_shared_function(other_user, team_store, reachable_tmp, code_dir):
    # A real saved function whose module's top-level code would leave a marker when imported.
    marker = reachable_tmp / "imported"
    (code_dir.path / f"{code_dir.module}.py").write_text(
        f"open({str(marker)!r}, 'w').write('top-level code ran')\n\ndef embed(texts):\n    return len(texts)\n")
    rh.function(code_dir.embed).save("@/team/embed")
    marker.unlink()
    forget_project(code_dir)
    path_before = list(sys.path)

    loaded = rh.function(name="@/team/embed", dryrun=True)
    assert not marker.exists(), "loading with dryrun=True ran the module's top-level code"
    assert sys.path == path_before and code_dir.module not in sys.modules
    assert not (code_dir.path.parent / "home" / "code").exists()  # nothing fetched either
    assert loaded.name == "embed" and loaded.system is None
    with pytest.raises(rh.RhError, match="was loaded with dryrun=True"):
        loaded(["a"])

    assert rh.function(name="@/team/embed")(["a", "b"]) == 2  # loaded for real, it runs
    assert marker.exists()


def test_dryrun_connects_to_nothing_a_shared_function_names(team_store, code_dir):
    """A shared function saved with a cluster: loaded with ``dryrun=True`` and even called, nothing
    reaches the cluster's address (here a port that counts who connects); loaded for real, it does."""
    import socket
    import threading

    rh.function(code_dir.embed).save("@/team/embed")
    forget_project(code_dir)
    listener = socket.create_server(("127.0.0.1", 0))
    connections = []

    def count() -> None:
        with contextlib.suppress(OSError):  # closed at the end of the test
            while True:
                connections.append(listener.accept()[0])

    threading.Thread(target=count, daemon=True).start()
    record_file = os.path.join(team_store["path"], "team", "embed.yaml")
    text = open(record_file).read()
    assert "\ncluster: null\n" in text, text
    with open(record_file, "w") as f:
        f.write(text.replace("\ncluster: null\n", "\ncluster:\n  config:\n    kind: remote\n    name: gpu\n"
                             "    provisioner: byo\n    spec:\n      ips: [127.0.0.1]\n      ssh_creds:\n"
                             f"        ssh_port: {listener.getsockname()[1]}\n        connect_timeout: 2\n"))
    try:
        loaded = rh.function(name="@/team/embed", dryrun=True)
        with pytest.raises(rh.RhError, match="was loaded with dryrun=True"):
            loaded(["a"])
        time.sleep(0.5)
        assert connections == [], "loading with dryrun=True connected to the record's cluster"
        with pytest.raises(rh.RhError):  # loaded for real it goes there (and finds no SSH server)
            rh.function(name="@/team/embed")(["a"])
        assert connections, "the control failed: a real load never connected, so the check above proves nothing"
    finally:
        listener.close()
        for connection in connections:
            connection.close()


def test_a_function_record_cannot_import_from_outside_its_saved_code(team_store, code_dir):
    rh.function(code_dir.embed).save("@/team/embed")
    forget_project(code_dir)
    record_file = os.path.join(team_store["path"], "team", "embed.yaml")
    text = open(record_file).read()
    with open(record_file, "w") as f:
        f.write(text.replace("import_path: .", "import_path: ../../../../tmp"))
    with pytest.raises(ResourceFormatError, match="outside the folder saved with it"):
        rh.function(name="@/team/embed")
    with open(record_file, "w") as f:
        f.write(text.replace("archive: .code/team/embed.tar.gz", "archive: ../../etc/passwd"))
    with pytest.raises(ResourceFormatError, match="not in the store's .code/ folder"):
        rh.function(name="@/team/embed")


# -------------------------------------------------------------------------------------------------
# Bounded YAML


def test_a_shared_record_that_is_an_alias_bomb_is_refused_quickly(other_user, team_store):
    from test_config import alias_bomb, run_rh_briefly

    write_record(other_user, team_store, "bomb.yaml", "format: 1\nkind: cluster\nname: bomb\n" + alias_bomb() +
                 "cluster: {kind: local, name: bomb, executor_options: {n: *a9}}\n")
    done = run_rh_briefly("up", "@/bomb")
    assert done.returncode == 4 and "uses YAML aliases" in done.stderr, done.stderr
    with pytest.raises(ResourceFormatError, match="uses YAML aliases"):
        rh.cluster(name="@/bomb", dryrun=True)
