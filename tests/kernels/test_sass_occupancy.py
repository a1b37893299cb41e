"""benchmarks/linear_sass.py's blocks-per-SM arithmetic for sm_90 (registers per warp in units of 256,
228 KB of shared memory with 1 KB reserved per block, 2048 threads)."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

from linear_sass import blocks_per_sm  # noqa: E402


def test_registers_bind():
    assert blocks_per_sm(234, 8, 96 * 1024) == 1     # 240 regs/thread x 256 threads = 61440 of 65536
    assert blocks_per_sm(128, 8, 32 * 1024) == 2
    assert blocks_per_sm(255, 4, 0) == 2


def test_shared_memory_binds():
    assert blocks_per_sm(64, 4, 168 * 1024) == 1     # two would need 338 KB
    assert blocks_per_sm(64, 4, 100 * 1024) == 2     # 2 x 101 KB <= 228 KB


def test_threads_bind():
    assert blocks_per_sm(16, 16, 0) == 4             # 4 x 512 threads
