"""The working directory that travels with functions sent by reference: the git root, or the cwd."""

from __future__ import annotations

import hashlib
import os
import subprocess


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
    """A hash of the names, sizes and mtimes of the files a sync would send (git's view of the
    tree when it is a work tree: ``.gitignore`` respected); changes whenever any of them does."""
    digest = hashlib.sha256()
    try:
        listed = subprocess.run(
            ["git", "-C", path, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True, timeout=30, check=True,
        ).stdout.decode("utf-8", "surrogateescape").split("\0")
        names = sorted(name for name in listed if name)
    except (OSError, subprocess.SubprocessError):
        names = sorted(
            os.path.relpath(os.path.join(top, name), path) for top, _, files in os.walk(path) for name in files
        )
    for name in names:
        try:
            info = os.lstat(os.path.join(path, name))
        except FileNotFoundError:
            continue
        digest.update(f"{name}\0{info.st_size}\0{info.st_mtime_ns}\0".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()
