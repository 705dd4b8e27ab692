"""Keep freed memory in the process on Linux (glibc), so that XLA:CPU does not fault in fresh pages
on every call.

XLA's CPU runtime allocates each call's temporary buffers anew. glibc serves an allocation that
large from a fresh ``mmap`` (or, on a worker thread, from a fresh per-thread heap), and returns it
to the system when the call frees it, so the next call touches every page for the first time
again: a ResNet18-w16 training step at batch 128 took 56,000 minor page faults (219 MiB zeroed by
the kernel) per call, and 0.140 s against 0.090-0.107 s without them on 2 cores
(docs/performance.md, "Page faults").
:func:`retain_freed_memory` asks glibc (``mallopt``) to serve every allocation from one heap
(``M_ARENA_MAX`` 1), never from ``mmap`` (``M_MMAP_MAX`` 0), and to keep up to 2 GiB of freed
memory at the top of the heap (``M_TRIM_THRESHOLD``): the next call reuses pages already mapped.
The cost: the process keeps its peak heap instead of returning freed memory to the system.

``import jit_jax`` calls it once. It must run before JAX starts its CPU backend (its worker
threads pick their heaps on their first allocation), so import ``jit_jax`` before running any JAX
computation. ``JIT_JAX_MALLOC=system`` in the environment leaves the C library's settings alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: glibc's ``mallopt`` parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8

#: what :func:`retain_freed_memory` sets: one heap, no mmap, up to 2 GiB of freed memory kept
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))

#: ``JIT_JAX_MALLOC`` values that leave the C library alone
OFF = ("system", "off", "0")

#: whether this process's allocator settings were changed (set by :func:`retain_freed_memory`)
applied = False


def glibc() -> ctypes.CDLL | None:
    """This process's C library when it is glibc on Linux (the settings are glibc's; musl's
    ``mallopt`` accepts and ignores them), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def retain_freed_memory() -> bool:
    """Apply :data:`SETTINGS` through glibc's ``mallopt``; True when every setting was accepted.
    A no-op returning False off Linux, on a C library other than glibc, or with
    ``JIT_JAX_MALLOC`` set to one of :data:`OFF`."""
    global applied
    value = os.environ.get("JIT_JAX_MALLOC", "").strip().lower()
    if value not in ("", "retain", *OFF):
        raise ValueError(f"JIT_JAX_MALLOC={value!r}; accepted: 'retain' (the default) or "
                         f"{' / '.join(repr(v) for v in OFF)} (leave the C library's settings)")
    libc = glibc() if value not in OFF else None
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    applied = all(mallopt(param, v) == 1 for param, v in SETTINGS)
    return applied


def status() -> str:
    """One line for benchmark logs: whether this process keeps freed memory."""
    return f"freed memory {'kept' if applied else 'returned'} (jit_jax.malloc)"
