"""Arrow's pool for pipeline processes hands freed memory back (a fresh interpreter per case)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
# Build and free a 160 MB Arrow array three times; print the pool and RSS (MiB) before, at the
# last peak and after the frees.
SCRIPT = """
import numpy as np, pyarrow as pa, pyarrow.compute as pc
from tasks.common.allocator import use_returning_pool

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024

name = use_returning_pool()
before = rss()
for _ in range(3):
    values = pc.add(pa.array(np.arange(20_000_000, dtype=np.float64)), 1.0)  # Arrow-allocated
    peak = rss()
    del values
print(name, before, peak, rss())
"""


def _run(**env: str) -> tuple[str, int, int, int]:
    environment = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env={**environment, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    name, before, peak, after = done.stdout.split()
    return name, int(before), int(peak), int(after)


@pytest.mark.parametrize("env", [{}, {"ARROW_DEFAULT_MEMORY_POOL": "jemalloc"}])
def test_freed_arrow_memory_goes_back_to_the_os(env: dict[str, str]) -> None:
    name, before, peak, after = _run(**env)
    assert name == "jemalloc"
    assert peak - before >= 150  # the array was really there
    assert after - before < 60  # and its memory is gone, not kept by the pool


def test_an_explicit_pool_choice_wins() -> None:
    name, before, _, after = _run(ARROW_DEFAULT_MEMORY_POOL="mimalloc")
    assert name == "mimalloc"
    assert after - before >= 150  # what the pipeline avoids: the pool keeps the pages
