"""Dynamic batching across requests, in the manner of Triton's dynamic batcher.

Windows from every concurrent request for one model wait in one queue; a worker
takes up to ``max_batch`` windows of the same shape, waiting at most
``max_delay_s`` for a batch to fill, and runs them in one model call on a single
thread (one call at a time per model; ``threads`` > 1 only for remote backends,
one call in flight per model server). The queue is bounded too: past
``max_queued`` windows a submit fails with :class:`QueueFull` at once rather than
letting memory grow. A window whose caller has gone away (cancelled) is dropped
before it runs.

Memory: with a :class:`~service.budget.MemoryBudget`, a batch takes its windows'
bytes from the server-wide budget before it runs, and is cut to what the budget
holds. A batch that fails is run again window by window, so a bad window fails
only its own request, not the others that shared its batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .backends.base import Backend
from .budget import MemoryBudget
from .metrics import Metrics


class QueueFull(Exception):
    """More windows are queued for this model than the server accepts."""


@dataclass
class _Pending:
    crops: list[np.ndarray]  # one window: (3, n, n) uint8, and (3, 2n, 2n) context for dual
    future: asyncio.Future


class Batcher:
    def __init__(
        self,
        backend: Backend,
        max_batch: int = 4,
        max_delay_s: float = 0.005,
        max_queued: int = 64,
        metrics: Metrics | None = None,
        label: str = "",
        threads: int = 1,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.backend, self.max_batch, self.max_delay_s, self.max_queued = backend, max_batch, max_delay_s, max_queued
        self.metrics, self.label, self.budget = metrics, label or backend.name, budget
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
        return await self.submit([crops])[0]

    def submit(self, windows: list[list[np.ndarray]]) -> list[asyncio.Future]:
        """Queue windows all or none: a call the queue cannot take runs nothing."""
        if self._queued + len(windows) > self.max_queued:
            raise QueueFull(
                f"{self._queued} windows already queued for model {self.label}; {len(windows)} more exceed the limit of {self.max_queued}"
            )
        loop = asyncio.get_running_loop()
        futures = []
        for crops in windows:
            item = _Pending(crops, loop.create_future())
            self._queues.setdefault(tuple(c.shape for c in crops), []).append(item)
            futures.append(item.future)
        self._count(len(windows))
        self._wake.set()
        return futures

    def _count(self, delta: int) -> None:
        self._queued += delta
        if self.metrics:
            self.metrics.queued_windows.labels(self.label).set(self._queued)

    def _batch_limit(self, shape: tuple) -> tuple[int, int]:
        """(windows per batch, bytes per window) for windows of ``shape``."""
        if self.budget is None:
            return self.max_batch, 0
        side = shape[0][-1]
        per_window = self.backend.window_bytes(side)
        return max(1, min(self.max_batch, self.budget.windows_that_fit(per_window))), per_window

    def _take(self, limit: int) -> list[_Pending]:
        """Up to ``limit`` live windows of the oldest shape."""
        shape, queue = next(iter(self._queues.items()))
        batch: list[_Pending] = []
        while queue and len(batch) < limit:
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
            limit, per_window = self._batch_limit(shape)
            if len(self._queues[shape]) < limit:
                await asyncio.sleep(self.max_delay_s)
            if not self._queues:
                continue
            batch = self._take(limit)
            if not batch:
                continue
            await self._slots.acquire()
            nbytes = per_window * len(batch)
            if self.budget is not None:
                await self.budget.acquire(nbytes)
                if self.metrics:
                    self.metrics.window_memory.set(self.budget.used)
            task = asyncio.get_running_loop().create_task(self._execute(batch, nbytes))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _call(self, batch: list[_Pending]) -> np.ndarray:
        inputs = [np.stack([item.crops[k] for item in batch]) for k in range(len(batch[0].crops))]
        probs: np.ndarray = await asyncio.get_running_loop().run_in_executor(self._executor, self.backend.infer, inputs)
        if self.metrics:
            self.metrics.windows.labels(self.label).inc(len(batch))
            self.metrics.batch_size.labels(self.label).observe(len(batch))
        return probs

    async def _execute(self, batch: list[_Pending], nbytes: int) -> None:
        try:
            batch = [item for item in batch if not item.future.done()]  # callers that left while it waited
            if not batch:
                return
            try:
                results: list[np.ndarray | BaseException] = list(await self._call(batch))
            except Exception as e:
                if len(batch) == 1:
                    results = [e]
                else:  # one bad window must not fail the other requests in its batch
                    results = []
                    for item in batch:
                        try:
                            results.append((await self._call([item]))[0])
                        except Exception as single:
                            results.append(single)
            for item, result in zip(batch, results):
                if item.future.done():
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)
        finally:
            if self.budget is not None:
                await self.budget.release(nbytes)
                if self.metrics:
                    self.metrics.window_memory.set(self.budget.used)
            self._slots.release()

    async def close(self) -> None:
        self._task.cancel()
        for task in [self._task, *self._running]:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True, cancel_futures=True)
