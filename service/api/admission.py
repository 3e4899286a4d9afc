"""Admission of tiles: what a server takes on before any work, and from whom.

A tile takes a slot once a valid header has arrived: one of the server's
``max_tiles_in_flight`` and one of its client's ``max_tiles_per_client`` (the client is
its bearer token, else its address), so a few connections cannot hold them all. It
takes its memory (the upload's declared bytes, then its planes) from the tiles' budget
at once or is refused; a window of a model takes its memory later, from the window
budget (:class:`service.models.budget.MemoryBudget`).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc

from service.api.convert import MAX_CHUNK_BYTES
from service.api.status import RequestError
from service.errors import OverBudget
from service.machine import half_the_ram
from service.metrics import Metrics


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
    allow_url_prefixes: tuple[str, ...] = ()  # URLs a header may name instead of bytes (none: streamed bytes only)

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


class TileMemory:
    """Bytes the tiles being served may hold outside model windows (upload buffers,
    probability and mask planes). A tile takes its share from its declared size before
    any of its bytes is accepted, or is refused at once: unlike a window, a tile that
    waited would hold its upload meanwhile."""

    def __init__(self, total_bytes: int | None = None) -> None:
        self.total = int(total_bytes or half_the_ram() // 2)
        self.used = 0

    def take(self, nbytes: int, what: str) -> int:
        if self.used + nbytes > self.total:
            raise OverBudget(
                f"{what} needs {nbytes / 2**20:.0f} MiB; tiles in flight hold {self.used / 2**20:.0f} of "
                f"{self.total / 2**20:.0f} MiB; retry later"
            )
        self.used += nbytes
        return nbytes

    def give(self, nbytes: int) -> None:
        self.used -= nbytes


class Admission:
    """The server's tile slots and tile memory (see the module)."""

    def __init__(self, limits: Limits, metrics: Metrics) -> None:
        self.limits, self.metrics = limits, metrics
        self.tile_memory = TileMemory(limits.tile_memory_bytes)
        self.metrics.tile_memory_budget.set(self.tile_memory.total)
        self.tiles_in_flight = 0
        self.client_tiles: dict[str, int] = {}

    @contextlib.contextmanager
    def slot(self, client: str) -> Iterator[None]:
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
    def memory(self) -> Iterator[Callable[[int, str], None]]:
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
