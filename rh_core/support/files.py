"""Files that other local users may reach: state files trusted only when they are our own, and
writes that are atomic and follow no link someone else planted.

A server's state folder holds its secret: whoever can write into that folder, or replace it, can
plant a secret they know and then run code as us. So a state folder (and every folder above it)
must be ours or root's and closed to writes by others, and each state file must be ours and
unwritable by others. Files are opened with ``O_NOFOLLOW`` and checked on the open descriptor,
so nothing can be swapped in between the check and the use.
"""

from __future__ import annotations

import errno
import os
import pwd
import secrets
import socket
import stat
import struct
from collections.abc import Iterable

from rh_core.errors import UntrustedPathError

#: What to do about a state folder we cannot trust.
USE_ANOTHER_FOLDER = ("use a state folder of your own that only you can write: set RH_HOME for the local cluster "
                      "(or give the server another --state-dir)")


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _refuse(path: str, problem: str, fix: str) -> UntrustedPathError:
    return UntrustedPathError(f"{path} {problem}, so it is not used: whoever can change it could make rh run their "
                              f"code as you, or read your calls. {fix}")


def _check_ancestors(path: str) -> None:
    """Every folder above ``path`` (as written and as resolved) must be ours or root's, and closed
    to writes by others unless sticky (like /tmp): else someone else could swap ``path`` for theirs.
    Folders that do not exist yet are passed over (whoever makes them checks again once they do)."""
    me = os.geteuid()
    for start in {os.path.abspath(path), os.path.realpath(path)}:
        folder = os.path.dirname(start)
        while True:
            try:
                info = os.stat(folder)
            except FileNotFoundError:
                folder = os.path.dirname(folder)
                continue
            if info.st_uid not in (me, 0):
                raise _refuse(path, f"lies in {folder}, which belongs to user {_user(info.st_uid)}", USE_ANOTHER_FOLDER)
            if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
                raise _refuse(path, f"lies in {folder}, which others may write", USE_ANOTHER_FOLDER)
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent


def private_directory(path: str) -> str:
    """``path`` as an owner-only (0700) folder of ours, made when missing; returns it absolute.

    A folder others may only read (0755, say) is made owner-only before anything goes into it. One
    that belongs to another user, that others may write (they may have planted files in it), or that
    lies in a folder others control, raises :class:`UntrustedPathError` naming it and what to do.
    """
    path = os.path.abspath(path)
    _check_ancestors(path)  # before making anything: nothing is made in a folder others control
    os.makedirs(path, mode=0o700, exist_ok=True)
    _check_ancestors(path)  # again: a missing folder above may have been made by someone else meanwhile
    info = os.stat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise _refuse(path, "is not a folder", USE_ANOTHER_FOLDER)
    if info.st_uid != os.geteuid():
        raise _refuse(path, f"belongs to user {_user(info.st_uid)}", USE_ANOTHER_FOLDER)
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise _refuse(path, "may be written by others, who may have planted files in it",
                      f"Move it away and let rh make a new one (its results and logs stay in the old one); "
                      f"or, if you know nobody did, `chmod 700 {path}`")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)  # others could read it: from now on they cannot
    return path


def check_private_path(path: str, info: os.stat_result | None = None, *, secret: bool = False) -> None:
    """Refuse (:class:`UntrustedPathError`) a state file (or socket) that is a link, belongs to
    another user, or that others may write (with ``secret``: or read). ``info`` is its stat when
    already taken (from an open descriptor); else the path itself is looked at, not followed."""
    if info is None:
        info = os.lstat(path)
    fix = "Delete it (rh makes a new one when it needs one), and find out who put it there"
    if stat.S_ISLNK(info.st_mode):
        raise _refuse(path, "is a symbolic link", fix)
    if info.st_uid != os.geteuid():
        raise _refuse(path, f"belongs to user {_user(info.st_uid)}", fix)
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise _refuse(path, "may be written by others", fix)
    if secret and info.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        raise _refuse(path, "may be read by others, who then know the secret", fix)


def open_private(path: str, flags: int = os.O_RDONLY, mode: int = 0o600, *, secret: bool = False) -> int:
    """``os.open`` a state file without following a link, checked as by :func:`check_private_path`
    on the open descriptor; a file it creates gets ``mode``. Raises FileNotFoundError as open does."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the last part is a link
            raise _refuse(path, "is a symbolic link", "Delete it, and find out who put it there") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _refuse(path, "is not a regular file", "Delete it, and find out who put it there")
        check_private_path(path, info, secret=secret)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_private(path: str, *, secret: bool = False) -> bytes | None:
    """The contents of a state file of ours (see :func:`open_private`), or None when there is none."""
    try:
        fd = open_private(path, secret=secret)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as file:
        return file.read()


def check_socket_peer(sock: socket.socket, path: str) -> None:
    """Refuse a Unix socket connection whose other end runs as another user: a server that is not
    ours would be handed our code and arguments. (Linux; elsewhere the socket file's owner and its
    folder were checked already.)"""
    if not hasattr(socket, "SO_PEERCRED"):
        return
    _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    if uid != os.geteuid():
        raise _refuse(path, f"is served by a process of user {_user(uid)}",
                      "Stop that process, or use a state folder of your own (RH_HOME)")


def write_atomically(path: str, data: bytes | str | Iterable[bytes | memoryview], mode: int = 0o600, *,
                     dir_fd: int | None = None) -> None:
    """Replace the file ``path`` whole with ``data`` (bytes, text, or a sequence of buffers).

    The new contents go into a temporary file with an unpredictable name, created exclusively beside
    ``path`` (a link planted under a name we would use is never followed), then renamed over
    ``path``: readers see the old file or the new one, and a planted link at ``path`` is replaced,
    not written through. With ``dir_fd``, ``path`` is a name in that open folder.
    """
    folder, name = os.path.split(path)
    folder_fd = dir_fd if dir_fd is not None else os.open(folder or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        temporary = f".{name[:200]}.{secrets.token_hex(8)}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                     dir_fd=folder_fd)
        try:
            with os.fdopen(fd, "wb") as file:
                os.fchmod(file.fileno(), mode)  # the umask filtered the mode open gave it
                if isinstance(data, str):
                    file.write(data.encode())
                elif isinstance(data, (bytes, bytearray, memoryview)):
                    file.write(data)
                else:
                    for chunk in data:
                        file.write(chunk)
            os.replace(temporary, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
        except BaseException:
            try:
                os.unlink(temporary, dir_fd=folder_fd)
            except FileNotFoundError:
                pass
            raise
    finally:
        if dir_fd is None:
            os.close(folder_fd)

