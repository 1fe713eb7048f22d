"""Keep freed memory in the training process on CPUs.

glibc's malloc serves every block above its mmap threshold (at most 32 MiB) with a fresh
mmap and returns it to the kernel on free. A training step allocates and frees the same
large activation and gradient tensors every step (a resnet18 activation at batch 256 and
32 px is 64 MiB), so each step pays for the kernel zero-filling those pages again: a
sixth of the CPU time of a step went to page faults (docs/performance.md). With mmap off
and trimming raised, freed blocks stay in the heap and the next step reuses them; the
process keeps its peak memory, which a training process needs again at its next step.

`MEC_KEEP_FREED_MEMORY=0` leaves the allocator as it is (for a long-lived process that
trains once and then needs the memory back for something else).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters, from glibc's malloc.h
TRIM_THRESHOLD = 2**31 - 1  # the largest value mallopt takes (an int)


def keep_freed_memory() -> bool:
    """Switch glibc's malloc to keep freed memory for reuse; False where there is no
    glibc (macOS, musl) or the environment says no."""
    if os.environ.get("MEC_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
