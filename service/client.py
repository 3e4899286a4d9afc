"""A small Python client for the footprints gRPC service.

    client = FootprintsClient("127.0.0.1:50051")
    summary = client.segment_file("tile.tif", "mask.tif", model="amll", polygons="b.geojson")

Files are streamed in chunks (never read whole into memory) and mask rows are
written to the output GeoTIFF as they arrive.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import rasterio
from rasterio.transform import Affine
from tqdm import tqdm

from service._pb import footprints_pb2 as pb
from service._pb import footprints_pb2_grpc as pb_grpc
from service.outputs.polygons import PolygonOptions
from service.outputs.sinks import GeoTiffRows, MaskPlane
from service.tiling.pipeline import RowBlock
from service.transport import MESSAGE_OPTIONS, ClientSecurity
from service.urls import is_url

CHUNK_BYTES = 2**20


def polygon_options_pb(o: PolygonOptions) -> pb.PolygonOptions:
    """The request's polygon controls (the server reads them back with
    :func:`service.api.convert.polygon_options`)."""
    return pb.PolygonOptions(
        min_area_m2=o.min_area_m2,
        simplify_m=o.simplify_m,
        no_regularize=not o.regularize,
        wgs84=o.wgs84,
        no_separate=not o.separate,
    )


@dataclass
class TileResult:
    summary: pb.TileSummary | None = None
    geotiff: bytes = b""
    polygons_geojson: str | None = None
    rows_received: int = 0
    row_messages: int = 0
    first_rows_at: float | None = None  # seconds after the call started


class FootprintsClient:
    """``security``: TLS (``ca``), mutual TLS (``cert``, ``key``) and a bearer token;
    ``timeout``: the default deadline of a tile call, in seconds (None: none)."""

    def __init__(self, address: str, security: ClientSecurity | None = None, timeout: float | None = None) -> None:
        self.security = security or ClientSecurity()
        self.channel = self.security.channel(address, MESSAGE_OPTIONS)
        self.stub = pb_grpc.SegmentationStub(self.channel)
        self.metadata = self.security.metadata()
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> FootprintsClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def list_models(self, timeout: float | None = 30) -> list[pb.ModelInfo]:
        return list(self.stub.ListModels(pb.ListModelsRequest(), timeout=timeout, metadata=self.metadata).models)

    def get_model(self, name: str, version: int = 0, timeout: float | None = 30) -> pb.ModelInfo:
        return self.stub.GetModel(pb.GetModelRequest(name=name, version=version), timeout=timeout, metadata=self.metadata)

    # ---- SegmentTile ----------------------------------------------------------
    def stream(
        self,
        header: pb.TileHeader,
        chunks: Iterator[bytes],
        on_rows: Callable[[pb.MaskRows], None],
        timeout: float | None = None,
        on_summary: Callable[[pb.TileSummary], None] | None = None,
    ) -> TileResult:
        """Send ``header`` and ``chunks``; call ``on_rows`` for each block of mask rows
        and ``on_summary`` once all rows are in (the server may still be tracing the
        buildings: what the client finishes then overlaps with it)."""
        import time

        def requests():
            yield pb.SegmentTileRequest(header=header)
            for c in chunks:
                yield pb.SegmentTileRequest(chunk=c)

        result = TileResult()
        t0 = time.perf_counter()
        geotiff = bytearray()
        for reply in self.stub.SegmentTile(requests(), timeout=timeout or self.timeout, metadata=self.metadata):
            part = reply.WhichOneof("part")
            if part == "rows":
                if result.first_rows_at is None:
                    result.first_rows_at = time.perf_counter() - t0
                result.rows_received += reply.rows.row_count
                result.row_messages += 1
                on_rows(reply.rows)
            elif part == "summary":
                result.summary = reply.summary
                if on_summary is not None:
                    on_summary(reply.summary)
            elif part == "mask_geotiff_chunk":
                geotiff += reply.mask_geotiff_chunk
            elif part == "polygons_geojson":
                result.polygons_geojson = reply.polygons_geojson
        result.geotiff = bytes(geotiff)
        return result

    def segment_file(
        self,
        image: str | Path,
        out: str | Path,
        model: str = "",
        version: int = 0,
        window: int = 0,
        threshold: float | None = None,
        gsd_m: float | None = None,
        tta: bool | None = None,
        tta_passes: int | None = None,
        probabilities: str | Path | None = None,
        polygons: str | Path | None = None,
        overlay: str | Path | None = None,
        polygon: PolygonOptions | None = None,
        progress: bool = True,
        timeout: float | None = None,
    ) -> TileResult:
        """Segment a GeoTIFF on the server; write the mask (and outputs) locally. An
        ``https://`` or ``s3://`` image is not sent: the server reads it (if its
        ``--allow-url-prefix`` list allows)."""
        remote = is_url(image)
        image = str(image) if remote else Path(image)
        out = Path(out)
        with rasterio.open(image) as src:  # header only: the grid for the output
            grid = dict(width=src.width, height=src.height, crs=src.crs, transform=src.transform)
        header = pb.TileHeader(
            model=model,
            model_version=version,
            window=window,
            outputs=pb.Outputs(probabilities=probabilities is not None, polygons=polygons is not None),
        )
        if isinstance(image, str):
            header.url = image
        else:
            header.geotiff.size_bytes = image.stat().st_size
        if threshold is not None:  # unset: the model version's
            header.threshold = threshold
        if gsd_m is not None:  # unset: from the georeference
            header.gsd_m = gsd_m
        if tta is not None:  # unset: the model's default
            header.tta = tta
        if tta_passes is not None:  # unset: 8 where TTA is on
            header.tta_passes = tta_passes
        if polygon is not None:
            header.polygon_options.CopyFrom(polygon_options_pb(polygon))

        def chunks() -> Iterator[bytes]:
            if isinstance(image, str):
                return  # the server fetches a URL itself
            with image.open("rb") as f:
                while block := f.read(CHUNK_BYTES):
                    yield block

        sinks = [GeoTiffRows(out, **grid)]
        if probabilities is not None:
            sinks.append(GeoTiffRows(probabilities, **grid, probabilities=True))
        bar = tqdm(total=grid["height"], desc=f"segment {PurePosixPath(str(image)).name}", unit="row", disable=not progress)

        def write(rows: pb.MaskRows) -> None:
            block = received(rows)
            for sink in sinks:
                sink.write(block)
            bar.update(rows.row_count)

        def finish(_: pb.TileSummary | None = None) -> None:
            # Every row is in: the COGs are made while the server traces the buildings.
            bar.close()
            for sink in sinks:
                sink.close()

        try:
            result = self.stream(header, chunks(), write, timeout, on_summary=finish)
        finally:
            finish()
        if polygons is not None and result.polygons_geojson is not None:
            Path(polygons).parent.mkdir(parents=True, exist_ok=True)
            Path(polygons).write_text(result.polygons_geojson)
        if overlay is not None:
            from service.outputs.overlay import write_overlay

            write_overlay(image, out, overlay)
        return result

    def segment_array(
        self,
        rgb: np.ndarray,
        crs: str,
        transform: Affine,
        model: str = "",
        version: int = 0,
        window: int = 0,
        outputs: pb.Outputs | None = None,
        timeout: float | None = None,
        gsd_m: float | None = None,
    ) -> tuple[np.ndarray, TileResult]:
        """Segment an in-memory ``(3, h, w)`` uint8 array sent as raw RGB rows."""
        _, h, w = rgb.shape
        header = pb.TileHeader(
            model=model,
            model_version=version,
            window=window,
            outputs=outputs or pb.Outputs(),
            raw=pb.RawRgbInput(width=w, height=h, georeference=pb.Georeference(crs=crs, transform=list(transform.to_gdal()))),
        )
        if gsd_m is not None:
            header.gsd_m = gsd_m
        data = np.ascontiguousarray(rgb.transpose(1, 2, 0)).tobytes()
        plane = MaskPlane(w, h)
        chunks = (data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES))
        return plane.plane, self.stream(header, chunks, lambda rows: plane.write(received(rows)), timeout)


def received(rows: pb.MaskRows) -> RowBlock:
    """A block of the rows a server sent, for the same sinks the server writes through."""
    shape = (rows.row_count, rows.width)
    u8 = np.frombuffer(rows.probabilities, np.uint8).reshape(shape) if rows.probabilities else None
    return RowBlock(rows.row_start, np.frombuffer(rows.mask, np.uint8).reshape(shape), _u8=u8)
