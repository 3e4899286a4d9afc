"""One server's memory budget for model windows, shared by every model and tile.

Each batch of windows takes its bytes (the manifest's per-window bound, times the
batch size) before it runs and gives them back after, so the windows in flight
across all concurrent tiles and models never need more than ``--memory-budget-gb``.
"""

from __future__ import annotations

import asyncio

from service.machine import half_the_ram


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
