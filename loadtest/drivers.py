"""Closed loop (a fixed number of clients, each sending its next tile when the last
one is answered) and open loop (tiles arriving at random at a target rate, whether or
not the server keeps up: Poisson arrivals, latency counted from each arrival's
scheduled time so a slow server cannot hide its queue, i.e. no coordinated omission).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from service.client import FootprintsClient

from .calls import Call, send
from .tiles import Tile

ERROR_BACKOFF_S = 0.1


class Driver:
    """Sends tiles to one server and keeps every call it made (``calls``)."""

    def __init__(
        self, make_client: Callable[[], FootprintsClient], tiles: list[Tile], model: str = "", timeout: float | None = 600
    ) -> None:
        self.make_client, self.tiles, self.model, self.timeout = make_client, tiles, model, timeout
        self.t0 = time.perf_counter()
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._tile = itertools.count()

    def _next_tile(self) -> Tile:
        with self._lock:
            return self.tiles[next(self._tile) % len(self.tiles)]

    def _keep(self, call: Call, bar: tqdm) -> None:
        with self._lock:
            self.calls.append(call)
        bar.update(1)
        if call.code != "OK":
            bar.set_postfix_str(f"last error {call.code}")

    def warm_up(self, count: int) -> list[Call]:
        """``count`` calls one after another, not kept: the server's first tiles pay
        for lazy set-up (engine caches, allocator growth)."""
        with self.make_client() as client:
            return [send(client, self._next_tile(), self.model, self.timeout, "warm-up", self.t0) for _ in range(count)]

    def closed(
        self, concurrency: int, duration: float | None = None, count: int | None = None, step: str | None = None
    ) -> list[Call]:
        """``concurrency`` clients for ``duration`` seconds or ``count`` calls in all."""
        step = step or f"c={concurrency}"
        first = len(self.calls)
        end = time.perf_counter() + duration if duration else None
        tickets = itertools.count()
        bar = tqdm(total=count, desc=step, unit="tile")

        def client_loop() -> None:
            with self.make_client() as client:
                while True:
                    if end is not None and time.perf_counter() >= end:
                        return
                    if count is not None and next(tickets) >= count:
                        return
                    call = send(client, self._next_tile(), self.model, self.timeout, step, self.t0)
                    self._keep(call, bar)
                    if call.code != "OK":
                        time.sleep(ERROR_BACKOFF_S)  # as a client would, rather than hammer a refusing server

        threads = [threading.Thread(target=client_loop, name=f"client-{i}") for i in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        bar.close()
        return self.calls[first:]

    def open(
        self,
        rate: float,
        duration: float | None = None,
        count: int | None = None,
        step: str | None = None,
        seed: int = 0,
        max_clients: int = 64,
    ) -> list[Call]:
        """Tiles arriving at ``rate`` per second on average (exponential gaps), each
        sent on its own client thread (up to ``max_clients`` at once; an arrival that
        finds none free waits, and that wait counts in its latency)."""
        step = step or f"rate={rate:g}/s"
        first = len(self.calls)
        rng = np.random.default_rng(seed)
        local = threading.local()
        clients: list[FootprintsClient] = []
        bar = tqdm(total=count, desc=step, unit="tile")

        def arrival(scheduled: float) -> None:
            client = getattr(local, "client", None)
            if client is None:
                client = local.client = self.make_client()
                with self._lock:
                    clients.append(client)
            late = time.perf_counter() - scheduled
            self._keep(send(client, self._next_tile(), self.model, self.timeout, step, self.t0, late), bar)

        start = time.perf_counter()
        at, sent = start, 0
        with ThreadPoolExecutor(max_clients, thread_name_prefix="arrival") as pool:
            while (count is None or sent < count) and (duration is None or at - start < duration):
                time.sleep(max(0.0, at - time.perf_counter()))
                pool.submit(arrival, at)
                sent += 1
                at += float(rng.exponential(1 / rate))
        bar.close()
        for c in clients:
            c.close()
        return self.calls[first:]
