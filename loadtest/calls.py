"""One tile call, timed from the client's side."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import grpc

from service._pb import footprints_pb2 as pb
from service.client import CHUNK_BYTES, FootprintsClient

from .tiles import Tile


@dataclass
class Call:
    step: str  # "c=4", "rate=0.5/s", "soak"
    start: float  # seconds since the run began, when the call was sent
    latency: float  # first request message to last reply (open loop: from the scheduled arrival)
    code: str  # gRPC status code name
    pixels: int
    first_row: float | None = None  # seconds to the first mask rows
    windows: int = 0
    late: float = 0.0  # open loop: how long the arrival waited for a free client thread
    message: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _chunks(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), CHUNK_BYTES):
        yield data[i : i + CHUNK_BYTES]


def send(
    client: FootprintsClient, tile: Tile, model: str, timeout: float | None, step: str, t0: float, late: float = 0.0
) -> Call:
    """Stream ``tile`` and read every reply (rows are counted, not kept)."""
    header = pb.TileHeader(model=model, geotiff=pb.GeoTiffInput(size_bytes=len(tile.data)))
    start = time.perf_counter()
    try:
        result = client.stream(header, _chunks(tile.data), lambda rows: None, timeout=timeout)
    except grpc.RpcError as e:
        return Call(
            step, start - t0, time.perf_counter() - start + late, e.code().name, tile.pixels, late=late, message=e.details() or ""
        )
    latency = time.perf_counter() - start
    windows = result.summary.windows if result.summary is not None else 0
    first = None if result.first_rows_at is None else result.first_rows_at + late
    return Call(step, start - t0, latency + late, "OK", tile.pixels, first, windows, late)
