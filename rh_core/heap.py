"""Keep freed memory in the server and worker processes, so large buffers reuse it.

glibc's malloc gives every allocation of 32 MiB or more fresh pages from the kernel (``mmap``) and
returns them when it is freed. Touching fresh pages costs far more than the copy into them: on
this project's VMs a 100 MiB copy takes ~100 ms into fresh memory and ~16 ms into memory the process
used before (BENCHMARKS.md, "Bulk"). The server and its workers receive and send such buffers
call after call, so they take large blocks from their heap instead and keep up to
``KEPT_FREE_BYTES`` of freed memory for the next call.

The price: a heap returns memory only from its top, so a process that once held a very large
buffer may keep much of it until it exits when a later allocation sits above it. Client processes
are the user's, and are left alone.
"""

from __future__ import annotations

import ctypes

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
