"""The ``git`` installer: a repository checked out on the cluster at a revision, then installed by
another install method (``pip`` by default, ``local``, ...).

``prepare`` (client) parses the URL and options. ``resolve`` (cluster) turns the revision into a
commit with ``git ls-remote`` (a commit not at the tip of any ref is fetched to be checked), and
a revision that does not exist is reported with the nearest tags and branches. ``install``
(cluster) fetches just that commit into ``<env root>/git/<repo>`` (a shallow fetch; everything
when the server refuses one), checks it out, and hands the folder to the named install method.

Credentials: ``token=`` (HTTPS) is sent as an ``Authorization`` header set through git's
``GIT_CONFIG_*`` environment variables, scoped to the repository's host, so it is not in any
command line, URL, message or install record; ``ssh_key=`` (a key file on the cluster) goes into
``GIT_SSH_COMMAND``, with ``ssh_known_hosts=`` for a known-hosts file of its own.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import json
import os
import re
import shlex
import subprocess
import urllib.parse
from typing import TYPE_CHECKING, Any

import attrs

from rh_core.errors import InstallError
from rh_core.plugin.interfaces import Environment, InstallerClaim, InstallStep
from rh_git.source import parse_source

if TYPE_CHECKING:
    from rh_core.clusters.base import Cluster

GIT_OPTIONS = ("revision", "install_method", "subdirectory", "token", "token_user", "ssh_key", "ssh_known_hosts")
DEFAULT_TOKEN_USER = "x-access-token"  # GitHub's name for a token; GitLab and others accept any user
REVISION = re.compile(r"[^\s\x00-\x1f~^:?*\[\\-][^\s\x00-\x1f~^:?*\[\\]*")  # git's ref name rules, roughly
HEX = re.compile(r"[0-9a-fA-F]{7,64}")
FULL_COMMIT = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")
REF_LINE = re.compile(r"^([0-9a-f]{40,64})\t(\S+)$")


class GitInstaller:
    """``git+URL[@REV][#subdirectory=DIR]`` and ``rh.GitPackage``; see the module docstring."""

    def __init__(self) -> None:
        # The server resolves every step of a request before installing any, with this same
        # instance: install() checks out exactly the commit resolve() reported.
        self._commits: dict[str, str] = {}

    # --- client --------------------------------------------------------------------------------

    def prepare(self, cluster: Cluster | None, claim: InstallerClaim) -> InstallStep:
        """Parse the URL and options; ``cluster`` is only asked which install methods exist."""
        source = parse_source(claim.spec)
        options = dict(claim.options)
        git_options = {key: options.pop(key) for key in GIT_OPTIONS if key in options}
        revision = git_options.get("revision") or source.revision
        if git_options.get("revision") and source.revision and git_options["revision"] != source.revision:
            raise InstallError(f"git package {source.url!r} names two revisions, {source.revision!r} in the URL and "
                               f"revision={git_options['revision']!r}; give one")
        if revision is not None and (not isinstance(revision, str) or not REVISION.fullmatch(revision)):
            raise InstallError(f"git package {source.url!r}: {revision!r} is not a revision; name a tag, a branch "
                               "or a commit id")
        method = git_options.get("install_method") or "pip"
        _check_method(cluster, method, source.url)
        subdirectory = (git_options.get("subdirectory") or source.subdirectory or "").strip("/") or None
        if subdirectory and ".." in subdirectory.split("/"):
            raise InstallError(f"git package {source.url!r}: subdirectory {subdirectory!r} must be a folder inside "
                               "the repository, without '..'")
        step_options: dict[str, Any] = {"revision": revision, "install_method": method,
                                        "subdirectory": subdirectory, "install_options": options}
        scheme = urllib.parse.urlsplit(source.url).scheme
        token = git_options.get("token") or source.token
        if token:
            if scheme not in ("https", "http"):
                raise InstallError(f"git package {source.url!r}: token= works over https only; for ssh use ssh_key=")
            step_options["token"] = token
            step_options["token_user"] = git_options.get("token_user") or source.token_user or DEFAULT_TOKEN_USER
        for key in ("ssh_key", "ssh_known_hosts"):
            if git_options.get(key):
                if scheme != "ssh":
                    raise InstallError(f"git package {source.url!r}: {key}= works with ssh:// URLs only")
                step_options[key] = git_options[key]
        requirement = "git+" + source.url + (f"@{revision}" if revision else "") + (
            f"#subdirectory={subdirectory}" if subdirectory else "")
        return InstallStep(method="git", spec=source.url, requirement=requirement, options=step_options,
                           secret_options=("token",) if token else ())

    # --- cluster -------------------------------------------------------------------------------

    def resolve(self, step: InstallStep, env: Environment) -> str:
        commit = self._resolve_commit(step, env)
        self._commits[_key(step)] = commit
        identity = f"git:{step.spec}@{commit} {step.options['install_method']}"
        if step.options.get("subdirectory"):
            identity += f" #subdirectory={step.options['subdirectory']}"
        if step.options.get("install_options"):
            identity += " " + json.dumps(step.options["install_options"], sort_keys=True)
        return identity

    def slot(self, step: InstallStep) -> str:
        """The repository (and folder in it): another revision of it replaces this one."""
        return f"git:{step.spec}#{step.options.get('subdirectory') or ''}"

    def install(self, step: InstallStep, env: Environment) -> None:
        from rh_core.plugin.host import default_host

        commit = self._commits.get(_key(step)) or self._resolve_commit(step, env)
        git = Git(step, env)
        folder = git.checkout(commit)
        subdirectory = step.options.get("subdirectory")
        target = os.path.join(folder, subdirectory) if subdirectory else folder
        if not os.path.isdir(target):
            raise InstallError(f"{step.requirement!r}: the repository has no folder {subdirectory!r} at commit "
                               f"{commit[:12]}; fix #subdirectory= (or subdirectory=)")
        method = step.options["install_method"]
        handed = InstallStep(method=method, spec=target, requirement=step.requirement,
                             options=dict(step.options.get("install_options") or {}))
        default_host().installer(method)().install(handed, env)

    def _resolve_commit(self, step: InstallStep, env: Environment) -> str:
        git = Git(step, env)
        revision = step.options.get("revision")
        if revision and FULL_COMMIT.fullmatch(revision) and git.has_locally(revision):
            return revision.lower()  # a full commit id never moves: no need to ask the server again
        refs = git.ls_remote()
        commit = find_in_refs(revision, refs)
        if commit is None and revision and HEX.fullmatch(revision):
            commit = git.find_commit(revision)  # a commit no ref points at: fetch to know it exists
        if commit is None:
            raise InstallError(missing_revision_message(step, revision, refs))
        return commit


def _key(step: InstallStep) -> str:
    return json.dumps(step.to_json(), sort_keys=True)


def _check_method(cluster: Cluster | None, method: str, url: str) -> None:
    if cluster is not None:
        host = cluster.host
    else:
        from rh_core.plugin.host import default_host

        host = default_host()
    valid = [name for name in host.registry("installer").names() if name != "git"]
    if method not in valid:
        raise InstallError(f"git package {url!r}: install_method={method!r} is not an install method here; "
                           f"valid ones: {', '.join(valid)}")


# --- revisions -----------------------------------------------------------------------------------


def find_in_refs(revision: str | None, refs: dict[str, str]) -> str | None:
    """The commit ``revision`` names among the advertised refs: HEAD when None; a full ref name;
    a tag (peeled to its commit), then a branch, as git itself prefers; or a unique commit prefix."""
    if revision is None:
        return refs.get("HEAD")
    for ref in (revision, f"refs/tags/{revision}", f"refs/heads/{revision}"):
        if ref + "^{}" in refs:
            return refs[ref + "^{}"]
        if ref in refs:
            return refs[ref]
    if HEX.fullmatch(revision):
        found = {commit for commit in refs.values() if commit.startswith(revision.lower())}
        if len(found) == 1:
            return found.pop()
    return None


def missing_revision_message(step: InstallStep, revision: str | None, refs: dict[str, str]) -> str:
    tags = sorted({ref[len("refs/tags/"):].removesuffix("^{}") for ref in refs if ref.startswith("refs/tags/")})
    branches = sorted(ref[len("refs/heads/"):] for ref in refs if ref.startswith("refs/heads/"))
    if revision is None:
        return (f"{step.requirement!r}: the repository {step.spec} has no default branch (HEAD); "
                f"name a revision. Its branches: {_listing(branches)}; tags: {_listing(tags)}")
    kinds = {**{name: "branch" for name in branches}, **{name: "tag" for name in tags}}
    nearest = difflib.get_close_matches(revision, list(kinds), n=5, cutoff=0.5)
    hint = (f"Nearest: {', '.join(f'{name} ({kinds[name]})' for name in nearest)}." if nearest
            else f"Its tags: {_listing(tags)}; branches: {_listing(branches)}.")
    return (f"{step.requirement!r}: revision {revision!r} does not exist in {step.spec}: it is no tag, branch or "
            f"commit there. {hint}")


def _listing(names: list[str], limit: int = 15) -> str:
    if not names:
        return "none"
    shown = names[-limit:]  # sorted names: the newest versions are usually last
    return ("..., " if len(names) > limit else "") + ", ".join(shown)


# --- running git ---------------------------------------------------------------------------------


@attrs.define
class Git:
    """git commands for one step, with its credentials in the environment and redacted from output."""

    step: InstallStep
    env: Environment

    @property
    def url(self) -> str:
        return self.step.spec

    @property
    def folder(self) -> str:
        """The checkout of this repository in the environment: ``<root>/git/<name>-<hash of url>``."""
        name = re.sub(r"[^A-Za-z0-9._-]", "_", self.url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")) or "repo"
        return os.path.join(self.env.root, "git", f"{name}-{hashlib.sha256(self.url.encode()).hexdigest()[:10]}")

    def credentials(self) -> tuple[dict[str, str], tuple[str, ...]]:
        """Environment variables for git, and the strings to redact from its output."""
        variables = {"GIT_TERMINAL_PROMPT": "0"}
        redact: tuple[str, ...] = ()
        options = self.step.options
        token = options.get("token")
        if token:
            parts = urllib.parse.urlsplit(self.url)
            basic = base64.b64encode(f"{options.get('token_user') or DEFAULT_TOKEN_USER}:{token}".encode()).decode()
            # Scoped to this scheme://host/, so a redirect elsewhere does not carry the token.
            variables.update(GIT_CONFIG_COUNT="1",
                             GIT_CONFIG_KEY_0=f"http.{parts.scheme}://{parts.netloc}/.extraHeader",
                             GIT_CONFIG_VALUE_0=f"Authorization: Basic {basic}")
            redact = (token, basic)
        key, known_hosts = options.get("ssh_key"), options.get("ssh_known_hosts")
        if key or known_hosts:
            command = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new"]
            if key:
                key = os.path.expanduser(key)
                if not os.path.isfile(key):
                    raise InstallError(f"{self.step.requirement!r}: the ssh_key {key} is not a file on the cluster; "
                                       "copy the key there (mode 600) or give its path there")
                command += ["-i", key, "-o", "IdentitiesOnly=yes"]
            if known_hosts:
                command += ["-o", f"UserKnownHostsFile={os.path.expanduser(known_hosts)}"]
            variables["GIT_SSH_COMMAND"] = shlex.join(command)
        return variables, redact

    def run(self, *args: str, cwd: str | None = None) -> str:
        variables, redact = self.credentials()
        return self.env.run(["git", *args], step=self.step, cwd=cwd, extra_env=variables, redact=redact)

    def ls_remote(self) -> dict[str, str]:
        """``{ref: commit}`` of every ref the repository advertises (``HEAD``, ``refs/tags/v1^{}``, ...)."""
        try:
            output = self.run("ls-remote", "--", self.url)
        except InstallError as exc:
            refused = self.step.options.get("token") and any(
                sign in str(exc) for sign in ("could not read Username", "Authentication failed", " 401", " 403"))
            cause = ("The server refused the token: check token= (and token_user=, the user name sent with it)."
                     if refused else "Check the URL as the cluster sees it, that the cluster can reach it, and the "
                     "credentials (token= for https, ssh_key= for ssh).")
            raise InstallError(f"cannot read the revisions of {self.url} for {self.step.requirement!r}. {cause}\n"
                               f"{exc}") from exc
        return {match[2]: match[1] for match in map(REF_LINE.match, output.splitlines()) if match}

    def find_commit(self, revision: str) -> str | None:
        """Fetch ``revision`` (a commit id, maybe abbreviated) into the checkout; its full id, or None."""
        self._init()
        if not self._has(revision):
            try:
                self._fetch(revision)
            except InstallError:
                return None
        done = _local(self.folder, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}", check=False)
        return done.stdout.strip() if done.returncode == 0 else None

    def checkout(self, commit: str) -> str:
        """Make the checkout hold exactly ``commit`` (no stray files); return its folder."""
        self._init()
        if not self._has(commit):
            self._fetch(commit)
        _local(self.folder, "-c", "advice.detachedHead=false", "checkout", "--quiet", "--force", "--detach", commit)
        _local(self.folder, "clean", "-ffdxq")
        if os.path.isfile(os.path.join(self.folder, ".gitmodules")):
            self.run("submodule", "update", "--init", "--recursive", "--depth", "1", cwd=self.folder)
        return self.folder

    def _init(self) -> None:
        if os.path.isdir(os.path.join(self.folder, ".git")):
            _local(self.folder, "remote", "set-url", "origin", self.url)
            return
        os.makedirs(self.folder, exist_ok=True)
        _local(self.folder, "init", "--quiet")
        _local(self.folder, "remote", "add", "origin", self.url)

    def has_locally(self, revision: str) -> bool:
        """Whether the checkout already holds the commit ``revision`` (no network)."""
        return os.path.isdir(os.path.join(self.folder, ".git")) and self._has(revision)

    def _has(self, revision: str) -> bool:
        return _local(self.folder, "cat-file", "-e", f"{revision}^{{commit}}", check=False).returncode == 0

    def _fetch(self, revision: str) -> None:
        """Fetch one commit shallowly: every server allows it for the tip of a ref, many (GitHub) for
        any full commit id. When refused (an older commit, a dumb HTTP server), fetch everything."""
        try:
            self.run("fetch", "--quiet", "--depth", "1", "origin", revision, cwd=self.folder)
            return
        except InstallError:
            pass
        everything = ["fetch", "--quiet", "--tags", "origin", "+refs/heads/*:refs/remotes/origin/*"]
        if os.path.exists(os.path.join(self.folder, ".git", "shallow")):
            everything.insert(1, "--unshallow")
        self.run(*everything, cwd=self.folder)


def _local(folder: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A git command that only touches the local checkout (no network, no credentials)."""
    done = subprocess.run(["git", "-C", folder, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          check=False)
    if check and done.returncode != 0:
        raise InstallError(f"git {' '.join(args)} failed in {folder} (exit code {done.returncode}):\n"
                           f"{done.stderr.strip()[-2000:]}")
    return done
