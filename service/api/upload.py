"""A tile upload: header checks, chunk assembly, and decoding the raster (GeoTIFF
bytes or raw RGB rows) into something the tiling engine reads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.io import MemoryFile
from rasterio.transform import Affine

from service._pb import footprints_pb2 as pb
from service.api.convert import MAX_CHUNK_BYTES, georef_from_pb, polygon_options
from service.errors import InputError, Undecodable, UploadStalled
from service.rasters import RGBRaster, decode_options
from service.tiling.engine import ArraySource, RasterSource, tta_setting
from service.urls import check_allowed

STREAM_END_GRACE_S = 0.1


def check_header(h: pb.TileHeader, max_side: int, allowed_urls: Sequence[str] = ()) -> int:
    """Refuse a header that cannot be served; returns the raster bytes it declares (none
    for a URL, which must lie under ``allowed_urls``)."""
    if h.HasField("threshold") and not 0.0 < h.threshold < 1.0:
        raise InputError(f"threshold must be in (0, 1), got {h.threshold}")
    polygon_options(h.polygon_options)
    tta_setting(h.tta if h.HasField("tta") else None, h.tta_passes if h.HasField("tta_passes") else None)
    if h.mode not in pb.Mode.values():
        raise InputError(f"unknown mode {h.mode}; known: {', '.join(f'{k} ({v})' for k, v in pb.Mode.items())}")
    kind = h.WhichOneof("raster")
    if kind == "geotiff":
        size = h.geotiff.size_bytes
        if size == 0:
            raise InputError("declared GeoTIFF size is 0 bytes")
        limit = max_side**2 * 4 + 2**20  # RGBA at the largest side, uncompressed
        if size > limit:
            raise InputError(f"declared GeoTIFF size {size} bytes exceeds the limit of {limit}")
        return int(size)
    if kind == "raw":
        w, hgt = h.raw.width, h.raw.height
        if w == 0 or hgt == 0:
            raise InputError(f"raster size {w}x{hgt}: width and height must be positive")
        if max(w, hgt) > max_side:
            raise InputError(f"raster size {w}x{hgt} exceeds the maximum side of {max_side} px")
        georef_from_pb(h.raw.georeference)
        return int(w * hgt * 3)
    if kind == "url":
        check_allowed(h.url, allowed_urls)  # PERMISSION_DENIED before anything is fetched
        return 0
    raise InputError("the header names no raster: set geotiff, raw or url")


# An upload's whole time is --upload-timeout per this many declared bytes (a 5000 x 5000
# RGB tile is 75 MB uncompressed), and never less than --upload-timeout.
UPLOAD_TIMEOUT_PER_BYTES = 100 * 10**6


def upload_seconds(timeout_s: float | None, declared: int) -> float | None:
    """How long an upload of ``declared`` bytes may take in all (None: no limit)."""
    return None if timeout_s is None else timeout_s * max(1.0, declared / UPLOAD_TIMEOUT_PER_BYTES)


async def receive(
    requests: AsyncIterator[pb.SegmentTileRequest],
    check: Callable[[pb.TileHeader], int],
    idle_s: float | None = None,
    total_s: float | None = None,
) -> tuple[pb.TileHeader, bytes]:
    """The header and the raster bytes of a ``SegmentTile`` stream. ``check`` vets the
    header (and returns the bytes it declares) before any chunk is accepted. An upload
    with no message for ``idle_s`` seconds, or not complete :func:`upload_seconds` after
    its header, is given up (:class:`UploadStalled`): a client that stops sending, or
    drips a byte now and then, cannot hold a tile slot."""
    header = None
    buf = bytearray()
    expected = 0
    deadline: float | None = None  # on the loop's clock, from the header on
    loop = asyncio.get_running_loop()
    messages = aiter(requests)
    while True:
        wait = idle_s
        if deadline is not None:
            left = max(0.0, deadline - loop.time())
            wait = left if wait is None else min(wait, left)
        try:
            # asyncio.timeout, not wait_for: the read stays in this task, so a client's
            # cancel cancels the RPC (counted CANCELLED) instead of ending the stream early.
            async with asyncio.timeout(wait):
                msg = await anext(messages)
        except StopAsyncIteration:
            break
        except TimeoutError:
            got = "no header" if header is None else f"{len(buf)} of {expected} bytes"
            if deadline is not None and loop.time() >= deadline:
                allowed = upload_seconds(total_s, expected)
                raise UploadStalled(
                    f"upload too slow: not complete {allowed:g} s after its header ({got} received; "
                    f"--upload-timeout {total_s:g} s per {UPLOAD_TIMEOUT_PER_BYTES // 10**6} MB); the tile slot is freed"
                ) from None
            raise UploadStalled(f"upload stalled: no message for {idle_s:g} s ({got} received); the tile slot is freed") from None
        if isinstance(msg, Undecodable):
            raise msg
        part = msg.WhichOneof("part")
        if part == "header":
            if header is not None:
                raise InputError("a second header arrived; send the header once, first")
            header = msg.header
            expected = check(header)
            allowed = upload_seconds(total_s, expected)
            deadline = None if allowed is None else loop.time() + allowed
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
    if header is None or len(buf) != expected:
        # A client that cancels mid-upload ends the request stream first and cancels the
        # call a moment later: wait for that moment, so a cancel is counted as one, not
        # as a truncated upload (measured: the cancel lands within 10 ms).
        await asyncio.sleep(STREAM_END_GRACE_S)
    if header is None:
        raise InputError("no header: the stream must start with a TileHeader")
    if len(buf) != expected:
        raise InputError(f"stream ended after {len(buf)} of the {expected} declared raster bytes (truncated)")
    return header, bytes(buf)


@dataclass
class Raster:
    """A decoded upload: what the engine reads, and where it sits on the ground."""

    source: RasterSource
    crs: CRS | None
    transform: Affine
    _closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def height(self) -> int:
        return self.source.height

    @property
    def width(self) -> int:
        return self.source.width

    def close(self) -> None:
        for close in reversed(self._closers):
            close()
        self._closers.clear()

    def __enter__(self) -> Raster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def decode(header: pb.TileHeader, data: bytes, max_side: int) -> Raster:
    """The uploaded raster, refused with a clear message when it is not uint8 RGB(A),
    cannot be decoded, or is larger than ``max_side``."""
    if header.WhichOneof("raster") == "raw":
        rgb = np.frombuffer(data, np.uint8).reshape(header.raw.height, header.raw.width, 3).transpose(2, 0, 1)
        crs, transform = georef_from_pb(header.raw.georeference)
        return Raster(ArraySource(np.ascontiguousarray(rgb)), crs, transform)
    if header.WhichOneof("raster") == "url":
        src = RGBRaster(header.url)
        if max(src.width, src.height) > max_side:
            src.close()
            raise InputError(f"raster size {src.width}x{src.height} exceeds the maximum side of {max_side} px")
        return Raster(src, src.crs, src.transform, [src.close])
    memfile = MemoryFile(data)
    closers = [memfile.close]
    try:
        try:
            dataset = memfile.open(**decode_options())
        except rasterio.errors.RasterioIOError as e:
            raise InputError(f"GeoTIFF bytes cannot be decoded ({e})") from None
        src = RGBRaster("<uploaded GeoTIFF>", dataset=dataset)
        closers.append(src.close)
        if max(src.width, src.height) > max_side:
            raise InputError(f"raster size {src.width}x{src.height} exceeds the maximum side of {max_side} px")
        return Raster(src, src.crs, src.transform, closers)
    except BaseException:
        for close in reversed(closers):
            close()
        raise
