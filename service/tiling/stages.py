"""Where a tile's time goes, by stage: receive, decode, resample, window reads, model,
stitch, encode, polygons.

Each stage's wall seconds as the thread that waits on it sees them: the window reader
runs ahead in its own thread, so "window reads" is only the time the tile waited for a
read (what the model did not hide), and "model" the time it waited for probabilities.
In-process every stage runs on one thread in turn, so the stages add up to the tile's
time (``tests/service/tiling/test_stages.py``); on the server, rows are encoded on the
event loop while the tile's thread goes on, so there they may add up to more.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

ORDER = ("receive", "decode", "resample", "window reads", "model", "stitch", "encode", "polygons")


class Stages:
    """Seconds per stage of one tile (thread-safe: stages run on several threads)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t)

    def as_dict(self) -> dict[str, float]:
        """Stages in pipeline order (known ones first), rounded to the microsecond."""
        with self._lock:
            names = [s for s in ORDER if s in self.seconds] + sorted(set(self.seconds) - set(ORDER))
            return {s: round(self.seconds[s], 6) for s in names}
