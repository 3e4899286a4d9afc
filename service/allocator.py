"""Keep glibc from handing big freed blocks back to the OS.

By default glibc serves large allocations with fresh mmap()s and trims the heap top
on free, so every forward (and backward) pass of a convolutional network page-faults
its activations in again: measured on this project's 2-core CPU, a training step of
the half-width AMLL U-Net took 3.8 s that way and 1.9 s with freed memory kept
(shared/perf-notes.md has the same effect for inference windows). This does at run
time what ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` do at process start.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt() parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1

# The same at process start, for launchers (Dockerfile, demo.sh, the benchmarks' child
# processes). Through the environment the trim threshold may exceed mallopt's 2 GiB:
# 64 GiB keeps even a 2636-px window's activations.
STARTUP_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736"}


def keep_freed_memory() -> bool:
    """Tune glibc's allocator for this process; False where there is no glibc (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return False
    if any(k in os.environ for k in STARTUP_ENV):
        return True  # set at start-up by whoever launched us (the Dockerfile, demo.sh): keep theirs
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # No mmap()ed chunks: big blocks come from the heap and are reused after free.
    # The largest trim threshold mallopt takes (2 GiB): the heap top is given back
    # only past it.
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _INT_MAX))
