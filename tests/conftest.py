"""Settings for the whole test session.

glibc serves allocations above its mmap threshold (at most 32 MiB) with fresh
mmap()s and returns them on free(), and trims the heap top above 128 KiB: the
state-sized temporaries the samplers and scores allocate on every step are then
page-faulted in again on every call, which made the statistical sampler tests
~2.5x slower than their arithmetic. Serving everything from the heap and never
trimming it keeps those pages mapped (the process keeps its peak footprint).
mallopt acts in-process; GLIBC_TUNABLES would only act at process start.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import pytest
import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def _keep_freed_memory() -> bool:
    """True when glibc's allocator was told to keep freed memory (no-op elsewhere)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # 1 GiB: the largest int-sized threshold that is still well above any test's peak.
    return bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30)) and bool(mallopt(_M_MMAP_MAX, 0))


KEEPS_FREED_MEMORY = _keep_freed_memory()


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One intra-op thread: the tests' tensors are small, and on a shared 2-core machine
    OpenMP's spin-waiting made 2 threads up to 50x slower than 1 (a 250 x 250 mixture
    score: 115 ms vs 2 ms, measured under load). Tests that time threads set their own."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
