"""Large buffers through shared memory when client, server and workers share a machine.

A buffer of at least ``SHARE_MIN`` bytes is written to a file in ``/dev/shm`` and replaced by a
small descriptor frame; the receiver maps the file, unlinks it (the segment now lives as long as
its mapping) and hands pickle a view of it. That skips the socket copies of a large frame through
the server. Files are named ``rh-<server pid>-<random>``, so a server can sweep what calls that
never arrived left behind.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from typing import Any

SHARE_MIN = 1024 * 1024
SHM_DIR = "/dev/shm"
_MAGIC = b"\x00rh-shm\x00"


def prefix_for(server_pid: int) -> str:
    return f"rh-{server_pid}-"


def share(frames: Sequence[Any], prefix: str | None) -> list[Any]:
    """Frames with every large buffer after the first moved to shared memory (when ``prefix`` is set
    and ``/dev/shm`` is writable; otherwise the frames as they were)."""
    if prefix is None:
        return list(frames)
    shared = [frames[0]]
    for frame in frames[1:]:
        view = memoryview(frame).cast("B")
        if view.nbytes < SHARE_MIN:
            shared.append(frame)
            continue
        name = f"{prefix}{uuid.uuid4().hex}"
        try:
            fd = os.open(os.path.join(SHM_DIR, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            shared.append(frame)  # no usable /dev/shm: send it inline
            continue
        try:
            written = 0
            while written < view.nbytes:
                written += os.write(fd, view[written:])
        finally:
            os.close(fd)
        shared.append(_MAGIC + f"{name}:{view.nbytes}".encode())
    return shared


def is_descriptor(frame: Any) -> bool:
    view = memoryview(frame)  # real out-of-band buffers are at least 64 KiB: only tiny frames qualify
    return view.nbytes < 256 and bytes(view[: len(_MAGIC)]) == _MAGIC


def attach(frame: Any) -> bytes:
    """Read the segment a descriptor names, and remove it.

    One copy, straight into a ``bytes`` object: pickle rebuilds a large ``bytes`` from it without
    copying again, and NumPy arrays view it (read-only) in place.
    """
    name, _, size_text = bytes(memoryview(frame)[len(_MAGIC):]).decode().rpartition(":")
    if "/" in name or not name.startswith("rh-"):
        raise ValueError(f"malformed shared-memory descriptor {name!r}")
    path = os.path.join(SHM_DIR, name)
    size = int(size_text)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.unlink(path)
        data = os.read(fd, size)
        if len(data) < size:  # a single read stops near 2 GiB
            parts = [data]
            while sum(map(len, parts)) < size:
                parts.append(os.read(fd, size - sum(map(len, parts))))
            data = b"".join(parts)
    finally:
        os.close(fd)
    return data


def sweep(server_pid: int | None = None) -> None:
    """Remove segments left behind by calls that failed before their receiver mapped them: those of
    ``server_pid``, or (without it) those of every server that no longer runs."""
    from rh_core.cluster import pid_alive

    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return
    for name in names:
        parts = name.split("-")
        if len(parts) != 3 or parts[0] != "rh" or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid == server_pid or (server_pid is None and not pid_alive(pid)):
            try:
                os.unlink(os.path.join(SHM_DIR, name))
            except OSError:
                pass

