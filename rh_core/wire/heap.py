"""Memory for large buffers: fresh pages cost more than the copy into them.

Filling fresh 4 KiB pages from the kernel costs four to six times a copy into memory a process
used before: on this project's VMs a 100 MiB copy takes ~100 ms into fresh memory and ~16 ms into
reused memory (BENCHMARKS.md, "Bulk"). Two remedies:

- ``keep_freed_memory``, for the server and its workers, which receive and send such buffers call
  after call. glibc's malloc gives every allocation of 32 MiB or more fresh pages (``mmap``) and
  returns them when freed; these processes take large blocks from their heap instead and keep up
  to ``KEPT_FREE_BYTES`` of freed memory for the next call. The price: a heap returns memory only
  from its top, so a process that once held a very large buffer may keep much of it until it exits.
  Client processes are the user's, and their allocator is left alone.
- ``bytes_from``, for every large ``bytes`` a call receives (in clients too): the new object's
  memory is marked for huge pages, which the kernel fills 2 MiB at a time (~25 ms per 100 MiB).
"""

from __future__ import annotations

import ctypes
import functools
import mmap
from typing import Any

KEPT_FREE_BYTES = 256 * 2**20
_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_MAX = -4


def keep_freed_memory(limit: int = KEPT_FREE_BYTES) -> None:
    """Serve large allocations from the heap and keep up to ``limit`` bytes of it when freed (glibc
    only; elsewhere nothing changes)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_MAX, 0)
    mallopt(_M_TRIM_THRESHOLD, limit)


HUGE_PAGE = 2 * 2**20


def bytes_from(buffer: Any) -> bytes:
    """A copy of ``buffer`` as a new ``bytes`` object whose memory is marked for huge pages.

    A large new object gets fresh pages from the kernel, and filling fresh 4 KiB pages costs four to
    six times the copy itself here (BENCHMARKS.md, "Bulk"). Marked (Linux ``madvise``; a hint the
    kernel may ignore), the kernel fills 2 MiB at a time. Only this object's memory is marked, and it
    goes back to the kernel as usual when freed: safe in the user's own processes too.
    """
    source = memoryview(buffer).cast("B")
    size = source.nbytes
    if size < HUGE_PAGE:
        return bytes(source)
    data, target = fresh_bytes(size)
    with target:
        target[:] = source
    return data


def fresh_bytes(size: int) -> tuple[bytes, memoryview]:
    """A new ``bytes`` object of ``size`` bytes, not yet filled, and a writable view of its memory
    to fill it through (a socket's ``recv_into``, say) before anyone else sees it. Large ones are
    marked for huge pages, as :func:`bytes_from` does."""
    new_bytes, bytes_address, madvise = _c_functions()
    data = new_bytes(None, size)  # uninitialised, and ours alone until returned
    start = bytes_address(data)
    if madvise is not None and size >= HUGE_PAGE:
        page = mmap.PAGESIZE
        first, end = start // page * page, -(-(start + size) // page) * page
        madvise(first, end - first, mmap.MADV_HUGEPAGE)
    return data, memoryview((ctypes.c_char * size).from_address(start)).cast("B")


@functools.cache
def _c_functions() -> tuple[Any, Any, Any]:
    """CPython's ``PyBytes_FromStringAndSize`` and ``PyBytes_AsString``, and libc's ``madvise`` (None
    where there is no such function or no huge pages)."""
    new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
    new_bytes.restype, new_bytes.argtypes = ctypes.py_object, (ctypes.c_void_p, ctypes.c_ssize_t)
    bytes_address = ctypes.pythonapi.PyBytes_AsString
    bytes_address.restype, bytes_address.argtypes = ctypes.c_void_p, (ctypes.py_object,)
    madvise = getattr(ctypes.CDLL(None), "madvise", None) if hasattr(mmap, "MADV_HUGEPAGE") else None
    if madvise is not None:
        madvise.restype, madvise.argtypes = ctypes.c_int, (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return new_bytes, bytes_address, madvise
