"""The gRPC servicer: converts messages, calls the tiling engine and the batchers,
and maps errors to status codes in one table (:data:`STATUS`)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from typing import AsyncIterator

import grpc
import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.io import MemoryFile
from rasterio.transform import Affine

from ._pb import footprints_pb2 as pb
from ._pb import footprints_pb2_grpc as pb_grpc
from .batcher import QueueFull
from .errors import InputError, NotFoundError
from .geoio import RGBRaster, geotiff_profile
from .metrics import Metrics
from .outputs import to_mask, to_prob_u8
from .remote import BatchedBackend, Cancelled
from .tiler import ArraySource, EngineConfig, TilingEngine

MAX_CHUNK_BYTES = 4 * 2**20
ROWS_PER_MESSAGE = 256  # mask rows per response message at most (5000 px wide: 1.2 MiB)


class RequestError(Exception):
    """An error with its gRPC status, raised inside the servicer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


# The one place exceptions become status codes.
STATUS: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (InputError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Cancelled, grpc.StatusCode.CANCELLED),
]


def status_of(e: BaseException) -> grpc.StatusCode:
    if isinstance(e, RequestError):
        return e.code
    for kind, code in STATUS:
        if isinstance(e, kind):
            return code
    return grpc.StatusCode.INTERNAL


@dataclass
class Limits:
    max_tiles_in_flight: int = 4
    max_raster_side: int = 10_000
    max_batch: int = 4


@dataclass
class _TileState:
    """Per-request accumulators (never on the servicer: requests run concurrently)."""

    plane: np.ndarray | None
    building: int = 0


@dataclass
class LoadedModel:
    """A model version the server runs: its local backend (or remote proxy) and batcher."""

    entry: object  # service.store.ModelEntry
    backend: object
    batcher: object
    backend_kind: str


def _georef_to_pb(crs, transform: Affine) -> pb.Georeference:
    return pb.Georeference(crs=crs.to_string() if crs else "", transform=list(transform.to_gdal()))


def _georef_from_pb(g: pb.Georeference) -> tuple[CRS | None, Affine]:
    if len(g.transform) != 6:
        raise InputError(f"georeference transform needs 6 GDAL coefficients, got {len(g.transform)}")
    try:
        crs = CRS.from_user_input(g.crs) if g.crs else None
    except rasterio.errors.CRSError as e:
        raise InputError(f"georeference CRS {g.crs!r} is not understood ({e})") from None
    return crs, Affine.from_gdal(*g.transform)


class SegmentationServicer(pb_grpc.SegmentationServicer):
    def __init__(self, models: dict[tuple[str, int], LoadedModel], latest: dict[str, int], limits: Limits, metrics: Metrics) -> None:
        self.models, self.latest, self.limits, self.metrics = models, latest, limits, metrics
        self.tiles_in_flight = 0

    # ---- helpers ------------------------------------------------------------
    def _model(self, name: str, version: int) -> LoadedModel:
        if name not in self.latest:
            raise NotFoundError(f"no model '{name}' loaded; have: {', '.join(sorted(self.latest)) or 'none'}")
        key = (name, version or self.latest[name])
        if key not in self.models:
            have = sorted(v for n, v in self.models if n == name)
            raise NotFoundError(f"model '{name}' has no version {version} loaded; have: {have}")
        return self.models[key]

    def _info(self, m: LoadedModel) -> pb.ModelInfo:
        e, g = m.entry, m.entry.manifest["geometry"]
        versions = sorted(v for n, v in self.models if n == e.name)
        large = e.mode == "large"
        return pb.ModelInfo(
            name=e.name, version=e.version, versions=versions, network=e.manifest["network"],
            mode=pb.MODE_LARGE_WINDOW if large else pb.MODE_DUAL_RESOLUTION, backend=m.backend_kind, loaded=True,
            margin=g.get("margin", 0), stride=g.get("stride", 0), default_window=g["default_window_px"]["cpu"],
            context=g.get("context", 0), metrics_json=json.dumps(e.manifest.get("metrics", {})),
        )

    def _record(self, method: str, code: grpc.StatusCode) -> None:
        self.metrics.requests.labels(method, code.name).inc()

    # ---- unary calls --------------------------------------------------------
    async def ListModels(self, request, context):
        self._record("ListModels", grpc.StatusCode.OK)
        newest = [self.models[(n, v)] for n, v in sorted(self.latest.items())]
        return pb.ListModelsResponse(models=[self._info(m) for m in newest])

    async def GetModel(self, request, context):
        try:
            info = self._info(self._model(request.name, request.version))
        except Exception as e:
            self._record("GetModel", status_of(e))
            await context.abort(status_of(e), str(e))
        self._record("GetModel", grpc.StatusCode.OK)
        return info

    async def InferWindows(self, request, context):
        code = grpc.StatusCode.OK
        try:
            m = self._model(request.model, request.model_version)
            n, s = request.count, request.side
            if n == 0 or s == 0 or len(request.rgb) != n * 3 * s * s:
                raise InputError(f"rgb holds {len(request.rgb)} bytes; {n} windows of side {s} need {n * 3 * s * s}")
            rgb = np.frombuffer(request.rgb, np.uint8).reshape(n, 3, s, s)
            crops = [rgb]
            if m.entry.mode == "dual":
                if len(request.context) != n * 3 * 4 * s * s:
                    raise InputError(f"context holds {len(request.context)} bytes; need {n * 12 * s * s} (2x side)")
                crops.append(np.frombuffer(request.context, np.uint8).reshape(n, 3, 2 * s, 2 * s))
            probs = await asyncio.gather(*[m.batcher.infer([c[i] for c in crops]) for i in range(n)])
            out = np.ascontiguousarray(np.stack(probs), dtype="<f4")
            return pb.InferWindowsResponse(model=m.entry.name, model_version=m.entry.version, count=n, side=out.shape[-1],
                                           probabilities=out.tobytes())
        except Exception as e:
            code = status_of(e)
            await context.abort(code, str(e))
        finally:
            self._record("InferWindows", code)

    # ---- the tile stream ----------------------------------------------------
    async def _receive(self, requests: AsyncIterator[pb.SegmentTileRequest]) -> tuple[pb.TileHeader, bytes]:
        header = None
        buf = bytearray()
        expected = 0
        async for msg in requests:
            part = msg.WhichOneof("part")
            if part == "header":
                if header is not None:
                    raise InputError("a second header arrived; send the header once, first")
                header = msg.header
                expected = self._check_header(header)
            elif part == "chunk":
                if header is None:
                    raise InputError("raster bytes arrived before the header; send the header first")
                if len(msg.chunk) > MAX_CHUNK_BYTES:
                    raise InputError(f"a chunk of {len(msg.chunk)} bytes exceeds the {MAX_CHUNK_BYTES}-byte limit")
                if len(buf) + len(msg.chunk) > expected:
                    raise InputError(f"chunks exceed the declared raster size of {expected} bytes")
                buf += msg.chunk
            else:
                raise InputError("empty message: each message holds a header or a chunk")
        if header is None:
            raise InputError("no header: the stream must start with a TileHeader")
        if len(buf) != expected:
            raise InputError(f"stream ended after {len(buf)} of the {expected} declared raster bytes (truncated)")
        return header, bytes(buf)

    def _check_header(self, h: pb.TileHeader) -> int:
        self._model(h.model, h.model_version)  # NOT_FOUND before any byte is accepted
        if h.HasField("threshold") and not 0.0 < h.threshold < 1.0:
            raise InputError(f"threshold must be in (0, 1), got {h.threshold}")
        if h.mode not in pb.Mode.values():
            raise InputError(f"unknown mode {h.mode}; known: {', '.join(f'{k} ({v})' for k, v in pb.Mode.items())}")
        kind = h.WhichOneof("raster")
        if kind == "geotiff":
            size = h.geotiff.size_bytes
            if size == 0:
                raise InputError("declared GeoTIFF size is 0 bytes")
            limit = self.limits.max_raster_side**2 * 4 + 2**20  # RGBA at the largest side, uncompressed
            if size > limit:
                raise InputError(f"declared GeoTIFF size {size} bytes exceeds the limit of {limit}")
            return size
        if kind == "raw":
            w, hgt = h.raw.width, h.raw.height
            if w == 0 or hgt == 0:
                raise InputError(f"raster size {w}x{hgt}: width and height must be positive")
            if max(w, hgt) > self.limits.max_raster_side:
                raise InputError(f"raster size {w}x{hgt} exceeds the maximum side of {self.limits.max_raster_side} px")
            _georef_from_pb(h.raw.georeference)
            return w * hgt * 3
        raise InputError("the header names no raster: set geotiff or raw")

    def _source(self, h: pb.TileHeader, data: bytes):
        """(source, crs, transform, closer) for the received raster."""
        if h.WhichOneof("raster") == "raw":
            rgb = np.frombuffer(data, np.uint8).reshape(h.raw.height, h.raw.width, 3).transpose(2, 0, 1)
            crs, transform = _georef_from_pb(h.raw.georeference)
            return ArraySource(np.ascontiguousarray(rgb)), crs, transform, lambda: None
        memfile = MemoryFile(data)
        try:
            dataset = memfile.open()
        except rasterio.errors.RasterioIOError as e:
            memfile.close()
            raise InputError(f"GeoTIFF bytes cannot be decoded ({e})") from None
        try:
            src = RGBRaster("<uploaded GeoTIFF>", dataset=dataset)
        except InputError:
            memfile.close()
            raise
        if max(src.width, src.height) > self.limits.max_raster_side:
            src.close()
            memfile.close()
            raise InputError(f"raster size {src.width}x{src.height} exceeds the maximum side of {self.limits.max_raster_side} px")

        def close() -> None:
            src.close()
            memfile.close()

        return src, src.crs, src.transform, close

    async def SegmentTile(self, request_iterator, context):
        t0 = time.perf_counter()
        code = grpc.StatusCode.OK
        counted = False
        backend = None
        try:
            if self.tiles_in_flight >= self.limits.max_tiles_in_flight:
                raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"{self.tiles_in_flight} tiles in flight (limit {self.limits.max_tiles_in_flight}); retry later")
            self.tiles_in_flight += 1
            counted = True
            self.metrics.tiles_in_flight.set(self.tiles_in_flight)
            header, data = await self._receive(request_iterator)
            t_received = time.perf_counter()
            model = self._model(header.model, header.model_version)
            want = {pb.MODE_LARGE_WINDOW: "large", pb.MODE_DUAL_RESOLUTION: "dual"}.get(header.mode, model.entry.mode)
            if want != model.entry.mode:
                raise InputError(f"model {model.entry.name} runs {model.entry.mode} windows; {pb.Mode.Name(header.mode)} was asked")
            source, crs, transform, close = self._source(header, data)
            try:
                loop = asyncio.get_running_loop()
                backend = BatchedBackend(model.batcher, loop, model.backend)
                engine = TilingEngine(backend, EngineConfig(window=header.window or None, batch_size=self.limits.max_batch, tta=header.tta))
                windows, _, window = engine.plan(source.height, source.width)  # bad windows fail here, before work
                threshold = header.threshold if header.HasField("threshold") else 0.5
                tile = _TileState(np.zeros((source.height, source.width), np.uint8) if (header.outputs.geotiff or header.outputs.polygons) else None)
                async for message in self._stream(engine, source, header, threshold, backend, tile):
                    yield message
                share = tile.building / (source.width * source.height)
                t_done = time.perf_counter()
                yield pb.SegmentTileResponse(summary=pb.TileSummary(
                    model=model.entry.name, model_version=model.entry.version, backend=model.backend_kind,
                    width=source.width, height=source.height, windows=len(windows), window=window, building_share=share,
                    georeference=_georef_to_pb(crs, transform),
                    timings=pb.Timings(receive_seconds=t_received - t0, segment_seconds=t_done - t_received, total_seconds=t_done - t0),
                ))
                async for message in self._finals(header, source, crs, transform, tile):
                    yield message
            finally:
                close()
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            if backend is not None:
                backend.cancel()
            raise
        except Exception as e:
            code = status_of(e)
            if backend is not None:
                backend.cancel()
            await context.abort(code, str(e))
        finally:
            if counted:
                self.tiles_in_flight -= 1
                self.metrics.tiles_in_flight.set(self.tiles_in_flight)
            self.metrics.tile_seconds.observe(time.perf_counter() - t0)
            self._record("SegmentTile", code)

    async def _stream(self, engine, source, header, threshold, backend, tile: "_TileState"):
        """Run the engine in a worker thread; yield mask rows as they become final."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        done = object()

        def work() -> None:
            try:
                for r0, r1, prob in engine.run(source):
                    loop.call_soon_threadsafe(queue.put_nowait, (r0, r1, prob.copy()))
                loop.call_soon_threadsafe(queue.put_nowait, done)
            except BaseException as e:  # forwarded to the RPC
                loop.call_soon_threadsafe(queue.put_nowait, e)

        thread = threading.Thread(target=work, name="tile", daemon=True)
        thread.start()
        try:
            while True:
                item = await queue.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                r0, r1, prob = item
                mask = to_mask(prob, threshold)
                tile.building += int(np.count_nonzero(mask))
                if tile.plane is not None:
                    tile.plane[r0:r1] = mask
                probs = to_prob_u8(prob) if header.outputs.probabilities else None
                for a in range(0, r1 - r0, ROWS_PER_MESSAGE):
                    b = min(a + ROWS_PER_MESSAGE, r1 - r0)
                    yield pb.SegmentTileResponse(rows=pb.MaskRows(
                        row_start=r0 + a, row_count=b - a, width=source.width, mask=mask[a:b].tobytes(),
                        probabilities=probs[a:b].tobytes() if probs is not None else b"",
                    ))
        finally:
            if thread.is_alive():  # the caller left early: stop the engine's windows
                backend.cancel()
            await asyncio.to_thread(thread.join)

    async def _finals(self, header, source, crs, transform, tile: "_TileState"):
        """The whole mask as GeoTIFF bytes and its polygons, when asked for."""
        if tile.plane is None:
            return
        profile = geotiff_profile(width=source.width, height=source.height, count=1, crs=crs, transform=transform)
        with MemoryFile() as mem:
            with mem.open(**profile) as dst:
                dst.write(tile.plane[None])
            tif = mem.read()
        if header.outputs.geotiff:
            for i in range(0, len(tif), MAX_CHUNK_BYTES):
                yield pb.SegmentTileResponse(mask_geotiff_chunk=tif[i : i + MAX_CHUNK_BYTES])
        if header.outputs.polygons:
            from .outputs import polygons_geojson

            with MemoryFile(tif) as mem:
                with mem.open() as ds:
                    text = await asyncio.to_thread(polygons_geojson, ds)
            yield pb.SegmentTileResponse(polygons_geojson=text)
