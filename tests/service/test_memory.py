"""The allocator tuning every CLI command applies: freed activations stay with the process."""

import os
import subprocess
import sys

import pytest

# Allocates and touches 256 MiB, frees it, and prints how much of it is still resident.
_PROBE = """
import sys
import numpy as np
from service.allocator import keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == "tuned" else False
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
before = rss()
block = np.ones(256 * 2**20, dtype=np.uint8)
del block
print(tuned, (rss() - before) / 2**20)
"""


def _probe(mode: str) -> tuple[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc's own defaults
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True, env=env).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tunes glibc's malloc, Linux only")
def test_freed_big_blocks_stay_resident_only_when_tuned():
    # Default glibc: a 256 MiB block is its own mmap, returned to the OS on free.
    tuned, kept = _probe("default")
    assert tuned == "False" and kept < 64
    # Tuned: the block came from the heap and stays for the next forward pass to reuse.
    tuned, kept = _probe("tuned")
    assert tuned == "True" and kept > 200
