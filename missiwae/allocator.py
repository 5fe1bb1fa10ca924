"""Keep freed tensor memory in the process (glibc) instead of unmapping it after every step.

glibc serves any allocation above its mmap threshold (128 KiB, raised dynamically up to 32 MiB)
with a fresh `mmap` and returns it with `munmap` when freed, and it gives the top of the heap
back to the OS once more than the trim threshold is free there. A training step makes and
frees the same large tensors every time: (K·B, D) decoder outputs, (K·B, C, H, W) feature maps.
Each fresh mapping is page-faulted in and zeroed by the kernel before torch writes a single
number, which cost a quarter of a K = 50 MLP step and over 40% of a K = 50 convolutional step
on CPU (benchmarks/README.md). Raising both thresholds lets the freed blocks be reused.

PyTorch's own CPU tuning guide recommends swapping in jemalloc or tcmalloc for this reason;
`mallopt` gets the same effect without a preloaded library. The cost is that the process keeps
up to `trim_threshold` bytes of freed memory instead of returning it: its peak RSS is
unchanged, it just does not shrink between steps. Set MISSIWAE_RETAIN_FREED_MEMORY=0 to opt out
of it where an entry point opts in.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable

# mallopt parameter numbers from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

DEFAULT_MMAP_THRESHOLD = 256 * 2**20  # allocations above this still get their own mapping
DEFAULT_TRIM_THRESHOLD = 2**30

OPT_OUT_VARIABLE = "MISSIWAE_RETAIN_FREED_MEMORY"

_applied: tuple[int, int] | None = None


def retain_freed_memory(
    mmap_threshold: int = DEFAULT_MMAP_THRESHOLD, trim_threshold: int = DEFAULT_TRIM_THRESHOLD
) -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True when they were set.

    A no-op returning False off glibc (macOS, Windows, musl), when MISSIWAE_RETAIN_FREED_MEMORY
    is 0, or when `mallopt` refuses the values. Idempotent and cheap. The library never calls
    it by itself (it changes the whole process): entry points opt in on entry, namely the
    command line, the Ray Train workers that hold their shard in memory, the imputation
    actors, the classifier tasks and the benchmark workers.
    """
    global _applied
    if os.environ.get(OPT_OUT_VARIABLE, "1").strip().lower() in {"0", "false", "no", "off"}:
        return False
    if mmap_threshold <= 0 or trim_threshold <= 0:
        raise ValueError(f"thresholds must be positive, got {mmap_threshold} and {trim_threshold}")
    if _applied == (mmap_threshold, trim_threshold):
        return True
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    if not (mallopt(_M_MMAP_THRESHOLD, mmap_threshold) and mallopt(_M_TRIM_THRESHOLD, trim_threshold)):
        return False
    _applied = (mmap_threshold, trim_threshold)
    return True


def _glibc_mallopt() -> Callable[[int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        gnu_get_libc_version = libc.gnu_get_libc_version  # only glibc has it
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    del gnu_get_libc_version
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt
