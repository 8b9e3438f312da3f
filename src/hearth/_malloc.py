"""glibc's allocator, set for a long-running server.

glibc raises its mmap threshold (up to 32 MiB) each time a block above it is freed;
after that, the large transient buffers of request bodies, file transfers and TLS come
from the malloc arenas and leave them fragmented: `hearth serve`'s memory grew 9-15%
over 1,000 create/run/kill cycles with its live allocations flat (docs/reliability.md).
A fixed threshold keeps such buffers in their own mappings, returned when freed."""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # from glibc's <malloc.h>
MMAP_THRESHOLD_BYTES = 64 * 1024


def fix_mmap_threshold() -> bool:
    """Pin glibc's mmap threshold; False where the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library, no lookup
    except AttributeError:
        log.debug("no mallopt in this C library: allocator left as it is")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
