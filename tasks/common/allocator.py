"""Arrow's memory pool for pipeline processes: one that hands freed memory back to the OS.

pyarrow's default pool on Linux is mimalloc, which keeps freed pages for reuse. A run's steps
each allocate and free large Arrow buffers at a million records, and mimalloc carried that
into every later step, raising the run's peak RSS. With ARROW_DEFAULT_MEMORY_POOL=jemalloc in
the process environment (Makefile, prefect.yaml, Dockerfile) each step's freed memory goes back
and the run peaks lower (bench/results.md has the peaks). pyarrow reads that variable once,
when it loads, so for a process started without it (`python -m flows.cli` by hand) the
flow switches the default pool itself: that covers most allocations, not those Arrow's C++
makes from its own default.
"""

from __future__ import annotations

import os

import pyarrow as pa


def use_returning_pool() -> str:
    """Make jemalloc (else the system allocator) Arrow's default pool; returns the pool's name.

    An explicit ARROW_DEFAULT_MEMORY_POOL wins (and is the better way, see the module doc).
    Buffers allocated before the switch stay valid: each remembers the pool it came from.
    """
    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        try:
            pool = pa.jemalloc_memory_pool()
        except NotImplementedError:  # a pyarrow built without jemalloc
            pool = pa.system_memory_pool()
        pa.set_memory_pool(pool)
    return str(pa.default_memory_pool().backend_name)
