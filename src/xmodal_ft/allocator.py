"""Keep freed host memory in the process, so training steps reuse it instead of faulting it in."""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
ONE_GIB = 1 << 30


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed blocks under 1 GiB for reuse. False where not glibc.

    Every step frees and re-allocates the same activation and gradient buffers. By default glibc
    returns large ones to the kernel and page-faults them in again on the next step (GPT-2
    unfrozen, batch 8 x 49 tokens: ~45k faults and 0.17 s of kernel time per step; 8 x 1024
    tokens FPT: 3.5 GiB faulted, 5.6 s). Kept, they are reused: about 10 % faster steps at
    GPT-2 size and 16 % at 8 x 1024 tokens, for about 5 % more peak RSS.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, ONE_GIB)) and bool(mallopt(M_TRIM_THRESHOLD, ONE_GIB))
