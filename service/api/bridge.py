"""The bridge between the synchronous tiling engine and the server's event loop.

The engine runs in a worker thread per tile (it reads, stitches and yields rows
synchronously). Its windows cross to the loop through :class:`BatchedModel`,
which hands each to the model's asyncio :class:`~service.models.batcher.Batcher` (so
windows of concurrent tiles share model calls); its finished rows cross back
through :func:`stream_rows`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Future

import numpy as np

from service.engines.base import Engine
from service.models.batcher import Batcher
from service.tiling.engine import RasterSource, TilePlan, TilingEngine
from service.tiling.stages import Stages


class Cancelled(Exception):
    """The tile's caller went away; its remaining windows are not run."""


class BatchedModel:
    """A tile's view of a shared model: the engine thread calls :meth:`submit` (or
    :meth:`infer`), the windows run in the batcher on the event loop, ahead of younger
    tiles' (``priority``: when the tile started; see :class:`~service.models.batcher.Batcher`)."""

    def __init__(self, batcher: Batcher, loop: asyncio.AbstractEventLoop, engine: Engine, priority: float = 0.0) -> None:
        self.batcher, self.loop, self.priority = batcher, loop, priority
        self.geometry, self.device, self.window_bytes = engine.geometry, engine.device, engine.window_bytes
        self.resolution_m, self.threshold = engine.resolution_m, engine.threshold
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._outstanding: set[Future] = set()

    def submit(self, inputs: list[np.ndarray]) -> Callable[[], np.ndarray]:
        """Queue a batch of windows now; the returned call waits for their probabilities.
        The engine keeps a second batch queued while the first runs, so the batcher
        always finds this tile's next windows waiting."""
        futures = []
        with self._lock:
            if self._cancelled.is_set():
                raise Cancelled()
            for i in range(len(inputs[0])):
                f = asyncio.run_coroutine_threadsafe(self.batcher.infer([x[i] for x in inputs], self.priority), self.loop)
                futures.append(f)
                self._outstanding.add(f)

        def wait() -> np.ndarray:
            try:
                return np.stack([f.result() for f in futures])
            except Exception:
                if self._cancelled.is_set():
                    raise Cancelled() from None
                raise
            finally:
                with self._lock:
                    self._outstanding.difference_update(futures)

        return wait

    def infer(self, inputs: list[np.ndarray]) -> np.ndarray:
        return self.submit(inputs)()

    def cancel(self) -> None:
        """Stop: windows not yet run are dropped, the engine thread raises Cancelled."""
        with self._lock:
            self._cancelled.set()
            for f in self._outstanding:
                f.cancel()

    def close(self) -> None:
        self.cancel()


async def stream_rows(
    engine: TilingEngine, source: RasterSource, plan: TilePlan, model: BatchedModel, stages: Stages | None = None
) -> AsyncGenerator[tuple[int, int, np.ndarray], None]:
    """Run ``engine`` over ``source`` in a worker thread; yield its ``(r0, r1, rows)``
    blocks on the event loop as they become final. If the consumer stops early
    (cancelled, failed), the tile's remaining windows are dropped."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    def work() -> None:
        try:
            for r0, r1, prob in engine.run(source, plan=plan, stages=stages):
                # Final rows: the stitcher never writes them again, so no copy is needed.
                loop.call_soon_threadsafe(queue.put_nowait, (r0, r1, prob))
            loop.call_soon_threadsafe(queue.put_nowait, done)
        except BaseException as e:  # forwarded to the RPC
            loop.call_soon_threadsafe(queue.put_nowait, e)

    thread = threading.Thread(target=work, name="tile", daemon=True)
    thread.start()
    try:
        while True:
            item = await queue.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        if thread.is_alive():  # the caller left early: stop the engine's windows
            model.cancel()
        # The caller closes the raster this thread (and its window reader) reads as soon
        # as this returns, so return only once the thread has ended.
        await join_thread(thread)


async def join_thread(thread: threading.Thread) -> None:
    """Wait for ``thread`` to end, even through cancels of the waiting task (gRPC may
    cancel a call's task more than once); a cancel that arrived is raised afterwards."""
    joined = asyncio.ensure_future(asyncio.to_thread(thread.join))
    cancelled = False
    while not joined.done():
        try:
            await asyncio.shield(joined)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError()
