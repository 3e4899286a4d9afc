"""The engine-thread bridge on its own (service/api/bridge.py): rows cross to the event
loop, and a consumer that leaves early stops the tile's thread before it returns."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import numpy as np

from service.api.bridge import join_thread, stream_rows


class _Engine:
    """Yields ``n`` row blocks, slowly, and records whether it was still running."""

    def __init__(self, n: int, pause: float = 0.01) -> None:
        self.n, self.pause, self.stopped, self.running = n, pause, threading.Event(), threading.Event()

    def run(self, source, plan=None, stages=None):
        self.running.set()
        try:
            for i in range(self.n):
                if self.stopped.is_set():
                    return
                time.sleep(self.pause)
                yield i, i + 1, np.full((1, 4), i, np.float32)
        finally:
            self.running.clear()


class _Model:
    def __init__(self, engine: _Engine) -> None:
        self.engine = engine

    def cancel(self) -> None:
        self.engine.stopped.set()


def test_rows_arrive_in_order_on_the_loop():
    engine = _Engine(5)

    async def go():
        return [r0 async for r0, _, _ in stream_rows(engine, None, None, _Model(engine))]

    assert asyncio.run(go()) == [0, 1, 2, 3, 4]


def test_a_consumer_that_leaves_early_stops_the_thread_before_closing():
    engine = _Engine(1000, pause=0.02)

    async def go():
        async with contextlib.aclosing(stream_rows(engine, None, None, _Model(engine))) as rows:
            async for r0, _, _ in rows:
                if r0 == 2:
                    break
        return engine.running.is_set()  # after aclose: the thread has ended

    assert asyncio.run(go()) is False and engine.stopped.is_set()


def test_joining_survives_repeated_cancels_and_reports_them():
    release = threading.Event()
    thread = threading.Thread(target=release.wait, daemon=True)
    thread.start()

    async def go():
        task = asyncio.ensure_future(join_thread(thread))
        for _ in range(3):
            await asyncio.sleep(0.02)
            task.cancel()
        await asyncio.sleep(0.05)
        assert not task.done()  # still waiting for the thread, whatever the cancels
        release.set()
        try:
            await task
        except asyncio.CancelledError:
            return not thread.is_alive()
        return False

    assert asyncio.run(go()) is True
