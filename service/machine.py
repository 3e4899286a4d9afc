"""Facts of the machine this process runs on: the cores it may use (cgroup-aware), its
memory, and whether its CPU computes bf16 natively (AVX512-BF16 or AMX). A leaf:
every layer may ask, and it asks nothing of them."""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

# Instruction sets that make bf16 convolutions faster than fp32 rather than emulated.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]
    cores: int

    @property
    def bf16(self) -> bool:
        return any(f in self.flags for f in BF16_FLAGS)

    @property
    def key(self) -> str:
        """Names the machine in caches of measured speeds."""
        native = "+".join(f for f in BF16_FLAGS if f in self.flags) or "no-bf16"
        return f"{self.model} | {self.cores} cores | {native}"


def available_cores() -> int:
    """Cores this process may run on: its affinity mask, capped by a cgroup v2 CPU
    quota (a container given 2 CPUs on a 64-core host must not start 64 threads)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


@functools.cache
def this_cpu() -> CpuInfo:
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
            elif key.strip() == "model name":
                model = value.strip()
    except OSError:
        pass
    return CpuInfo(model, frozenset(flags), available_cores())


def half_the_ram() -> int:
    """The default budget: half the machine's memory leaves room for the probability
    planes, uploads, readers and the OS."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
