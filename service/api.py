"""The gRPC servicer: it converts messages (:mod:`service.convert`), takes uploads
(:mod:`service.upload`), calls the tiling engine through the event-loop bridge
(:mod:`service.bridge`), and leaves errors to :mod:`service.status`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc
import numpy as np

from ._pb import footprints_pb2 as pb
from ._pb import footprints_pb2_grpc as pb_grpc
from .bridge import BatchedBackend, stream_rows
from .budget import MemoryBudget
from .convert import bytes_messages, georef_to_pb, model_info, probabilities_response, requested_mode, row_messages, window_crops
from .metrics import Metrics
from .outputs import geotiff_polygons, mask_geotiff_bytes, to_mask, to_prob_u8
from .registry import ModelRegistry
from .status import RequestError, streaming, unary
from .tiler import EngineConfig, TilingEngine
from .upload import check_header, decode, receive


@dataclass
class Limits:
    max_tiles_in_flight: int = 4
    max_raster_side: int = 10_000
    max_batch: int = 4


def _record(servicer: SegmentationServicer, method: str, code: grpc.StatusCode) -> None:
    servicer.metrics.requests.labels(method, code.name).inc()


class SegmentationServicer(pb_grpc.SegmentationServicer):
    def __init__(self, registry: ModelRegistry, limits: Limits, metrics: Metrics, budget: MemoryBudget) -> None:
        self.registry, self.limits, self.metrics, self.budget = registry, limits, metrics, budget
        self.tiles_in_flight = 0

    # ---- models -------------------------------------------------------------
    def _info(self, name: str, version: int) -> pb.ModelInfo:
        m = self.registry.get(name, version)
        return model_info(m, self.registry.versions(m.entry.name), m.entry.name == self.registry.default)

    @unary(_record)
    async def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[self._info(m.entry.name, m.entry.version) for m in self.registry.newest()])

    @unary(_record)
    async def GetModel(self, request, context):
        return self._info(request.name, request.version)

    # ---- windows ------------------------------------------------------------
    @unary(_record)
    async def InferWindows(self, request, context):
        m = self.registry.get(request.model, request.model_version)
        crops = window_crops(request, m.entry.mode == "dual")
        probs = await asyncio.gather(*[m.batcher.infer([c[i] for c in crops]) for i in range(request.count)])
        return probabilities_response(m, list(probs))

    # ---- tiles --------------------------------------------------------------
    @contextlib.contextmanager
    def _tile_slot(self) -> Iterator[None]:
        if self.tiles_in_flight >= self.limits.max_tiles_in_flight:
            raise RequestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.tiles_in_flight} tiles in flight (limit {self.limits.max_tiles_in_flight}); retry later",
            )
        self.tiles_in_flight += 1
        self.metrics.tiles_in_flight.set(self.tiles_in_flight)
        try:
            yield
        finally:
            self.tiles_in_flight -= 1
            self.metrics.tiles_in_flight.set(self.tiles_in_flight)

    def _check(self, header: pb.TileHeader) -> int:
        self.registry.get(header.model, header.model_version)  # NOT_FOUND before any byte is accepted
        return check_header(header, self.limits.max_raster_side)

    @streaming(_record)
    async def SegmentTile(self, request_iterator, context) -> AsyncIterator[pb.SegmentTileResponse]:
        t0 = time.perf_counter()
        with self._tile_slot():
            try:
                header, data = await receive(request_iterator, self._check)
                t_received = time.perf_counter()
                model = self.registry.get(header.model, header.model_version)
                requested_mode(header, model)
                with decode(header, data, self.limits.max_raster_side) as raster:
                    backend = BatchedBackend(model.batcher, asyncio.get_running_loop(), model.backend)
                    engine = TilingEngine(
                        backend,
                        EngineConfig(
                            window=header.window or None,
                            batch_size=min(self.limits.max_batch, model.backend.best_batch or self.limits.max_batch),
                            tta=header.tta if header.HasField("tta") else None,
                            memory_budget_bytes=self.budget.total,
                        ),
                    )
                    plan = engine.plan(raster.height, raster.width)  # bad windows fail here, before any work
                    engine.windows_in_flight(plan.window)  # and windows the server's memory cannot hold
                    threshold = header.threshold if header.HasField("threshold") else 0.5
                    keep = header.outputs.geotiff or header.outputs.polygons
                    plane = np.zeros((raster.height, raster.width), np.uint8) if keep else None
                    building = 0
                    async for r0, r1, prob in stream_rows(engine, raster.source, plan, backend):
                        mask = to_mask(prob, threshold)
                        building += int(np.count_nonzero(mask))
                        if plane is not None:
                            plane[r0:r1] = mask
                        for message in row_messages(r0, mask, to_prob_u8(prob) if header.outputs.probabilities else None):
                            yield message
                    t_done = time.perf_counter()
                    yield pb.SegmentTileResponse(
                        summary=pb.TileSummary(
                            model=model.entry.name,
                            model_version=model.entry.version,
                            backend=model.backend_kind,
                            precision=model.backend.precision,
                            width=raster.width,
                            height=raster.height,
                            windows=len(plan.windows),
                            window=plan.window,
                            building_share=building / (raster.width * raster.height),
                            georeference=georef_to_pb(raster.crs, raster.transform),
                            timings=pb.Timings(
                                receive_seconds=t_received - t0, segment_seconds=t_done - t_received, total_seconds=t_done - t0
                            ),
                        )
                    )
                    if plane is not None:
                        tif = mask_geotiff_bytes(plane, raster.crs, raster.transform)
                        if header.outputs.geotiff:
                            for message in bytes_messages(tif):
                                yield message
                        if header.outputs.polygons:
                            yield pb.SegmentTileResponse(polygons_geojson=await asyncio.to_thread(geotiff_polygons, tif))
            finally:
                self.metrics.tile_seconds.observe(time.perf_counter() - t0)
