"""One server's memory budget for model windows, shared by every model and tile.

Each batch of windows takes its bytes (the manifest's per-window bound, times the
batch size) before it runs and gives them back after, so the windows in flight
across all concurrent tiles and models never need more than ``--memory-budget-gb``.
"""

from __future__ import annotations

import asyncio
import os


def half_the_ram() -> int:
    """The default budget: half the machine's memory leaves room for the probability
    planes, uploads, readers and the OS."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


class MemoryBudget:
    """Bytes available to windows in flight; batches wait for their share (FIFO)."""

    def __init__(self, total_bytes: int | None = None) -> None:
        self.total = int(total_bytes or half_the_ram())
        self.used = 0
        self._changed = asyncio.Condition()

    def windows_that_fit(self, per_window: int) -> int:
        """How many windows of ``per_window`` bytes the whole budget holds (0: not one)."""
        return self.total // max(1, per_window)

    async def acquire(self, nbytes: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.used + nbytes <= self.total)
            self.used += nbytes

    async def release(self, nbytes: int) -> None:
        async with self._changed:
            self.used -= nbytes
            self._changed.notify_all()


class OverBudget(Exception):
    """A tile the server's memory cannot take now (gRPC: RESOURCE_EXHAUSTED)."""


class TileMemory:
    """Bytes the tiles being served may hold outside model windows (upload buffers,
    probability and mask planes). A tile takes its share from its declared size before
    any of its bytes is accepted, or is refused at once: unlike a window, a tile that
    waited would hold its upload meanwhile."""

    def __init__(self, total_bytes: int | None = None) -> None:
        self.total = int(total_bytes or half_the_ram() // 2)
        self.used = 0

    def take(self, nbytes: int, what: str) -> int:
        if self.used + nbytes > self.total:
            raise OverBudget(
                f"{what} needs {nbytes / 2**20:.0f} MiB; tiles in flight hold {self.used / 2**20:.0f} of "
                f"{self.total / 2**20:.0f} MiB; retry later"
            )
        self.used += nbytes
        return nbytes

    def give(self, nbytes: int) -> None:
        self.used -= nbytes
