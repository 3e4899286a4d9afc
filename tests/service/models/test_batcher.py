"""The dynamic batcher on its own: batching across callers, the queue bound, dropped
cancelled windows, the shared memory budget, and failures kept to their own window."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from service.models.batcher import Batcher, QueueFull
from service.models.budget import MemoryBudget
from service.tiling.geometry import DualWindows

PER_WINDOW = 1000  # bytes a window of this fake model needs


class Recorder:
    """A backend that returns each window's mean, records every call's batch size and
    the most bytes of windows running at once (across every Recorder sharing ``live``),
    and can be held (``gate``) or made to fail on windows whose first pixel is 13."""

    device, name = "cpu", "recorder"
    geometry = DualWindows({"cpu": 64})

    def __init__(self, live: dict | None = None, gate: threading.Event | None = None) -> None:
        self.calls: list[int] = []
        self.live = live if live is not None else {"now": 0, "peak": 0, "lock": threading.Lock()}
        self.gate = gate

    def window_bytes(self, window: int) -> int:
        return PER_WINDOW

    def infer(self, inputs: list[np.ndarray]) -> np.ndarray:
        x = inputs[0]
        with self.live["lock"]:
            self.live["now"] += len(x) * PER_WINDOW
            self.live["peak"] = max(self.live["peak"], self.live["now"])
        try:
            if self.gate is not None:
                assert self.gate.wait(30)
            self.calls.append(len(x))
            if (x[:, 0, 0, 0] == 13).any():
                raise ValueError("poisoned window")
            return x.astype(np.float32).mean(axis=1)
        finally:
            with self.live["lock"]:
                self.live["now"] -= len(x) * PER_WINDOW

    def close(self) -> None:
        pass


def _window(value: int, side: int = 8) -> list[np.ndarray]:
    return [np.full((3, side, side), value, np.uint8)]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_concurrent_windows_share_batches_up_to_the_limit():
    async def main():
        backend = Recorder()
        batcher = Batcher(backend, max_batch=4, max_delay_s=0.05)
        out = await asyncio.gather(*[batcher.infer(_window(v)) for v in range(10)])
        await batcher.close()
        return backend, out

    backend, out = run(main())
    assert [float(o[0, 0]) for o in out] == list(range(10))  # every caller gets its own answer
    assert sum(backend.calls) == 10 and max(backend.calls) == 4 and len(backend.calls) == 3


def test_windows_of_different_shapes_never_share_a_batch():
    async def main():
        backend = Recorder()
        batcher = Batcher(backend, max_batch=8, max_delay_s=0.05)
        await asyncio.gather(*[batcher.infer(_window(1, side)) for side in (8, 16, 8, 16)])
        await batcher.close()
        return backend

    assert sorted(run(main()).calls) == [2, 2]


def test_a_full_queue_refuses_at_once():
    async def main():
        gate = threading.Event()
        batcher = Batcher(Recorder(gate=gate), max_batch=1, max_delay_s=0.0, max_queued=3)
        backend = batcher.backend
        first = asyncio.ensure_future(batcher.infer(_window(0)))
        while backend.live["now"] == 0:  # window 0 is in the model, held there
            await asyncio.sleep(0.005)
        queued = []
        for v in range(1, 10):  # the worker may take one more to wait for the model: 3 or 4 fit
            queued.append(asyncio.ensure_future(batcher.infer(_window(v))))
            await asyncio.sleep(0)  # a yield, not a wait: the call enqueues or refuses at once
            if queued[-1].done():
                break
        refused = queued.pop()
        assert isinstance(refused.exception(), QueueFull) and "3 windows already queued" in str(refused.exception())
        assert batcher.queued == 3 and len(queued) in (3, 4)
        gate.set()
        await asyncio.gather(first, *queued)
        await batcher.close()

    run(main())


def test_windows_of_callers_that_left_are_not_run():
    async def main():
        gate = threading.Event()
        backend = Recorder(gate=gate)
        batcher = Batcher(backend, max_batch=1, max_delay_s=0.0)
        running = asyncio.ensure_future(batcher.infer(_window(0)))
        waiting = [asyncio.ensure_future(batcher.infer(_window(v))) for v in (1, 2, 3)]
        while backend.live["now"] == 0:  # window 0 is in the model, held there
            await asyncio.sleep(0.005)
        for w in waiting[:2]:
            w.cancel()
        gate.set()
        await running
        assert float((await waiting[2])[0, 0]) == 3
        await batcher.close()
        return backend

    assert sum(run(main()).calls) == 2  # windows 1 and 2 were dropped


def test_the_memory_budget_caps_windows_in_flight_across_models():
    """Two models, each allowed batches of 4, share a budget of 3 windows: never more
    than 3 windows' bytes run at once, and every window is answered."""

    async def main():
        live = {"now": 0, "peak": 0, "lock": threading.Lock()}
        budget = MemoryBudget(3 * PER_WINDOW)
        a, b = Recorder(live), Recorder(live)
        batchers = [Batcher(m, max_batch=4, max_delay_s=0.01, budget=budget) for m in (a, b)]
        out = await asyncio.gather(*[batchers[i % 2].infer(_window(100 + i)) for i in range(24)])
        for batcher in batchers:
            await batcher.close()
        return live, a, b, out, budget

    live, a, b, out, budget = run(main())
    assert len(out) == 24 and sum(a.calls) + sum(b.calls) == 24
    assert max(a.calls + b.calls) == 3  # batches cut to what the budget holds
    assert live["peak"] <= 3 * PER_WINDOW and budget.used == 0


def test_a_failing_window_fails_only_its_own_caller():
    async def main():
        backend = Recorder()
        batcher = Batcher(backend, max_batch=4, max_delay_s=0.05)
        results = await asyncio.gather(*[batcher.infer(_window(v)) for v in (11, 12, 13, 14)], return_exceptions=True)
        await batcher.close()
        return backend, results

    backend, results = run(main())
    assert isinstance(results[2], ValueError) and "poisoned" in str(results[2])
    assert [float(r[0, 0]) for i, r in enumerate(results) if i != 2] == [11, 12, 14]
    assert backend.calls[0] == 4  # they did share a batch, which failed, then ran one by one


def test_the_oldest_request_goes_first_and_every_fourth_batch_to_the_longest_waiting():
    """Windows of three tiles queued while the model is busy: the oldest tile's run
    first, batch after batch, except that every 4th batch takes the windows that have
    waited longest (here the newest tile's, queued first), so no tile starves."""

    async def go() -> list[int]:
        gate = threading.Event()
        backend = Recorder(gate=gate)
        order: list[int] = []
        original = backend.infer

        def infer(inputs):
            order.extend(int(v) for v in inputs[0][:, 0, 0, 0])
            return original(inputs)

        backend.infer = infer
        b = Batcher(backend, max_batch=2, max_delay_s=0.001, max_queued=64, fair_every=4)
        blocker = asyncio.ensure_future(b.infer(_window(0), priority=0.0))  # holds the model
        await asyncio.sleep(0.05)
        # Tile 3 (started last) queues first, then tile 1 (oldest), then tile 2.
        futures = []
        for tile, started in ((3, 3.0), (1, 1.0), (2, 2.0)):
            futures += b.submit([_window(tile) for _ in range(4)], priority=started)
        gate.set()
        await asyncio.gather(blocker, *futures)
        await b.close()
        return order[1:]

    order = run(go())
    # Batches of 2 (the blocker was the 1st): tile 1, tile 1, then the 4th batch the fair one
    # (longest waiting: tile 3's first two), then tile 2 twice and the rest of tile 3.
    assert order == [1, 1, 1, 1, 3, 3, 2, 2, 2, 2, 3, 3]
