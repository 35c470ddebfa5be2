"""The git installer without a cluster server: parsing on the client, then resolve and install into
a real environment (a venv) from repositories served over file://, git daemon, smart HTTP with a
token, and ssh with a key."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from rh_git.installer import GitInstaller
from rh_git.source import parse_source

import rh_core as rh
from rh_core.server.envs import install
from rh_core.errors import InstallError
from rh_core.packages import claim
from rh_core.plugin.interfaces import InstallStep


def step_for(requirement) -> InstallStep:
    host = rh.default_host()
    return host.installer("git")().prepare(None, claim(requirement, host))


def install_into(env, *requirements):
    return install(env, [step_for(r) for r in requirements], rh.default_host().installer)


def version_in(env) -> str:
    code = "import rhtest_gitpkg; print(rhtest_gitpkg.VERSION)"
    return subprocess.run([env.python, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, **env.variables}).stdout.strip()


def fast(url, revision=None, **options) -> rh.GitPackage:
    """src/ of the repository with the local method: put on sys.path, no build (quick to install)."""
    return rh.GitPackage(url, install_method="local", revision=revision, subdirectory="src", **options)


# --- the client side ------------------------------------------------------------------------------


@pytest.mark.parametrize("requirement, method", [
    ("git+https://github.com/org/repo.git@v1", "git"),
    ("git+file:///srv/repo.git", "git"),
    ("git+git://127.0.0.1:9418/repo.git@main", "git"),
    ("git+ssh://git@github.com/org/repo.git@v1#subdirectory=pkg", "git"),
    ("git:https://github.com/org/repo.git@v1", "git"),
    ("repo @ git+https://github.com/org/repo.git@v1", "pip"),
    ("requests>=2", "pip"),
])
def test_git_requirements_go_to_the_git_installer(requirement, method):
    assert claim(requirement, rh.default_host()).method == method


def test_url_revision_and_subdirectory_are_parsed():
    source = parse_source("git+ssh://git@github.com:2222/org/repo.git@release/2.0#subdirectory=pkg/&egg=x")
    assert (source.url, source.revision, source.subdirectory) == ("ssh://git@github.com:2222/org/repo.git",
                                                                  "release/2.0", "pkg")
    step = step_for("git+https://github.com/org/repo.git")
    assert step.spec == "https://github.com/org/repo.git" and step.options["revision"] is None
    assert step.options["install_method"] == "pip"


def test_git_package_options_reach_the_step():
    step = step_for(rh.GitPackage("https://h.invalid/r.git", install_method="local", revision="v1",
                                  subdirectory="src", find_links="/wheels"))
    assert step.requirement == "git+https://h.invalid/r.git@v1#subdirectory=src"
    assert step.options["install_method"] == "local" and step.options["install_options"] == {"find_links": "/wheels"}


def test_a_token_in_the_url_becomes_a_secret():
    step = step_for("git+https://bot:s3cr3t-tok@git.example.invalid/org/repo.git@v1")
    assert step.spec == "https://git.example.invalid/org/repo.git"
    assert step.options["token"] == "s3cr3t-tok" and step.options["token_user"] == "bot"
    assert step.secret_options == ("token",)
    assert "s3cr3t" not in step.requirement


@pytest.mark.parametrize("package, message", [
    ("git+ftp://h/r.git", "needs a URL with one of the schemes"),
    ("git+https://h/r.git@", "without a revision"),
    ("git+https://h/r.git#egg=x&sub=y", "unknown #sub="),
    (rh.GitPackage("https://h/r.git@v1", revision="v2"), "two revisions"),
    (rh.GitPackage("https://h/r.git", revision="--upload-pack=touch /tmp/x"), "is not a revision"),
    (rh.GitPackage("https://h/r.git", install_method="pipx"), "valid ones: .*local, pip"),
    (rh.GitPackage("git://h/r.git", token="t"), "token= works over https only"),
    (rh.GitPackage("https://h/r.git", ssh_key="/k"), "works with ssh:// URLs only"),
    ("git+https://h/r.git#subdirectory=../../etc", "without '..'"),
])
def test_bad_git_requirements_are_refused_on_the_client(package, message):
    with pytest.raises(InstallError, match=message):
        step_for(package)


def test_a_password_is_hidden_in_client_errors():
    with pytest.raises(InstallError) as caught:
        step_for("git+https://u:hunter2@h/r.git#what=1")
    assert "hunter2" not in str(caught.value)


# --- resolving on the cluster ---------------------------------------------------------------------


@pytest.mark.parametrize("revision, version", [
    ("v1", "1.0.0"), ("v2", "2.0.0"), ("release-2", "2.0.0"), ("refs/heads/main", "2.0.0"), (None, "2.0.0"),
])
def test_revisions_resolve_to_commits(env, repo, revision, version):
    identity = GitInstaller().resolve(step_for(fast(repo.file_url, revision)), env)
    assert identity == f"git:{repo.file_url}@{repo.commits[version]} local #subdirectory=src"


def test_a_commit_no_ref_points_at_is_fetched_to_resolve_it(env, repo):
    middle = repo.commits["1.5.0"]
    for revision in (middle, middle[:10]):
        assert GitInstaller().resolve(step_for(fast(repo.file_url, revision)), env).startswith(
            f"git:{repo.file_url}@{middle} ")


@pytest.mark.parametrize("revision, nearest", [
    ("v3", ["Nearest:", "v1 (tag)", "v2 (tag)"]), ("relase-2", ["Nearest: release-2 (branch)"]),
    ("0123456789abcdef", ["Its tags: v1, v2; branches: main, release-2"]),
])
def test_a_missing_revision_lists_the_nearest_before_anything_is_installed(env, repo, revision, nearest):
    with pytest.raises(InstallError) as caught:
        install_into(env, fast(repo.file_url, "v1"), fast(repo.file_url, revision))
    message = str(caught.value)
    assert f"revision {revision!r} does not exist in {repo.file_url}" in message
    assert all(part in message for part in nearest), message
    assert env.installed() == {}
    with pytest.raises(subprocess.CalledProcessError):
        version_in(env)


def test_an_unreachable_repository_says_what_to_check(env, tmp_path):
    with pytest.raises(InstallError, match="cannot read the revisions of file://.*Check the URL as the cluster"):
        install_into(env, fast(f"file://{tmp_path}/nothing.git", "v1"))


# --- installing -----------------------------------------------------------------------------------


def test_install_then_switch_revision_then_repeat(env, repo, daemon_url):
    assert install_into(env, fast(daemon_url, "v1"))["installed"]
    assert version_in(env) == "1.0.0"
    install_into(env, fast(daemon_url, repo.commits["1.5.0"]))  # git daemon refuses a shallow fetch of it
    assert version_in(env) == "1.5.0"
    install_into(env, fast(daemon_url, "v2"))
    assert version_in(env) == "2.0.0"
    again = install_into(env, fast(daemon_url, "v2"))
    assert again == {"installed": [], "skipped": [f"git+{daemon_url}@v2#subdirectory=src"]}
    checkouts = os.listdir(os.path.join(env.root, "git"))
    assert len(checkouts) == 1, "one checkout per repository, moved between revisions"


def test_a_full_commit_id_already_fetched_needs_no_server(env, repo, daemon_url, monkeypatch):
    from rh_git.installer import Git

    commit = repo.commits["2.0.0"]
    install_into(env, fast(daemon_url, commit))
    monkeypatch.setattr(Git, "ls_remote", lambda self: pytest.fail("asked the server about a known commit"))
    assert install_into(env, fast(daemon_url, commit))["skipped"]
    assert GitInstaller().resolve(step_for(fast(daemon_url, commit.upper())), env).startswith(
        f"git:{daemon_url}@{commit} ")


def test_a_missing_subdirectory_is_named(env, repo):
    with pytest.raises(InstallError, match="has no folder 'lib'"):
        install_into(env, rh.GitPackage(repo.file_url, install_method="local", revision="v1", subdirectory="lib"))
    assert env.installed() == {}


def test_token_authenticates_and_never_shows(env, private_http, repo):
    url = f"{private_http.url}/{repo.bare.name}"
    token = private_http.token
    before = private_http.seen_authorization
    install_into(env, fast(url, "v1", token=token))
    assert version_in(env) == "1.0.0" and private_http.seen_authorization > before
    with open(env.record_path) as f:
        record = f.read()
    assert token not in record and json.loads(record)
    assert token not in json.dumps(env.describe())

    with pytest.raises(InstallError) as missing:
        install_into(env, fast(url, "v9", token=token))
    assert "v1 (tag)" in str(missing.value) and token not in str(missing.value)

    wrong = token[::-1]
    with pytest.raises(InstallError) as refused:
        install_into(env, fast(url, "v2", token=wrong))
    assert "The server refused the token" in str(refused.value) and wrong not in str(refused.value)
    with pytest.raises(InstallError, match="cannot read the revisions"):
        install_into(env, fast(url, "v2"))


def test_token_in_the_url(env, private_http, repo):
    url = f"{private_http.url}/{repo.bare.name}".replace("http://", f"http://me:{private_http.token}@")
    result = install_into(env, fast(url, "v2"))
    assert private_http.token not in json.dumps(result)
    assert version_in(env) == "2.0.0"


def test_ssh_with_a_key(env, repo, sshd, tmp_path):
    url = f"ssh://{sshd.user}@{sshd.host}:{sshd.port}{repo.bare}"
    install_into(env, fast(url, "v2", ssh_key=str(sshd.client_key), ssh_known_hosts=str(tmp_path / "known")))
    assert version_in(env) == "2.0.0"
    with pytest.raises(InstallError, match="cannot read the revisions"):
        install_into(env, fast(url, "v1", ssh_key=str(sshd.other_key), ssh_known_hosts=str(tmp_path / "known")))
