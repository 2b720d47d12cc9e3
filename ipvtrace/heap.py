"""Keep the large buffers of one batch for the next, instead of giving them
back to the kernel after every batch.

Under a flood each batch allocates and frees buffers of the same size: a
ring run (up to RUN_MAX_RECORDS records, and ~1 KB of `--json` text a row),
a recording block (up to 4 MiB, compressed or not). glibc's malloc serves a
buffer above its mmap threshold (128 KiB at first) with a fresh mapping and
trims a free heap top above its trim threshold, so the next batch faults the
same pages in again, each zero-filled by the kernel: on 2026-12-05,
`replay --json` of 170,000 packets took about 86,000 page faults (0.07–0.14
s of its 0.52 s in the kernel) on the build machine, 6,200 with the
thresholds below (0.43 s). The cost: up to
TRIM_THRESHOLD of freed heap stays with the process.

Only glibc has mallopt(); elsewhere (musl) nothing changes, and a threshold
the user set in the environment (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_)
is left as set.
"""
from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3     # glibc's <malloc.h>
MMAP_THRESHOLD = 8 << 20     # above a recording block (4 MiB) and its text
TRIM_THRESHOLD = 16 << 20


def keep_batches() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (see the
    module's docstring); False where that is not possible or not wanted."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # trim first: setting the mmap threshold also ends glibc's dynamic thresholds
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
