"""Mirroring a local directory to the machine: rsync over the system ssh when both ends have it and
key authentication is in use, SFTP over the paramiko connection otherwise."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
import posixpath
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
import threading
from typing import Any

import paramiko

from rh_byo_ssh.commands import Commands
from rh_byo_ssh.connection import Connection
from rh_byo_ssh.errors import SSHSyncError, SystemSSHFailed, describe
from rh_core.support import workdir
from rh_core.support.workdir import Listing

SFTP_CHANNELS = 4  # parallel uploads in the SFTP fallback


@dataclasses.dataclass(frozen=True)
class SyncStats:
    """What the last :meth:`SSHTransport.sync_directory` did: ``method`` is ``"rsync"`` or ``"sftp"``."""

    method: str
    remote_path: str
    uploaded: int
    deleted: int
    files: int


class DirectorySync:
    """Syncs directories to ``<remote_root>/sync/`` on the machine; remembers the remote home and
    whether the machine has rsync, which are asked once."""

    def __init__(self, connection: Connection, commands: Commands, remote_root: str) -> None:
        self._connection = connection
        self._commands = commands
        self.remote_root = remote_root
        self._lock = threading.Lock()
        self._remote_home: str | None = None
        self._remote_rsync: bool | None = None
        self.last_sync: SyncStats | None = None

    def sync_directory(self, local_path: str) -> str:
        """See :meth:`rh_byo_ssh.transport.SSHTransport.sync_directory`."""
        connection = self._connection
        source = os.path.abspath(os.path.expanduser(os.fspath(local_path)))
        if not os.path.isdir(source):
            raise SSHSyncError(f"{connection.where()}: cannot sync {source}: it is not a local directory")
        digest = hashlib.sha256(source.encode("utf-8", "surrogateescape")).hexdigest()[:12]
        name = f"{_safe_name(os.path.basename(source) or 'root')}-{digest}"
        listing = workdir.listing(source)  # the one rule for which files travel
        with self._lock:
            stats = None
            if connection.system_ssh_usable() and shutil.which("rsync") and self._remote_has_rsync():
                try:
                    stats = self._rsync(source, listing, name)
                except SystemSSHFailed as exc:
                    connection.system_ssh_failed(str(exc))
            if stats is None:
                stats = connection.retry_if_lost(
                    "sync", lambda transport: self._sftp_sync(transport, source, listing, name)
                )
            self.last_sync = stats
        return stats.remote_path

    def _remote_has_rsync(self) -> bool:
        if self._remote_rsync is None:
            # Markers, because a chatty shell startup file may print around our output.
            _, out, _ = self._commands.run_one(
                "printf '\\n@rh-home=%s@\\n' \"$HOME\"; command -v rsync >/dev/null 2>&1 && printf '@rh-rsync@\\n'"
            )
            home = re.search(r"@rh-home=(.*)@", out)
            if home and home.group(1).startswith("/"):
                self._remote_home = home.group(1)
            self._remote_rsync = "@rh-rsync@" in out and self._remote_home is not None
        return self._remote_rsync

    def _rsync(self, source: str, listing: Listing, name: str) -> SyncStats:
        assert self._remote_home is not None
        remote = self._sync_path(self._remote_home, name)
        target = self._connection.target
        args = [
            "rsync", "-az", f"--skip-compress={SKIP_COMPRESS}", "--delete", "--out-format=%i %n",
            "-e", shlex.join(self._connection.system_ssh.target_command()),
            # rsync creates only the last directory of the destination; the remote shell makes the rest.
            f"--rsync-path=mkdir -p {shlex.quote(remote)} && rsync",
        ]  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="rh-rsync-") as scratch:
            if listing.filtered:
                # The exact list as include rules, everything else excluded *and deleted* on the
                # machine: --files-from cannot delete, a filter list can.
                rules = os.path.join(scratch, "rules")
                with open(rules, "wb") as out:
                    out.write(_rsync_rules(listing))
                args += ["--delete-excluded", "--from0", f"--filter=merge {rules}"]
            args += [source + "/", f"{target.user}@{target.ssh_destination}:{remote}/"]
            done = subprocess.run(args, check=False, capture_output=True, stdin=subprocess.DEVNULL)
        stdout = done.stdout.decode("utf-8", "replace")
        stderr = done.stderr.decode("utf-8", "replace").strip()
        if done.returncode in (12, 255):
            # 255: ssh itself failed; 12: the stream broke, often a shell startup file that prints.
            raise SystemSSHFailed(f"rsync exited {done.returncode}: {stderr[-2000:]}")
        if done.returncode not in (0, 24):  # 24: files vanished while being sent; they are gone anyway
            raise SSHSyncError(
                f"{self._connection.where()}: rsync of {source} to {remote} failed (exit {done.returncode}): "
                f"{stderr[-2000:]}\nCheck disk space and permissions under {posixpath.dirname(remote)} on the machine"
            )
        uploaded = deleted = 0
        for line in stdout.splitlines():
            if line[:2] in ("<f", ">f", "cL"):  # "<": sent to the remote side; "cL": a link made
                uploaded += 1
            elif line.startswith("*deleting") and not line.endswith("/"):
                deleted += 1
        return SyncStats("rsync", remote, uploaded, deleted, len(listing.files))

    def _sftp_sync(self, transport: paramiko.Transport, source: str, listing: Listing, name: str) -> SyncStats:
        sftp = self._connection.sftp_client(transport)
        home = self._remote_home or sftp.normalize(".")
        self._remote_home = home
        root = self._sync_path(home, name)
        try:
            _sftp_makedirs(sftp, root)
            remote_files, remote_dirs = _sftp_walk(sftp, root)
            deleted = uploaded = 0
            uploads: list[tuple[str, str, os.stat_result]] = []
            # Order matters when a path changes kind: remove unwanted files, then unwanted
            # directories deepest first, then create directories, then upload.
            for rel, attrs in remote_files.items():
                local = listing.files.get(rel)
                if local is None or stat.S_ISLNK(local.st_mode) != stat.S_ISLNK(attrs.st_mode or 0):
                    sftp.remove(posixpath.join(root, rel))
                    deleted += 1
            for rel in sorted(remote_dirs - listing.dirs, key=lambda p: p.count("/"), reverse=True):
                sftp.rmdir(posixpath.join(root, rel))
            for rel in sorted(listing.dirs - remote_dirs, key=lambda p: p.count("/")):
                sftp.mkdir(posixpath.join(root, rel))
            for rel, local in listing.files.items():
                path, attrs = posixpath.join(root, rel), remote_files.get(rel)
                local_path = os.path.join(source, *rel.split("/"))
                if stat.S_ISLNK(local.st_mode):
                    link = os.readlink(local_path)
                    if attrs is not None and stat.S_ISLNK(attrs.st_mode or 0) and sftp.readlink(path) == link:
                        continue
                    if attrs is not None and stat.S_ISLNK(attrs.st_mode or 0):
                        sftp.remove(path)
                    sftp.symlink(link, path)
                    uploaded += 1
                    continue
                if attrs is None or attrs.st_size != local.st_size or attrs.st_mtime != int(local.st_mtime):
                    uploads.append((local_path, path, local))
                elif stat.S_IMODE(attrs.st_mode or 0) != stat.S_IMODE(local.st_mode):
                    sftp.chmod(path, stat.S_IMODE(local.st_mode))
            _sftp_put_all(sftp, uploads)
            uploaded += len(uploads)
        except OSError as exc:
            # Plain OSError is SFTP's generic failure; on a live connection it is the machine's
            # answer (disk full, permissions), not a dropped connection worth a retry.
            refused = (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError)
            if isinstance(exc, refused) or (type(exc) is OSError and self._connection.transport_alive()):
                raise SSHSyncError(
                    f"{self._connection.where()}: SFTP sync of {source} to {root} failed ({describe(exc)}); check "
                    f"permissions and disk space under {posixpath.dirname(root)} on the machine"
                ) from exc
            raise
        return SyncStats("sftp", root, uploaded, deleted, len(listing.files))

    def _sync_path(self, home: str, name: str) -> str:
        root = self.remote_root
        if root == "~" or root.startswith("~/"):
            root = home + root[1:]
        return posixpath.normpath(posixpath.join(home, root, "sync", name))


def _safe_name(name: str) -> str:
    # The remote path ends up in shell commands unquoted by callers; keep it to harmless characters.
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64] or "dir"


def _rsync_escape(path: str) -> str:
    # rsync treats a pattern literally unless it holds a wildcard; then backslash escapes.
    if any(char in path for char in "*?["):
        return "".join("\\" + char if char in "\\*?[" else char for char in path)
    return path


#: Files rsync sends as they are, not through its compression: already compressed, so squeezing
#: them again costs CPU for nothing (a wheelhouse is tens of MB of .whl zips; four bring-ups at
#: once share the client's cores). rsync's own list, which this replaces, plus whl, npz and zst.
SKIP_COMPRESS = "/".join((
    "7z", "ace", "apk", "avi", "bz2", "deb", "flac", "gpg", "gz", "iso", "jar", "jpeg", "jpg", "lz", "lzma",
    "lzo", "mkv", "mov", "mp3", "mp4", "npz", "ogg", "png", "rar", "rpm", "rzip", "tbz", "tgz", "tlz", "txz",
    "whl", "xz", "z", "zip", "zst",
))


def _rsync_rules(listing: Listing) -> bytes:
    rules = [f"+ /{_rsync_escape(rel)}/" for rel in sorted(listing.dirs)]
    rules += [f"+ /{_rsync_escape(rel)}" for rel in sorted(listing.files)]
    rules.append("- *")
    return b"".join(rule.encode("utf-8", "surrogateescape") + b"\0" for rule in rules)


def _sftp_makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
    parts = path.strip("/").split("/")
    current = ""
    for part in parts:
        current += "/" + part
        try:
            info = sftp.stat(current)
        except FileNotFoundError:
            sftp.mkdir(current)
            continue
        if not stat.S_ISDIR(info.st_mode or 0):
            raise SSHSyncError(f"{current} exists on the machine and is not a directory; move it away")


def _sftp_put(sftp: paramiko.SFTPClient, local_path: str, path: str, local: os.stat_result) -> None:
    sftp.put(local_path, path, confirm=False)
    sftp.utime(path, (int(local.st_atime), int(local.st_mtime)))  # the next sync compares mtimes
    sftp.chmod(path, stat.S_IMODE(local.st_mode))


def _sftp_put_all(sftp: paramiko.SFTPClient, uploads: list[tuple[str, str, os.stat_result]]) -> None:
    """Upload files; many go over several SFTP channels at once, because each file costs about
    four round trips and on a distant machine latency, not bandwidth, is what adds up."""
    if len(uploads) < 2 * SFTP_CHANNELS:
        for job in uploads:
            _sftp_put(sftp, *job)
        return
    channel = sftp.get_channel()
    assert channel is not None
    transport = channel.get_transport()

    def upload(share: list[tuple[str, str, os.stat_result]]) -> None:
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        try:
            for job in share:
                _sftp_put(client, *job)
        finally:
            client.close()

    with concurrent.futures.ThreadPoolExecutor(SFTP_CHANNELS, thread_name_prefix="rh-sftp") as pool:
        for future in [pool.submit(upload, uploads[i::SFTP_CHANNELS]) for i in range(SFTP_CHANNELS)]:
            future.result()


def _sftp_walk(sftp: paramiko.SFTPClient, root: str) -> tuple[dict[str, Any], set[str]]:
    files: dict[str, Any] = {}
    dirs: set[str] = set()
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        for attrs in sftp.listdir_attr(posixpath.join(root, rel_dir) if rel_dir else root):
            rel = f"{rel_dir}/{attrs.filename}" if rel_dir else attrs.filename
            if stat.S_ISDIR(attrs.st_mode or 0):
                dirs.add(rel)
                pending.append(rel)
            else:
                files[rel] = attrs
    return files, dirs
