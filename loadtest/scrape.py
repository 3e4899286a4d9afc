"""The server's own view during a load test: its Prometheus ``/metrics`` sampled
every few seconds (tiles in flight, windows queued, mean batch size since the last
sample, resident memory)."""

from __future__ import annotations

import threading
import time
import urllib.request
from dataclasses import asdict, dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass
class Sample:
    at: float  # seconds since the run began
    tiles_in_flight: float
    queued_windows: float
    batch_size: float | None  # mean windows per model call since the previous sample
    rss_bytes: float
    windows_total: float

    def to_dict(self) -> dict:
        return asdict(self)


def read_metrics(url: str, timeout: float = 5.0) -> dict[str, float]:
    """Sample name -> value, summed over labels (``footprints_queued_windows`` of all
    models together, say)."""
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        text = reply.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            values[s.name] = values.get(s.name, 0.0) + s.value
    return values


class Scraper:
    """Samples ``url`` every ``every`` seconds in a thread until :meth:`stop`."""

    def __init__(self, url: str, t0: float, every: float = 2.0) -> None:
        self.url, self.t0, self.every = url, t0, every
        self.samples: list[Sample] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics-scraper", daemon=True)
        self._last: tuple[float, float] | None = None  # batch_size sum and count at the previous sample

    def start(self) -> Scraper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                m = read_metrics(self.url)
            except OSError:
                self.failures += 1
            else:
                total, n = m.get("footprints_batch_size_sum", 0.0), m.get("footprints_batch_size_count", 0.0)
                mean = None
                if self._last is not None and n > self._last[1]:
                    mean = (total - self._last[0]) / (n - self._last[1])
                self._last = (total, n)
                self.samples.append(
                    Sample(
                        at=time.perf_counter() - self.t0,
                        tiles_in_flight=m.get("footprints_tiles_in_flight", 0.0),
                        queued_windows=m.get("footprints_queued_windows", 0.0),
                        batch_size=mean,
                        rss_bytes=m.get("process_resident_memory_bytes", 0.0),
                        windows_total=m.get("footprints_windows_total", 0.0),
                    )
                )
            self._stop.wait(self.every)
