"""Large buffers through shared memory when client, server and workers share a machine.

A buffer of at least ``SHARE_MIN`` bytes is written to a segment, a file in ``/dev/shm``, and
replaced by a small descriptor frame naming the segment, the buffer's size and a one-time token.
The receiver copies the buffer out into a new ``bytes`` object and, from then on, owns the segment:
it keeps it mapped and writes its own next large buffer into it. A 100 MiB echo thus passes one
segment back and forth, and every copy lands in memory that is already mapped. Filling fresh pages
costs this project's VMs four to six times as much as the copy itself (BENCHMARKS.md, "Bulk").
Buffers that go one way reuse segments too. A worker's result hands back the segments of the
call's arguments that it did not reuse (large arguments, a small result); a caller's next call
hands back the segments of the last result (small arguments, large results). See ``returning``.

Each process keeps up to ``KEPT_BYTES`` of segments it owns for reuse, and as much again of
mappings of segments it passed on (so one that comes back is still mapped). Segments are named
``rh-<server pid>-<random>``. A process removes those it owns when it exits, or when it sends a
buffer to another server; a server removes all of its own when it stops, and those of servers that
died when it starts. A client killed mid-call cannot remove its own: when one of its clients goes,
the server removes the segments whose owner (a pid in each segment's header) no longer runs
(:func:`sweep_orphans`).
"""

from __future__ import annotations

import atexit
import mmap
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from rh_core.wire.heap import bytes_from

SHARE_MIN = 1024 * 1024
KEPT_BYTES = 256 * 2**20
SHM_DIR = "/dev/shm"
_MAGIC = b"\x00rh-shm\x00"
_RETURN_MAGIC = b"\x00rh-shm-return\x00"
_HEADER = 4096  # two tokens and the owner's pid, then the buffer from the next page on
_TOKEN_BYTES = 16
_BUFFER_TOKEN = slice(0, _TOKEN_BYTES)  # set while a buffer in the segment waits for its reader
_RETURN_TOKEN = slice(_TOKEN_BYTES, 2 * _TOKEN_BYTES)  # set while the segment is handed back
_OWNER = slice(2 * _TOKEN_BYTES, 2 * _TOKEN_BYTES + 8)  # pid of the process that owns it now
_CAPACITY_STEP = 2**20  # new segments hold their buffer rounded up to this, so sizes close by reuse them


def prefix_for(server_pid: int) -> str:
    return f"rh-{server_pid}-"


class _Segment:
    __slots__ = ("name", "mapping", "capacity")

    def __init__(self, name: str, mapping: mmap.mmap):
        self.name = name
        self.mapping = mapping
        self.capacity = len(mapping) - _HEADER

    def close(self) -> None:
        self.mapping.close()


def _map(name: str, size: int | None = None) -> _Segment:
    """Map the segment ``name``; with ``size``, create it first, to hold that many bytes."""
    path = os.path.join(SHM_DIR, name)
    flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if size is not None else 0)
    fd = os.open(path, flags, 0o600)
    try:
        if size is not None:
            # Reserve the memory now: a segment merely truncated to size is sparse, and writing
            # past what /dev/shm holds (64 MiB in a Docker container) would kill us with SIGBUS.
            # Here that is an OSError (ENOSPC), and the buffer goes through the socket instead.
            # (macOS has neither posix_fallocate nor /dev/shm: opening the segment failed already.)
            os.posix_fallocate(fd, 0, _HEADER + size)
        segment = _Segment(name, mmap.mmap(fd, 0))
        if size is not None:
            segment.mapping[_OWNER] = os.getpid().to_bytes(8, "little")
        return segment
    except BaseException:
        if size is not None:
            os.unlink(path)
        raise
    finally:
        os.close(fd)


def _unlink(segment: _Segment) -> None:
    try:
        os.unlink(os.path.join(SHM_DIR, segment.name))
    except OSError:
        pass
    segment.close()


class _Segments:
    """The segments this process owns and has not sent (``owned``), and those it sent, still mapped
    (``lent``); each least recently used first."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.owned: OrderedDict[str, _Segment] = OrderedDict()
        self.lent: OrderedDict[str, _Segment] = OrderedDict()
        self.due: list[str] = []  # owned segments to hand back with the next call (hand_back_later)

    def take(self, prefix: str, size: int) -> _Segment:
        """An owned segment that fits ``size`` bytes (the smallest), or a new one. Segments of other
        servers are let go: a process works with one server at a time, and a server that stopped
        has removed them."""
        with self.lock:
            for name in [name for name in self.owned if not name.startswith(prefix)]:
                _unlink(self.owned.pop(name))
            for name in [name for name in self.lent if not name.startswith(prefix)]:
                self.lent.pop(name).close()
            fitting = [s for s in self.owned.values() if s.capacity >= size and s.name.startswith(prefix)]
            if fitting:
                return self.owned.pop(min(fitting, key=lambda s: s.capacity).name)
        capacity = -(-size // _CAPACITY_STEP) * _CAPACITY_STEP
        return _map(f"{prefix}{uuid.uuid4().hex}", capacity)

    def lend(self, segment: _Segment) -> None:
        with self.lock:
            self.lent[segment.name] = segment
            for evicted in _beyond_budget(self.lent):
                evicted.close()  # its receiver owns the file now

    def receive(self, name: str) -> _Segment:
        with self.lock:
            segment = self.lent.pop(name, None)
        return segment if segment is not None else _map(name)

    def keep(self, segment: _Segment) -> None:
        segment.mapping[_OWNER] = os.getpid().to_bytes(8, "little")
        with self.lock:
            self.owned[segment.name] = segment
            for evicted in _beyond_budget(self.owned):
                _unlink(evicted)

    def remove_owned(self) -> None:
        with self.lock:
            while self.owned:
                _unlink(self.owned.popitem()[1])


def _beyond_budget(segments: OrderedDict[str, _Segment]) -> list[_Segment]:
    """Pop least recently used segments until the rest hold at most ``KEPT_BYTES``."""
    evicted = []
    total = sum(s.capacity for s in segments.values())
    while total > KEPT_BYTES:
        segment = segments.popitem(last=False)[1]
        total -= segment.capacity
        evicted.append(segment)
    return evicted


_segments = _Segments()
atexit.register(lambda: _segments.remove_owned())


def _forget_segments_after_fork() -> None:
    global _segments
    _segments = _Segments()  # the parent still owns them; the child must not reuse or remove them


os.register_at_fork(after_in_child=_forget_segments_after_fork)


def share(frames: Sequence[Any], prefix: str | None) -> list[Any]:
    """Frames with every large buffer after the first moved to shared memory (when ``prefix`` is set
    and ``/dev/shm`` is writable and has room for it; otherwise the frames as they were)."""
    if prefix is None:
        return list(frames)
    shared = [frames[0]]
    for frame in frames[1:]:
        view = memoryview(frame).cast("B")
        size = view.nbytes
        if size < SHARE_MIN:
            shared.append(frame)
            continue
        try:
            segment = _segments.take(prefix, size)
        except OSError:
            shared.append(frame)  # no usable /dev/shm, or no room left in it: send it inline
            continue
        token = os.urandom(_TOKEN_BYTES)
        segment.mapping[_HEADER:_HEADER + size] = view
        segment.mapping[_BUFFER_TOKEN] = token
        _segments.lend(segment)
        shared.append(_frame(_MAGIC, segment.name, size, token))
    return shared


def is_descriptor(frame: Any) -> bool:
    return _starts_with(frame, _MAGIC)


def attach(frame: Any, received: list[str] | None = None) -> bytes:
    """Copy the buffer a descriptor names into a new ``bytes`` object, and take over its segment
    (its name is appended to ``received``).

    Pickle rebuilds a large ``bytes`` from the result without copying again, and NumPy arrays view
    it (read-only) in place. A descriptor is good for one read: its token is cleared then.
    """
    name, size, token = _parse(frame, _MAGIC)
    try:
        segment = _segments.receive(name)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"shared-memory segment {name} is gone: the server that owned it stopped, or the buffer "
            "was already read; call again"
        ) from None
    if segment.mapping[_BUFFER_TOKEN] != token or size > segment.capacity:
        segment.close()
        raise ValueError(f"shared-memory segment {name} no longer holds this buffer: it was read before")
    with memoryview(segment.mapping)[_HEADER:_HEADER + size] as buffer:
        data = bytes_from(buffer)
    segment.mapping[_BUFFER_TOKEN] = bytes(_TOKEN_BYTES)
    _segments.keep(segment)
    if received is not None:
        received.append(name)
    return data


def returning(names: Sequence[str]) -> list[bytes]:
    """Frames that hand the segments ``names`` back, for each one this process still owns (one its
    own reply reused is not). Sent with a result, they let a caller that sends large arguments and
    gets small results reuse its segments; the first process to load them takes them (a one-time
    token), and one on another machine finds no such file and ignores them."""
    frames = []
    for name in names:
        with _segments.lock:
            segment = _segments.owned.pop(name, None)
        if segment is None:
            continue
        token = os.urandom(_TOKEN_BYTES)
        segment.mapping[_RETURN_TOKEN] = token
        _segments.lend(segment)
        frames.append(_frame(_RETURN_MAGIC, name, segment.capacity, token))
    return frames


def hand_back_later(names: Sequence[str]) -> None:
    """Remember segments taken over with a result (``names``), to hand back with the next call's
    arguments (:func:`due_returns`): a worker whose results are large reuses them then."""
    with _segments.lock:
        _segments.due.extend(names)


def due_returns() -> list[bytes]:
    """Return frames for the remembered segments this process still owns (see :func:`returning`)."""
    with _segments.lock:
        names, _segments.due = _segments.due, []
    return returning(names)


def is_return(frame: Any) -> bool:
    return _starts_with(frame, _RETURN_MAGIC)


def take_back(frame: Any) -> None:
    """Own the segment a :func:`returning` frame hands back (once: its token is cleared then)."""
    name, _, token = _parse(frame, _RETURN_MAGIC)
    try:
        segment = _segments.receive(name)
    except FileNotFoundError:
        return  # removed meanwhile (its server stopped): nothing to reuse
    if segment.mapping[_RETURN_TOKEN] != token:
        segment.close()  # taken back already, by this process or another
        return
    segment.mapping[_RETURN_TOKEN] = bytes(_TOKEN_BYTES)
    _segments.keep(segment)


def _frame(magic: bytes, name: str, size: int, token: bytes) -> bytes:
    """A descriptor (``size``: the buffer's) or return frame (``size``: the segment's capacity)."""
    return magic + f"{name}:{size}:{token.hex()}".encode()


def _starts_with(frame: Any, magic: bytes) -> bool:
    view = memoryview(frame)  # real out-of-band buffers are at least 64 KiB: only tiny frames qualify
    return view.nbytes < 256 and bytes(view[: len(magic)]) == magic


def _parse(frame: Any, magic: bytes) -> tuple[str, int, bytes]:
    """``(name, size, token)`` of a frame made by :func:`_frame`."""
    fields = bytes(memoryview(frame)[len(magic):]).decode(errors="replace").split(":")
    try:
        if len(fields) != 3 or "/" in fields[0] or not fields[0].startswith("rh-") or not fields[1].isdigit():
            raise ValueError
        return fields[0], int(fields[1]), bytes.fromhex(fields[2])
    except ValueError:
        raise ValueError(f"malformed shared-memory descriptor {':'.join(fields)!r}") from None


def sweep(server_pid: int | None = None) -> None:
    """Remove the segments of ``server_pid``, or (without it) those of every server that no longer
    runs."""
    from rh_core.support.processes import pid_alive

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


def owner_of(name: str) -> int | None:
    """The pid of the process that owns segment ``name`` (written in its header when it was made or
    taken over), or None when it cannot be read."""
    try:
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDONLY)
    except OSError:
        return None
    try:
        raw = os.pread(fd, _OWNER.stop - _OWNER.start, _OWNER.start)
    except OSError:
        return None
    finally:
        os.close(fd)
    return int.from_bytes(raw, "little") if len(raw) == _OWNER.stop - _OWNER.start else None


def sweep_orphans(prefix: str) -> list[str]:
    """Remove the segments named ``prefix...`` whose owner no longer runs: a process killed before it
    could remove them (mappings other processes keep of them are no use to anyone). Returns their names."""
    from rh_core.support.processes import pid_alive

    try:
        names = [name for name in os.listdir(SHM_DIR) if name.startswith(prefix)]
    except OSError:
        return []
    removed = []
    for name in names:
        owner = owner_of(name)
        if owner and not pid_alive(owner):
            try:
                os.unlink(os.path.join(SHM_DIR, name))
                removed.append(name)
            except OSError:
                pass
    return removed
