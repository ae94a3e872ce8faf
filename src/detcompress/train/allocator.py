"""glibc's allocator, tuned for training on the CPU.

Every training iteration frees and allocates again the same large activation and gradient
buffers. By default glibc hands such memory back to the operating system (blocks above its
dynamic mmap threshold, and the top of the heap above its trim threshold), so the next
iteration page-faults it in again: on the demo's int8 QAT ~1,900 faults per forward and as many
per backward, ~8 ms of a 140 ms iteration. Keeping freed memory for reuse costs nothing beyond
the peak the process already reached.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper limit on 64-bit systems
TRIM_THRESHOLD_MAX = 2**31 - 1
OPT_OUT = "DETCOMPRESS_MALLOC"  # =system keeps glibc's defaults


def keep_freed_memory_for_reuse() -> bool:
    """From now on, blocks up to 32 MB come from the heap and freed memory stays in the process.
    Returns whether it was applied: not without glibc, nor with DETCOMPRESS_MALLOC=system."""
    if os.environ.get(OPT_OUT) == "system":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no glibc (macOS, Windows)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_MAX)
    )
