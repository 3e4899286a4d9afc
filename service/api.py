"""The gRPC servicer: it converts messages (:mod:`service.convert`), takes uploads
(:mod:`service.upload`), calls the tiling engine through the event-loop bridge
(:mod:`service.bridge`), and leaves errors to :mod:`service.status`."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np

from ._pb import footprints_pb2 as pb
from ._pb import footprints_pb2_grpc as pb_grpc
from .bridge import BatchedBackend, stream_rows
from .budget import MemoryBudget, TileMemory
from .convert import (
    MAX_CHUNK_BYTES,
    bytes_messages,
    georef_to_pb,
    model_info,
    probabilities_response,
    requested_mode,
    row_messages,
    window_crops,
)
from .errors import InputError
from .logs import note_model
from .metrics import Metrics
from .outputs import geotiff_polygons, mask_geotiff_bytes, to_mask, to_prob_u8
from .registry import LoadedModel, ModelRegistry
from .status import RequestError, streaming, unary
from .tiler import EngineConfig, TilingEngine
from .upload import check_header, decode, receive


@dataclass
class Limits:
    max_tiles_in_flight: int = 4
    max_raster_side: int = 10_000
    max_batch: int = 4  # windows per model call, and per InferWindows request
    # The largest window side InferWindows takes (a dual model's context counts): the
    # paper's 2636-px windows and then some.
    max_window: int = 2688
    upload_idle_s: float = 30.0  # an upload silent this long is given up
    upload_s: float = 60.0  # an upload must be whole this long after its header (per 100 MB declared)
    max_tiles_per_client: int = 2  # tiles in flight per client (its bearer token, else its address)
    tile_memory_bytes: int | None = None  # uploads and planes of all tiles (None: a quarter of the RAM)

    def receive_bytes(self) -> int:
        """The largest request message any method legally sends, the transport's cap:
        an InferWindows batch of ``max_batch`` dual windows whose context is
        ``max_window`` px (3 x (s^2 + (2s)^2) bytes each) outweighs a 4 MiB upload chunk.

        gRPC Python servers have one receive limit for all methods (a service config's
        per-method maxRequestMessageBytes is only read by clients; tried), so
        SegmentTile's tighter limit is checked on each message as it arrives."""
        infer = self.max_batch * 15 * (self.max_window // 2) ** 2
        return max(infer, MAX_CHUNK_BYTES) + 64 * 2**10


def client_of(context: grpc.aio.ServicerContext) -> str:
    """Who a call is from, for per-client limits: its bearer token (named by a hash,
    never itself), else its address without the port."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return "token " + hashlib.sha256(value[7:].strip().encode()).hexdigest()[:8]
    peer = context.peer() or "unknown"
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


def _record(servicer: SegmentationServicer, method: str, code: grpc.StatusCode) -> None:
    servicer.metrics.requests.labels(method, code.name).inc()


class SegmentationServicer(pb_grpc.SegmentationServicer):
    def __init__(self, registry: ModelRegistry, limits: Limits, metrics: Metrics, budget: MemoryBudget) -> None:
        self.registry, self.limits, self.metrics, self.budget = registry, limits, metrics, budget
        self.tile_memory = TileMemory(limits.tile_memory_bytes)
        self.metrics.tile_memory_budget.set(self.tile_memory.total)
        self.tiles_in_flight = 0
        self.client_tiles: dict[str, int] = {}
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
        m.backend.spec.check_side(request.side)
        largest = request.side * (2 if m.entry.mode == "dual" else 1)
        if largest > self.limits.max_window:
            raise InputError(
                f"window side {largest} px exceeds this server's limit of {self.limits.max_window} px (--max-window)"
            )

    @unary(_record)
    async def InferWindows(self, request, context):
        with self.registry.use(request.model, request.model_version) as m:
            note_model(m.entry.name, m.entry.version)
            self._check_windows(request, m)
            crops = window_crops(request, m.entry.mode == "dual")
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
    @contextlib.contextmanager
    def _tile_slot(self, client: str) -> Iterator[None]:
        """A tile slot, taken once a valid header has arrived: one of the server's
        ``max_tiles_in_flight``, and one of this client's ``max_tiles_per_client`` (so a few
        connections cannot hold them all)."""
        limits = self.limits
        if self.tiles_in_flight >= limits.max_tiles_in_flight:
            raise RequestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.tiles_in_flight} tiles in flight (limit {limits.max_tiles_in_flight}); retry later",
            )
        mine = self.client_tiles.get(client, 0)
        if mine >= limits.max_tiles_per_client:
            raise RequestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this client ({client}) has {mine} tiles in flight (limit {limits.max_tiles_per_client} "
                "per client, --max-tiles-per-client); retry when one is done",
            )
        self.tiles_in_flight += 1
        self.client_tiles[client] = mine + 1
        self.metrics.tiles_in_flight.set(self.tiles_in_flight)
        try:
            yield
        finally:
            self.tiles_in_flight -= 1
            left = self.client_tiles.pop(client) - 1
            if left:
                self.client_tiles[client] = left
            self.metrics.tiles_in_flight.set(self.tiles_in_flight)

    @contextlib.contextmanager
    def _tile_memory(self) -> Iterator[Callable[[int, str], None]]:
        """Take bytes for this tile from the tiles' memory (refused at once when full);
        all given back when the tile ends."""
        held = 0

        def take(nbytes: int, what: str) -> None:
            nonlocal held
            held += self.tile_memory.take(nbytes, what)
            self.metrics.tile_memory.set(self.tile_memory.used)

        try:
            yield take
        finally:
            self.tile_memory.give(held)
            self.metrics.tile_memory.set(self.tile_memory.used)

    @streaming(_record)
    async def SegmentTile(self, request_iterator, context) -> AsyncGenerator[pb.SegmentTileResponse, None]:
        t0 = time.perf_counter()
        started = asyncio.get_running_loop().time()  # its windows' priority: older tiles first
        with self._tile_memory() as take, contextlib.ExitStack() as held:
            pinned: list[LoadedModel] = []

            def check(header: pb.TileHeader) -> int:
                # NOT_FOUND before any byte is accepted; the tile keeps this version
                # to the end, even if a newer one is loaded meanwhile.
                pinned.append(held.enter_context(self.registry.use(header.model, header.model_version)))
                declared = check_header(header, self.limits.max_raster_side)
                held.enter_context(self._tile_slot(client_of(context)))  # a slot only for a valid header
                take(declared, f"an upload of {declared} bytes")
                return declared

            header, data = await receive(request_iterator, check, self.limits.upload_idle_s, self.limits.upload_s)
            t_received = time.perf_counter()
            model = pinned[0]
            note_model(model.entry.name, model.entry.version)
            requested_mode(header, model)
            with decode(header, data, self.limits.max_raster_side) as raster:
                keep = header.outputs.geotiff or header.outputs.polygons
                # The float32 probability plane, and the mask plane and GeoTIFF when kept.
                take(raster.width * raster.height * (6 if keep else 4), f"a {raster.width}x{raster.height} tile")
                backend = BatchedBackend(model.batcher, asyncio.get_running_loop(), model.backend, started)
                engine = TilingEngine(
                    backend,
                    EngineConfig(
                        window=header.window or None,
                        batch_size=self.limits.max_batch,
                        tta=header.tta if header.HasField("tta") else None,
                        memory_budget_bytes=self.budget.total,
                    ),
                )
                plan = engine.plan(raster.height, raster.width)  # bad windows fail here, before any work
                engine.windows_in_flight(plan.window)  # and windows the server's memory cannot hold
                threshold = header.threshold if header.HasField("threshold") else 0.5
                plane = np.zeros((raster.height, raster.width), np.uint8) if keep else None
                building = 0
                # aclosing: leaving early (a cancel, a closed stream) stops the tile's threads
                # here, before the raster they read is closed (left to the garbage collector,
                # the generator outlived the raster and its reader crashed the process).
                async with contextlib.aclosing(stream_rows(engine, raster.source, plan, backend)) as rows:
                    async for r0, r1, prob in rows:
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
            # Only tiles served count in the latency histogram (refusals take no time to speak of).
            self.metrics.tile_seconds.observe(time.perf_counter() - t0)
