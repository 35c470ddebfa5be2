"""The working directory that travels with functions sent by reference (the git root, or the cwd),
and the one rule for which of its files travel: what git keeps in a work tree (``.gitignore``
respected), else everything but what an ``.rhignore`` (gitignore syntax, read by git itself)
excludes. The fingerprint that decides whether to sync again and every transport's sync use it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import shutil
import stat
import subprocess
import tempfile

import attrs

from rh_core.errors import RhError

logger = logging.getLogger(__name__)

IGNORE_FILE = ".rhignore"


@attrs.frozen
class Listing:
    """The files of a directory that travel (relative POSIX paths with their lstat), the
    directories that hold them, and whether a rule left files out (so a sync must delete, on the
    other side, what the rule excludes)."""

    files: dict[str, os.stat_result]
    dirs: frozenset[str]
    filtered: bool

    @property
    def total_bytes(self) -> int:
        return sum(info.st_size for info in self.files.values())

    def fingerprint(self) -> str:
        """A hash of the names, sizes and mtimes of the files; changes whenever any of them does."""
        digest = hashlib.sha256()
        for name in sorted(self.files):
            info = self.files[name]
            digest.update(f"{name}\0{info.st_size}\0{info.st_mtime_ns}\0".encode("utf-8", "surrogateescape"))
        return digest.hexdigest()


def working_directory() -> str:
    """The git root of the current directory, or the current directory outside git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return os.getcwd()


def fingerprint(path: str) -> str:
    """:meth:`Listing.fingerprint` of :func:`listing`."""
    return listing(path).fingerprint()


def listing(path: str) -> Listing:
    """What of ``path`` travels to a cluster (see the module docstring)."""
    git_files = _git_files(path)
    if git_files is not None:
        files: dict[str, os.stat_result] = {}
        for rel in git_files:
            if rel.endswith("/"):  # a nested repository git does not descend into
                continue
            try:
                info = os.lstat(os.path.join(path, rel))
            except FileNotFoundError:  # deleted in the work tree, not yet in the index
                continue
            if stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode):
                files[rel] = info
        dirs: set[str] = set()
        for rel in files:
            parent = posixpath.dirname(rel)
            while parent and parent not in dirs:
                dirs.add(parent)
                parent = posixpath.dirname(parent)
        return Listing(files, frozenset(dirs), filtered=True)
    ignored = _ignored(path)
    files, dirs = {}, set()
    for top, dirnames, filenames in os.walk(path):
        rel_top = os.path.relpath(top, path).replace(os.sep, "/")
        prefix = "" if rel_top == "." else rel_top + "/"
        for dirname in list(dirnames):
            rel, full = prefix + dirname, os.path.join(top, dirname)
            if rel + "/" in ignored or rel in ignored:
                dirnames.remove(dirname)
            elif os.path.islink(full):  # a link to a directory travels as a link
                dirnames.remove(dirname)
                files[rel] = os.lstat(full)
            else:
                dirs.add(rel)
        for filename in filenames:
            rel = prefix + filename
            if rel in ignored:
                continue
            info = os.lstat(os.path.join(top, filename))
            if stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode):
                files[rel] = info
    return Listing(files, frozenset(dirs), filtered=bool(ignored))


def warn_if_large(path: str, listed: Listing, limit_mb: float) -> None:
    """Warn (once per call) that ``path`` is about to send more than ``limit_mb`` to a cluster."""
    size_mb = listed.total_bytes / 2**20
    if limit_mb >= 0 and size_mb > limit_mb:
        biggest = sorted(listed.files, key=lambda name: listed.files[name].st_size, reverse=True)[:3]
        logger.warning(
            "syncing %.0f MB in %d files of %s to the cluster (more than sync_warn_mb = %g); the largest: %s. "
            "Leave out what the cluster does not need with an %s file (gitignore syntax) there, or raise "
            "the limit with `rh config set sync_warn_mb N`",
            size_mb, len(listed.files), path, limit_mb, ", ".join(biggest), IGNORE_FILE)


def _git_files(source: str) -> list[str] | None:
    """Files git would keep in ``source`` (tracked plus untracked-not-ignored), or None outside git."""
    if shutil.which("git") is None:
        return None
    probe = subprocess.run(["git", "-C", source, "rev-parse", "--is-inside-work-tree"], capture_output=True, text=True)
    if probe.returncode != 0 or probe.stdout.strip() != "true":
        return None
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=source,
                            capture_output=True)
    if listed.returncode != 0:
        raise RhError(f"cannot list the files of the git work tree {source}: "
                      f"{listed.stderr.decode('utf-8', 'replace').strip()}; fix the repository or sync a plain directory")
    return [path for path in listed.stdout.decode("utf-8", "surrogateescape").split("\0") if path]


def _ignored(source: str) -> set[str]:
    """What ``.rhignore`` files (at the top of ``source`` and below it) exclude, as relative paths,
    directories with a trailing ``/``; git itself reads them, as an empty repository's work tree."""
    if not os.path.isfile(os.path.join(source, IGNORE_FILE)):
        return set()
    if shutil.which("git") is None:
        logger.warning("%s has an %s file, but git, which reads it, is not installed: everything is synced",
                       source, IGNORE_FILE)
        return set()
    with tempfile.TemporaryDirectory(prefix="rh-ignore-") as empty:
        subprocess.run(["git", "init", "--quiet", "--bare", empty], check=True, capture_output=True)
        listed = subprocess.run(
            ["git", f"--git-dir={empty}", f"--work-tree={source}", "ls-files", "-z", "--others", "--ignored",
             "--directory", f"--exclude-per-directory={IGNORE_FILE}"],
            cwd=source, capture_output=True)
    if listed.returncode != 0:
        raise RhError(f"cannot read the {IGNORE_FILE} of {source}: {listed.stderr.decode('utf-8', 'replace').strip()}")
    return {path for path in listed.stdout.decode("utf-8", "surrogateescape").split("\0") if path}
