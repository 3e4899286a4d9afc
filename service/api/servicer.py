"""The gRPC servicer: it converts messages (:mod:`.convert`), admits tiles
(:mod:`.admission`), takes uploads (:mod:`.upload`), runs the tile pipeline on the
tiling engine through the event-loop bridge (:mod:`.bridge`), and leaves errors to
:mod:`.status`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator

import grpc

from service._pb import footprints_pb2 as pb
from service._pb import footprints_pb2_grpc as pb_grpc
from service.api.admission import Admission, Limits, client_of
from service.api.bridge import BatchedModel, stream_rows
from service.api.convert import (
    RowMessages,
    bytes_messages,
    georef_to_pb,
    model_info,
    polygon_options,
    probabilities_response,
    requested_mode,
    window_crops,
)
from service.api.logs import note_model
from service.api.status import streaming, unary
from service.api.upload import check_header, decode, receive
from service.errors import InputError
from service.metrics import Metrics
from service.models.budget import MemoryBudget
from service.models.registry import LoadedModel, ModelRegistry
from service.outputs.polygons import Source, plane_buildings
from service.outputs.sinks import MaskPlane
from service.tiling.engine import EngineConfig, TilingEngine, windows_that_fit
from service.tiling.pipeline import RowSink, TileRun
from service.tiling.resample import Resolution, raster_resolution
from service.tiling.stages import Stages

__all__ = ["Limits", "SegmentationServicer"]


def _record(servicer: SegmentationServicer, method: str, code: grpc.StatusCode) -> None:
    servicer.metrics.requests.labels(method, code.name).inc()


class SegmentationServicer(pb_grpc.SegmentationServicer):
    def __init__(self, registry: ModelRegistry, limits: Limits, metrics: Metrics, budget: MemoryBudget) -> None:
        self.registry, self.limits, self.metrics, self.budget = registry, limits, metrics, budget
        self.admission = Admission(limits, metrics)
        self.cut_off = False  # the server's drain ran out of grace: calls ending now are its doing

    # ---- models -------------------------------------------------------------
    def _info(self, name: str, version: int) -> pb.ModelInfo:
        m = self.registry.get(name, version)
        info = model_info(m, self.registry.versions(m.entry.name), m.entry.name == self.registry.default)
        info.skipped.extend(self._skipped(m.entry.name))
        return info

    def _skipped(self, name: str) -> list[pb.SkippedVersion]:
        return [pb.SkippedVersion(version=v, reason=why) for v, why in sorted(self.registry.skipped.get(name, {}).items())]

    @unary(_record)
    async def ListModels(self, request, context):
        """Every model the server means to serve: the ready ones as they serve, and those
        still loading or with no version that loads, with the versions skipped and why."""
        out = []
        for name in sorted(set(self.registry.states) | set(self.registry.latest)):
            if name in self.registry.latest:
                out.append(self._info(name, 0))
            else:
                out.append(
                    pb.ModelInfo(
                        name=name,
                        state=self.registry.states[name],
                        is_default=name == self.registry.default,
                        skipped=self._skipped(name),
                    )
                )
        return pb.ListModelsResponse(models=out)

    @unary(_record)
    async def GetModel(self, request, context):
        return self._info(request.name, request.version)

    # ---- windows ------------------------------------------------------------
    def _check_windows(self, request: pb.InferWindowsRequest, m: LoadedModel) -> None:
        if not 0 < request.count <= self.limits.max_batch:
            raise InputError(
                f"count {request.count}: a request carries 1 to {self.limits.max_batch} windows (this server's --max-batch)"
            )
        geometry = m.engine.geometry
        geometry.check_side(request.side)
        largest = geometry.read_side(request.side)
        if largest > self.limits.max_window:
            raise InputError(
                f"window side {largest} px exceeds this server's limit of {self.limits.max_window} px (--max-window)"
            )
        windows_that_fit(m.engine.window_bytes(request.side), self.budget.total, request.side)

    @unary(_record)
    async def InferWindows(self, request, context):
        with self.registry.use(request.model, request.model_version) as m:
            note_model(m.entry.name, m.entry.version)
            self._check_windows(request, m)
            crops = window_crops(request, m.engine.geometry)
            # Admission before work: all the windows are queued, or none (QueueFull).
            futures = m.batcher.submit([[c[i] for c in crops] for i in range(request.count)])
            try:
                probs = await asyncio.gather(*futures)
            except BaseException:
                for f in futures:
                    f.cancel()  # a failed or abandoned call's other windows are not run
                raise
            return probabilities_response(m, list(probs))

    # ---- tiles --------------------------------------------------------------
    @streaming(_record)
    async def SegmentTile(self, request_iterator, context) -> AsyncGenerator[pb.SegmentTileResponse, None]:
        t0 = time.perf_counter()
        started = asyncio.get_running_loop().time()  # its windows' priority: older tiles first
        with self.admission.memory() as take, contextlib.ExitStack() as held:
            pinned: list[LoadedModel] = []

            def check(header: pb.TileHeader) -> int:
                # NOT_FOUND before any byte is accepted; the tile keeps this version
                # to the end, even if a newer one is loaded meanwhile.
                pinned.append(held.enter_context(self.registry.use(header.model, header.model_version)))
                declared = check_header(header, self.limits.max_raster_side, self.limits.allow_url_prefixes)
                held.enter_context(self.admission.slot(client_of(context)))  # a slot only for a valid header
                take(declared, f"an upload of {declared} bytes")
                return declared

            header, data = await receive(request_iterator, check, self.limits.upload_idle_s, self.limits.upload_s)
            t_received = time.perf_counter()
            stages = Stages()
            stages.add("receive", t_received - t0)
            model = pinned[0]
            note_model(model.entry.name, model.entry.version)
            requested_mode(header, model)
            # In a thread: a URL's header is fetched over the network.
            with stages("decode"):
                opened = await asyncio.to_thread(decode, header, data, self.limits.max_raster_side)
            with opened as raster:
                keep = header.outputs.geotiff or header.outputs.polygons
                ground = raster_resolution(
                    raster.crs, raster.transform, raster.width, raster.height, header.gsd_m if header.HasField("gsd_m") else None
                )
                resolution = Resolution(ground, model.engine.resolution_m) if ground else None  # out of range: refused here
                mh, mw = resolution.model_shape(raster.height, raster.width) if resolution else (raster.height, raster.width)
                # The float32 probability plane on the model's grid (and its resampled imagery),
                # and the mask plane and GeoTIFF on the raster's when kept.
                resampled = (mh, mw) != (raster.height, raster.width)
                take(
                    mh * mw * (7 if resampled else 4)
                    + raster.width * raster.height * ((2 if keep else 0) + (1 if header.outputs.polygons else 0)),
                    f"a {raster.width}x{raster.height} tile",
                )
                shared = BatchedModel(model.batcher, asyncio.get_running_loop(), model.engine, started)
                config = EngineConfig(
                    window=header.window or None,
                    batch_size=self.limits.max_batch,
                    tta=header.tta if header.HasField("tta") else None,
                    tta_passes=header.tta_passes if header.HasField("tta_passes") else None,
                    memory_budget_bytes=self.budget.total,
                    window_seconds=model.window_seconds,
                )
                engine = TilingEngine(shared, config)
                engine.plan(mh, mw)  # bad windows fail here, before any work (resampling included)
                messages = RowMessages(probabilities=header.outputs.probabilities)
                polygon_opts = polygon_options(header.polygon_options)  # bad values refused before any work
                plane = MaskPlane(raster.width, raster.height, probabilities=header.outputs.polygons) if keep else None
                sinks: list[RowSink] = [messages] + ([plane] if plane is not None else [])
                threshold = header.threshold if header.HasField("threshold") else None
                run = await asyncio.to_thread(TileRun, engine, raster.source, sinks, threshold, ground, stages)
                plan = run.plan
                engine.windows_in_flight(plan.window)  # and windows the server's memory cannot hold
                # aclosing: leaving early (a cancel, a closed stream) stops the tile's threads
                # here, before the raster they read is closed (left to the garbage collector,
                # the generator outlived the raster and its reader crashed the process).
                async with contextlib.aclosing(stream_rows(engine, run.model_source, plan, shared, stages)) as rows:
                    async for r0, r1, prob in rows:
                        run.feed(r0, r1, prob)
                        for message in messages.drain():
                            yield message
                t_done = time.perf_counter()
                yield pb.SegmentTileResponse(
                    summary=pb.TileSummary(
                        model=model.entry.name,
                        model_version=model.entry.version,
                        backend=model.kind,
                        precision=model.engine.precision,
                        width=raster.width,
                        height=raster.height,
                        windows=len(plan.windows),
                        window=plan.window,
                        building_share=run.building_share,
                        georeference=georef_to_pb(raster.crs, raster.transform),
                        ground_resolution_m=run.ground_m,
                        resample_factor=run.factor,
                        threshold=run.threshold,
                        tta_passes=engine.tta_passes,
                        timings=pb.Timings(
                            receive_seconds=t_received - t0,
                            segment_seconds=t_done - t_received,
                            total_seconds=t_done - t0,
                            stage_seconds=stages.as_dict(),
                        ),
                    )
                )
                if plane is not None and header.outputs.geotiff:
                    # In a thread: a 5000^2 tile's COG takes a while, and the loop serves everyone.
                    tif = await asyncio.to_thread(plane.geotiff_bytes, raster.crs, raster.transform)
                    for message in bytes_messages(tif):
                        yield message
                if plane is not None and header.outputs.polygons:
                    # Traced from the mask plane itself: no COG encoded and read back for it.
                    source = Source(model.entry.name, model.entry.version)
                    text = await asyncio.to_thread(
                        plane_buildings, plane, raster.crs, raster.transform, polygon_opts, source, run.ground_m or None
                    )
                    yield pb.SegmentTileResponse(polygons_geojson=text)
            # Only tiles served count in the latency histogram (refusals take no time to speak of).
            self.metrics.tile_seconds.observe(time.perf_counter() - t0)
