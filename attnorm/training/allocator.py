"""Keep freed heap memory in the process between training steps (glibc on Linux).

By default glibc returns large freed blocks to the kernel: anything above a dynamic ``mmap``
threshold is unmapped at ``free``, and the top of the heap is trimmed once more than 128 KiB
is free. A CPU training step allocates and frees the same map-sized buffers every step, so
each step faults them in again, 4 KiB at a time. Measured on the 2-core development CPU (one
thread, ``benchmarks/bench_gan.py --skip-ssr``): the GAN step took 165 ms (AN) and 135 ms (no
attention) at 32 px with glibc's defaults, 151 ms and 126 ms with the settings below; AN, whose
layer allocates more maps per step, gains most (AN / none 1.22 -> 1.195).

:func:`retain_freed_memory` sets ``M_MMAP_THRESHOLD`` to its maximum, 32 MiB (blocks up to that
size come from the heap and are reused), and ``M_TRIM_THRESHOLD`` to 2 GiB (the heap's top is
kept). The price is that the process keeps its peak heap size until it exits, which a training
process reaches anyway. It does nothing (and returns False) where glibc's ``mallopt`` is absent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 2 ** 31 - 1

_applied = False


def _libc():
    """The C library with ``mallopt(int, int) -> int`` declared, or None (not Linux, or no mallopt)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not hasattr(libc, "mallopt"):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc


def retain_freed_memory() -> bool:
    """Apply the settings above once per process; True if glibc accepted both."""
    global _applied
    if _applied:
        return True
    libc = _libc()
    if libc is None:
        return False
    ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _applied = ok
    return ok


def retain_freed_memory_on(device) -> bool:
    """:func:`retain_freed_memory` where ``device`` (a ``torch.device`` or its name) is the CPU; elsewhere
    nothing is set (a GPU's caching allocator keeps its own blocks) and the answer is False."""
    return str(device).startswith("cpu") and retain_freed_memory()
