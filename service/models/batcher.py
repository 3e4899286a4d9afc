"""Dynamic batching across requests, in the manner of Triton's dynamic batcher.

Windows from every concurrent request for one model wait in one queue; a worker
takes up to ``max_batch`` windows of the same shape, waiting at most
``max_delay_s`` for a batch to fill, and runs them in one model call on a single
thread (one call at a time per model; ``threads`` > 1 only for remote backends,
one call in flight per model server). The queue is bounded too: past
``max_queued`` windows a submit fails with :class:`QueueFull` at once rather than
letting memory grow. A window whose caller has gone away (cancelled) is dropped
before it runs.

Order: the oldest tile first. Each window carries its request's priority (when its
tile started); a batch takes the windows of the oldest request queued, so concurrent
tiles finish one after another (the first after one tile's time, the second after
two...) instead of all together at the end, for the same throughput. The bound that
keeps a long tile from starving the others: every ``fair_every``-th batch takes the
windows that have waited longest, whoever they belong to.

Memory: with a :class:`~service.budget.MemoryBudget`, a batch takes its windows'
bytes from the server-wide budget before it runs, and is cut to what the budget
holds. A batch that fails is run again window by window, so a bad window fails
only its own request, not the others that shared its batch (unless the model tier
itself failed: a remote model server's retries are :mod:`service.remote`'s alone).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import dataclass

import numpy as np

from service.engines.base import Engine
from service.metrics import Metrics
from service.models.budget import MemoryBudget

# Every this many batches take the longest-waiting windows instead of the oldest tile's.
FAIR_EVERY = 4


class QueueFull(Exception):
    """More windows are queued for this model than the server accepts."""


@dataclass
class _Pending:
    crops: list[np.ndarray]  # one window: (3, n, n) uint8, and (3, 2n, 2n) context for dual
    future: asyncio.Future
    priority: float  # its request's start (lower: older, served first)
    order: int  # arrival order (ties, and the longest-waiting batch)


class Batcher:
    def __init__(
        self,
        backend: Engine,
        max_batch: int = 4,
        max_delay_s: float = 0.005,
        max_queued: int = 64,
        metrics: Metrics | None = None,
        label: str = "",
        threads: int = 1,
        budget: MemoryBudget | None = None,
        fair_every: int = FAIR_EVERY,
    ) -> None:
        self.backend, self.max_batch, self.max_delay_s, self.max_queued = backend, max_batch, max_delay_s, max_queued
        self.metrics, self.label, self.budget = metrics, label or backend.name, budget
        self._queues: dict[tuple, list[_Pending]] = {}
        self._queued = 0
        self._arrivals = 0
        self._batches = 0
        self.fair_every = fair_every
        self._wake = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix=f"model-{self.label}")
        self._slots = asyncio.Semaphore(threads)
        self._running: set[asyncio.Task] = set()
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def queued(self) -> int:
        return self._queued

    async def infer(self, crops: list[np.ndarray], priority: float | None = None) -> np.ndarray:
        """Probabilities ``(h, w)`` of one window; waits for its batch to run."""
        return await self.submit([crops], priority)[0]

    def submit(self, windows: list[list[np.ndarray]], priority: float | None = None) -> list[asyncio.Future]:
        """Queue windows all or none: a call the queue cannot take runs nothing.
        ``priority``: when the request started (None: now)."""
        if self._queued + len(windows) > self.max_queued:
            raise QueueFull(
                f"{self._queued} windows already queued for model {self.label}; {len(windows)} more exceed the limit of {self.max_queued}"
            )
        loop = asyncio.get_running_loop()
        when = loop.time() if priority is None else priority
        futures = []
        for crops in windows:
            self._arrivals += 1
            item = _Pending(crops, loop.create_future(), when, self._arrivals)
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

    def _next_shape(self) -> tuple:
        """The shape of the next batch: that of the oldest request's windows, or, every
        ``fair_every``-th batch, of the window that has waited longest."""
        fair = self.fair_every > 0 and self._batches % self.fair_every == self.fair_every - 1

        def rank(item: _Pending) -> tuple:
            return (item.order,) if fair else (item.priority, item.order)

        return min(self._queues, key=lambda shape: min(rank(i) for i in self._queues[shape]))

    def _take(self, shape: tuple, limit: int) -> list[_Pending]:
        """Up to ``limit`` live windows of ``shape``, the oldest request's first (every
        ``fair_every``-th batch: the longest-waiting first)."""
        fair = self.fair_every > 0 and self._batches % self.fair_every == self.fair_every - 1
        self._batches += 1
        queue = self._queues[shape]
        queue.sort(key=(lambda i: i.order) if fair else (lambda i: (i.priority, i.order)))
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
            shape = self._next_shape()
            limit, per_window = self._batch_limit(shape)
            if len(self._queues[shape]) < limit:
                await asyncio.sleep(self.max_delay_s)
            if not self._queues:
                continue
            shape = self._next_shape()  # windows of an older request may have come meanwhile
            limit, per_window = self._batch_limit(shape)
            batch = self._take(shape, limit)
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
                # A failure of the model tier (a model server down after its own
                # retries, service.remote) is every window's: running them one by one
                # would only repeat it. Anything else may be one window's fault.
                if len(batch) == 1 or isinstance(e, ConnectionError):
                    results = [e] * len(batch)
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
