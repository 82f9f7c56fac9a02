"""Process-level settings that make CPU inference faster.

`retain_freed_memory` addresses a cost that dominates large CPU force calls: glibc's malloc
serves big blocks with fresh mmap'ed pages and returns freed memory to the kernel, so every large
tensor of every step (at 1000 atoms the per-edge (E, K, C) float64 tensors are ~30 MB) is
page-faulted in again and zeroed by the kernel (measurements: docs/calculator.md, "Memory
allocator"). It is the same effect that jemalloc or tcmalloc (LD_PRELOAD) or
`GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...:glibc.malloc.trim_threshold=...` give; this
function applies it from Python, at run time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt(3) parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_LARGEST_TRIM_THRESHOLD = 2**31 - 1  # bytes; mallopt takes an int


def retain_freed_memory() -> bool:
    """Make glibc malloc keep freed memory for reuse instead of returning it to the kernel.

    Sets M_MMAP_MAX = 0 (large blocks come from the heap, not from fresh mmap'ed pages) and
    M_TRIM_THRESHOLD to 2 GiB (the heap is not shrunk). Affects the whole process from now on:
    its resident memory stays at its peak, which is what a long MD or relaxation run wants and
    what a process that frees a lot of memory for other programs does not. Returns True when
    applied, False where it does not apply (not Linux, or a C library without mallopt, e.g. musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _LARGEST_TRIM_THRESHOLD))
