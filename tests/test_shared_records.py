"""Records in a shared (``@/``) store are another user's words: they carry settings, never paths or
secrets of that user's choosing, loading one with ``dryrun=True`` runs none of its code, and a
link planted in a shared folder is never followed. The attacker is a second local user who can
write to the shared folder, as every member of a team can."""

from __future__ import annotations

import os

import pytest

pytest.register_assert_rewrite("names_helpers")
from names_helpers import write_config

import rh_core as rh
from rh_core.errors import StoreError

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
