"""Prometheus metrics of one server, on its own registry (several servers may share
a process in tests), exposed over HTTP by :meth:`Metrics.serve`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes and the like: what a soak watches
        self.requests = Counter("footprints_requests", "RPCs finished, by method and status code", ["method", "code"], registry=r)
        self.tile_seconds = Histogram(
            "footprints_tile_seconds",
            "latency of the SegmentTile calls served (OK), first message to last",
            buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160, 320, 640),
            registry=r,
        )
        self.windows = Counter("footprints_windows", "model windows run (rate = windows per second)", ["model"], registry=r)
        self.batch_size = Histogram(
            "footprints_batch_size", "windows per model call", ["model"], buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=r
        )
        self.queued_windows = Gauge("footprints_queued_windows", "windows waiting for the model", ["model"], registry=r)
        self.window_memory = Gauge("footprints_window_memory_bytes", "memory bound of the model windows running now", registry=r)
        self.memory_budget = Gauge("footprints_memory_budget_bytes", "the server's memory budget for model windows", registry=r)
        self.tile_memory = Gauge(
            "footprints_tile_memory_bytes", "memory held by the tiles being served (uploads, planes)", registry=r
        )
        self.tile_memory_budget = Gauge("footprints_tile_memory_budget_bytes", "the server's memory budget for tiles", registry=r)
        self.model_servers_up = Gauge(
            "footprints_model_server_up", "1 while a model server passes its health checks", ["address"], registry=r
        )
        self.tiles_in_flight = Gauge("footprints_tiles_in_flight", "SegmentTile calls being served", registry=r)
        self.versions_skipped = Counter(
            "footprints_model_versions_skipped",
            "model versions left out because a file failed to read, load or verify",
            ["model"],
            registry=r,
        )
        self.model_loaded = Gauge(
            "footprints_model_loaded", "1 for each model version loaded", ["model", "version", "backend", "mode"], registry=r
        )

    def serve(self, port: int, addr: str = "127.0.0.1"):
        """Start the /metrics HTTP endpoint; returns the server (``.server_port`` has the port)."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return server
