"""Dynamic batching across requests, in the manner of Triton's dynamic batcher.

Windows from every concurrent request for one model wait in one queue; a worker
takes up to ``max_batch`` windows of the same shape, waiting at most
``max_delay_s`` for a batch to fill, and runs them in one model call on a single
thread (one call at a time per model: memory stays bounded; ``threads`` > 1 only
for remote backends, one call in flight per model server). The queue is
bounded too: past ``max_queued`` windows a submit fails with :class:`QueueFull`
at once rather than letting memory grow. A window whose caller has gone away
(cancelled) is dropped before it runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .backends.base import Backend
from .metrics import Metrics


class QueueFull(Exception):
    """More windows are queued for this model than the server accepts."""


@dataclass
class _Pending:
    crops: list[np.ndarray]  # one window: (3, n, n) uint8, and (3, 2n, 2n) context for dual
    future: asyncio.Future


class Batcher:
    def __init__(self, backend: Backend, max_batch: int = 4, max_delay_s: float = 0.005, max_queued: int = 64,
                 metrics: Metrics | None = None, label: str = "", threads: int = 1) -> None:
        self.backend, self.max_batch, self.max_delay_s, self.max_queued = backend, max_batch, max_delay_s, max_queued
        self.metrics, self.label = metrics, label or backend.name
        self._queues: OrderedDict[tuple, list[_Pending]] = OrderedDict()
        self._queued = 0
        self._wake = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix=f"model-{self.label}")
        self._slots = asyncio.Semaphore(threads)
        self._running: set[asyncio.Task] = set()
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def queued(self) -> int:
        return self._queued

    async def infer(self, crops: list[np.ndarray]) -> np.ndarray:
        """Probabilities ``(h, w)`` of one window; waits for its batch to run."""
        if self._queued >= self.max_queued:
            raise QueueFull(f"{self._queued} windows already queued for model {self.label} (limit {self.max_queued})")
        item = _Pending(crops, asyncio.get_running_loop().create_future())
        self._queues.setdefault(tuple(c.shape for c in crops), []).append(item)
        self._count(+1)
        self._wake.set()
        return await item.future

    def _count(self, delta: int) -> None:
        self._queued += delta
        if self.metrics:
            self.metrics.queued_windows.labels(self.label).set(self._queued)

    def _take(self) -> list[_Pending]:
        """Up to max_batch live windows of the oldest shape."""
        shape, queue = next(iter(self._queues.items()))
        batch = []
        while queue and len(batch) < self.max_batch:
            item = queue.pop(0)
            self._count(-1)
            if not item.future.done():  # cancelled callers' windows are dropped
                batch.append(item)
        if not queue:
            del self._queues[shape]
        return batch

    async def _run(self) -> None:
        while True:
            if not self._queues:
                self._wake.clear()
                await self._wake.wait()
                continue
            # Give concurrent requests a moment to fill the batch.
            shape = next(iter(self._queues))
            if len(self._queues[shape]) < self.max_batch:
                await asyncio.sleep(self.max_delay_s)
            if not self._queues:
                continue
            batch = self._take()
            if not batch:
                continue
            await self._slots.acquire()
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _execute(self, batch: list[_Pending]) -> None:
        try:
            inputs = [np.stack([item.crops[k] for item in batch]) for k in range(len(batch[0].crops))]
            try:
                probs = await asyncio.get_running_loop().run_in_executor(self._executor, self.backend.infer, inputs)
            except Exception as e:  # one bad batch fails its own windows, not the server
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(e)
                return
            if self.metrics:
                self.metrics.windows.labels(self.label).inc(len(batch))
                self.metrics.batch_size.labels(self.label).observe(len(batch))
            for item, p in zip(batch, probs):
                if not item.future.done():
                    item.future.set_result(p)
        finally:
            self._slots.release()

    async def close(self) -> None:
        self._task.cancel()
        for task in [self._task, *self._running]:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True, cancel_futures=True)
